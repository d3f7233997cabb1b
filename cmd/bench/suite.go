package main

import (
	"context"
	"flag"
	"fmt"
	"path/filepath"
	"strings"
	"time"

	"github.com/keymesh/keymesh/bench"
)

func init() {
	register("suite", "the short standard suite behind `make bench`: load, flood, compare, propagation, limits", runSuite)
}

// suiteResult is the JSON of a suite run.
type suiteResult struct {
	Date        string                   `json:"date"`
	Stack       string                   `json:"stack"` // how load, flood and compare ran
	Machine     bench.Machine            `json:"machine"`
	Seconds     float64                  `json:"seconds"`
	Load        []*bench.LoadResult      `json:"load"`
	Flood       *bench.FloodResult       `json:"flood"`
	Compare     *bench.CompareResult     `json:"compare,omitempty"`
	CompareNote string                   `json:"compare_note,omitempty"`
	Propagation *bench.PropagationResult `json:"propagation"`
	// PropagationGossip is the same run with NATS cut for three quarters of
	// the edges, which then hear of changes by gossip alone.
	PropagationGossip *bench.PropagationResult `json:"propagation_gossip,omitempty"`
	Targets           []suiteTarget            `json:"targets"`

	// Fair is bench compare's fair comparison (issue 17), which the
	// edge-vs-nginx targets are judged on; FairNote says why it is missing.
	Fair     *bench.FairResult `json:"fair_compare,omitempty"`
	FairNote string            `json:"fair_compare_note,omitempty"`
	// Limits are bench limits' cases (a short window, the limit scaled).
	Limits []*bench.LimitsResult `json:"limits,omitempty"`
}

type suiteTarget struct {
	Target   string `json:"target"`
	Measured string `json:"measured"`
	Verdict  string `json:"verdict"` // met, MISSED, not measured
}

func runSuite(e *env, args []string) int {
	fs := flag.NewFlagSet("bench suite", flag.ContinueOnError)
	dir := fs.String("dir", "bench/results", "directory the report is written to, as <date>.md (+ .json, .svg)")
	date := fs.String("date", time.Now().UTC().Format("2006-01-02"), "the report's name")
	duration := fs.Duration("duration", 5*time.Second, "length of each load run and each compared target")
	edges := fs.Int("edges", 16, "edges of the propagation run")
	iterations := fs.Int("iterations", 20, "unlink/relink pairs of the propagation run")
	conc := fs.Int("concurrency", 32, "closed-loop workers")
	rate := fs.Float64("rate", 2000, "open-loop requests per second")
	quiet := fs.Bool("quiet", false, "no progress lines on stderr")
	inProcess := inProcessFlag(fs)
	limitsWindow := fs.Duration("limits-window", 10*time.Second, "the window of each bench limits case (its limit scaled: 600 × window / 60 s)")
	limitsEdges := fs.Int("limits-edges", 4, "edges of the bench limits cases")
	about := "bench suite runs the standard suite (about 5 minutes on 2 cores) on a stack of separate processes\n" +
		"(see --in-process) for load, flood and compare, and an in-process one for propagation:\n" +
		"closed- and open-loop load with a key mix and revocation, a flood, the mixed-load comparison with the upstream\n" +
		"directly and nginx (skipped, and said so, when nginx is missing), bench compare's fair comparison (pinned,\n" +
		"wrk, medians, CPU per request, open loop), and propagation to --edges edges,\n" +
		"over NATS and with NATS cut for three quarters of them (gossip alone), and bench limits' cases on\n" +
		"--limits-edges edges for --limits-window each;\n" +
		"then writes <dir>/<date>.md with the machine it ran on and every target's verdict."
	if code, done := parseFlags(e, fs, about, args); done {
		return code
	}
	if *duration <= 0 || *edges <= 0 || *iterations <= 0 || *conc <= 0 || *rate <= 0 || *limitsEdges <= 0 {
		fmt.Fprintln(e.stderr, "bench suite: every number must be positive")
		return 2
	}
	lo := limitsOpts{edges: *limitsEdges, window: *limitsWindow, factor: 4, conc: 16, maxTokens: 16,
		sync: 200 * time.Millisecond, bound: -1, quiet: *quiet, cases: []string{caseSpread, caseMoved, caseTokens}}
	if err := lo.check(); err != nil {
		fmt.Fprintf(e.stderr, "bench suite: limits: %v\n", err)
		return 2
	}
	// The whole suite is bounded, whatever happens.
	ctx, cancel := context.WithTimeout(e.ctx, 8*time.Minute)
	defer cancel()
	start := time.Now()
	res := &suiteResult{Date: *date, Machine: bench.DescribeMachine()}
	if err := suiteRun(ctx, e, res, stackBinDir(*inProcess), *duration, *edges, *iterations, *conc, *rate, *quiet); err != nil {
		fmt.Fprintf(e.stderr, "bench suite: %v\n", err)
		return 1
	}
	var err error
	if res.Limits, err = limitsStack(ctx, e, lo); err != nil {
		fmt.Fprintf(e.stderr, "bench suite: limits: %v\n", err)
		return 1
	}
	res.Seconds = time.Since(start).Seconds()
	res.Targets = suiteTargets(res)
	base := filepath.Join(*dir, *date)
	md := suiteMarkdown(res)
	charts := map[string]bench.Chart{
		"load":        bench.LatencyChart("bench load: latency by percentile", res.Load, nil),
		"propagation": bench.PropagationChart(res.Propagation),
	}
	if res.PropagationGossip != nil {
		charts["propagation-gossip"] = bench.PropagationChart(res.PropagationGossip)
	}
	if len(res.Limits) > 0 {
		charts["limits"] = bench.LimitsChart(res.Limits)
	}
	if res.Compare != nil {
		charts["compare"] = bench.LatencyChart("bench compare: non-streamed latency by percentile", res.Compare.Runs, unaryLatency)
		charts["throughput"] = bench.ThroughputChart(res.Compare)
	}
	if res.Fair != nil {
		charts["fair-throughput"] = fairThroughputChart(res.Fair)
	}
	if err := writeReport(e, bench.Report{Base: base, JSON: res, Markdown: md, Charts: charts}); err != nil {
		fmt.Fprintf(e.stderr, "bench suite: %v\n", err)
		return 1
	}
	fmt.Fprint(e.stdout, targetsMarkdown(res.Targets))
	return 0
}

