package bench

import (
	"context"
	"errors"
	"fmt"
	"io"
	"slices"
	"strings"
	"time"
)

// The fair comparison (issue 17): every proxy in front of a backend that
// is several times faster than any of them, the backend and the proxy under
// test on one core (Go processes with GOMAXPROCS=1, nginx with one worker),
// the load generator on another, the targets taking turns round after
// round, and per target the medians of the rounds: throughput, p50/p99 and
// the CPU the proxy spent per request, read from /proc. Then an open-loop
// run at fractions of nginx's saturation rate, for the latency a proxy
// adds at a load a deployment actually runs at.

// TargetNginxLog is nginx with a per-request access log, as Debian ships
// it and operators run it.
const TargetNginxLog = "nginx + access log"

// FairTarget is one system the fair comparison measures.
type FairTarget struct {
	Name string
	URL  string // base URL
	// PIDs are the processes whose CPU is the target's (their children
	// too: nginx's workers under its master); none for the backend itself.
	PIDs []int
}

// FairConfig describes a fair comparison.
type FairConfig struct {
	// Targets take turns in this order every round; by convention the
	// backend itself (TargetDirect) first.
	Targets []FairTarget
	// BackendPID is the backend's process, whose CPU per request is
	// reported for every target (0: not reported).
	BackendPID int
	// Key is sent as X-API-Key by every request (the backend ignores it).
	Key string
	// Rounds per target (default 3), each Duration long (default 5s) after
	// one Warmup per target (default 1s; negative: none).
	Rounds   int
	Duration time.Duration
	Warmup   time.Duration
	// Connections of the closed-loop generator (default 64); the open-loop
	// runs have at most 4× as many in flight.
	Connections int
	// Wrk is the wrk binary (FindWrk); empty runs the bench's own
	// closed-loop generator instead, in this process.
	Wrk string
	Pin Pinning
	// OpenLoop are the fractions of nginx's saturation throughput (else
	// the bare proxy's) the open-loop runs are at, each against
	// OpenLoopTargets (default direct, keymesh, nginx) for
	// OpenLoopDuration (default Duration).
	OpenLoop         []float64
	OpenLoopTargets  []string
	OpenLoopDuration time.Duration
	// Backend describes the backend for the report.
	Backend string
	// Progress, if set, gets one line per run.
	Progress io.Writer
}

// FairRound is one target's turn in one round.
type FairRound struct {
	GenResult
	// CPUPerRequest is the target's processes' CPU (utime+stime) over the
	// turn divided by its requests, in µs, UserCPUPerRequest the utime
	// part of it; BackendCPUPerRequest the backend's.
	CPUPerRequest        float64 `json:"cpu_us_per_request"`
	UserCPUPerRequest    float64 `json:"user_cpu_us_per_request"`
	BackendCPUPerRequest float64 `json:"backend_cpu_us_per_request"`
}

// FairRun is one target over all rounds: every figure is the median of
// the rounds' (each figure on its own), Requests and Errors their sums.
type FairRun struct {
	Name                 string      `json:"name"`
	Rounds               []FairRound `json:"rounds"`
	Requests             int64       `json:"requests"`
	Errors               int64       `json:"errors"`
	RPS                  float64     `json:"rps"`
	P50                  float64     `json:"p50_ms"`
	P90                  float64     `json:"p90_ms"`
	P99                  float64     `json:"p99_ms"`
	P999                 float64     `json:"p99_9_ms"`
	CPUPerRequest        float64     `json:"cpu_us_per_request"`
	UserCPUPerRequest    float64     `json:"user_cpu_us_per_request"`
	BackendCPUPerRequest float64     `json:"backend_cpu_us_per_request"`
	measured             bool        // the target has processes of its own
}

// OpenLoopRun is one target at one open-loop rate.
type OpenLoopRun struct {
	Name     string  `json:"name"`
	Achieved float64 `json:"achieved_rps"`
	P50      float64 `json:"p50_ms"`
	P99      float64 `json:"p99_ms"`
	// AddedP50 and AddedP99 are over the backend alone at the same rate.
	AddedP50 float64 `json:"added_p50_ms"`
	AddedP99 float64 `json:"added_p99_ms"`
	Missed   int64   `json:"missed"`
	Errors   int64   `json:"errors"`
}

