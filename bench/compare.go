package bench

import (
	"context"
	"fmt"
	"strings"
	"time"
)

// Names of the targets of a comparison.
const (
	TargetDirect  = "direct"
	TargetKeymesh = "keymesh"
	TargetNginx   = "nginx"
	// TargetBare is BareProxy: the fasthttp floor under the edge.
	TargetBare = "bare fasthttp"
	// TargetRaw is RawProxy: the floor under any Go proxy.
	TargetRaw = "raw Go"
)

// CompareTarget is one system a comparison sends the same load to.
type CompareTarget struct {
	Name string
	URL  string
}

// CompareConfig describes a comparison: Load (its Name and URL replaced)
// against each target in turn, each after an unmeasured warm-up.
type CompareConfig struct {
	Load    LoadConfig
	Targets []CompareTarget
	Warmup  time.Duration
	// Rounds splits Load.Duration into that many turns, the targets
	// taking turns within each (a b c a b c …), so that a slow spell of a
	// noisy machine falls on every target alike; each target's rounds are
	// merged (MergeLoad). Default 1.
	Rounds int
	// StreamProbe, if positive, adds a streams-only run per target at this
	// concurrency (for StreamProbeDuration, default a round's length):
	// time to first byte measured off a saturated machine, so that it
	// shows what a hop adds to a stream, not how long requests queue.
	StreamProbe         int
	StreamProbeDuration time.Duration
}

// CompareResult holds one load result per target, in order.
type CompareResult struct {
	Runs   []*LoadResult `json:"runs"`
	Rounds int           `json:"rounds"`
	// Streams holds the stream probe of each target (CompareConfig.
	// StreamProbe), in the order of Runs.
	Streams []*LoadResult `json:"streams,omitempty"`
}

// TTFB is the time to first byte of target's streams: from its stream
// probe when there is one, else from its streamed share of the load.
func (c *CompareResult) TTFB(name string) Percentiles {
	for _, r := range c.Streams {
		if r.Name == name {
			return r.StreamTTFB
		}
	}
	if r := c.Find(name); r != nil {
		return r.StreamTTFB
	}
	return Percentiles{}
}

// Find returns the run of the target named name, or nil.
func (c *CompareResult) Find(name string) *LoadResult {
	for _, r := range c.Runs {
		if r.Name == name {
			return r
		}
	}
	return nil
}

// RunCompare runs the load against every target, taking turns.
func RunCompare(ctx context.Context, cfg CompareConfig) (*CompareResult, error) {
	rounds := max(cfg.Rounds, 1)
	runs := make([][]*LoadResult, len(cfg.Targets))
	for _, t := range cfg.Targets {
		if cfg.Warmup <= 0 {
			break // no warm-up asked for
		}
		wc := cfg.Load
		wc.Name, wc.URL, wc.Duration, wc.Progress = t.Name+" warm-up", t.URL, cfg.Warmup, nil
		if _, err := RunLoad(ctx, wc); err != nil {
			return nil, fmt.Errorf("%s warm-up: %w", t.Name, err)
		}
	}
	for round := range rounds {
		for i, t := range cfg.Targets {
			lc := cfg.Load
			lc.Name, lc.URL = t.Name, t.URL
			lc.Duration = max(cfg.Load.Duration/time.Duration(rounds), 100*time.Millisecond)
			lc.Seed = cfg.Load.Seed + uint64(round)
			r, err := RunLoad(ctx, lc)
			if err != nil {
				return nil, fmt.Errorf("%s: %w", t.Name, err)
			}
			runs[i] = append(runs[i], r)
			if ctx.Err() != nil {
				break
			}
		}
		if ctx.Err() != nil {
			break
		}
	}
	out := &CompareResult{Rounds: rounds}
	for _, rs := range runs {
		if m := MergeLoad(rs); m != nil {
			out.Runs = append(out.Runs, m)
		}
	}
	if cfg.StreamProbe > 0 && ctx.Err() == nil {
		for _, t := range cfg.Targets {
			sc := cfg.Load
			sc.Name, sc.URL, sc.Concurrency, sc.StreamShare = t.Name, t.URL, cfg.StreamProbe, 1
			sc.Mix, sc.Rate, sc.Revoke = KeyMix{Valid: 1}, 0, nil
			sc.Duration = cfg.StreamProbeDuration
			if sc.Duration <= 0 {
				sc.Duration = max(cfg.Load.Duration/time.Duration(rounds), 100*time.Millisecond)
			}
			r, err := RunLoad(ctx, sc)
			if err != nil {
				return nil, fmt.Errorf("%s stream probe: %w", t.Name, err)
			}
			out.Streams = append(out.Streams, r)
		}
	}
	return out, ctx.Err()
}