func suiteRun(ctx context.Context, e *env, res *suiteResult, binDir string, d time.Duration, edges, iterations, conc int, rate float64, quiet bool) error {
	st, err := startStack(ctx, stackOpts{edges: 1, binDir: binDir})
	if err != nil {
		return err
	}
	defer st.close()
	res.Stack = st.mode()
	valid, err := st.keys(ctx, 100, "suite")
	if err != nil {
		return err
	}
	revoked, err := st.keys(ctx, 4, "suite-revoked")
	if err != nil {
		return err
	}
	edge := st.edges[0]
	mix := bench.KeyMix{Valid: 0.9, Unknown: 0.04, Malformed: 0.04, Revoked: 0.02}
	base := bench.LoadConfig{URL: edge.url, Duration: d, Concurrency: conc, ValidKeys: secrets(valid),
		RevokedKeys: secrets(revoked), Mix: mix, StreamShare: 0.1, StreamChunkInterval: 5 * time.Millisecond,
		CredentialHeader: bench.HeaderBoth, Progress: progressOut(e, quiet)}

	closed := base
	closed.Name, closed.Revoke = "closed loop", st.unlinker(revoked)
	r, err := bench.RunLoad(ctx, closed)
	if err != nil {
		return err
	}
	res.Load = append(res.Load, r)
	open := base
	open.Name, open.Rate, open.Mix.Revoked, open.RevokedKeys = "open loop", rate, 0, nil
	open.Concurrency = max(conc, 64)
	if r, err = bench.RunLoad(ctx, open); err != nil {
		return err
	}
	res.Load = append(res.Load, r)

	if res.Flood, err = bench.RunFlood(ctx, bench.FloodConfig{URL: edge.url, MetricsURL: edge.adminURL + "/metrics",
		Duration: max(d/2, time.Second), Concurrency: conc, ValidKeys: secrets(valid), Progress: progressOut(e, quiet)}); err != nil {
		return err
	}

	co := compareOpts{duration: 2 * d, rounds: 5, streamProbe: 4, warmup: time.Second, conc: conc, stream: 0.1, chunk: 5 * time.Millisecond, quiet: quiet}
	if _, nerr := bench.FindNginx(""); nerr != nil {
		co.skipNginx = true
		res.CompareNote = "nginx was not compared: " + nerr.Error()
	}
	if res.Compare, err = compareOn(ctx, e, st, valid, co); err != nil {
		return err
	}
	st.close()
	if err = suiteFair(ctx, e, res, binDir, d, quiet); err != nil {
		return err
	}

	if res.Propagation, err = propagationStack(ctx, e, propOpts{edges: edges, iterations: iterations, poll: time.Millisecond, quiet: quiet}); err != nil {
		return err
	}
	if cut := edges * 3 / 4; cut > 0 {
		res.PropagationGossip, err = propagationStack(ctx, e, propOpts{edges: edges, iterations: iterations,
			poll: time.Millisecond, quiet: quiet, cutNATS: cut})
	}
	return err
}

