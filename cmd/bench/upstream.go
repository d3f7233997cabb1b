package main

import (
	"context"
	"flag"
	"fmt"
	"log/slog"
	"time"

	"github.com/keymesh/keymesh/bench"
	"github.com/keymesh/keymesh/internal/cli"
)

func init() {
	register("upstream", "serve a mock OpenAI-compatible inference server", runUpstream)
	register("bareproxy", "serve the bare fasthttp proxy compare measures keymesh against (no checks: never in production)", runBareProxy)
	register("rawproxy", "serve the least a Go proxy can do (bytes relayed by their framing): compare's floor under any Go proxy", runRawProxy)
}

func runRawProxy(e *env, args []string) int {
	about := "bench rawproxy relays each request and answer as bytes to --upstream, reading only their framing (the head\n" +
		"to its blank line, a Content-Length body), one upstream connection per client connection: what a Go program\n" +
		"pays for the sockets and the scheduler alone, the floor bench compare shows under the bare proxy and the edge.\n" +
		"It refuses what it cannot frame (chunked requests, answers without a length). Never a proxy to run."
	return runYardstick(e, args, "rawproxy", "127.0.0.1:8082", about, func(upstream, addr string) (yardstick, error) {
		return bench.StartRawProxy(upstream, addr)
	})
}

func runBareProxy(e *env, args []string) int {
	about := "bench bareproxy serves the smallest fasthttp reverse proxy — copy, forward, stream back, no key check,\n" +
		"no limits, no audit — in front of --upstream: the floor bench compare holds a keymesh edge against."
	return runYardstick(e, args, "bareproxy", "127.0.0.1:8081", about, func(upstream, addr string) (yardstick, error) {
		return bench.StartBareProxy(upstream, addr)
	})
}

// yardstick is one of the proxies bench compare measures the edge against.
type yardstick interface {
	URL() string
	Shutdown(context.Context) error
}

// runYardstick serves the yardstick start makes in front of --upstream on
// --listen until the process is told to stop, then drains it.
func runYardstick(e *env, args []string, name, listenDefault, about string, start func(upstream, addr string) (yardstick, error)) int {
	fs := flag.NewFlagSet("bench "+name, flag.ContinueOnError)
	listen := fs.String("listen", listenDefault, "address to serve on")
	upstream := fs.String("upstream", "http://127.0.0.1:8000", "where every request goes")
	if code, done := parseFlags(e, fs, about, args); done {
		return code
	}
	p, err := start(*upstream, *listen)
	if err != nil {
		fmt.Fprintf(e.stderr, "bench %s: %v\n", name, err)
		return 1
	}
	log := slog.New(slog.NewTextHandler(e.stderr, nil))
	log.Info("listening", "proxy", name, "url", p.URL(), "upstream", *upstream)
	<-e.ctx.Done()
	return cli.Drain(log, 5*time.Second, p.Shutdown)
}

func runUpstream(e *env, args []string) int {
	fs := flag.NewFlagSet("bench upstream", flag.ContinueOnError)
	listen := fs.String("listen", "127.0.0.1:8000", "address to serve on")
	interval := fs.Duration("chunk-interval", bench.DefaultChunkInterval,
		"pause between chunks of a streamed answer (a request may override it with header "+bench.HeaderMockChunkInterval+")")
	chunks := fs.Int("stream-chunks", bench.DefaultStreamChunks, "chunks per streamed answer, before data: [DONE]")
	model := fs.String("model", bench.DefaultModel, "model listed by /v1/models and named in answers")
	drain := fs.Duration("drain-timeout", 10*time.Second, "on SIGINT/SIGTERM, how long in-flight requests and streams may finish")
	about := "bench upstream serves a mock OpenAI-compatible inference server (a stand-in for vLLM):\n" +
		"GET /v1/models, POST /v1/chat/completions, /v1/completions (both streamed with \"stream\": true),\n" +
		"/v1/embeddings, and GET /health. Answers are deterministic. SIGINT/SIGTERM drain and exit 0."
	if code, done := parseFlags(e, fs, about, args); done {
		return code
	}
	if *interval <= 0 || *chunks <= 0 || *model == "" || *drain < 0 {
		fmt.Fprintln(e.stderr, "bench upstream: --chunk-interval and --stream-chunks must be positive and --model non-empty (see --help)")
		return 2
	}
	log := slog.New(slog.NewTextHandler(e.stderr, nil))
	u, err := bench.StartUpstream(bench.UpstreamConfig{
		ChunkInterval: *interval,
		StreamChunks:  *chunks,
		Model:         *model,
		Logger:        log,
	}, *listen)
	if err != nil {
		fmt.Fprintf(e.stderr, "bench upstream: %v\n", err)
		return 1
	}
	log.Info("mock upstream listening", "url", u.URL(), "model", *model,
		"chunk_interval", *interval, "stream_chunks", *chunks)
	<-e.ctx.Done()
	return cli.Drain(log, *drain, u.Shutdown)
}
