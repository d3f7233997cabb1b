package main

import (
	"cmp"
	"context"
	"flag"
	"fmt"
	"time"

	"github.com/keymesh/keymesh/bench"
)

func init() {
	register("compare", "a fair comparison: a fast backend directly, the bare fasthttp proxy, a keymesh edge, nginx with a static key map and with an access log", runCompare)
}

type compareOpts struct {
	duration, warmup time.Duration
	conc, nkeys      int
	rounds           int
	streamProbe      int // stream probe concurrency (0: none)
	stream           float64
	chunk            time.Duration
	nginxBin         string
	skipNginx        bool
	quiet            bool
	binDir           string // stackOpts.binDir
}

// compareStack starts a stack and nginx in front of its mock upstream, and
// runs the comparison.
func compareStack(ctx context.Context, e *env, o compareOpts) (*bench.CompareResult, string, error) {
	st, err := startStack(ctx, stackOpts{edges: 1, binDir: o.binDir})
	if err != nil {
		return nil, "", err
	}
	defer st.close()
	keys, err := st.keys(ctx, max(o.nkeys, 1), "compare")
	if err != nil {
		return nil, "", err
	}
	res, err := compareOn(ctx, e, st, keys, o)
	return res, st.mode(), err
}

// compareOn runs the comparison on a running stack with its keys.
func compareOn(ctx context.Context, e *env, st *stack, keys []*bench.Key, o compareOpts) (*bench.CompareResult, error) {
	bare, err := st.startBareProxy(ctx)
	if err != nil {
		return nil, err
	}
	targets := []bench.CompareTarget{{Name: bench.TargetDirect, URL: st.upstreamURL()}, {Name: bench.TargetKeymesh, URL: st.edges[0].url},
		{Name: bench.TargetBare, URL: bare}}
	if !o.skipNginx {
		ng, err := bench.StartNginx(ctx, bench.NginxConfig{Binary: o.nginxBin, Upstream: st.upstreamURL(), Keys: secrets(keys)})
		if err != nil {
			return nil, fmt.Errorf("%w (or pass --skip-nginx)", err)
		}
		defer ng.Stop()
		targets = append(targets, bench.CompareTarget{Name: bench.TargetNginx, URL: ng.URL})
	}
	return bench.RunCompare(ctx, bench.CompareConfig{Targets: targets, Warmup: o.warmup, Rounds: o.rounds, StreamProbe: o.streamProbe, Load: bench.LoadConfig{
		Duration: o.duration, Concurrency: o.conc, ValidKeys: secrets(keys), StreamShare: o.stream,
		StreamChunkInterval: o.chunk, Progress: progressOut(e, o.quiet),
	}})
}

