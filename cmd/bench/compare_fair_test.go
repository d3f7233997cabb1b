package main

import (
	"context"
	"os"
	"strings"
	"testing"
	"time"

	"github.com/keymesh/keymesh/bench"
)

// TestFairCompareShape runs the fair comparison's harness briefly against
// the backend and the raw and bare proxies alone (no origin, edge or nginx:
// seconds, not minutes): all take their turns, the proxy's CPU per request and the
// backend's are counted from /proc, the open loop runs at a fraction of
// the bare proxy's rate, and the report has its table and verdicts. With
// wrk when installed (under CI it must be: make test-deps installs it),
// else the bench's own generator.
func TestFairCompareShape(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	wrk, err := bench.FindWrk("")
	if err != nil {
		if ci := strings.ToLower(os.Getenv("CI")); ci != "" && ci != "0" && ci != "false" {
			t.Fatalf("CI is set and %v", err)
		}
		wrk = ""
	}
	t.Setenv("BENCH_TEST_MAIN", "1") // the bare proxy is this binary's bareproxy command
	e, _, stderr := testEnv(ctx, nil)
	res, err := fairCompare(ctx, e, fairOpts{rounds: 2, round: time.Second, warmup: -1, openLoop: []float64{0.1},
		openLoopDur: 500 * time.Millisecond, connections: 16, wrk: wrk, bareOnly: true, quiet: true})
	if err != nil {
		t.Fatalf("%v %s", err, stderr.String())
	}
	if len(res.Runs) != 3 || res.Runs[0].Name != bench.TargetDirect || res.Runs[1].Name != bench.TargetRaw || res.Runs[2].Name != bench.TargetBare {
		t.Fatalf("runs: %+v", res.Runs)
	}
	for _, r := range res.Runs {
		if len(r.Rounds) != 2 || r.Requests == 0 || r.Errors != 0 || r.RPS <= 0 || r.P99 <= 0 {
			t.Errorf("%s: %d rounds, %d requests, %d errors, %.0f rps, p99 %g", r.Name, len(r.Rounds), r.Requests, r.Errors, r.RPS, r.P99)
		}
		if r.BackendCPUPerRequest <= 0 {
			t.Errorf("%s: no backend CPU counted", r.Name)
		}
	}
	for _, p := range res.Runs[1:] {
		if p.CPUPerRequest <= 0 {
			t.Errorf("%s: no CPU counted (%g µs/request)", p.Name, p.CPUPerRequest)
		}
	}
	if res.OpenBase != bench.TargetBare || len(res.OpenLoop) != 1 || len(res.OpenLoop[0].Runs) != 2 {
		t.Fatalf("open loop: base %q, %+v", res.OpenBase, res.OpenLoop)
	}
	for _, r := range res.OpenLoop[0].Runs {
		if r.Achieved <= 0 || r.Errors != 0 {
			t.Errorf("open loop %s: %+v", r.Name, r)
		}
	}
	if wrk != "" && !strings.HasPrefix(res.Generator, "wrk") {
		t.Errorf("generator %q with wrk at %s", res.Generator, wrk)
	}
	md := bench.FairMarkdown(res)
	for _, s := range []string{"| direct |", "| raw Go |", "| bare fasthttp |", "the backend is not the limit", "| 10% | bare fasthttp |"} {
		if !strings.Contains(md, s) {
			t.Errorf("report lacks %q:\n%s", s, md)
		}
	}
	t.Logf("\n%s", md)
}

func TestParseFractions(t *testing.T) {
	if f, err := parseFractions("0.25, 0.5,0.75"); err != nil || len(f) != 3 || f[1] != 0.5 {
		t.Errorf("%v %v", f, err)
	}
	if f, err := parseFractions("none"); err != nil || f != nil {
		t.Errorf("none: %v %v", f, err)
	}
	for _, bad := range []string{"0", "1.5", "x"} {
		if _, err := parseFractions(bad); err == nil {
			t.Errorf("%q: want an error", bad)
		}
	}
}

// TestSuiteJudgesTheFairCompare: with a fair comparison, the suite's
// edge-vs-nginx targets are its verdicts, not the mixed load's.
func TestSuiteJudgesTheFairCompare(t *testing.T) {
	mixed := &bench.CompareResult{Runs: []*bench.LoadResult{
		{Name: bench.TargetKeymesh, Throughput: 2000, Unary: bench.Percentiles{P99: 1}},
		{Name: bench.TargetNginx, Throughput: 1000, Unary: bench.Percentiles{P99: 1}}}}
	fair := &bench.FairResult{Runs: []*bench.FairRun{{Name: bench.TargetKeymesh, RPS: 10000, P99: 20}, {Name: bench.TargetNginx, RPS: 22000, P99: 7},
		{Name: bench.TargetBare, RPS: 14000, P99: 22}}}
	got := map[string]string{}
	for _, tg := range suiteTargets(&suiteResult{Compare: mixed, Fair: fair}) {
		got[tg.Target] = tg.Verdict
	}
	if got["edge throughput ≥ 1.0× nginx (fair compare)"] != "MISSED" || got["edge p99 ≤ 1.1× nginx (fair compare)"] != "MISSED" ||
		got["edge throughput ≥ 0.9× the bare fasthttp proxy (fair compare)"] != "MISSED" {
		t.Errorf("fair verdicts: %v", got)
	}
	if _, ok := got["keymesh throughput ≥ 1.0x nginx static map"]; ok {
		t.Errorf("the mixed load judged too: %v", got)
	}
	got = map[string]string{}
	for _, tg := range suiteTargets(&suiteResult{Compare: mixed}) {
		got[tg.Target] = tg.Verdict
	}
	if got["keymesh throughput ≥ 1.0x nginx static map"] != "met" {
		t.Errorf("without a fair comparison: %v", got)
	}
}