// OpenLoopStep is every open-loop target at one rate.
type OpenLoopStep struct {
	Fraction float64       `json:"fraction"`
	Rate     float64       `json:"rate"`
	Runs     []OpenLoopRun `json:"runs"`
}

// FairResult is the outcome of RunFair.
type FairResult struct {
	Generator   string     `json:"generator"`
	Backend     string     `json:"backend"`
	Pinning     Pinning    `json:"pinning"`
	Rounds      int        `json:"rounds"`
	RoundSecs   float64    `json:"round_seconds"`
	Connections int        `json:"connections"`
	Runs        []*FairRun `json:"runs"`
	OpenBase    string     `json:"open_loop_base,omitempty"` // the target whose saturation the rates are fractions of
	// OpenConcurrency is the most requests an open-loop run had in flight.
	OpenConcurrency int            `json:"open_loop_concurrency,omitempty"`
	OpenLoop        []OpenLoopStep `json:"open_loop,omitempty"`
	// Notes are said in the report as they are (the caller's too).
	Notes []string `json:"notes,omitempty"`
}

// Find returns the run of the target named name, or nil.
func (r *FairResult) Find(name string) *FairRun {
	for _, x := range r.Runs {
		if x.Name == name {
			return x
		}
	}
	return nil
}

func (c *FairConfig) fill() error {
	if len(c.Targets) == 0 {
		return errors.New("fair compare: no targets")
	}
	if c.Rounds <= 0 {
		c.Rounds = 3
	}
	if c.Duration <= 0 {
		c.Duration = 5 * time.Second
	}
	if c.Warmup == 0 {
		c.Warmup = time.Second
	}
	if c.Connections <= 0 {
		c.Connections = 64
	}
	if c.OpenLoopDuration <= 0 {
		c.OpenLoopDuration = c.Duration
	}
	if c.OpenLoopTargets == nil {
		c.OpenLoopTargets = []string{TargetDirect, TargetKeymesh, TargetNginx}
	}
	for _, f := range c.OpenLoop {
		if f <= 0 || f > 1 {
			return fmt.Errorf("fair compare: open-loop fraction %g: want (0,1]", f)
		}
	}
	return nil
}

// generate runs the closed-loop generator against url for d.
func (c *FairConfig) generate(ctx context.Context, url string, d time.Duration) (*GenResult, error) {
	url = strings.TrimRight(url, "/") + "/v1/chat/completions"
	if c.Wrk != "" {
		return RunWrk(ctx, WrkConfig{Binary: c.Wrk, CPU: c.Pin.Generator, URL: url, Key: c.Key, Connections: c.Connections, Duration: d})
	}
	// The bench's own generator runs in this process, which is on the
	// generator's core when pinned (PinSelf).
	r, err := RunLoad(ctx, LoadConfig{URL: strings.TrimSuffix(url, "/v1/chat/completions"), Duration: d, Concurrency: c.Connections, ValidKeys: []string{c.Key}})
	if err != nil {
		return nil, err
	}
	g := &GenResult{Requests: r.Requests, Seconds: r.Elapsed, Errors: r.Requests - r.Status["200"], RPS: r.Throughput,
		P50: r.Unary.P50, P90: r.Unary.P90, P99: r.Unary.P99, P999: r.Unary.P999, Max: r.Unary.Max}
	return g, nil
}

// generatorName describes the closed-loop generator.
func (c *FairConfig) generatorName() string {
	if c.Wrk != "" {
		return fmt.Sprintf("wrk, 1 thread, %d connections, POST chat completion with X-API-Key", c.Connections)
	}
	return fmt.Sprintf("the bench's own closed-loop generator (wrk not found), %d connections, POST chat completion with X-API-Key", c.Connections)
}

func (c *FairConfig) progress(format string, a ...any) {
	if c.Progress != nil {
		fmt.Fprintf(c.Progress, format+"\n", a...)
	}
}