func ratio(a, b float64) string {
	if b == 0 {
		return "-"
	}
	return fmt.Sprintf("%.2fx", a/b)
}

// CompareMarkdown renders the comparison table, the targets of the issue
// with a plain met / MISSED verdict, and the latency chart (CHART:chart).
func CompareMarkdown(c *CompareResult, chart string) string {
	var b strings.Builder
	direct, nginx, km := c.Find(TargetDirect), c.Find(TargetNginx), c.Find(TargetKeymesh)
	b.WriteString("Latencies are of the non-streamed requests (a stream lasts as long as the upstream paces it); streams are compared by time to first byte.")
	if c.Rounds > 1 {
		fmt.Fprintf(&b, " The targets took turns, %d rounds each, merged; the rounds column shows each round's throughput.", c.Rounds)
	}
	b.WriteString("\n\n")
	b.WriteString("| target | requests | rps | rounds (rps) | errors | p50 ms | p90 ms | p99 ms | p99.9 ms | stream TTFB p50 ms | rps vs direct | rps vs nginx | p99 vs direct | p99 vs nginx |\n")
	b.WriteString("|---|---:|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|\n")
	for _, r := range c.Runs {
		ttfb := "-"
		if t := c.TTFB(r.Name); t.Count > 0 {
			ttfb = ms(t.P50)
		}
		rd, rn, pd, pn := "-", "-", "-", "-"
		if direct != nil {
			rd, pd = ratio(r.Throughput, direct.Throughput), ratio(r.Unary.P99, direct.Unary.P99)
		}
		if nginx != nil {
			rn, pn = ratio(r.Throughput, nginx.Throughput), ratio(r.Unary.P99, nginx.Unary.P99)
		}
		rounds := make([]string, len(r.RoundThroughput))
		for i, t := range r.RoundThroughput {
			rounds[i] = fmt.Sprintf("%.0f", t)
		}
		fmt.Fprintf(&b, "| %s | %d | %s | %s | %d | %s | %s | %s | %s | %s | %s | %s | %s | %s |\n", r.Name, r.Requests, f1(r.Throughput), strings.Join(rounds, " "), r.Errors,
			ms(r.Unary.P50), ms(r.Unary.P90), ms(r.Unary.P99), ms(r.Unary.P999), ttfb, rd, rn, pd, pn)
	}
	b.WriteString("\n")
	if km != nil && nginx != nil && nginx.Throughput > 0 && nginx.Unary.P99 > 0 {
		tr, lr := km.Throughput/nginx.Throughput, km.Unary.P99/nginx.Unary.P99
		fmt.Fprintf(&b, "- keymesh throughput %.2fx nginx (target ≥ 1.0x): %s\n", tr, verdict(tr >= 1.0))
		fmt.Fprintf(&b, "- keymesh p99 %.2fx nginx (target ≤ 1.1x): %s\n", lr, verdict(lr <= 1.1))
	}
	if kt, dt := c.TTFB(TargetKeymesh), c.TTFB(TargetDirect); kt.Count > 0 && dt.Count > 0 {
		d := kt.P50 - dt.P50
		fmt.Fprintf(&b, "- streaming TTFB p50 through keymesh %s ms vs direct %s ms (+%.3f ms; target ≤ +1 ms): %s\n",
			ms(kt.P50), ms(dt.P50), d, verdict(d <= 1))
	}
	if len(c.Streams) > 0 {
		fmt.Fprintf(&b, "- stream TTFB is from a streams-only run per target at concurrency %d, off the saturated load: what a hop adds, not queueing\n", c.Streams[0].Concurrency)
	}
	if chart != "" {
		fmt.Fprintf(&b, "\n![latency by percentile](CHART:%s)\n", chart)
	}
	return b.String()
}

// ThroughputChart draws the targets' throughput as bars.
func ThroughputChart(c *CompareResult) Chart {
	ch := Chart{Title: "Throughput", XLabel: "target", YLabel: "requests/s", Bars: true}
	s := Series{Name: "rps"}
	for _, r := range c.Runs {
		ch.X = append(ch.X, r.Name)
		s.Y = append(s.Y, r.Throughput)
	}
	ch.Series = []Series{s}
	return ch
}
