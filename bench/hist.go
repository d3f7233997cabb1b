package bench

import (
	"sync"
	"time"

	"github.com/HdrHistogram/hdrhistogram-go"
)

// Histogram bounds: latencies are recorded in microseconds from 1µs to one
// minute with three significant digits; a larger value is clamped to the top
// (and still counted), so no sample is ever lost.
const (
	histMinMicros = 1
	histMaxMicros = int64(time.Minute / time.Microsecond)
	histSigFigs   = 3
)

// PlotQuantiles are the percentiles every latency curve is drawn at.
var PlotQuantiles = []float64{0, 50, 75, 90, 95, 99, 99.9, 99.99, 100}

// Latency is an HDR histogram of durations, safe for concurrent use.
type Latency struct {
	mu sync.Mutex
	h  *hdrhistogram.Histogram
}

// NewLatency returns an empty latency histogram.
func NewLatency() *Latency {
	return &Latency{h: hdrhistogram.New(histMinMicros, histMaxMicros, histSigFigs)}
}

// Record adds one duration (clamped to [1µs, 1min]).
func (l *Latency) Record(d time.Duration) {
	us := int64(d / time.Microsecond)
	if us < histMinMicros {
		us = histMinMicros
	}
	if us > histMaxMicros {
		us = histMaxMicros
	}
	l.mu.Lock()
	_ = l.h.RecordValue(us)
	l.mu.Unlock()
}

// Merge adds every sample of o.
func (l *Latency) Merge(o *Latency) {
	o.mu.Lock()
	snap := hdrhistogram.Import(o.h.Export())
	o.mu.Unlock()
	l.mu.Lock()
	l.h.Merge(snap)
	l.mu.Unlock()
}

// Count is how many samples were recorded.
func (l *Latency) Count() int64 {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.h.TotalCount()
}

// Summary returns the distribution's percentiles in milliseconds.
func (l *Latency) Summary() Percentiles {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.h.TotalCount() == 0 {
		return Percentiles{}
	}
	ms := func(us int64) float64 { return float64(us) / 1000 }
	p := Percentiles{
		Count: l.h.TotalCount(),
		Min:   ms(l.h.Min()),
		Mean:  l.h.Mean() / 1000,
		P50:   ms(l.h.ValueAtQuantile(50)),
		P90:   ms(l.h.ValueAtQuantile(90)),
		P99:   ms(l.h.ValueAtQuantile(99)),
		P999:  ms(l.h.ValueAtQuantile(99.9)),
		Max:   ms(l.h.Max()),
	}
	for _, q := range PlotQuantiles {
		v := l.h.ValueAtQuantile(q)
		if q == 0 {
			v = l.h.Min()
		}
		p.Curve = append(p.Curve, CurvePoint{Percentile: q, Millis: ms(v)})
	}
	return p
}

// Percentiles summarises a latency distribution, in milliseconds.
type Percentiles struct {
	Count int64        `json:"count"`
	Min   float64      `json:"min_ms"`
	Mean  float64      `json:"mean_ms"`
	P50   float64      `json:"p50_ms"`
	P90   float64      `json:"p90_ms"`
	P99   float64      `json:"p99_ms"`
	P999  float64      `json:"p99_9_ms"`
	Max   float64      `json:"max_ms"`
	Curve []CurvePoint `json:"curve,omitempty"`
}

// CurvePoint is the latency at one percentile.
type CurvePoint struct {
	Percentile float64 `json:"percentile"`
	Millis     float64 `json:"ms"`
}
