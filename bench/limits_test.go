package bench

import (
	"math"
	"testing"
	"time"
)

// TestSummarizeLimitsSlidingWindow: the most admitted in any minute is
// found however the admitted requests straddle minutes, refusals and
// errors are counted apart, and the overshoot and verdict follow.
func TestSummarizeLimitsSlidingWindow(t *testing.T) {
	cfg := LimitsConfig{Name: "x", Edges: []string{"a", "b"}, Secret: "s", Limit: 3, Window: 100 * time.Second, Rate: 1, Bound: 0.5}
	if err := cfg.fill(); err != nil {
		t.Fatal(err)
	}
	s := func(at time.Duration, edge, status int) limitsSample {
		return limitsSample{at: at, edge: edge, status: status, units: map[bool]int64{true: 1}[status == 200]}
	}
	samples := []limitsSample{ // unsorted on purpose
		s(70*time.Second, 0, 200), s(0, 0, 200), s(30*time.Second, 1, 200), s(40*time.Second, 1, 429),
		s(59*time.Second, 0, 200), s(61*time.Second, 1, 200), s(65*time.Second, 1, 0), s(99*time.Second, 0, 200),
	}
	r := summarizeLimits(cfg, samples, 2)
	// Admitted at 0, 30, 59, 61, 70, 99: [30, 90) holds 30, 59, 61, 70.
	if r.Sent != 8 || r.Offered != 10 || r.Admitted != 6 || r.Refused != 1 || r.Other["error"] != 1 || r.WindowMax != 4 {
		t.Fatalf("%+v", r)
	}
	if r.AdmittedRatio != 2 || math.Abs(r.Overshoot-1.0/3) > 1e-9 || math.Abs(r.Target-3.65) > 1e-9 || r.Met {
		t.Errorf("ratio %v overshoot %v target %v met %v", r.AdmittedRatio, r.Overshoot, r.Target, r.Met)
	}
	if r.PerEdge[0] != (LimitsEdge{Sent: 4, Admitted: 4, AdmittedUnits: 4}) || r.PerEdge[1] != (LimitsEdge{Sent: 4, Admitted: 2, Refused: 1, AdmittedUnits: 2}) {
		t.Errorf("per edge %+v", r.PerEdge)
	}
	if len(r.Timeline) != 100 || r.Timeline[0] != 1 || r.Timeline[59] != 3 || r.Timeline[99] != 6 {
		t.Errorf("timeline %v", r.Timeline)
	}
	// Exactly the limit in every minute, plus at most the bound: met.
	r = summarizeLimits(cfg, []limitsSample{s(0, 0, 200), s(time.Second, 0, 200), s(2*time.Second, 0, 200),
		s(60*time.Second, 1, 200)}, 0)
	if r.WindowMax != 3 || r.Overshoot != 0 || !r.Met {
		t.Errorf("at the limit: %+v", r)
	}
}
