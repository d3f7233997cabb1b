package opcli

import (
	"strings"
	"testing"
)

// Token bounds through the CLI: set on create and update of keys,
// deployments and projects, shown in the detail views, the listings and
// --json, and removed by 0; bad flag combinations are refused before any
// request.
func TestCLITokenLimits(t *testing.T) {
	s := startOrigin(t)
	r, _ := newRunner(t, s)
	r.env["ORIGIN_PASSWORD"] = cliPassword
	r.ok("login")

	type tokens struct {
		PerMinute *int64 `json:"tokens_per_minute"`
		PerDay    *int64 `json:"tokens_per_day"`
		Quota     *struct {
			Tokens   *int64  `json:"tokens"`
			Requests *int64  `json:"requests"`
			Refill   *string `json:"refill"`
		} `json:"quota"`
		DefaultMaxTokens *int64 `json:"default_max_tokens"`
		ID               string `json:"id"`
	}
	val := func(p *int64) int64 {
		if p == nil {
			return 0
		}
		return *p
	}

	// Deployments.
	out := r.ok("deployments", "create", "chat", "--upstream", "http://127.0.0.1:9", "--tokens-per-minute", "1000",
		"--quota-tokens", "50000", "--quota-refill", "monthly", "--default-max-tokens", "256")
	for _, want := range []string{"1000 per minute per edge", "50000 tokens, refilled monthly", "Default max tokens:  256"} {
		if !strings.Contains(out, want) {
			t.Errorf("deployments create lacks %q:\n%s", want, out)
		}
	}
	var d tokens
	r.json(&d, "deployments", "get", "chat")
	if val(d.PerMinute) != 1000 || d.PerDay != nil || d.Quota == nil || val(d.Quota.Tokens) != 50000 || *d.Quota.Refill != "monthly" || val(d.DefaultMaxTokens) != 256 {
		t.Fatalf("deployments get --json: %+v", d)
	}
	if out := r.ok("deployments", "list"); !strings.Contains(out, "TOKEN LIMITS") || !strings.Contains(out, "1000/min; quota 50000 tokens, refilled monthly") {
		t.Errorf("deployments list:\n%s", out)
	}
	r.ok("deployments", "update", "chat", "--tokens-per-minute", "0", "--tokens-per-day", "9", "--quota-tokens", "0", "--default-max-tokens", "0")
	d = tokens{}
	r.json(&d, "deployments", "get", "chat")
	if d.PerMinute != nil || val(d.PerDay) != 9 || d.Quota != nil || d.DefaultMaxTokens != nil {
		t.Fatalf("deployments update clearing: %+v", d)
	}

	// Keys.
	var k tokens
	r.json(&k, "keys", "create", "ci", "--tokens-per-day", "100000", "--quota-requests", "50", "--quota-refill", "daily")
	if val(k.PerDay) != 100000 || k.Quota == nil || val(k.Quota.Requests) != 50 || *k.Quota.Refill != "daily" {
		t.Fatalf("keys create --json: %+v", k)
	}
	out = r.ok("keys", "update", k.ID, "--tokens-per-minute", "30")
	for _, want := range []string{"30 per minute per edge", "100000 per day per edge", "50 requests, refilled daily"} {
		if !strings.Contains(out, want) {
			t.Errorf("keys update lacks %q:\n%s", want, out)
		}
	}
	if out := r.ok("keys", "list"); !strings.Contains(out, "30/min; 100000/day; quota 50 requests, refilled daily") {
		t.Errorf("keys list:\n%s", out)
	}
	out = r.ok("keys", "update", k.ID, "--quota-tokens", "7")
	if !strings.Contains(out, "7 tokens, never refilled") {
		t.Errorf("keys update --quota-tokens:\n%s", out)
	}
	out = r.ok("keys", "update", k.ID, "--tokens-per-minute", "0", "--tokens-per-day", "0", "--quota-requests", "0")
	if strings.Count(out, "no bound") != 2 || !strings.Contains(out, "Quota:              none") {
		t.Errorf("keys update clearing:\n%s", out)
	}

	// Projects.
	out = r.ok("projects", "update", "default", "--tokens-per-minute", "60000", "--quota-tokens", "1000000", "--quota-refill", "monthly")
	for _, want := range []string{"tokens per minute: 60000 per minute per edge", "quota: 1000000 tokens, refilled monthly"} {
		if !strings.Contains(out, want) {
			t.Errorf("projects update lacks %q:\n%s", want, out)
		}
	}
	var p tokens
	r.json(&p, "projects", "get", "default")
	if val(p.PerMinute) != 60000 || p.Quota == nil || val(p.Quota.Tokens) != 1000000 {
		t.Fatalf("projects get --json: %+v", p)
	}
	out = r.ok("projects", "update", "default", "--tokens-per-minute", "0", "--quota-tokens", "0")
	if !strings.Contains(out, "tokens per minute: no bound") || !strings.Contains(out, "quota: none") {
		t.Errorf("projects update clearing:\n%s", out)
	}

	// Refused by the CLI itself, or by the origin.
	r.fails(2, "not both", "keys", "update", k.ID, "--quota-tokens", "1", "--quota-requests", "1")
	r.fails(2, "--quota-refill needs", "keys", "update", k.ID, "--quota-refill", "daily")
	r.fails(2, "daily, monthly or never", "keys", "update", k.ID, "--quota-tokens", "5", "--quota-refill", "weekly")
	r.fails(2, "must be positive", "keys", "create", "x", "--tokens-per-minute", "0")
	r.fails(2, "must be positive", "deployments", "update", "chat", "--default-max-tokens", "-1")
	r.fails(1, "origin: VALIDATION_ERROR: ", "keys", "update", k.ID, "--tokens-per-day", "2000000000000")
}
