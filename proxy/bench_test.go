package proxy

import (
	"bufio"
	"bytes"
	"log/slog"
	"net"
	"strings"
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

// benchAnswer and benchChunks are what bench upstream (package bench)
// answers a chat completion with, whole and streamed: eight content
// chunks, the usage-only chunk when include_usage was asked for, [DONE].
const benchAnswer = `{"id":"chatcmpl-mock-1","object":"chat.completion","created":1700000000,"model":"mock-model","choices":[{"finish_reason":"stop","index":0,"logprobs":null,"message":{"content":"Hello! This is a mock completion.","role":"assistant"}}],"usage":{"completion_tokens":8,"prompt_tokens":3,"total_tokens":11}}` + "\n"

var benchChunks = func() (out [][]byte) {
	for i, tok := range []string{"Hello", "!", " This", " is", " a", " mock", " completion", "."} {
		role, finish := "", "null"
		if i == 0 {
			role = `,"role":"assistant"`
		}
		if i == 7 {
			finish = `"stop"`
		}
		out = append(out, []byte(`data: {"choices":[{"delta":{"content":"`+tok+`"`+role+`},"finish_reason":`+finish+
			`,"index":0,"logprobs":null}],"created":1700000000,"id":"chatcmpl-mock-1","model":"mock-model","object":"chat.completion.chunk"}`+"\n\n"))
	}
	return out
}()

const benchUsageChunk = `data: {"choices":[],"created":1700000000,"id":"chatcmpl-mock-1","model":"mock-model","object":"chat.completion.chunk","usage":{"completion_tokens":8,"prompt_tokens":3,"total_tokens":11}}` + "\n\n"

// BenchmarkProxyServe is the edge's whole request path for one metered,
// audited chat completion — the request read, the key checked, the body
// inspected, the limits, forwarding to an in-memory upstream and relaying
// its answer — for a key without any limit, answered whole (NoLimits) and
// streamed (NoLimitsStream: the edge adds include_usage and strips the
// usage-only chunk), and for a key under a token bound (what the token
// admission costs), and for a chat body of 4 KB (LongPrompt: a system
// prompt and a user turn of prose, its lines escaped as JSON encoders
// write them — what the body's inspection costs as prompts grow). The
// upstream answers as bench upstream does.
func BenchmarkProxyServe(b *testing.B) {
	ln := fasthttputil.NewInmemoryListener()
	up := &fasthttp.Server{Handler: func(ctx *fasthttp.RequestCtx) {
		body := ctx.Request.Body()
		if !bytes.Contains(body, []byte(`"stream":true`)) {
			ctx.SetContentType("application/json")
			ctx.SetBodyString(benchAnswer)
			return
		}
		usage := bytes.Contains(body, []byte(`"include_usage":true`))
		ctx.SetContentType("text/event-stream")
		ctx.SetBodyStreamWriter(func(w *bufio.Writer) {
			for _, c := range benchChunks {
				_, _ = w.Write(c)
				_ = w.Flush()
			}
			if usage {
				_, _ = w.WriteString(benchUsageChunk)
			}
			_, _ = w.WriteString("data: [DONE]\n\n")
		})
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
	dep := deployment("dep_1", "http://127.0.0.1:9", true)
	dep.MaxPromptChars = 10000 // the origin's default for a new deployment
	st := &fakeState{deps: cache.NewDeployments([]event.Deployment{dep}, 1), keys: keys}
	p, err := New(Config{State: st, Audit: discardAudit{}, Usage: UsageFunc(func(*event.Usage) {}),
		Logger: slog.New(slog.DiscardHandler), EdgeID: "edge-1", Site: "eu", MaxRequestBodyBytes: 1 << 20,
		MaxUpstreamConns: 64, UpstreamIdleTimeout: 5 * time.Second, UpstreamConnectTimeout: time.Second, UpstreamPoolWait: time.Second})
	if err != nil {
		b.Fatal(err)
	}
	p.client.Dial = func(string) (net.Conn, error) { return ln.Dial() }

	const (
		chat   = `{"model":"mock-model","messages":[{"role":"user","content":"Say hello."}],"max_tokens":16}`
		stream = `{"model":"mock-model","stream":true,"messages":[{"role":"user","content":"Say hello."}],"max_tokens":16}`
	)
	for _, bc := range []struct{ name, secret, body, want string }{
		{"NoLimits", secret, chat, benchAnswer},
		{"NoLimitsStream", secret, stream, string(bytes.Join(benchChunks, nil)) + "data: [DONE]\n\n"},
		{"TokenBound", bSecret, chat, benchAnswer},
		{"LongPrompt", secret, benchLongChat, benchAnswer},
	} {
		b.Run(bc.name, func(b *testing.B) {
			var req fasthttp.Request
			req.Header.SetMethod("POST")
			req.SetRequestURI("/v1/chat/completions")
			req.Header.SetHost("edge.example")
			req.Header.Set("X-API-Key", bc.secret)
			req.Header.SetContentType("application/json")
			req.SetBodyString(bc.body)
			addr := &net.TCPAddr{IP: net.IPv4(127, 0, 0, 1), Port: 40000}
			var ctx fasthttp.RequestCtx
			var got bytes.Buffer
			b.ReportAllocs()
			b.ResetTimer()
			for i := range b.N {
				ctx.Response.Reset()
				ctx.Init(&req, addr, nil)
				p.handle(&ctx)
				got.Reset()
				_ = ctx.Response.BodyWriteTo(&got) // a streamed answer is finished when relayed
				if ctx.Response.StatusCode() != 200 || (i == 0 && got.String() != bc.want) {
					b.Fatalf("status %d: %q", ctx.Response.StatusCode(), got.Bytes())
				}
			}
		})
	}
}

// benchLongChat is a 4 KB chat body: a system prompt and a user turn of
// prose in lines, each "\n" escaped, an odd quote and a few non-ASCII
// letters among them.
var benchLongChat = func() string {
	line := `The edge counts every character of the prompt it forwards, so that a deployment's max_prompt_chars holds — even for a \"long\" prompt.\n`
	var sys, user strings.Builder
	for sys.Len() < 1000 {
		sys.WriteString(line)
	}
	for user.Len() < 2900 {
		user.WriteString(line)
	}
	return `{"model":"mock-model","messages":[{"role":"system","content":"` + sys.String() +
		`"},{"role":"user","content":"` + user.String() + `"}],"max_tokens":16,"temperature":0.2}`
}()