func runCompare(e *env, args []string) int {
	fs := flag.NewFlagSet("bench compare", flag.ContinueOnError)
	mixed := fs.Bool("mixed", false, "the earlier comparison instead: the bench's closed-loop generator with a share of streams against the mock upstream, keymesh, the bare proxy and nginx, nothing pinned")
	duration := fs.Duration("duration", 0, "measured time per target, over all rounds (default 15s; --mixed 10s)")
	rounds := fs.Int("rounds", 0, "turns the targets take (a b c a b c …), so that noise falls on all alike (default 3, medians; --mixed 5, merged)")
	warmup := fs.Duration("warmup", time.Second, "unmeasured warm-up per target")
	nkeys := fs.Int("keys", 100, "valid keys (in the edge's origin and nginx's map)")
	nginxBin := fs.String("nginx", "", "nginx binary (default: nginx on PATH, else /usr/sbin/nginx)")
	skipNginx := fs.Bool("skip-nginx", false, "leave nginx out")
	connections := fs.Int("connections", 64, "connections of the load generator (fair comparison)")
	openLoop := fs.String("open-loop", "0.25,0.5,0.75", "then open-loop runs at these fractions of nginx's saturation throughput against direct, keymesh and nginx (none: skip)")
	openLoopDur := fs.Duration("open-loop-duration", 3*time.Second, "length of each open-loop run")
	wrkBin := fs.String("wrk", "", "wrk binary (default wrk on PATH; none: the bench's own closed-loop generator)")
	noPin := fs.Bool("no-pin", false, "pin nothing (default: backend and proxy on one CPU, generator, bench and origin on another)")
	streamProbe := fs.Int("stream-probe", 4, "--mixed: then a streams-only run per target at this concurrency, for time to first byte off a saturated machine (0: none)")
	conc := fs.Int("concurrency", 32, "--mixed: workers (closed loop)")
	stream := fs.Float64("stream-share", 0.1, "--mixed: share of streamed requests (their TTFB is compared)")
	chunk := fs.Duration("stream-chunk-interval", 5*time.Millisecond, "--mixed: pace of the mock upstream's chunks")
	out := fs.String("out", "", "report path without extension; default under $TMPDIR/keymesh-bench")
	quiet := fs.Bool("quiet", false, "no progress line on stderr")
	inProcess := inProcessFlag(fs)
	about := "bench compare measures what a proxy costs, fairly (issue 17): a backend several times faster than any proxy\n" +
		"(a C epoll server returning a fixed chat completion, compiled with cc; else a Go one), and in front of it, each a\n" +
		"process of its own, the raw Go proxy (bytes relayed by their framing: the least a Go proxy costs), the bare fasthttp\n" +
		"proxy, a keymesh edge (origin at idle priority), nginx with a static map of the keys and nginx with Debian's\n" +
		"access log. Backend and proxy under test share one CPU (Go with GOMAXPROCS=1,\n" +
		"nginx with one worker), the load generator (wrk, one thread; `make bench-deps` installs it) is on another; the\n" +
		"targets take turns for --rounds rounds, and the report gives each one's medians: rps, p50/p99 and CPU µs per\n" +
		"request from /proc; then open-loop latency at fractions of nginx's saturation rate.\n" +
		"--mixed runs the earlier comparison (the bench's own closed-loop generator, streams, nothing pinned)."
	if code, done := parseFlags(e, fs, about, args); done {
		return code
	}
	fractions, ferr := parseFractions(*openLoop)
	if *duration < 0 || *conc <= 0 || *rounds < 0 || *warmup < 0 || *stream < 0 || *stream > 1 || *connections <= 0 || *openLoopDur <= 0 || ferr != nil {
		fmt.Fprintln(e.stderr, "bench compare: --duration, --rounds, --concurrency, --connections and --open-loop-duration must be positive, --stream-share in 0..1, --open-loop fractions in (0,1]")
		return 2
	}
	base := *out
	if base == "" {
		base = defaultOut("compare")
	}
	if !*mixed {
		return runFairCompare(e, base, fairOpts{rounds: cmp.Or(*rounds, 3), round: cmp.Or(*duration, 15*time.Second) / time.Duration(cmp.Or(*rounds, 3)),
			warmup: *warmup, openLoop: fractions, openLoopDur: *openLoopDur, connections: *connections, nkeys: *nkeys, wrk: *wrkBin,
			noPin: *noPin, nginxBin: *nginxBin, skipNginx: *skipNginx, binDir: stackBinDir(*inProcess), quiet: *quiet})
	}
	res, mode, err := compareStack(e.ctx, e, compareOpts{duration: cmp.Or(*duration, 10*time.Second), warmup: *warmup, conc: *conc, nkeys: *nkeys, rounds: cmp.Or(*rounds, 5), streamProbe: *streamProbe,
		stream: *stream, chunk: *chunk, nginxBin: *nginxBin, skipNginx: *skipNginx, quiet: *quiet, binDir: stackBinDir(*inProcess)})
	if err != nil {
		fmt.Fprintf(e.stderr, "bench compare: %v\n", err)
		return 1
	}
	fmt.Fprint(e.stdout, bench.CompareMarkdown(res, ""))
	md := "# bench compare --mixed\n\nMachine: " + bench.DescribeMachine().Markdown() + ".  \nStack: " + mode + "; nginx as a child process.\n\n" + bench.CompareMarkdown(res, "latency") +
		"\n![throughput](CHART:throughput)\n"
	if err := writeReport(e, bench.Report{Base: base, JSON: res, Markdown: md, Charts: map[string]bench.Chart{
		"latency":    bench.LatencyChart("Latency of non-streamed requests by percentile", res.Runs, unaryLatency),
		"throughput": bench.ThroughputChart(res),
	}}); err != nil {
		fmt.Fprintf(e.stderr, "bench compare: %v\n", err)
		return 1
	}
	return 0
}

// runFairCompare runs the fair comparison and writes its report.
func runFairCompare(e *env, base string, o fairOpts) int {
	if o.wrk == "none" {
		o.wrk = ""
	} else if w, err := bench.FindWrk(o.wrk); err == nil {
		o.wrk = w
	} else if o.wrk != "" {
		fmt.Fprintf(e.stderr, "bench compare: %v\n", err)
		return 1
	} // else: no wrk on PATH, the bench's own generator (the report says so)
	if _, err := bench.FindNginx(o.nginxBin); err != nil && !o.skipNginx {
		fmt.Fprintf(e.stderr, "bench compare: %v (or pass --skip-nginx)\n", err)
		return 1
	}
	res, err := fairCompare(e.ctx, e, o)
	if err != nil {
		fmt.Fprintf(e.stderr, "bench compare: %v\n", err)
		return 1
	}
	fmt.Fprint(e.stdout, bench.FairMarkdown(res))
	md := "# bench compare\n\nMachine: " + bench.DescribeMachine().Markdown() + ".\n\n" + bench.FairMarkdown(res) + "\n![throughput](CHART:throughput)\n"
	if err := writeReport(e, bench.Report{Base: base, JSON: res, Markdown: md, Charts: map[string]bench.Chart{
		"throughput": fairThroughputChart(res),
	}}); err != nil {
		fmt.Fprintf(e.stderr, "bench compare: %v\n", err)
		return 1
	}
	return 0
}

func unaryLatency(r *bench.LoadResult) bench.Percentiles { return r.Unary }
