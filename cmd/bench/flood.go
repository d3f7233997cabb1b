package main

import (
	"context"
	"flag"
	"fmt"
	"time"

	"github.com/keymesh/keymesh/bench"
)

func init() {
	register("flood", "malformed and unknown keys at full speed: refusals/s and origin lookups caused", runFlood)
}

type floodOpts struct {
	url, metricsURL string
	duration        time.Duration
	conc, unknown   int
	validKeys       []string
	quiet           bool
	binDir          string // stackOpts.binDir
}

// floodStack runs a flood against a new in-process stack (url empty) or
// the given edge.
func floodStack(ctx context.Context, e *env, o floodOpts) (*bench.FloodResult, error) {
	if o.url == "" {
		st, err := startStack(ctx, stackOpts{edges: 1, binDir: o.binDir})
		if err != nil {
			return nil, err
		}
		defer st.close()
		valid, err := st.keys(ctx, 100, "flood")
		if err != nil {
			return nil, err
		}
		o.url, o.metricsURL, o.validKeys = st.edges[0].url, st.edges[0].adminURL+"/metrics", secrets(valid)
	}
	return bench.RunFlood(ctx, bench.FloodConfig{URL: o.url, MetricsURL: o.metricsURL, Duration: o.duration,
		Concurrency: o.conc, UnknownKeys: o.unknown, ValidKeys: o.validKeys, Progress: progressOut(e, o.quiet)})
}

func runFlood(e *env, args []string) int {
	fs := flag.NewFlagSet("bench flood", flag.ContinueOnError)
	url := fs.String("url", "", "edge base URL; empty starts an in-process origin + edge + mock upstream")
	metrics := fs.String("metrics-url", "", "the edge's admin /metrics (e.g. http://127.0.0.1:9090/metrics), read for "+bench.LookupsMetric)
	keys := fs.String("keys", "", "valid keys (comma-separated or @file) for a valid phase to compare with; with --url")
	duration := fs.Duration("duration", 3*time.Second, "length of each phase (malformed, unknown, valid)")
	conc := fs.Int("concurrency", 32, "workers")
	unknown := fs.Int("unknown-keys", 1000, "distinct well-formed unknown keys (each costs one lookup before the negative cache answers)")
	out := fs.String("out", "", "report path without extension; default under $TMPDIR/keymesh-bench")
	quiet := fs.Bool("quiet", false, "no progress line on stderr")
	inProcess := inProcessFlag(fs)
	about := "bench flood sends malformed keys, then unknown keys, at full speed (closed loop), and with valid keys\n" +
		"a valid phase to compare with; it reports refusals per second and the origin lookups each phase caused,\n" +
		"read from the edge's " + bench.LookupsMetric + " (0 expected for malformed keys)."
	if code, done := parseFlags(e, fs, about, args); done {
		return code
	}
	if *duration <= 0 || *conc <= 0 {
		fmt.Fprintln(e.stderr, "bench flood: --duration and --concurrency must be positive")
		return 2
	}
	valid, err := readKeys(*keys)
	if err != nil {
		fmt.Fprintf(e.stderr, "bench flood: --keys: %v\n", err)
		return 2
	}
	res, err := floodStack(e.ctx, e, floodOpts{url: *url, metricsURL: *metrics, duration: *duration, conc: *conc,
		unknown: *unknown, validKeys: valid, quiet: *quiet, binDir: stackBinDir(*inProcess)})
	if err != nil {
		fmt.Fprintf(e.stderr, "bench flood: %v\n", err)
		return 1
	}
	md := bench.FloodMarkdown(res)
	fmt.Fprint(e.stdout, md)
	base := *out
	if base == "" {
		base = defaultOut("flood")
	}
	if err := writeReport(e, bench.Report{Base: base, JSON: res,
		Markdown: "# bench flood\n\nMachine: " + bench.DescribeMachine().Markdown() + "\n\n" + md}); err != nil {
		fmt.Fprintf(e.stderr, "bench flood: %v\n", err)
		return 1
	}
	return 0
}
