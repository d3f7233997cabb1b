package main

import (
	"context"
	"testing"
	"time"

	"github.com/valyala/fasthttp"

	"github.com/keymesh/keymesh/bench"
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
	bare, err := bench.StartBareProxy(st.upstream.URL(), "127.0.0.1:0")
	if err != nil {
		b.Fatal(err)
	}
	defer bare.Shutdown(context.Background())
	body := []byte(`{"model": "mock-model", "messages": [{"role": "user", "content": "Hello!"}]}`)
	for _, target := range []struct{ name, url string }{{"baseline", bare.URL()}, {"edge", st.edges[0].url}} {
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
