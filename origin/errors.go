package origin

// The errors the origin returns: sentinels (test with errors.Is) and the
// two error types that carry what the API answers with.

import "errors"

// Sentinel errors; returned errors wrap them (test with errors.Is).
var (
	// ErrNotFound: the named project, key or deployment does not exist.
	ErrNotFound = errors.New("not found")
	// ErrConflict: a project or deployment with that name exists.
	ErrConflict = errors.New("conflict")
	// ErrInvalid: a request value is not acceptable (see FieldError).
	ErrInvalid = errors.New("invalid value")
	// ErrInvalidConfig: Config cannot be used.
	ErrInvalidConfig = errors.New("invalid origin config")
	// ErrUnauthenticated: missing or bad credentials.
	ErrUnauthenticated = errors.New("authentication failed")
	// ErrClosed: the server has been shut down.
	ErrClosed = errors.New("origin is shut down")
	// ErrKeyMismatch: this origin's signing.key or jwt.key differs from the
	// one the store was first used with (see checkIdentity).
	ErrKeyMismatch = errors.New("origin key differs from the store's")
	// ErrForbidden: the project's policy does not allow the change (an
	// upstream outside allowed_upstreams), or the caller may not make it.
	ErrForbidden = errors.New("not allowed")
	// ErrTooLarge: the change's event would exceed MaxEventBytes.
	ErrTooLarge = errors.New("change too large")
)

// DetailedError is an error about a request that carries details for the
// API's error body; Err is the sentinel it wraps (ErrConflict, ErrForbidden,
// ErrTooLarge, ...), which picks the status. Message and Details never hold
// a secret, nor anything of another project.
type DetailedError struct {
	Err     error
	Message string
	Details map[string]any
}

func (e *DetailedError) Error() string { return e.Message }
func (e *DetailedError) Unwrap() error { return e.Err }

// FieldError is a validation error about one request field. It wraps
// ErrInvalid.
type FieldError struct {
	Field   string
	Message string
}

func (e *FieldError) Error() string { return e.Field + ": " + e.Message }
func (e *FieldError) Unwrap() error { return ErrInvalid }
