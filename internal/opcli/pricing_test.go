package opcli

import (
	"encoding/json"
	"strings"
	"testing"
)

// Pricing and spend caps through the CLI: --pricing on deployments,
// --max-budget and --budget-refill on keys, deployments and projects, shown
// in the detail views and listings, kept exact in --json, removed by
// "none"; bad flags are refused before any request.
func TestCLIPricingAndBudgets(t *testing.T) {
	s := startOrigin(t)
	r, _ := newRunner(t, s)
	r.env["ORIGIN_PASSWORD"] = cliPassword
	r.ok("login")
	type view struct {
		ID           string       `json:"id"`
		MaxBudget    *json.Number `json:"max_budget"`
		BudgetRefill *string      `json:"budget_refill"`
		Pricing      *struct {
			Currency             string       `json:"currency"`
			PromptPerMillion     json.Number  `json:"prompt_per_million"`
			CompletionPerMillion json.Number  `json:"completion_per_million"`
			CachedPerMillion     *json.Number `json:"cached_per_million"`
		} `json:"pricing"`
	}

	out := r.ok("deployments", "create", "chat", "--upstream", "http://127.0.0.1:9",
		"--pricing", `{"currency":"USD","prompt_per_million":0.15,"completion_per_million":0.6,"cached_per_million":0.075}`,
		"--max-budget", "100.5", "--budget-refill", "monthly")
	for _, want := range []string{"USD 0.15 prompt, 0.6 completion, 0.075 cached per million tokens", "100.5, refilled monthly"} {
		if !strings.Contains(out, want) {
			t.Errorf("deployments create lacks %q:\n%s", want, out)
		}
	}
	var d view
	r.json(&d, "deployments", "get", "chat")
	if d.Pricing == nil || d.Pricing.PromptPerMillion != "0.15" || d.Pricing.CachedPerMillion == nil || *d.Pricing.CachedPerMillion != "0.075" ||
		d.MaxBudget == nil || *d.MaxBudget != "100.5" || d.BudgetRefill == nil || *d.BudgetRefill != "monthly" {
		t.Fatalf("deployments get --json: %+v", d)
	}
	if out := r.ok("deployments", "list"); !strings.Contains(out, "budget 100.5") {
		t.Errorf("deployments list:\n%s", out)
	}
	r.ok("deployments", "update", "chat", "--pricing", "none", "--max-budget", "none")
	d = view{}
	r.json(&d, "deployments", "get", "chat")
	if d.Pricing != nil || d.MaxBudget != nil {
		t.Fatalf("deployments update removing: %+v", d)
	}

	var k view
	r.json(&k, "keys", "create", "ci", "--max-budget", "0.000001")
	if k.MaxBudget == nil || *k.MaxBudget != "0.000001" || k.BudgetRefill != nil {
		t.Fatalf("keys create --json: %+v", k)
	}
	out = r.ok("keys", "update", k.ID, "--max-budget", "25", "--budget-refill", "daily")
	if !strings.Contains(out, "Budget:             25, refilled daily") {
		t.Errorf("keys update:\n%s", out)
	}
	out = r.ok("keys", "update", k.ID, "--max-budget", "30")
	if !strings.Contains(out, "30, refilled daily") {
		t.Errorf("keys update keeping the refill:\n%s", out)
	}
	if out := r.ok("keys", "list"); !strings.Contains(out, "budget 30") {
		t.Errorf("keys list:\n%s", out)
	}
	out = r.ok("keys", "update", k.ID, "--max-budget", "5", "--budget-refill", "never")
	if !strings.Contains(out, "5, never refilled") {
		t.Errorf("keys update never:\n%s", out)
	}

	out = r.ok("projects", "update", "default", "--max-budget", "1000", "--budget-refill", "monthly")
	if !strings.Contains(out, "budget: 1000, refilled monthly") {
		t.Errorf("projects update:\n%s", out)
	}
	out = r.ok("projects", "update", "default", "--max-budget", "none")
	if !strings.Contains(out, "budget: no cap") {
		t.Errorf("projects update removing:\n%s", out)
	}

	r.fails(2, "--budget-refill needs --max-budget", "keys", "update", k.ID, "--budget-refill", "daily")
	r.fails(2, "daily, monthly or never", "keys", "update", k.ID, "--max-budget", "1", "--budget-refill", "weekly")
	r.fails(2, "must be an amount", "keys", "update", k.ID, "--max-budget", "ten")
	r.fails(2, "must be an amount", "keys", "update", k.ID, "--max-budget", "-1")
	r.fails(2, "give no --max-budget", "keys", "create", "x", "--max-budget", "none")
	r.fails(2, "--pricing must be JSON", "deployments", "update", "chat", "--pricing", `{"currency":"USD","input":1}`)
	r.fails(1, "origin: VALIDATION_ERROR: ", "keys", "update", k.ID, "--max-budget", "0.0000001")
	r.fails(1, "origin: VALIDATION_ERROR: ", "deployments", "update", "chat", "--pricing", `{"currency":"usd","prompt_per_million":1,"completion_per_million":1}`)
}