// RunFair runs the fair comparison: a warm-up per target, Rounds rounds in
// turns, then the open-loop steps.
func RunFair(ctx context.Context, cfg FairConfig) (*FairResult, error) {
	if err := cfg.fill(); err != nil {
		return nil, err
	}
	res := &FairResult{Generator: cfg.generatorName(), Backend: cfg.Backend, Pinning: cfg.Pin, Rounds: cfg.Rounds,
		RoundSecs: cfg.Duration.Seconds(), Connections: cfg.Connections}
	if cfg.Wrk != "" {
		// wrk counts whole seconds.
		res.RoundSecs = max(float64(int(cfg.Duration.Seconds()+0.999)), 1)
	}
	if cfg.Warmup > 0 {
		for _, t := range cfg.Targets {
			if _, err := cfg.generate(ctx, t.URL, cfg.Warmup); err != nil {
				return nil, fmt.Errorf("%s warm-up: %w", t.Name, err)
			}
		}
	}
	runs := make([]*FairRun, len(cfg.Targets))
	for i, t := range cfg.Targets {
		runs[i] = &FairRun{Name: t.Name, measured: len(t.PIDs) > 0}
	}
	for round := range cfg.Rounds {
		for i, t := range cfg.Targets {
			c0, b0 := ProcCPUTimes(t.PIDs...), ProcCPU(cfg.BackendPID)
			g, err := cfg.generate(ctx, t.URL, cfg.Duration)
			if err != nil {
				return nil, fmt.Errorf("%s round %d: %w", t.Name, round+1, err)
			}
			c1, b1 := ProcCPUTimes(t.PIDs...), ProcCPU(cfg.BackendPID)
			if g.Requests == 0 {
				return nil, fmt.Errorf("%s round %d: no request answered", t.Name, round+1)
			}
			fr := FairRound{GenResult: *g}
			fr.CPUPerRequest = (c1.Total() - c0.Total()) * 1e6 / float64(g.Requests)
			fr.UserCPUPerRequest = (c1.User - c0.User) * 1e6 / float64(g.Requests)
			fr.BackendCPUPerRequest = (b1 - b0) * 1e6 / float64(g.Requests)
			runs[i].Rounds = append(runs[i].Rounds, fr)
			cfg.progress("%-20s round %d/%d  %8.0f rps  p50 %6.3f ms  p99 %7.3f ms  %6.1f µs CPU/req  %d errors",
				t.Name, round+1, cfg.Rounds, g.RPS, g.P50, g.P99, fr.CPUPerRequest, g.Errors)
		}
	}
	for _, r := range runs {
		r.summarize()
	}
	res.Runs = runs
	for _, r := range runs {
		if r.Errors > 0 {
			res.Notes = append(res.Notes, fmt.Sprintf("%s: %d of %d requests failed", r.Name, r.Errors, r.Requests))
		}
	}
	if len(cfg.OpenLoop) > 0 {
		if err := runOpenLoop(ctx, &cfg, res); err != nil {
			return nil, err
		}
	}
	return res, ctx.Err()
}

// summarize takes the medians of the rounds.
func (r *FairRun) summarize() {
	pick := func(f func(FairRound) float64) float64 {
		v := make([]float64, len(r.Rounds))
		for i, x := range r.Rounds {
			v[i] = f(x)
		}
		return median(v)
	}
	r.Requests, r.Errors = 0, 0
	for _, x := range r.Rounds {
		r.Requests += x.Requests
		r.Errors += x.Errors
	}
	r.RPS = pick(func(x FairRound) float64 { return x.RPS })
	r.P50 = pick(func(x FairRound) float64 { return x.P50 })
	r.P90 = pick(func(x FairRound) float64 { return x.P90 })
	r.P99 = pick(func(x FairRound) float64 { return x.P99 })
	r.P999 = pick(func(x FairRound) float64 { return x.P999 })
	r.CPUPerRequest = pick(func(x FairRound) float64 { return x.CPUPerRequest })
	r.UserCPUPerRequest = pick(func(x FairRound) float64 { return x.UserCPUPerRequest })
	r.BackendCPUPerRequest = pick(func(x FairRound) float64 { return x.BackendCPUPerRequest })
}

