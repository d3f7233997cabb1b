package main

import (
	"context"
	"encoding/json"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/keymesh/keymesh/bench"
)

// TestLimitsReport runs bench limits with a tiny window on two edges and
// checks the report's shape: every case reported on stdout and in the
// JSON, every request sent answered 2xx or 429, the numbers derived as
// documented, and load above the limit refused somewhere (the key's bounds
// were set). What is admitted depends on whether edges count per edge or
// together, so it is measured, not asserted.
func TestLimitsReport(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	out := filepath.Join(t.TempDir(), "limits")
	e, stdout, stderr := testEnv(ctx, nil)
	code := run(e, []string{"limits", "--edges", "2", "--duration", "1s", "--limit", "10", "--factor", "4",
		"--concurrency", "4", "--quiet", "--out", out})
	if code != 0 {
		t.Fatalf("exit %d: %s", code, stderr.String())
	}
	for _, want := range []string{"| case | unit | edges |", "| spread | requests | 2 | 1 |", "| moved | requests | 2 | 1 |",
		"| tokens | tokens | 2 | 1 |", "Admitted per edge"} {
		if !strings.Contains(stdout.String(), want) {
			t.Errorf("stdout lacks %q:\n%s", want, stdout.String())
		}
	}
	b, err := os.ReadFile(out + ".json")
	if err != nil {
		t.Fatal(err)
	}
	var res []*bench.LimitsResult
	if err := json.Unmarshal(b, &res); err != nil {
		t.Fatal(err)
	}
	if len(res) != 3 || res[0].Name != caseSpread || res[1].Name != caseMoved || res[2].Name != caseTokens {
		t.Fatalf("cases: %+v", res)
	}
	for _, r := range res {
		if r.Sent == 0 || r.Admitted+r.Refused != r.Sent || len(r.Other) != 0 || r.Offered != r.Sent+r.Missed {
			t.Errorf("%s: sent %d, admitted %d + refused %d, other %v, offered %d, missed %d", r.Name, r.Sent, r.Admitted,
				r.Refused, r.Other, r.Offered, r.Missed)
		}
		if r.Admitted == 0 || r.Refused == 0 {
			t.Errorf("%s: 4x the limit offered, want some admitted and some refused: %d admitted, %d refused", r.Name, r.Admitted, r.Refused)
		}
		var sent, admitted, refused int64
		for _, pe := range r.PerEdge {
			sent, admitted, refused = sent+pe.Sent, admitted+pe.Admitted, refused+pe.Refused
		}
		if len(r.PerEdge) != 2 || sent != r.Sent || admitted != r.Admitted || refused != r.Refused {
			t.Errorf("%s: per edge %+v does not add up", r.Name, r.PerEdge)
		}
		// The window is shorter than the limit's minute: all of it counts.
		if r.WindowMax != r.AdmittedUnits || len(r.Timeline) != 1 || r.Timeline[0] != r.AdmittedUnits {
			t.Errorf("%s: window max %d, timeline %v, admitted %d", r.Name, r.WindowMax, r.Timeline, r.AdmittedUnits)
		}
		if r.Target != bench.LimitsTarget(r.Limit, r.Bound) || r.Met != (float64(r.WindowMax) <= r.Target) {
			t.Errorf("%s: target %v for limit %d bound %v, met %v", r.Name, r.Target, r.Limit, r.Bound, r.Met)
		}
	}
	// 40 requests/s (4 × 10 over 1 s) for Δ = 200ms: a bound of 8 requests.
	if sp := res[0]; sp.Limit != 10 || sp.Rate != 40 || sp.Bound != 8 || sp.Target != 10*1.05+8 || sp.Unit != bench.UnitRequests {
		t.Errorf("spread: %+v", sp)
	}
	if mv := res[1]; mv.PerEdge[0].Sent == 0 || mv.PerEdge[1].Sent == 0 {
		t.Errorf("moved: want load on both edges, got %+v", mv.PerEdge)
	}
	// The tokens limit is 10 answers' metered tokens; each admitted answer
	// counts its own (the mock's are all the same size).
	if tk := res[2]; tk.Unit != bench.UnitTokens || tk.MaxTokens != 16 || tk.Limit%10 != 0 || tk.Limit <= 10 ||
		tk.AdmittedUnits != tk.Admitted*(tk.Limit/10) || tk.Bound != 8*16 {
		t.Errorf("tokens: %+v", tk)
	}
	for _, f := range []string{out + ".md", out + "-limits.svg"} {
		if _, err := os.Stat(f); err != nil {
			t.Error(err)
		}
	}
}

func TestLimitsRejectsBadFlags(t *testing.T) {
	for _, args := range [][]string{
		{"limits", "--cases", "nonsense"},
		{"limits", "--cases", ","},
		{"limits", "--duration", "500ms"},
		{"limits", "--edges", "0"},
		{"limits", "--limit", "-1"},
		{"limits", "--limit", "10000001"},
		{"limits", "--factor", "0"},
		{"suite", "--limits-window", "0s"},
	} {
		e, _, stderr := testEnv(context.Background(), nil)
		if code := run(e, args); code != 2 {
			t.Errorf("%v: exit %d, want 2 (stderr %q)", args, code, stderr.String())
		}
		if n := strings.Count(strings.TrimSpace(stderr.String()), "\n"); n != 0 {
			t.Errorf("%v: want one line, got %q", args, stderr.String())
		}
	}
	e, stdout, _ := testEnv(context.Background(), nil)
	if code := run(e, []string{"limits", "--help"}); code != 0 || !strings.Contains(stdout.String(), "bench limits") ||
		!strings.Contains(stdout.String(), "L = 600 × W / 60 s") {
		t.Errorf("limits --help: exit %d:\n%s", code, stdout.String())
	}
}
