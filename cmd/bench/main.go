// Command bench is keymesh's harness: a mock OpenAI-compatible upstream
// today, and the load, comparison, propagation and flood runs that drive a
// keymesh stack. Each subcommand is one entry in commands; see package bench.
package main

import (
	"bytes"
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"os"
	"os/signal"
	"slices"
	"strings"
	"syscall"
	"time"

	"github.com/keymesh/keymesh/bench"
	"github.com/keymesh/keymesh/internal/cli"
)

// env is what a subcommand gets from the process.
type env struct {
	// ctx ends on SIGINT or SIGTERM: stop gracefully and return 0.
	ctx            context.Context
	stdout, stderr io.Writer
	getenv         func(string) string
}

// command is one subcommand. run returns the exit code: 0 success, 1
// failure while running, 2 bad usage (after one line on stderr).
type command struct {
	summary string
	run     func(e *env, args []string) int
}

// commands maps a subcommand name to its implementation. A new subcommand
// (load, compare, propagation, flood) is one entry here, or one
// `func init() { commands["name"] = command{...} }` in its own file.
var commands = map[string]command{
	"upstream":  {"serve a mock OpenAI-compatible inference server", runUpstream},
	"bareproxy": {"serve the bare fasthttp proxy compare measures keymesh against (no checks: never in production)", runBareProxy},
}

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGINT, syscall.SIGTERM)
	go func() {
		<-ctx.Done()
		stop() // a second signal kills at once
	}()
	code := run(&env{ctx: ctx, stdout: os.Stdout, stderr: os.Stderr, getenv: os.Getenv}, os.Args[1:])
	stop()
	os.Exit(code)
}

func run(e *env, args []string) int {
	if len(args) == 0 {
		usage(e.stderr)
		return 2
	}
	name := args[0]
	switch name {
	case "-h", "-help", "--help", "help":
		if len(args) > 1 {
			if c, ok := commands[args[1]]; ok {
				return c.run(e, []string{"--help"})
			}
			fmt.Fprintf(e.stderr, "bench: unknown command %q (see bench --help)\n", args[1])
			return 2
		}
		usage(e.stdout)
		return 0
	}
	c, ok := commands[name]
	if !ok {
		if strings.HasPrefix(name, "-") {
			fmt.Fprintf(e.stderr, "bench: expected a command before flag %q (see bench --help)\n", name)
		} else {
			fmt.Fprintf(e.stderr, "bench: unknown command %q (see bench --help)\n", name)
		}
		return 2
	}
	return c.run(e, args[1:])
}

func usage(w io.Writer) {
	fmt.Fprintf(w, "Usage: bench <command> [flags]\n\nCommands:\n")
	names := make([]string, 0, len(commands))
	for n := range commands {
		names = append(names, n)
	}
	slices.Sort(names)
	for _, n := range names {
		fmt.Fprintf(w, "  %-12s %s\n", n, commands[n].summary)
	}
	fmt.Fprintf(w, "\nRun 'bench <command> --help' for a command's flags.\n")
}

// parseFlags parses a subcommand's flags (environment BENCH_<COMMAND>_<FLAG>
// too). On --help it prints about, then the flags, and returns (0, true); on
// a bad flag, one line on stderr and (2, true).
func parseFlags(e *env, fs *flag.FlagSet, about string, args []string) (int, bool) {
	prefix := "BENCH_" + strings.ToUpper(strings.TrimPrefix(fs.Name(), "bench "))
	var help bytes.Buffer
	if err := cli.Parse(fs, prefix, args, e.getenv, &help); err != nil {
		if errors.Is(err, cli.ErrHelp) {
			fmt.Fprintf(e.stdout, "%s\n\n%s", about, help.String())
			return 0, true
		}
		fmt.Fprintf(e.stderr, "%s: %v\n", fs.Name(), err)
		return 2, true
	}
	return 0, false
}

func runBareProxy(e *env, args []string) int {
	fs := flag.NewFlagSet("bench bareproxy", flag.ContinueOnError)
	listen := fs.String("listen", "127.0.0.1:8081", "address to serve on")
	upstream := fs.String("upstream", "http://127.0.0.1:8000", "where every request goes")
	about := "bench bareproxy serves the smallest fasthttp reverse proxy — copy, forward, stream back, no key check,\n" +
		"no limits, no audit — in front of --upstream: the floor bench compare holds a keymesh edge against."
	if code, done := parseFlags(e, fs, about, args); done {
		return code
	}
	p, err := bench.StartBareProxy(*upstream, *listen)
	if err != nil {
		fmt.Fprintf(e.stderr, "bench bareproxy: %v\n", err)
		return 1
	}
	log := slog.New(slog.NewTextHandler(e.stderr, nil))
	log.Info("bare proxy listening", "url", p.URL(), "upstream", *upstream)
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