func median(v []float64) float64 {
	if len(v) == 0 {
		return 0
	}
	s := slices.Clone(v)
	slices.Sort(s)
	if n := len(s); n%2 == 1 {
		return s[n/2]
	} else {
		return (s[n/2-1] + s[n/2]) / 2
	}
}

// openConcurrency is the most requests an open-loop run has in flight.
func (c *FairConfig) openConcurrency() int { return 4 * c.Connections }

// runOpenLoop runs the open-loop steps against the open-loop targets at
// fractions of nginx's median throughput (the bare proxy's without nginx).
func runOpenLoop(ctx context.Context, cfg *FairConfig, res *FairResult) error {
	base := res.Find(TargetNginx)
	if base == nil {
		base = res.Find(TargetBare)
	}
	if base == nil || base.RPS <= 0 {
		res.Notes = append(res.Notes, "open loop not run: neither nginx nor the bare proxy was measured")
		return nil
	}
	res.OpenBase, res.OpenConcurrency = base.Name, cfg.openConcurrency()
	url := map[string]string{}
	for _, t := range cfg.Targets {
		url[t.Name] = t.URL
	}
	for _, f := range cfg.OpenLoop {
		step := OpenLoopStep{Fraction: f, Rate: f * base.RPS}
		var direct *OpenLoopRun
		for _, name := range cfg.OpenLoopTargets {
			u, ok := url[name]
			if !ok {
				continue
			}
			// Room for stalls: a generator out of workers would miss its
			// schedule and hide the very tail it is there to measure.
			r, err := RunLoad(ctx, LoadConfig{Name: name, URL: u, Duration: cfg.OpenLoopDuration, Rate: step.Rate,
				Concurrency: cfg.openConcurrency(), ValidKeys: []string{cfg.Key}})
			if err != nil {
				return fmt.Errorf("open loop %s at %.0f rps: %w", name, step.Rate, err)
			}
			run := OpenLoopRun{Name: name, Achieved: r.Throughput, P50: r.Unary.P50, P99: r.Unary.P99, Missed: r.Missed,
				Errors: r.Requests - r.Status["200"]}
			if name == TargetDirect {
				direct = &run
			}
			if direct != nil {
				run.AddedP50, run.AddedP99 = run.P50-direct.P50, run.P99-direct.P99
			}
			cfg.progress("open loop %3.0f%% %-14s asked %8.0f rps  got %8.0f  p50 %6.3f ms  p99 %7.3f ms  missed %d",
				f*100, name, step.Rate, r.Throughput, run.P50, run.P99, r.Missed)
			step.Runs = append(step.Runs, run)
			if ctx.Err() != nil {
				return ctx.Err()
			}
		}
		res.OpenLoop = append(res.OpenLoop, step)
	}
	return nil
}

// HeldRate reports whether the open-loop generator held every asked rate
// (within 3%, none missed) against the backend directly: a proxy that
// cannot (a rate above its saturation) is the proxy's miss, not the
// generator's, and shows in its row.
func (r *FairResult) HeldRate() bool {
	for _, s := range r.OpenLoop {
		for _, x := range s.Runs {
			if x.Name == TargetDirect && (x.Missed > 0 || x.Achieved < 0.97*s.Rate) {
				return false
			}
		}
	}
	return true
}

// FairVerdict is one of issue 17's targets as measured.
type FairVerdict struct {
	Target   string `json:"target"`
	Measured string `json:"measured"`
	Met      bool   `json:"met"`
}

