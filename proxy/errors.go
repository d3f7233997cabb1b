package proxy

import (
	"net/http"

	"github.com/valyala/fasthttp"

	"github.com/keymesh/keymesh/internal/apierror"
)

// Refusals with fixed messages are rendered once: a flood of bad keys costs
// no JSON encoding.
var (
	errNoCredential = apierror.New(http.StatusUnauthorized, apierror.AuthenticationFailed,
		"missing API key: send it as X-API-Key or Authorization: Bearer")
	errInvalidKey = apierror.New(http.StatusUnauthorized, apierror.AuthenticationFailed,
		"invalid API key")
	errNoDeployment = apierror.New(http.StatusNotFound, apierror.NotFound,
		"no deployment serves this host and path")
	errUnavailable = apierror.New(http.StatusServiceUnavailable, apierror.Unavailable,
		"cannot verify the API key right now; retry shortly")
	// errUnproven refuses a request that only the edge's deployments would
	// decide (auth off) while the edge cannot prove they are current
	// (--fail-mode closed past --max-staleness).
	errUnproven = apierror.New(http.StatusServiceUnavailable, apierror.Unavailable,
		"the edge cannot prove its configuration is current right now; retry shortly")
	errUpstream = apierror.New(http.StatusBadGateway, apierror.UpstreamError,
		"the inference server could not be reached")
	errUpstreamBusy = apierror.New(http.StatusServiceUnavailable, apierror.Unavailable,
		"every connection to the inference servers is busy; retry shortly")
	errUpstreamAuth = apierror.New(http.StatusBadGateway, apierror.UpstreamError,
		"the edge has no credential configured for this deployment's upstream")
	errBodyTooLarge = apierror.New(http.StatusRequestEntityTooLarge, apierror.ValidationError,
		"request body too large for this deployment")
	errBadJSON = apierror.New(http.StatusBadRequest, apierror.ValidationError,
		"request body is not valid JSON")
	errMalformedRequest = apierror.New(http.StatusBadRequest, apierror.ValidationError,
		"malformed HTTP request")
)

// rendered holds each fixed refusal's body; invalid-key refusals exist per
// status because deployments choose 401 or 403.
var rendered = map[*apierror.Error][]byte{}

func init() {
	for _, e := range []*apierror.Error{errNoCredential, errInvalidKey, errNoDeployment,
		errUnavailable, errUnproven, errUpstream, errUpstreamBusy, errUpstreamAuth, errBodyTooLarge, errBadJSON, errMalformedRequest} {
		rendered[e] = e.Body()
	}
}

// fail writes e with the given status (0: e's own).
func fail(ctx *fasthttp.RequestCtx, e *apierror.Error, status int) {
	if status == 0 {
		status = e.Status
	}
	body, ok := rendered[e]
	if !ok {
		body = e.Body()
	}
	ctx.Response.Header.SetContentType("application/json")
	ctx.SetStatusCode(status)
	ctx.SetBody(body)
}