// suiteFair runs the fair comparison: 3 rounds of d/2 per target, open
// loop at 25/50/75% of nginx for d/4 each (about 90 s at d = 8s).
func suiteFair(ctx context.Context, e *env, res *suiteResult, binDir string, d time.Duration, quiet bool) error {
	if binDir == "" {
		res.FairNote = "the fair comparison was not run: it needs the edge and origin binaries next to bench (not --in-process)"
		return nil
	}
	o := fairOpts{rounds: 3, round: max(d/2, time.Second), warmup: time.Second, openLoop: []float64{0.25, 0.5, 0.75},
		openLoopDur: max(d/4, time.Second), connections: 64, nkeys: 100, binDir: binDir, quiet: quiet}
	if w, err := bench.FindWrk(""); err == nil {
		o.wrk = w
	}
	if _, err := bench.FindNginx(""); err != nil {
		o.skipNginx = true
		res.FairNote = "nginx was not compared: " + err.Error()
	}
	var err error
	res.Fair, err = fairCompare(ctx, e, o)
	return err
}

func suiteTargets(r *suiteResult) []suiteTarget {
	var out []suiteTarget
	add := func(target, measured string, ok bool) {
		out = append(out, suiteTarget{target, measured, strings.Trim(verdictWord(ok), "*")})
	}
	var km, ng *bench.LoadResult
	if r.Compare != nil {
		km, ng = r.Compare.Find(bench.TargetKeymesh), r.Compare.Find(bench.TargetNginx)
	}
	if r.Fair != nil {
		for _, v := range r.Fair.Verdicts() {
			add(v.Target, v.Measured, v.Met)
		}
		if r.Fair.Find(bench.TargetNginx) == nil {
			out = append(out, suiteTarget{"edge vs nginx (fair compare)", "nginx missing: " + r.FairNote, "not measured"})
		}
	} else if km != nil && ng != nil && ng.Throughput > 0 && ng.Unary.P99 > 0 {
		t := km.Throughput / ng.Throughput
		add("keymesh throughput ≥ 1.0x nginx static map", fmt.Sprintf("%.2fx (%.0f vs %.0f rps)", t, km.Throughput, ng.Throughput), t >= 1)
		l := km.Unary.P99 / ng.Unary.P99
		add("keymesh p99 ≤ 1.1x nginx", fmt.Sprintf("%.2fx (%s vs %s ms)", l, fmtMs(km.Unary.P99), fmtMs(ng.Unary.P99)), l <= 1.1)
	} else {
		out = append(out, suiteTarget{"keymesh vs nginx", "nginx missing: " + r.CompareNote, "not measured"})
	}
	if f := r.Flood; f != nil && len(f.Phases) == 3 {
		add("refusals/s ≥ 2x valid proxied/s", fmt.Sprintf("%.2fx (malformed %.0f/s, unknown %.0f/s, valid %.0f/s)",
			f.RefusalRatio, f.Phases[0].Rate, f.Phases[1].Rate, f.Phases[2].Rate), f.RefusalRatio >= 2)
		add("0 origin lookups for malformed keys", fmt.Sprintf("%.0f lookups for %d malformed requests (unknown: %.0f for %d requests, %d distinct keys)",
			f.Phases[0].Lookups, f.Phases[0].Requests, f.Phases[1].Lookups, f.Phases[1].Requests, f.UnknownKeys), f.Phases[0].Lookups == 0)
	}
	if p := r.Propagation; p != nil {
		add(fmt.Sprintf("propagation p99 ≤ 50 ms over 16 edges via NATS (run: %d edges)", p.Edges),
			fmt.Sprintf("p99 %s ms, p50 %s ms, max %s ms, %d timeouts", fmtMs(p.All.P99), fmtMs(p.All.P50), fmtMs(p.All.Max), p.Timeouts),
			p.All.P99 <= 50 && p.Timeouts == 0 && p.Edges >= 16)
	}
	if p := r.PropagationGossip; p != nil && p.GossipOnlyPerEdge != nil {
		add(fmt.Sprintf("propagation p99 ≤ 2 s via gossip alone (run: %d edges, NATS cut for %d)", p.Edges, p.GossipOnlyEdges),
			fmt.Sprintf("last edge p99 %s ms; each gossip-only edge p50 %s ms, p99 %s ms; %d timeouts", fmtMs(p.All.P99),
				fmtMs(p.GossipOnlyPerEdge.P50), fmtMs(p.GossipOnlyPerEdge.P99), p.Timeouts),
			p.All.P99 <= 2000 && p.Timeouts == 0)
	} else {
		out = append(out, suiteTarget{"propagation p99 ≤ 2 s via gossip alone", "not run (fewer than 2 edges)", "not measured"})
	}
	for _, l := range r.Limits {
		add(fmt.Sprintf("limits %s: admitted in any 60 s ≤ L·1.05 + bound (%d edges, %s, L %d, bound %.0f)", l.Name, l.Edges, l.Unit, l.Limit, l.Bound),
			fmt.Sprintf("%d of %d offered: %.2fx the limit, overshoot %.1f%%", l.WindowMax, l.OfferedUnits, l.AdmittedRatio, 100*l.Overshoot), l.Met)
	}
	if r.Compare != nil {
		if kt, dt := r.Compare.TTFB(bench.TargetKeymesh), r.Compare.TTFB(bench.TargetDirect); kt.Count > 0 && dt.Count > 0 {
			d := kt.P50 - dt.P50
			add("stream TTFB p50 through the edge ≤ direct + 1 ms", fmt.Sprintf("%s ms vs %s ms direct (+%.3f ms)",
				fmtMs(kt.P50), fmtMs(dt.P50), d), d <= 1)
		}
	}
	return out
}