// Verdicts are issue 17's targets (edge vs nginx and vs the bare proxy),
// plus the checks that make the run fair (the backend is not the limit,
// the open-loop generator held its rates); a target whose runs are missing
// is left out.
func (r *FairResult) Verdicts() []FairVerdict {
	var out []FairVerdict
	add := func(t, m string, ok bool) { out = append(out, FairVerdict{t, m, ok}) }
	direct, km, ng, bare := r.Find(TargetDirect), r.Find(TargetKeymesh), r.Find(TargetNginx), r.Find(TargetBare)
	if km != nil && ng != nil && ng.RPS > 0 && ng.P99 > 0 {
		t := km.RPS / ng.RPS
		add("edge throughput ≥ 1.0× nginx (fair compare)", fmt.Sprintf("%.2f× (%.0f vs %.0f rps)", t, km.RPS, ng.RPS), t >= 1)
		l := km.P99 / ng.P99
		add("edge p99 ≤ 1.1× nginx (fair compare)", fmt.Sprintf("%.2f× (%s vs %s ms)", l, ms(km.P99), ms(ng.P99)), l <= 1.1)
	}
	if km != nil && bare != nil && bare.RPS > 0 {
		t := km.RPS / bare.RPS
		add("edge throughput ≥ 0.9× the bare fasthttp proxy (fair compare)", fmt.Sprintf("%.2f× (%.0f vs %.0f rps; CPU %.1f vs %.1f µs/request, of it user %.1f vs %.1f)",
			t, km.RPS, bare.RPS, km.CPUPerRequest, bare.CPUPerRequest, km.UserCPUPerRequest, bare.UserCPUPerRequest), t >= 0.9)
	}
	if direct != nil {
		fastest := 0.0
		for _, x := range r.Runs {
			if x.Name != TargetDirect {
				fastest = max(fastest, x.RPS)
			}
		}
		if fastest > 0 {
			t := direct.RPS / fastest
			add("the backend is not the limit: direct ≥ 2× the fastest proxy (fair compare)",
				fmt.Sprintf("%.2f× (%.0f vs %.0f rps; backend %.1f µs CPU/request)", t, direct.RPS, fastest, direct.BackendCPUPerRequest), t >= 2)
		}
		if !strings.HasPrefix(r.Generator, "wrk") {
			add("the bench's own generator reaches ≥ 70k rps direct", fmt.Sprintf("%.0f rps", direct.RPS), direct.RPS >= 70000)
		}
	}
	if len(r.OpenLoop) > 0 {
		worst := 1.0
		var missed int64
		for _, s := range r.OpenLoop {
			for _, x := range s.Runs {
				if x.Name == TargetDirect {
					worst = min(worst, x.Achieved/s.Rate)
					missed += x.Missed
				}
			}
		}
		add("the open-loop generator held every rate against the backend (≥ 97%, none missed)",
			fmt.Sprintf("worst %.1f%% of the asked rate, %d missed", worst*100, missed), r.HeldRate())
	}
	return out
}

// Floors says what the proxies under the edge reach in the same run — the
// raw Go proxy (the floor of any Go proxy) and the bare fasthttp one —
// against nginx, and what the edge's CPU per request is above each: how
// much of a target is the edge's own work and how much its language's and
// its HTTP library's. "" when the runs to say it are missing.
func (r *FairResult) Floors() string {
	km, ng := r.Find(TargetKeymesh), r.Find(TargetNginx)
	var parts []string
	for _, name := range []string{TargetRaw, TargetBare} {
		f := r.Find(name)
		if f == nil || f.RPS <= 0 {
			continue
		}
		p := fmt.Sprintf("%s %.0f rps, CPU %.1f µs/request (user %.1f)", name, f.RPS, f.CPUPerRequest, f.UserCPUPerRequest)
		if ng != nil && ng.RPS > 0 {
			p += fmt.Sprintf(", %.2f× nginx", f.RPS/ng.RPS)
		}
		if km != nil && km.RPS > 0 {
			p += fmt.Sprintf("; the edge %.2f× its throughput, +%.1f µs CPU/request (user +%.1f)", km.RPS/f.RPS,
				km.CPUPerRequest-f.CPUPerRequest, km.UserCPUPerRequest-f.UserCPUPerRequest)
		}
		parts = append(parts, p)
	}
	if len(parts) == 0 {
		return ""
	}
	return "Floors (" + TargetRaw + ": bytes relayed by their framing, no parsing, no pooling — the least a Go proxy costs on this layout): " +
		strings.Join(parts, "; ") + "."
}

