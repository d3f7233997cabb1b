package proxy

import (
	"bytes"
	"context"
	"errors"
	"net/http"

	"github.com/valyala/fasthttp"

	"github.com/keymesh/keymesh/apikey"
	"github.com/keymesh/keymesh/cache"
	"github.com/keymesh/keymesh/event"
	"github.com/keymesh/keymesh/internal/apierror"
)

// authenticate returns the key the credential belongs to and reasonAllowed
// if it is current and linked to dep; otherwise it answers the request with
// the refusal and returns why, with the key when it is known (unlinked,
// disabled, expired: for the audit record). A malformed credential is
// refused without any lookup.
func (s *Proxy) authenticate(ctx *fasthttp.RequestCtx, dep *event.Deployment, cred []byte) (*cache.Key, reason) {
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
	key, err := s.state.Authorize(context.Background(), h)
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
		r, key = reasonUnknown, nil
	}
	fail(ctx, errInvalidKey, invalid)
	return key, r
}

// permitted answers with 403 and returns false unless key holds what the
// request needs: read_models to list models (GET or HEAD /v1/models[/...]),
// run_inference for everything else — OpenAI-style /v1 calls and the
// native routes of inference servers alike (TGI's /generate, vLLM's
// /invocations, ...) — and use_streaming as well for a body that asks to
// stream or a route that always streams. The path is the request's
// normalised one, the one forwarded. A route that lowers what is needed
// (read_models) must match exactly; one that raises it (TGI's
// /generate_stream) matches under any prefix, since the edge cannot know
// what prefix an upstream strips.
func permitted(ctx *fasthttp.RequestCtx, key *cache.Key, r *request, bodyStreams bool) bool {
	need := event.PermRunInference
	if r.getOrHead && (bytes.Equal(r.path, []byte("/v1/models")) || bytes.HasPrefix(r.path, []byte("/v1/models/"))) {
		need = event.PermReadModels
	}
	stream := bodyStreams || bytes.HasSuffix(r.path, []byte("/generate_stream"))
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
