package proxy

import (
	"bufio"
	"io"
	"log/slog"
	"net"
	"testing"
	"time"

	"github.com/valyala/fasthttp"
	"github.com/valyala/fasthttp/fasthttputil"

	"github.com/keymesh/keymesh/apikey"
	"github.com/keymesh/keymesh/cache"
	"github.com/keymesh/keymesh/event"
)

// BenchmarkStreamTTFB is a streamed chat completion through a served edge
// (in-memory connections both sides, the client fasthttp's, reading the
// body as it streams): ttfb-ns is the mean time from sending the request
// to the first byte of the answer's body, ns/op the whole stream's. The
// upstream sends bench upstream's eight chunks, the first at once. For a
// key without limits (NoLimits) and one under a token bound large enough
// never to cut (TokenBound: what a hard budget costs a stream, chunk by
// chunk, and its first byte).
func BenchmarkStreamTTFB(b *testing.B) {
	upLn := fasthttputil.NewInmemoryListener()
	up := &fasthttp.Server{Handler: func(ctx *fasthttp.RequestCtx) {
		ctx.SetContentType("text/event-stream")
		ctx.SetBodyStreamWriter(func(w *bufio.Writer) {
			for _, c := range benchChunks {
				_, _ = w.Write(c)
				_ = w.Flush()
			}
			_, _ = w.WriteString("data: [DONE]\n\n")
		})
	}}
	go func() { _ = up.Serve(upLn) }()
	b.Cleanup(func() { _ = upLn.Close() })

	var secrets [2]string
	keys := map[apikey.Hash]*cache.Key{}
	for i, lim := range []*event.TokenLimits{nil, {TokensPerDay: 1 << 40}} {
		secret, err := apikey.Generate()
		if err != nil {
			b.Fatal(err)
		}
		h, _ := apikey.ParseString(secret)
		keys[h] = cache.NewKey(&event.Key{ID: "key_" + string(rune('1'+i)), Project: "prj_1", Secrets: []event.Secret{{Hash: h}},
			Permissions: event.DefaultPermissions, Deployments: []string{"dep_1"}, Tokens: lim}, 1)
		secrets[i] = secret
	}
	dep := deployment("dep_1", "http://127.0.0.1:9", true)
	st := &fakeState{deps: cache.NewDeployments([]event.Deployment{dep}, 1), keys: keys}
	p, err := New(Config{State: st, Audit: discardAudit{}, Usage: UsageFunc(func(*event.Usage) {}),
		Logger: slog.New(slog.DiscardHandler), EdgeID: "edge-1", Site: "eu", MaxRequestBodyBytes: 1 << 20,
		MaxUpstreamConns: 64, UpstreamIdleTimeout: 5 * time.Second, UpstreamConnectTimeout: time.Second, UpstreamPoolWait: time.Second})
	if err != nil {
		b.Fatal(err)
	}
	p.client.Dial = func(string) (net.Conn, error) { return upLn.Dial() }
	edgeLn := fasthttputil.NewInmemoryListener()
	go func() { _ = p.Serve(edgeLn) }()
	b.Cleanup(func() { _ = edgeLn.Close() })
	c := &fasthttp.Client{StreamResponseBody: true, Dial: func(string) (net.Conn, error) { return edgeLn.Dial() }}

	const body = `{"model":"mock-model","stream":true,"messages":[{"role":"user","content":"Say hello."}],"max_tokens":16}`
	for i, name := range []string{"NoLimits", "TokenBound"} {
		b.Run(name, func(b *testing.B) {
			req := fasthttp.AcquireRequest()
			defer fasthttp.ReleaseRequest(req)
			req.Header.SetMethod("POST")
			req.SetRequestURI("http://edge.example/v1/chat/completions")
			req.Header.Set("X-API-Key", secrets[i])
			req.Header.SetContentType("application/json")
			req.SetBodyString(body)
			buf := make([]byte, 4096)
			var ttfb time.Duration
			b.ReportAllocs()
			b.ResetTimer()
			for range b.N {
				resp := fasthttp.AcquireResponse()
				start := time.Now()
				if err := c.Do(req, resp); err != nil {
					b.Fatal(err)
				}
				r := resp.BodyStream()
				n, err := r.Read(buf)
				for n == 0 && err == nil {
					n, err = r.Read(buf)
				}
				ttfb += time.Since(start)
				if n == 0 || resp.StatusCode() != 200 {
					b.Fatalf("status %d, first read %q: %v", resp.StatusCode(), buf[:n], err)
				}
				_, _ = io.Copy(io.Discard, r)
				_ = resp.CloseBodyStream()
				fasthttp.ReleaseResponse(resp)
			}
			b.ReportMetric(float64(ttfb.Nanoseconds())/float64(b.N), "ttfb-ns")
		})
	}
}
