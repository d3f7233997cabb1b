package main

import (
	"context"
	"flag"
	"fmt"
	"time"

	"github.com/keymesh/keymesh/bench"
)

func init() {
	register("compare", "the same load against the upstream directly, a keymesh edge, and nginx with a static key map", runCompare)
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
	duration := fs.Duration("duration", 10*time.Second, "measured time per target, over all rounds")
	rounds := fs.Int("rounds", 5, "turns the targets take (a b c a b c …), merged per target, so that noise falls on all alike")
	streamProbe := fs.Int("stream-probe", 4, "then a streams-only run per target at this concurrency, for time to first byte off a saturated machine (0: none)")
	warmup := fs.Duration("warmup", time.Second, "unmeasured warm-up per target")
	conc := fs.Int("concurrency", 32, "workers (closed loop)")
	nkeys := fs.Int("keys", 100, "valid keys (in the edge's origin and nginx's map)")
	stream := fs.Float64("stream-share", 0.1, "share of streamed requests (their TTFB is compared)")
	chunk := fs.Duration("stream-chunk-interval", 5*time.Millisecond, "pace of the mock upstream's chunks")
	nginxBin := fs.String("nginx", "", "nginx binary (default: nginx on PATH, else /usr/sbin/nginx)")
	skipNginx := fs.Bool("skip-nginx", false, "compare only direct and keymesh")
	out := fs.String("out", "", "report path without extension; default under $TMPDIR/keymesh-bench")
	quiet := fs.Bool("quiet", false, "no progress line on stderr")
	inProcess := inProcessFlag(fs)
	about := "bench compare sends the same closed-loop load, one after another, to (a) the mock upstream directly,\n" +
		"(b) a keymesh edge (origin, upstream and edge as separate processes, see --in-process), (c) nginx with a static map of the same keys in front of\n" +
		"the same upstream (a child process on a free port; `make bench-deps` installs it), and tabulates\n" +
		"throughput and latency with ratios to (a) and (c)."
	if code, done := parseFlags(e, fs, about, args); done {
		return code
	}
	if *duration <= 0 || *conc <= 0 || *rounds <= 0 || *warmup < 0 || *stream < 0 || *stream > 1 {
		fmt.Fprintln(e.stderr, "bench compare: --duration, --rounds and --concurrency must be positive, --stream-share in 0..1")
		return 2
	}
	res, mode, err := compareStack(e.ctx, e, compareOpts{duration: *duration, warmup: *warmup, conc: *conc, nkeys: *nkeys, rounds: *rounds, streamProbe: *streamProbe,
		stream: *stream, chunk: *chunk, nginxBin: *nginxBin, skipNginx: *skipNginx, quiet: *quiet, binDir: stackBinDir(*inProcess)})
	if err != nil {
		fmt.Fprintf(e.stderr, "bench compare: %v\n", err)
		return 1
	}
	fmt.Fprint(e.stdout, bench.CompareMarkdown(res, ""))
	base := *out
	if base == "" {
		base = defaultOut("compare")
	}
	md := "# bench compare\n\nMachine: " + bench.DescribeMachine().Markdown() + ".  \nStack: " + mode + "; nginx as a child process.\n\n" + bench.CompareMarkdown(res, "latency") +
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

func unaryLatency(r *bench.LoadResult) bench.Percentiles { return r.Unary }
