package proxy

import (
	"bytes"
	"context"
	"errors"
	"net/http"
	"unicode/utf8"

	"github.com/valyala/fasthttp"
	"github.com/valyala/fastjson"

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

// inspect reads a request body once: whether it asks to stream, and how
// long its prompt is. A body is inspected when its Content-Type is JSON (in
// any letter case, or absent) or when it looks like JSON whatever its
// Content-Type says, since inference servers parse such bodies anyway; bad
// JSON and prompts over the deployment's limit are answered with 400 and ok
// false. Other bodies (multipart audio uploads, say) are not inspected.
func inspect(ctx *fasthttp.RequestCtx, dep *event.Deployment) (stream, ok bool) {
	raw := ctx.Request.Body()
	if len(raw) == 0 || !(isJSON(ctx.Request.Header.ContentType()) || looksLikeJSON(raw)) {
		return false, true
	}
	n, stream, err := parseBody(raw)
	if err != nil {
		fail(ctx, errBadJSON, 0)
		return false, false
	}
	if dep.MaxPromptChars > 0 && n > dep.MaxPromptChars {
		fail(ctx, apierror.New(http.StatusBadRequest, apierror.ValidationError,
			"prompt is longer than this deployment allows").
			WithDetails(map[string]int{"max_prompt_chars": dep.MaxPromptChars, "prompt_chars": n}), 0)
		return false, false
	}
	return stream, true
}

// isJSON reports whether a Content-Type names JSON: application/json or a
// +json suffix, in any letter case, parameters aside. No Content-Type
// counts as JSON: that is how clients that forget it are understood.
func isJSON(ct []byte) bool {
	if i := bytes.IndexByte(ct, ';'); i >= 0 {
		ct = ct[:i]
	}
	ct = bytes.TrimSpace(ct)
	return len(ct) == 0 || bytes.EqualFold(ct, []byte("application/json")) ||
		(len(ct) > 5 && bytes.EqualFold(ct[len(ct)-5:], []byte("+json")))
}

// looksLikeJSON reports whether raw starts, after white space, like a JSON
// object or array.
func looksLikeJSON(raw []byte) bool {
	raw = bytes.TrimLeft(raw, " \t\r\n")
	return len(raw) > 0 && (raw[0] == '{' || raw[0] == '[')
}

// bodyParsers are reused across requests: parsing a body allocates nothing
// once a parser has grown to the bodies it sees.
var bodyParsers fastjson.ParserPool

// parseBody validates an OpenAI-style JSON request body, counts the
// characters (runes) of its prompt — "prompt" or "input" as a string or a
// list of strings, and the text of every message's "content", given as a
// string or as a list of parts — and reports whether it asks to stream.
//
// Keys are matched without regard to case and every occurrence of a
// repeated key counts, so that no spelling an upstream might honour can
// hide a stream request or part of a prompt: the count is never lower, and
// stream never false, where a lenient decoder would see otherwise.
func parseBody(raw []byte) (chars int, stream bool, err error) {
	if err := fastjson.ValidateBytes(raw); err != nil {
		return 0, false, errBodyNotJSON
	}
	p := bodyParsers.Get()
	defer bodyParsers.Put(p)
	v, err := p.ParseBytes(raw)
	if err != nil {
		return 0, false, errBodyNotJSON
	}
	switch v.Type() {
	case fastjson.TypeNull:
		return 0, false, nil
	case fastjson.TypeObject:
	default:
		return 0, false, errBodyShape
	}
	o, _ := v.Object()
	o.Visit(func(key []byte, v *fastjson.Value) {
		if err != nil {
			return
		}
		var n int
		switch {
		case bytes.EqualFold(key, keyStream):
			switch v.Type() {
			case fastjson.TypeTrue:
				stream = true
			case fastjson.TypeFalse, fastjson.TypeNull:
			default:
				err = errBodyShape
			}
		case bytes.EqualFold(key, keyPrompt), bytes.EqualFold(key, keyInput):
			n, err = textChars(v)
		case bytes.EqualFold(key, keyMessages):
			n, err = messageChars(v)
		}
		chars += n
	})
	if err != nil {
		return 0, false, err
	}
	return chars, stream, nil
}

var (
	keyStream   = []byte("stream")
	keyPrompt   = []byte("prompt")
	keyInput    = []byte("input")
	keyMessages = []byte("messages")
	keyContent  = []byte("content")
	keyText     = []byte("text")

	errBodyNotJSON = errors.New("request body is not valid JSON")
	errBodyShape   = errors.New("request body has a field of the wrong type")
)

// messageChars counts the text of a list of messages: each null or an
// object whose "content" textChars counts.
func messageChars(v *fastjson.Value) (int, error) {
	switch v.Type() {
	case fastjson.TypeNull:
		return 0, nil
	case fastjson.TypeArray:
	default:
		return 0, errBodyShape
	}
	items, _ := v.Array()
	total := 0
	var err error
	for _, m := range items {
		switch m.Type() {
		case fastjson.TypeNull:
			continue
		case fastjson.TypeObject:
		default:
			return 0, errBodyShape
		}
		o, _ := m.Object()
		o.Visit(func(key []byte, c *fastjson.Value) {
			if err == nil && bytes.EqualFold(key, keyContent) {
				var n int
				n, err = textChars(c)
				total += n
			}
		})
		if err != nil {
			return 0, err
		}
	}
	return total, nil
}

// textChars counts a string, a list of strings (or of lists), or a list of
// content parts ({"type":"text","text":...}); anything else (numbers, token
// arrays, images) counts 0.
func textChars(v *fastjson.Value) (int, error) {
	switch v.Type() {
	case fastjson.TypeString:
		s, _ := v.StringBytes()
		return utf8.RuneCount(s), nil
	case fastjson.TypeArray:
	default:
		return 0, nil
	}
	items, _ := v.Array()
	total := 0
	for _, it := range items {
		switch it.Type() {
		case fastjson.TypeObject:
			n, err := partChars(it)
			if err != nil {
				return 0, err
			}
			total += n
		case fastjson.TypeArray, fastjson.TypeString:
			n, err := textChars(it)
			if err != nil {
				return 0, err
			}
			total += n
		}
	}
	return total, nil
}

// partChars counts the "text" of a content part, which must be a string
// or null when present.
func partChars(v *fastjson.Value) (int, error) {
	o, _ := v.Object()
	total := 0
	var err error
	o.Visit(func(key []byte, t *fastjson.Value) {
		if err != nil || !bytes.EqualFold(key, keyText) {
			return
		}
		switch t.Type() {
		case fastjson.TypeString:
			s, _ := t.StringBytes()
			total += utf8.RuneCount(s)
		case fastjson.TypeNull:
		default:
			err = errBodyShape
		}
	})
	return total, err
}

// permitted answers with 403 and returns false unless key holds what the
// request needs: read_models to list models (GET or HEAD /v1/models[/...]),
// run_inference for everything else — OpenAI-style /v1 calls and the
// native routes of inference servers alike (TGI's /generate, vLLM's
// /invocations, ...) — and use_streaming as well for a body that asks to
// stream or a route that always streams.
func permitted(ctx *fasthttp.RequestCtx, key *cache.Key, path []byte, bodyStreams bool) bool {
	need := event.PermRunInference
	if (ctx.IsGet() || ctx.IsHead()) && (bytes.Equal(path, []byte("/v1/models")) || bytes.HasPrefix(path, []byte("/v1/models/"))) {
		need = event.PermReadModels
	}
	stream := bodyStreams || bytes.Equal(path, []byte("/generate_stream"))
	for _, p := range [2]string{need, streamPerm(stream)} {
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
