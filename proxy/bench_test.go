package proxy

import (
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

type discardAudit struct{}

func (discardAudit) Record([]byte) {}

// BenchmarkProxyServe is the edge's whole request path for one metered,
// audited chat completion — the request read, the key checked, the body
// inspected, the limits, forwarding to an in-memory upstream and relaying
// its answer — for a key without any limit and one under a token bound
// (what the token admission costs).
func BenchmarkProxyServe(b *testing.B) {
	ln := fasthttputil.NewInmemoryListener()
	up := &fasthttp.Server{Handler: func(ctx *fasthttp.RequestCtx) {
		ctx.SetContentType("application/json")
		ctx.SetBodyString(`{"id":"c1","object":"chat.completion","choices":[{"index":0,"message":{"role":"assistant","content":"hello"}}],"usage":{"prompt_tokens":3,"completion_tokens":5,"total_tokens":8}}`)
	}}
	go func() { _ = up.Serve(ln) }()
	b.Cleanup(func() { _ = ln.Close() })

	secret, err := apikey.Generate()
	if err != nil {
		b.Fatal(err)
	}
	h, _ := apikey.ParseString(secret)
	bSecret, _ := apikey.Generate()
	bh, _ := apikey.ParseString(bSecret)
	keys := map[apikey.Hash]*cache.Key{
		h: cache.NewKey(&event.Key{ID: "key_1", Project: "prj_1", Secrets: []event.Secret{{Hash: h}},
			Permissions: event.DefaultPermissions, Deployments: []string{"dep_1"}}, 1),
		bh: cache.NewKey(&event.Key{ID: "key_2", Project: "prj_1", Secrets: []event.Secret{{Hash: bh}},
			Permissions: event.DefaultPermissions, Deployments: []string{"dep_1"},
			Tokens: &event.TokenLimits{TokensPerMinute: 1 << 40}}, 1),
	}
	st := &fakeState{deps: cache.NewDeployments([]event.Deployment{deployment("dep_1", "http://127.0.0.1:9", true)}, 1), keys: keys}
	p, err := New(Config{State: st, Audit: discardAudit{}, Usage: UsageFunc(func(*event.Usage) {}),
		Logger: slog.New(slog.DiscardHandler), EdgeID: "edge-1", Site: "eu", MaxRequestBodyBytes: 1 << 20,
		MaxUpstreamConns: 64, UpstreamIdleTimeout: 5 * time.Second, UpstreamConnectTimeout: time.Second, UpstreamPoolWait: time.Second})
	if err != nil {
		b.Fatal(err)
	}
	p.client.Dial = func(string) (net.Conn, error) { return ln.Dial() }

	for _, bc := range []struct{ name, secret string }{{"NoLimits", secret}, {"TokenBound", bSecret}} {
		b.Run(bc.name, func(b *testing.B) {
			var req fasthttp.Request
			req.Header.SetMethod("POST")
			req.SetRequestURI("/v1/chat/completions")
			req.Header.SetHost("edge.example")
			req.Header.Set("X-API-Key", bc.secret)
			req.Header.SetContentType("application/json")
			req.SetBodyString(`{"model":"m","messages":[{"role":"user","content":"hi"}],"max_tokens":16}`)
			addr := &net.TCPAddr{IP: net.IPv4(127, 0, 0, 1), Port: 40000}
			var ctx fasthttp.RequestCtx
			b.ReportAllocs()
			b.ResetTimer()
			for range b.N {
				ctx.Response.Reset()
				ctx.Init(&req, addr, nil)
				p.handle(&ctx)
				_ = ctx.Response.BodyWriteTo(io.Discard) // a streamed answer is finished when relayed
				if ctx.Response.StatusCode() != 200 {
					b.Fatalf("status %d: %s", ctx.Response.StatusCode(), ctx.Response.Body())
				}
			}
		})
	}
}
