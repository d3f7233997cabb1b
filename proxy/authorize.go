package proxy

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"net/http"
	"unicode/utf8"

	"github.com/valyala/fasthttp"

	"github.com/keymesh/keymesh/apikey"
	"github.com/keymesh/keymesh/cache"
	"github.com/keymesh/keymesh/event"
	"github.com/keymesh/keymesh/internal/apierror"
)

// authenticate returns the key the credential belongs to if it is current
// and linked to dep; otherwise it answers the request with the refusal and
// returns nil and why. A malformed credential is refused without any lookup.
func (s *Server) authenticate(ctx *fasthttp.RequestCtx, dep *event.Deployment, cred []byte) (*cache.Key, reason) {
	invalid := dep.InvalidKeyStatus
	if len(cred) == 0 {
		ctx.Response.Header.Set(fasthttp.HeaderWWWAuthenticate, "Bearer")
		fail(ctx, errNoCredential, 0)
		return nil, reasonNoCredential
	}
	h, err := apikey.Parse(cred)
	if err != nil {
		fail(ctx, errInvalidKey, invalid)
		return nil, reasonMalformed
	}
	key, err := s.view.Authorize(context.Background(), h)
	if err == nil && key.Linked(dep.ID) {
		return key, reasonAllowed
	}
	r := reasonUnlinked
	switch {
	case errors.Is(err, cache.ErrUnavailable):
		ctx.Response.Header.Set(fasthttp.HeaderRetryAfter, "1")
		fail(ctx, errUnavailable, 0)
		return nil, reasonUnavailable
	case errors.Is(err, cache.ErrExpired):
		r = reasonExpired
	case errors.Is(err, cache.ErrDisabled):
		r = reasonDisabled
	case err != nil:
		r = reasonUnknown
	}
	fail(ctx, errInvalidKey, invalid)
	return nil, r
}

// requestBody is what the edge reads from an OpenAI-style JSON body.
type requestBody struct {
	stream      bool
	promptChars int
}

// inspect reads a JSON request body once: whether it asks to stream, and how
// long its prompt is. Bad JSON and prompts over the deployment's limit are
// answered with 400 and ok false. Bodies that are not JSON (uploads, say)
// are not inspected.
func inspect(ctx *fasthttp.RequestCtx, dep *event.Deployment, path []byte) (b requestBody, ok bool) {
	raw := ctx.Request.Body()
	if len(raw) == 0 || !bytes.HasPrefix(path, []byte("/v1/")) || !isJSON(ctx.Request.Header.ContentType()) {
		return b, true
	}
	n, stream, err := parseBody(raw)
	if err != nil {
		fail(ctx, errBadJSON, 0)
		return b, false
	}
	if dep.MaxPromptChars > 0 && n > dep.MaxPromptChars {
		fail(ctx, apierror.New(http.StatusBadRequest, apierror.ValidationError,
			"prompt is longer than this deployment allows").
			WithDetails(map[string]int{"max_prompt_chars": dep.MaxPromptChars, "prompt_chars": n}), 0)
		return b, false
	}
	return requestBody{stream: stream, promptChars: n}, true
}

func isJSON(ct []byte) bool {
	return len(ct) == 0 || bytes.HasPrefix(ct, []byte("application/json")) || bytes.Contains(ct, []byte("+json"))
}

// parseBody counts the characters (runes) of the prompt in an OpenAI-style
// request — "prompt" or "input" as a string or list of strings, and the text
// of every message's "content", given as a string or as a list of parts —
// and reports whether it asks to stream.
func parseBody(raw []byte) (chars int, stream bool, err error) {
	var b struct {
		Stream   json.RawMessage `json:"stream"`
		Prompt   json.RawMessage `json:"prompt"`
		Input    json.RawMessage `json:"input"`
		Messages []struct {
			Content json.RawMessage `json:"content"`
		} `json:"messages"`
	}
	if err := json.Unmarshal(raw, &b); err != nil {
		return 0, false, err
	}
	if len(b.Stream) > 0 {
		if err := json.Unmarshal(b.Stream, &stream); err != nil && string(b.Stream) != "null" {
			return 0, false, err
		}
	}
	for _, field := range []json.RawMessage{b.Prompt, b.Input} {
		n, err := textChars(field)
		if err != nil {
			return 0, false, err
		}
		chars += n
	}
	for _, m := range b.Messages {
		n, err := textChars(m.Content)
		if err != nil {
			return 0, false, err
		}
		chars += n
	}
	return chars, stream, nil
}

// textChars counts a string, a list of strings, or a list of content parts
// ({"type":"text","text":...}); anything else (token arrays, images) counts 0.
func textChars(raw json.RawMessage) (int, error) {
	raw = bytes.TrimSpace(raw)
	if len(raw) == 0 || string(raw) == "null" {
		return 0, nil
	}
	switch raw[0] {
	case '"':
		var s string
		if err := json.Unmarshal(raw, &s); err != nil {
			return 0, err
		}
		return utf8.RuneCountInString(s), nil
	case '[':
		var items []json.RawMessage
		if err := json.Unmarshal(raw, &items); err != nil {
			return 0, err
		}
		total := 0
		for _, it := range items {
			it = bytes.TrimSpace(it)
			if len(it) > 0 && it[0] == '{' {
				var part struct {
					Text string `json:"text"`
				}
				if err := json.Unmarshal(it, &part); err != nil {
					return 0, err
				}
				total += utf8.RuneCountInString(part.Text)
				continue
			}
			n, err := textChars(it)
			if err != nil {
				return 0, err
			}
			total += n
		}
		return total, nil
	}
	return 0, nil
}

// permitted answers with 403 and returns false unless key holds what the
// request needs: read_models to list models, run_inference for other /v1
// calls, and use_streaming as well for a body that asks to stream.
func permitted(ctx *fasthttp.RequestCtx, key *cache.Key, path []byte, body requestBody) bool {
	if !bytes.HasPrefix(path, []byte("/v1/")) {
		return true
	}
	need := event.PermRunInference
	if ctx.IsGet() && (bytes.Equal(path, []byte("/v1/models")) || bytes.HasPrefix(path, []byte("/v1/models/"))) {
		need = event.PermReadModels
	}
	for _, p := range [2]string{need, streamPerm(body.stream)} {
		if p != "" && !key.Has(p) {
			fail(ctx, permissionDenied[p], 0)
			return false
		}
	}
	return true
}

func streamPerm(stream bool) string {
	if stream {
		return event.PermUseStreaming
	}
	return ""
}

// permissionDenied holds one rendered refusal per permission.
var permissionDenied = func() map[string]*apierror.Error {
	m := map[string]*apierror.Error{}
	for _, p := range event.Permissions {
		e := apierror.New(http.StatusForbidden, apierror.PermissionDenied, "this API key lacks the "+p+" permission")
		m[p] = e
		rendered[e] = e.Body()
	}
	return m
}()