func fmtMs(v float64) string { return fmt.Sprintf("%.3f", v) }

func verdictWord(ok bool) string {
	if ok {
		return "met"
	}
	return "MISSED"
}

func targetsMarkdown(ts []suiteTarget) string {
	var b strings.Builder
	b.WriteString("| target | measured | verdict |\n|---|---|---|\n")
	for _, t := range ts {
		v := t.Verdict
		if v != "met" {
			v = "**" + v + "**"
		}
		fmt.Fprintf(&b, "| %s | %s | %s |\n", t.Target, t.Measured, v)
	}
	return b.String()
}

func suiteMarkdown(r *suiteResult) string {
	var b strings.Builder
	fmt.Fprintf(&b, "# keymesh bench — %s\n\n", r.Date)
	fmt.Fprintf(&b, "Machine: %s.  \nSuite time: %.0f s (`make bench`, i.e. `bench suite`). Everything ran on this one machine on loopback. "+
		"Load, flood and compare: %s; nginx as a child process. Propagation: origin and edges in the bench process.\n\n",
		r.Machine.Markdown(), r.Seconds, r.Stack)
	b.WriteString("## Targets\n\n" + targetsMarkdown(r.Targets))
	b.WriteString("\n## Load (one edge; mix valid 90%, unknown 4%, malformed 4%, revoked 2% — unlinked half-way; 10% streamed; X-API-Key and Bearer)\n\n")
	b.WriteString(bench.LoadMarkdown(r.Load, "load"))
	b.WriteString("\n## Flood (refused keys at full speed)\n\n")
	b.WriteString(bench.FloodMarkdown(r.Flood))
	b.WriteString("\n## Compare, fair (issue 17: fast backend, proxy and backend on one core, wrk on the other; `bench compare`)\n\n")
	if r.FairNote != "" {
		b.WriteString("**" + r.FairNote + "**\n\n")
	}
	if r.Fair != nil {
		b.WriteString(bench.FairMarkdown(r.Fair))
		b.WriteString("\n![throughput](CHART:fair-throughput)\n")
	}
	b.WriteString("\n## Compare, mixed load (same closed-loop load with streams against the mock upstream, one target after another, nothing pinned; `bench compare --mixed`)\n\n")
	if r.CompareNote != "" {
		b.WriteString("**" + r.CompareNote + "**\n\n")
	}
	if r.Compare != nil {
		b.WriteString(bench.CompareMarkdown(r.Compare, "compare"))
		b.WriteString("\n![throughput](CHART:throughput)\n")
	}
	b.WriteString("\n## Propagation (unlink / relink, NATS path)\n\n")
	b.WriteString(bench.PropagationMarkdown(r.Propagation, "propagation"))
	if r.PropagationGossip != nil {
		b.WriteString("\n## Propagation by gossip alone (unlink / relink, `--cut-nats`: NATS severed for three quarters of the edges)\n\n")
		b.WriteString(bench.PropagationMarkdown(r.PropagationGossip, "propagation-gossip"))
	}
	if len(r.Limits) > 0 {
		b.WriteString("\n## Limits (`bench limits`: one key offered 4× its limit over several edges)\n\n")
		b.WriteString(limitsMarkdown(r.Limits, "limits"))
	}
	return b.String()
}