// FairMarkdown renders the fair comparison: how it ran, the table of
// medians, the verdicts and the open-loop table.
func FairMarkdown(r *FairResult) string {
	var b strings.Builder
	fmt.Fprintf(&b, "Load generator: %s. Backend: %s. Pinning: %s. Go proxies run with GOMAXPROCS=1, nginx with `worker_processes 1`. "+
		"The targets took turns, %d rounds of %.0f s each after a warm-up; every figure is the median of its rounds. "+
		"CPU per request is utime+stime from /proc/<pid>/stat over a turn (all threads; nginx's master and worker) divided by the requests answered; "+
		"the user column is its utime part, the proxy's own work: on this layout a proxy's kernel time per request grows with its user time "+
		"(the generator's core idles longer between answers, and each wake-up of it costs more), so compare proxies by it too.\n\n",
		r.Generator, r.Backend, r.Pinning.Note, r.Rounds, r.RoundSecs)
	for _, n := range r.Notes {
		b.WriteString("- " + n + "\n")
	}
	if len(r.Notes) > 0 {
		b.WriteString("\n")
	}
	ng := r.Find(TargetNginx)
	b.WriteString("| target | rps | rounds (rps) | p50 ms | p90 ms | p99 ms | p99.9 ms | errors | proxy CPU µs/req | of it user | backend CPU µs/req | rps vs nginx | p99 vs nginx |\n")
	b.WriteString("|---|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|\n")
	for _, x := range r.Runs {
		rounds := make([]string, len(x.Rounds))
		for i, rr := range x.Rounds {
			rounds[i] = fmt.Sprintf("%.0f", rr.RPS)
		}
		cpu, user := "-", "-"
		if x.measured || x.CPUPerRequest > 0 {
			cpu, user = f1(x.CPUPerRequest), f1(x.UserCPUPerRequest)
		}
		rn, pn := "-", "-"
		if ng != nil {
			rn, pn = ratio(x.RPS, ng.RPS), ratio(x.P99, ng.P99)
		}
		fmt.Fprintf(&b, "| %s | %.0f | %s | %s | %s | %s | %s | %d | %s | %s | %s | %s | %s |\n", x.Name, x.RPS, strings.Join(rounds, " "),
			ms(x.P50), ms(x.P90), ms(x.P99), ms(x.P999), x.Errors, cpu, user, f1(x.BackendCPUPerRequest), rn, pn)
	}
	b.WriteString("\n")
	if f := r.Floors(); f != "" {
		b.WriteString(f + "\n\n")
	}
	for _, v := range r.Verdicts() {
		fmt.Fprintf(&b, "- %s: %s — %s\n", v.Target, v.Measured, verdict(v.Met))
	}
	if len(r.OpenLoop) > 0 {
		fmt.Fprintf(&b, "\nOpen loop (the bench's own generator, latency counted from when each request was due, at most %d in flight) "+
			"at fractions of %s's saturation throughput above; added latency is over the backend alone at the same rate:\n\n", r.OpenConcurrency, r.OpenBase)
		b.WriteString("A rate above a target's own saturation (the share of its closed-loop median shown) queues: its latency is then queueing, and its missed requests the proxy's, not the generator's.\n\n")
		b.WriteString("| load | target | rate asked | of its saturation | achieved rps | p50 ms | p99 ms | added p50 ms | added p99 ms | missed | errors |\n")
		b.WriteString("|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|\n")
		for _, s := range r.OpenLoop {
			for _, x := range s.Runs {
				added50, added99 := "-", "-"
				if x.Name != TargetDirect {
					added50, added99 = fmt.Sprintf("%+.3f", x.AddedP50), fmt.Sprintf("%+.3f", x.AddedP99)
				}
				sat := "-"
				if c := r.Find(x.Name); c != nil && c.RPS > 0 {
					sat = fmt.Sprintf("%.0f%%", 100*s.Rate/c.RPS)
					if s.Rate > c.RPS {
						sat = "**" + sat + "**"
					}
				}
				fmt.Fprintf(&b, "| %.0f%% | %s | %.0f | %s | %.0f | %s | %s | %s | %s | %d | %d |\n", s.Fraction*100, x.Name, s.Rate, sat, x.Achieved,
					ms(x.P50), ms(x.P99), added50, added99, x.Missed, x.Errors)
			}
		}
	}
	return b.String()
}
