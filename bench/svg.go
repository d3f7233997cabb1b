package bench

import (
	"fmt"
	"html"
	"math"
	"strings"
)

// Series is one line of a chart: Y values over the chart's categories.
type Series struct {
	Name string
	Y    []float64
}

// Chart is a small chart drawn by hand as SVG text: lines (or grouped bars)
// over categorical X positions, a linear Y axis starting at 0.
type Chart struct {
	Title, XLabel, YLabel string
	// X names the categories, left to right.
	X      []string
	Series []Series
	// Bars draws grouped bars instead of lines.
	Bars bool
	// Width and Height default to 720×360.
	Width, Height int
}

var chartColors = []string{"#1f77b4", "#d62728", "#2ca02c", "#ff7f0e", "#9467bd", "#8c564b"}

// niceCeil rounds v up to 1, 2, 2.5 or 5 times a power of ten.
func niceCeil(v float64) float64 {
	if v <= 0 || math.IsNaN(v) || math.IsInf(v, 0) {
		return 1
	}
	p := math.Pow(10, math.Floor(math.Log10(v)))
	for _, m := range []float64{1, 2, 2.5, 5, 10} {
		if m*p >= v {
			return m * p
		}
	}
	return 10 * p
}

func fmtTick(v float64) string {
	switch {
	case v == 0:
		return "0"
	case v >= 100:
		return fmt.Sprintf("%.0f", v)
	case v >= 1:
		return strings.TrimRight(strings.TrimRight(fmt.Sprintf("%.2f", v), "0"), ".")
	default:
		return strings.TrimRight(strings.TrimRight(fmt.Sprintf("%.4f", v), "0"), ".")
	}
}

// SVG renders the chart.
func (c Chart) SVG() string {
	w, h := c.Width, c.Height
	if w <= 0 {
		w = 720
	}
	if h <= 0 {
		h = 360
	}
	const left, right, top, bottom = 70, 170, 40, 55
	pw, ph := float64(w-left-right), float64(h-top-bottom)
	maxY := 0.0
	for _, s := range c.Series {
		for _, y := range s.Y {
			if !math.IsNaN(y) && !math.IsInf(y, 0) {
				maxY = math.Max(maxY, y)
			}
		}
	}
	maxY = niceCeil(maxY)
	n := len(c.X)
	xAt := func(i int) float64 {
		if n <= 1 {
			return left + pw/2
		}
		if c.Bars {
			return left + pw*(float64(i)+0.5)/float64(n)
		}
		return left + pw*float64(i)/float64(n-1)
	}
	yAt := func(v float64) float64 { return top + ph - ph*v/maxY }

	var b strings.Builder
	fmt.Fprintf(&b, `<svg xmlns="http://www.w3.org/2000/svg" width="%d" height="%d" viewBox="0 0 %d %d" font-family="sans-serif" font-size="12">`+"\n", w, h, w, h)
	fmt.Fprintf(&b, `<rect width="%d" height="%d" fill="white"/>`+"\n", w, h)
	fmt.Fprintf(&b, `<text x="%d" y="22" font-size="15" font-weight="bold">%s</text>`+"\n", left, html.EscapeString(c.Title))
	// Y grid and ticks.
	for i := 0; i <= 5; i++ {
		v := maxY * float64(i) / 5
		y := yAt(v)
		fmt.Fprintf(&b, `<line x1="%d" y1="%.1f" x2="%.1f" y2="%.1f" stroke="#ddd"/>`+"\n", left, y, left+pw, y)
		fmt.Fprintf(&b, `<text x="%d" y="%.1f" text-anchor="end">%s</text>`+"\n", left-6, y+4, fmtTick(v))
	}
	// Axes.
	fmt.Fprintf(&b, `<line x1="%d" y1="%d" x2="%d" y2="%.1f" stroke="black"/>`+"\n", left, top, left, top+ph)
	fmt.Fprintf(&b, `<line x1="%d" y1="%.1f" x2="%.1f" y2="%.1f" stroke="black"/>`+"\n", left, top+ph, left+pw, top+ph)
	for i, x := range c.X {
		fmt.Fprintf(&b, `<text x="%.1f" y="%.1f" text-anchor="middle">%s</text>`+"\n", xAt(i), top+ph+18, html.EscapeString(x))
	}
	fmt.Fprintf(&b, `<text x="%.1f" y="%d" text-anchor="middle">%s</text>`+"\n", left+pw/2, h-10, html.EscapeString(c.XLabel))
	fmt.Fprintf(&b, `<text x="16" y="%.1f" text-anchor="middle" transform="rotate(-90 16 %.1f)">%s</text>`+"\n",
		top+ph/2, top+ph/2, html.EscapeString(c.YLabel))
	// Data.
	ns := len(c.Series)
	for si, s := range c.Series {
		color := chartColors[si%len(chartColors)]
		if c.Bars {
			slot := pw / float64(max(n, 1))
			bw := slot * 0.8 / float64(max(ns, 1))
			for i, y := range s.Y {
				if i >= n || math.IsNaN(y) {
					continue
				}
				x := xAt(i) - slot*0.4 + bw*float64(si)
				fmt.Fprintf(&b, `<rect x="%.1f" y="%.1f" width="%.1f" height="%.1f" fill="%s"><title>%s %s: %s</title></rect>`+"\n",
					x, yAt(y), bw, top+ph-yAt(y), color, html.EscapeString(s.Name), html.EscapeString(c.X[i]), fmtTick(y))
			}
		} else {
			var pts []string
			for i, y := range s.Y {
				if i >= n || math.IsNaN(y) {
					continue
				}
				pts = append(pts, fmt.Sprintf("%.1f,%.1f", xAt(i), yAt(y)))
			}
			fmt.Fprintf(&b, `<polyline fill="none" stroke="%s" stroke-width="2" points="%s"/>`+"\n", color, strings.Join(pts, " "))
			for i, y := range s.Y {
				if i >= n || math.IsNaN(y) {
					continue
				}
				fmt.Fprintf(&b, `<circle cx="%.1f" cy="%.1f" r="3" fill="%s"><title>%s %s: %s</title></circle>`+"\n",
					xAt(i), yAt(y), color, html.EscapeString(s.Name), html.EscapeString(c.X[i]), fmtTick(y))
			}
		}
		// Legend.
		ly := top + 10 + 20*si
		fmt.Fprintf(&b, `<rect x="%.1f" y="%d" width="14" height="10" fill="%s"/>`+"\n", left+pw+12, ly-9, color)
		fmt.Fprintf(&b, `<text x="%.1f" y="%d">%s</text>`+"\n", left+pw+30, ly, html.EscapeString(s.Name))
	}
	b.WriteString("</svg>\n")
	return b.String()
}

// LatencyChart draws the latency-by-percentile curves of results: of
// pick's distribution, or of every request when pick is nil.
func LatencyChart(title string, results []*LoadResult, pick func(*LoadResult) Percentiles) Chart {
	if pick == nil {
		pick = func(r *LoadResult) Percentiles { return r.Latency }
	}
	c := Chart{Title: title, XLabel: "percentile", YLabel: "latency (ms)"}
	for _, q := range PlotQuantiles {
		c.X = append(c.X, fmtTick(q))
	}
	for _, r := range results {
		s := Series{Name: r.Name}
		if s.Name == "" {
			s.Name = r.Target
		}
		for i := range PlotQuantiles {
			v := math.NaN()
			if p := pick(r); i < len(p.Curve) {
				v = p.Curve[i].Millis
			}
			s.Y = append(s.Y, v)
		}
		c.Series = append(c.Series, s)
	}
	return c
}
