// Package apierror renders the one error body shape that both the origin API
// and the edge answer with:
//
//	{"error": {"code": "...", "message": "...", "type": "...", "details": null}}
//
// Messages are written for the client and must never contain a secret.
package apierror

import (
	"encoding/json"
	"net/http"
)

// Codes, as in the external API.
const (
	AuthenticationFailed = "AUTHENTICATION_FAILED"
	PermissionDenied     = "PERMISSION_DENIED"
	RateLimited          = "RATE_LIMITED"
	// ConcurrencyLimit: too many requests of a key or deployment in flight
	// at one edge (429, like RateLimited, but no budget refills: one
	// finishing frees a slot).
	ConcurrencyLimit = "CONCURRENCY_LIMIT"
	// QuotaExceeded: a tokens_per_minute or tokens_per_day budget has too
	// few tokens left for the request's reservation (429; it refills).
	QuotaExceeded = "QUOTA_EXCEEDED"
	// InsufficientQuota: a quota of tokens or requests is used up until
	// its next refill, if any (429; the code OpenAI clients know, and its
	// type is OpenAI's "insufficient_quota").
	InsufficientQuota = "INSUFFICIENT_QUOTA"
	ValidationError   = "VALIDATION_ERROR"
	NotFound          = "NOT_FOUND"
	MethodNotAllowed  = "METHOD_NOT_ALLOWED"
	Conflict          = "CONFLICT"
	Unavailable       = "UNAVAILABLE"
	UpstreamError     = "UPSTREAM_ERROR"
	InternalError     = "INTERNAL_ERROR"
)

// openAIType maps a code to the OpenAI-style "type" clients of inference
// APIs switch on.
func openAIType(code string) string {
	switch code {
	case AuthenticationFailed:
		return "authentication_error"
	case PermissionDenied:
		return "permission_error"
	case RateLimited, ConcurrencyLimit, QuotaExceeded:
		return "rate_limit_error"
	case InsufficientQuota:
		return "insufficient_quota"
	case ValidationError, MethodNotAllowed:
		return "invalid_request_error"
	case NotFound:
		return "not_found_error"
	case Conflict:
		return "conflict_error"
	case Unavailable, UpstreamError:
		return "api_error"
	default:
		return "server_error"
	}
}

// Error is the body's "error" member. It implements error so that handlers
// can return it.
type Error struct {
	Status  int    `json:"-"`
	Code    string `json:"code"`
	Message string `json:"message"`
	Type    string `json:"type"`
	Details any    `json:"details"`
}

func (e *Error) Error() string { return e.Code + ": " + e.Message }

// New returns an error with the OpenAI type filled in from code.
func New(status int, code, message string) *Error {
	return &Error{Status: status, Code: code, Message: message, Type: openAIType(code)}
}

// WithDetails returns a copy of e carrying details.
func (e *Error) WithDetails(details any) *Error {
	c := *e
	c.Details = details
	return &c
}

// Body returns the JSON body for e.
func (e *Error) Body() []byte {
	b, err := json.Marshal(struct {
		Error *Error `json:"error"`
	}{e})
	if err != nil { // details that cannot be encoded: drop them, keep the error
		c := *e
		c.Details = nil
		return c.Body()
	}
	return b
}

// Write sends e on an http.ResponseWriter.
func (e *Error) Write(w http.ResponseWriter) {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(e.Status)
	_, _ = w.Write(e.Body())
}
