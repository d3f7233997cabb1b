package bench

import (
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"strings"
)

// Report is what a bench command writes: a JSON document, a Markdown page
// and the SVG charts the page links to (written beside it).
type Report struct {
	// Base is the path without extension: Base.json, Base.md and
	// Base-<chart>.svg are written.
	Base string
	JSON any
	// Markdown may link a chart as ![...](CHART:<name>); the link is
	// rewritten to the chart's file name.
	Markdown string
	Charts   map[string]Chart
}

// ChartFile is the file name chart name is written to for base.
func ChartFile(base, name string) string { return filepath.Base(base) + "-" + name + ".svg" }

// Write writes every file of the report and returns their paths.
func (r Report) Write() ([]string, error) {
	if dir := filepath.Dir(r.Base); dir != "" {
		if err := os.MkdirAll(dir, 0o755); err != nil {
			return nil, err
		}
	}
	var paths []string
	if r.JSON != nil {
		b, err := json.MarshalIndent(r.JSON, "", "  ")
		if err != nil {
			return nil, err
		}
		p := r.Base + ".json"
		if err := os.WriteFile(p, append(b, '\n'), 0o644); err != nil {
			return nil, err
		}
		paths = append(paths, p)
	}
	md := r.Markdown
	for _, name := range sortedKeys(r.Charts) {
		file := ChartFile(r.Base, name)
		p := filepath.Join(filepath.Dir(r.Base), file)
		if err := os.WriteFile(p, []byte(r.Charts[name].SVG()), 0o644); err != nil {
			return nil, err
		}
		paths = append(paths, p)
		md = strings.ReplaceAll(md, "(CHART:"+name+")", "("+file+")")
	}
	if md != "" {
		p := r.Base + ".md"
		if err := os.WriteFile(p, []byte(md), 0o644); err != nil {
			return nil, err
		}
		paths = append(paths, p)
	}
	return paths, nil
}

func f1(v float64) string { return fmt.Sprintf("%.1f", v) }

// ms formats milliseconds with three significant decimals.
func ms(v float64) string {
	switch {
	case v >= 100:
		return fmt.Sprintf("%.0f", v)
	case v >= 10:
		return fmt.Sprintf("%.1f", v)
	default:
		return fmt.Sprintf("%.3f", v)
	}
}

// LoadMarkdown renders load results as Markdown: one table row per result,
// a status breakdown, per-class latencies and the latency chart (linked as
// CHART:chart when chart is non-empty).
func LoadMarkdown(results []*LoadResult, chart string) string {
	var b strings.Builder
	b.WriteString("| run | mode | conc | rate | stream | mix | requests | rps | errors | p50 ms | p90 ms | p99 ms | p99.9 ms | max ms | stream TTFB p50 ms |\n")
	b.WriteString("|---|---|---:|---:|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|\n")
	for _, r := range results {
		rate := "-"
		if r.Rate > 0 {
			rate = fmt.Sprintf("%.0f", r.Rate)
		}
		ttfb := "-"
		if r.StreamTTFB.Count > 0 {
			ttfb = ms(r.StreamTTFB.P50)
		}
		fmt.Fprintf(&b, "| %s | %s | %d | %s | %.0f%% | %s | %d | %s | %d | %s | %s | %s | %s | %s | %s |\n",
			r.Name, r.Mode, r.Concurrency, rate, r.StreamShare*100, r.Mix, r.Requests, f1(r.Throughput), r.Errors,
			ms(r.Latency.P50), ms(r.Latency.P90), ms(r.Latency.P99), ms(r.Latency.P999), ms(r.Latency.Max), ttfb)
	}
	b.WriteString("\nStatus codes by key class:\n\n| run | class | requests | status | p50 ms | p99 ms |\n|---|---|---:|---|---:|---:|\n")
	for _, r := range results {
		for _, c := range sortedKeys(r.ByClass) {
			cr := r.ByClass[c]
			var st []string
			for _, k := range sortedKeys(cr.Status) {
				st = append(st, fmt.Sprintf("%s×%d", k, cr.Status[k]))
			}
			fmt.Fprintf(&b, "| %s | %s | %d | %s | %s | %s |\n", r.Name, c, cr.Requests, strings.Join(st, " "),
				ms(cr.Latency.P50), ms(cr.Latency.P99))
		}
		if r.RevokedAt > 0 {
			fmt.Fprintf(&b, "| %s | (revoked keys unlinked %.2fs into the run) | | | | |\n", r.Name, r.RevokedAt)
		}
		if r.LastError != "" {
			fmt.Fprintf(&b, "| %s | (a transport error: %s) | | | | |\n", r.Name, strings.ReplaceAll(r.LastError, "|", "/"))
		}
	}
	if chart != "" {
		fmt.Fprintf(&b, "\n![latency by percentile](CHART:%s)\n", chart)
	}
	return b.String()
}
