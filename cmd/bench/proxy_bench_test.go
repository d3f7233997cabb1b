package main

import (
	"context"
	"net"
	"strings"
	"testing"
	"time"

	"github.com/valyala/fasthttp"
)

// BenchmarkProxy measures one keyed chat completion through a keymesh edge
// against a baseline measured in the same run: the smallest fasthttp
// reverse proxy (copy the request, forward, stream the answer back; no key
// check, no limits, no audit, no metrics) in front of the same mock
// upstream. The gap between the two is what the edge's own work costs:
//
//	go test -run '^$' -bench BenchmarkProxy -benchmem ./cmd/bench/
//
// Both run on loopback in this process, together with the client and the
// upstream, so ns/op is a ratio to read within one run, not an absolute.
func BenchmarkProxy(b *testing.B) {
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	st, err := startStack(ctx, stackOpts{edges: 1})
	if err != nil {
		b.Fatal(err)
	}
	defer st.close()
	keys, err := st.keys(ctx, 1, "bench-proxy")
	if err != nil {
		b.Fatal(err)
	}
	baseline, stop := startBaselineProxy(b, st.upstream.URL())
	defer stop()
	body := []byte(`{"model": "mock-model", "messages": [{"role": "user", "content": "Hello!"}]}`)
	for _, target := range []struct{ name, url string }{{"baseline", baseline}, {"edge", st.edges[0].url}} {
		b.Run(target.name, func(b *testing.B) {
			c := &fasthttp.Client{MaxConnsPerHost: 256}
			url := target.url + "/v1/chat/completions"
			b.ReportAllocs()
			b.SetParallelism(8)
			b.ResetTimer()
			b.RunParallel(func(pb *testing.PB) {
				req, resp := fasthttp.AcquireRequest(), fasthttp.AcquireResponse()
				defer fasthttp.ReleaseRequest(req)
				defer fasthttp.ReleaseResponse(resp)
				for pb.Next() {
					req.Reset()
					req.SetRequestURI(url)
					req.Header.SetMethod(fasthttp.MethodPost)
					req.Header.SetContentType("application/json")
					req.Header.Set("X-API-Key", keys[0].Secret)
					req.SetBodyRaw(body)
					if err := c.Do(req, resp); err != nil || resp.StatusCode() != fasthttp.StatusOK {
						b.Errorf("%s: %v %d %s", target.name, err, resp.StatusCode(), resp.Body())
						return
					}
				}
			})
		})
	}
}

// startBaselineProxy serves the minimal fasthttp reverse proxy to upstream.
func startBaselineProxy(b *testing.B, upstream string) (url string, stop func()) {
	b.Helper()
	client := &fasthttp.Client{StreamResponseBody: true, MaxConnsPerHost: 1024}
	upstream = strings.TrimRight(upstream, "/")
	srv := &fasthttp.Server{Handler: func(ctx *fasthttp.RequestCtx) {
		req := fasthttp.AcquireRequest()
		defer fasthttp.ReleaseRequest(req)
		ctx.Request.Header.CopyTo(&req.Header)
		req.SetBodyRaw(ctx.Request.Body())
		req.SetRequestURI(upstream + string(ctx.Request.RequestURI()))
		resp := fasthttp.AcquireResponse()
		if err := client.Do(req, resp); err != nil {
			fasthttp.ReleaseResponse(resp)
			ctx.Error(err.Error(), fasthttp.StatusBadGateway)
			return
		}
		resp.Header.CopyTo(&ctx.Response.Header)
		if bs := resp.BodyStream(); bs != nil {
			ctx.Response.SetBodyStream(&releasingBody{resp}, resp.Header.ContentLength())
			return
		}
		ctx.Response.SetBody(resp.Body())
		fasthttp.ReleaseResponse(resp)
	}}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		b.Fatal(err)
	}
	go func() { _ = srv.Serve(ln) }()
	return "http://" + ln.Addr().String(), func() { _ = srv.Shutdown() }
}

// releasingBody streams an upstream body and releases its response once
// the server is done with it.
type releasingBody struct{ resp *fasthttp.Response }

func (r *releasingBody) Read(p []byte) (int, error) { return r.resp.BodyStream().Read(p) }

func (r *releasingBody) Close() error {
	err := r.resp.CloseBodyStream()
	fasthttp.ReleaseResponse(r.resp)
	return err
}
