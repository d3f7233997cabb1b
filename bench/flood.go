package bench

import (
	"bufio"
	"context"
	"fmt"
	"io"
	"net/http"
	"strconv"
	"strings"
	"time"
)

// LookupsMetric is the edge counter of lookups sent to the origin.
const LookupsMetric = "keymesh_edge_lookups_total"

// ScrapeCounter reads one unlabelled counter or gauge from a Prometheus
// text endpoint (an edge's admin /metrics).
func ScrapeCounter(ctx context.Context, metricsURL, name string) (float64, error) {
	ctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, metricsURL, nil)
	if err != nil {
		return 0, err
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return 0, err
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return 0, fmt.Errorf("%s answered %d", metricsURL, resp.StatusCode)
	}
	return parseCounter(resp.Body, name)
}

func parseCounter(r io.Reader, name string) (float64, error) {
	sc := bufio.NewScanner(r)
	sc.Buffer(make([]byte, 64<<10), 1<<20)
	for sc.Scan() {
		line := sc.Text()
		rest, ok := strings.CutPrefix(line, name)
		if !ok || (rest != "" && rest[0] != ' ') {
			continue
		}
		fields := strings.Fields(rest)
		if len(fields) == 0 {
			continue
		}
		return strconv.ParseFloat(fields[0], 64)
	}
	if err := sc.Err(); err != nil {
		return 0, err
	}
	return 0, fmt.Errorf("metric %s not found", name)
}

// FloodConfig describes a flood: refused keys at full speed against one
// edge, each class on its own, counting the origin lookups they caused.
type FloodConfig struct {
	// URL is the edge; MetricsURL its admin /metrics (lookups are not
	// counted when empty).
	URL, MetricsURL string
	Path, Host      string
	// Duration of each phase; Concurrency its workers.
	Duration    time.Duration
	Concurrency int
	// UnknownKeys is the pool of distinct unknown keys (default 1000).
	UnknownKeys int
	// ValidKeys, if set, adds a phase of valid proxied requests to compare
	// refusal rates with.
	ValidKeys []string
	Progress  io.Writer
}

// FloodPhase is one class of a flood.
type FloodPhase struct {
	Class    string  `json:"class"`
	Requests int64   `json:"requests"`
	Refused  int64   `json:"refused"` // 401 or 403
	Rate     float64 `json:"per_second"`
	// Lookups is the growth of the edge's lookup counter during the
	// phase; -1 when it was not read.
	Lookups float64     `json:"origin_lookups"`
	P50     float64     `json:"p50_ms"`
	P99     float64     `json:"p99_ms"`
	Load    *LoadResult `json:"load"`
}

// FloodResult is the outcome of RunFlood.
type FloodResult struct {
	Target      string       `json:"target"`
	Concurrency int          `json:"concurrency"`
	UnknownKeys int          `json:"unknown_keys"`
	Phases      []FloodPhase `json:"phases"`
	// RefusalRatio is refusals/s of the slower refused class over valid
	// proxied requests/s (0 without a valid phase).
	RefusalRatio float64 `json:"refusal_to_valid_ratio,omitempty"`
}

// RunFlood runs the malformed phase, the unknown phase, and (with
// ValidKeys) a valid phase.
func RunFlood(ctx context.Context, cfg FloodConfig) (*FloodResult, error) {
	if cfg.UnknownKeys <= 0 {
		cfg.UnknownKeys = 1000
	}
	if cfg.Concurrency <= 0 {
		cfg.Concurrency = 32
	}
	out := &FloodResult{Target: cfg.URL, Concurrency: cfg.Concurrency, UnknownKeys: cfg.UnknownKeys}
	phases := []struct {
		class string
		mix   KeyMix
	}{{ClassMalformed, KeyMix{Malformed: 1}}, {ClassUnknown, KeyMix{Unknown: 1}}}
	if len(cfg.ValidKeys) > 0 {
		phases = append(phases, struct {
			class string
			mix   KeyMix
		}{ClassValid, KeyMix{Valid: 1}})
	}
	for _, ph := range phases {
		before := -1.0
		if cfg.MetricsURL != "" {
			v, err := ScrapeCounter(ctx, cfg.MetricsURL, LookupsMetric)
			if err != nil {
				return nil, fmt.Errorf("reading lookups before the %s phase: %w", ph.class, err)
			}
			before = v
		}
		res, err := RunLoad(ctx, LoadConfig{
			Name: "flood " + ph.class, URL: cfg.URL, Path: cfg.Path, Host: cfg.Host,
			Duration: cfg.Duration, Concurrency: cfg.Concurrency, Mix: ph.mix,
			UnknownKeys: cfg.UnknownKeys, ValidKeys: cfg.ValidKeys, Progress: cfg.Progress,
		})
		if err != nil {
			return nil, err
		}
		p := FloodPhase{Class: ph.class, Requests: res.Requests, Lookups: -1,
			P50: res.Latency.P50, P99: res.Latency.P99, Load: res}
		p.Refused = res.Status["401"] + res.Status["403"]
		count := p.Refused
		if ph.class == ClassValid {
			count = res.Status["200"]
		}
		if res.Elapsed > 0 {
			p.Rate = float64(count) / res.Elapsed
		}
		if before >= 0 {
			after, err := ScrapeCounter(ctx, cfg.MetricsURL, LookupsMetric)
			if err != nil {
				return nil, fmt.Errorf("reading lookups after the %s phase: %w", ph.class, err)
			}
			p.Lookups = after - before
		}
		out.Phases = append(out.Phases, p)
	}
	if len(out.Phases) == 3 && out.Phases[2].Rate > 0 {
		out.RefusalRatio = min(out.Phases[0].Rate, out.Phases[1].Rate) / out.Phases[2].Rate
	}
	return out, nil
}

// FloodMarkdown renders a flood result.
func FloodMarkdown(r *FloodResult) string {
	var b strings.Builder
	fmt.Fprintf(&b, "Target %s, %d workers per phase, %d distinct unknown keys.\n\n", r.Target, r.Concurrency, r.UnknownKeys)
	b.WriteString("| class | requests | refused (401/403) | per second | origin lookups | p50 ms | p99 ms |\n|---|---:|---:|---:|---:|---:|---:|\n")
	for _, p := range r.Phases {
		lookups := "not read"
		if p.Lookups >= 0 {
			lookups = fmt.Sprintf("%.0f", p.Lookups)
		}
		refused := fmt.Sprint(p.Refused)
		if p.Class == ClassValid {
			refused = "- (200: proxied)"
		}
		fmt.Fprintf(&b, "| %s | %d | %s | %.0f | %s | %s | %s |\n", p.Class, p.Requests, refused, p.Rate, lookups, ms(p.P50), ms(p.P99))
	}
	if r.RefusalRatio > 0 {
		fmt.Fprintf(&b, "\nRefusals per second (slower refused class) / valid proxied per second: **%.2fx** (target ≥ 2x: %s).\n",
			r.RefusalRatio, verdict(r.RefusalRatio >= 2))
	}
	for _, p := range r.Phases {
		if p.Class == ClassMalformed && p.Lookups >= 0 {
			fmt.Fprintf(&b, "Origin lookups caused by malformed keys: %.0f (target 0: %s).\n", p.Lookups, verdict(p.Lookups == 0))
		}
	}
	return b.String()
}

func verdict(ok bool) string {
	if ok {
		return "met"
	}
	return "**MISSED**"
}
