package proxy

import (
	"strconv"
	"strings"

	"github.com/valyala/fasthttp"
)

// cors answers browser preflights and marks responses readable by the
// allowed origins. Preflights need no key: they carry none by design.
type cors struct {
	any     bool
	origins map[string]bool
	methods string
	headers string
}

func newCORS(origins, methods, headers []string) *cors {
	if len(origins) == 0 {
		return nil
	}
	c := &cors{origins: map[string]bool{}}
	for _, o := range origins {
		if o == "*" {
			c.any = true
		}
		c.origins[strings.TrimSuffix(o, "/")] = true
	}
	if len(methods) == 0 {
		methods = []string{"GET", "POST", "OPTIONS"}
	}
	if len(headers) == 0 {
		headers = []string{"Authorization", "Content-Type", "X-API-Key", "X-Request-Id"}
	}
	c.methods = strings.Join(methods, ", ")
	c.headers = strings.Join(headers, ", ")
	return c
}

// apply adds the CORS response headers for an allowed Origin and reports
// whether the request was a preflight, which it has then answered.
func (c *cors) apply(ctx *fasthttp.RequestCtx) (preflight bool) {
	if c == nil {
		return false
	}
	origin := ctx.Request.Header.Peek("Origin")
	if len(origin) == 0 {
		return false
	}
	h := &ctx.Response.Header
	h.Add("Vary", "Origin")
	allowed := c.any || c.origins[string(origin)]
	if allowed {
		h.SetBytesV("Access-Control-Allow-Origin", origin)
		h.Set("Access-Control-Expose-Headers", "X-Request-Id, X-RateLimit-Limit, X-RateLimit-Remaining, X-RateLimit-Reset, Retry-After")
	}
	if !ctx.IsOptions() || len(ctx.Request.Header.Peek("Access-Control-Request-Method")) == 0 {
		return false
	}
	if allowed {
		h.Set("Access-Control-Allow-Methods", c.methods)
		h.Set("Access-Control-Allow-Headers", c.headers)
		h.Set("Access-Control-Max-Age", strconv.Itoa(600))
	}
	ctx.SetStatusCode(fasthttp.StatusNoContent)
	return true
}
