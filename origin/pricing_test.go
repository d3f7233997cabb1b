package origin

import (
	"context"
	"encoding/json"
	"strings"
	"testing"
	"time"

	"github.com/keymesh/keymesh/api"
	"github.com/keymesh/keymesh/event"
)

// Prices and spend caps are bounded and checked: a refusal is 400
// VALIDATION_ERROR naming the field, on keys, deployments and projects
// alike, and nothing is committed.
func TestPricingAndBudgetValidated(t *testing.T) {
	f := newRefusals(t)
	c, keys, deps := f.c, defaultKeys, defaultDeps
	type body = map[string]any
	budgets := []struct {
		what, field string
		body        body
	}{
		{"negative budget", "max_budget", body{"max_budget": -1}},
		{"huge budget", "max_budget", body{"max_budget": maxBudget + 1}},
		{"budget past the float range", "max_budget", body{"max_budget": jsonRaw("1e999")}},
		{"budget with 7 decimals", "max_budget", body{"max_budget": jsonRaw("0.0000001")}},
		{"budget a string", "max_budget", body{"max_budget": "10"}},
		{"budget an object", "max_budget", body{"max_budget": body{}}},
		{"refill without a budget", "budget_refill", body{"budget_refill": "daily"}},
		{"unknown refill", "budget_refill", body{"max_budget": 5, "budget_refill": "weekly"}},
		{"empty refill", "budget_refill", body{"max_budget": 5, "budget_refill": ""}},
		{"refill with a removed budget", "budget_refill", body{"max_budget": nil, "budget_refill": "daily"}},
	}
	targets := []struct{ method, path string }{{"POST", keys}, {"PATCH", keys + "/" + f.keyID}, {"POST", deps}, {"PATCH", deps + "/d"}, {"PATCH", "/v1/projects/default"}}
	check := func(what, field, method, path string, b body) {
		t.Helper()
		if method == "POST" && path == deps {
			b = withDep(b)
		}
		f.refused(what, field, method, path, b)
	}
	for _, tc := range budgets {
		for _, target := range targets {
			check(tc.what, tc.field, target.method, target.path, tc.body)
		}
	}
	good := func() body {
		return body{"currency": "USD", "prompt_per_million": 0.5, "completion_per_million": 1.5}
	}
	with := func(k string, v any) body { p := good(); p[k] = v; return body{"pricing": p} }
	without := func(k string) body { p := good(); delete(p, k); return body{"pricing": p} }
	pricings := []struct {
		what string
		body body
	}{
		{"not an object", body{"pricing": 5}},
		{"no currency", without("currency")},
		{"lower-case currency", with("currency", "usd")},
		{"long currency", with("currency", "USDT")},
		{"no prompt price", without("prompt_per_million")},
		{"no completion price", without("completion_per_million")},
		{"negative price", with("prompt_per_million", -0.5)},
		{"huge price", with("completion_per_million", maxPricePerMillion+1)},
		{"a price past the float range", with("prompt_per_million", jsonRaw("1e400"))},
		{"a price with 10 decimals", with("cached_per_million", jsonRaw("0.0000000001"))},
		{"a price as a string", with("prompt_per_million", "0.5")},
		{"an unknown member", with("input_per_million", 1)},
	}
	for _, tc := range pricings {
		check("pricing "+tc.what, "pricing", "PATCH", deps+"/d", tc.body)
		check("pricing "+tc.what, "pricing", "POST", deps, tc.body)
	}
	for _, target := range []struct{ method, path string }{{"POST", keys}, {"PATCH", keys + "/" + f.keyID}, {"PATCH", "/v1/projects/default"}} {
		st, raw := c.do(target.method, target.path, body{"pricing": good()})
		wantError(t, "pricing on "+target.path, st, raw, 400, "VALIDATION_ERROR")
	}
	f.unchanged()
	// The bounds themselves are accepted.
	c.must(200, "PATCH", keys+"/"+f.keyID, body{"max_budget": maxBudget, "budget_refill": "monthly"}, nil)
	c.must(200, "PATCH", keys+"/"+f.keyID, body{"max_budget": 0}, nil)
	c.must(200, "PATCH", deps+"/d", body{"max_budget": jsonRaw("0.000001"), "pricing": body{"currency": "EUR",
		"prompt_per_million": maxPricePerMillion, "completion_per_million": 0, "cached_per_million": jsonRaw("0.000000001")}}, nil)
}

// jsonRaw is a JSON number as written, for values a float64 would not
// carry through json.Marshal as meant.
type jsonRaw string

func (j jsonRaw) MarshalJSON() ([]byte, error) { return []byte(j), nil }

// withDep makes b a deployment creation body.
func withDep(b map[string]any) map[string]any {
	out := dep("new", nil, "/new")
	for k, v := range b {
		out[k] = v
	}
	return out
}

// Pricing and budgets are stored exactly (decimals read as decimals, kept
// as nano-units: the events carry those), answered as written, kept by a
// patch that does not name them, and removed by null: on keys, deployments
// and projects, on both stores.
func TestPricingAndBudgetRoundTrip(t *testing.T) {
	eachStore(t, func(t *testing.T, cfg Config) {
		s := startServer(t, cfg)
		c := newClient(t, s)
		keys, deps := "/v1/projects/default/keys", "/v1/projects/default/deployments"
		type body = map[string]any
		wantBudget := func(what string, max *json.Number, refill *string, wantMax, wantRefill string) {
			t.Helper()
			gm, gr := "null", "null"
			if max != nil {
				gm = max.String()
			}
			if refill != nil {
				gr = *refill
			}
			if gm != wantMax || gr != wantRefill {
				t.Fatalf("%s: max_budget %s budget_refill %s, want %s %s", what, gm, gr, wantMax, wantRefill)
			}
		}

		var d api.Deployment
		b := dep("chat", nil, "/")
		b["pricing"] = body{"currency": "USD", "prompt_per_million": jsonRaw("0.15"), "completion_per_million": jsonRaw("0.6"), "cached_per_million": jsonRaw("0.075")}
		b["max_budget"], b["budget_refill"] = jsonRaw("250.125"), "daily"
		c.must(201, "POST", deps, b, &d)
		if d.Pricing == nil || string(mustMarshal(d.Pricing)) != `{"currency":"USD","prompt_per_million":0.15,"completion_per_million":0.6,"cached_per_million":0.075}` {
			t.Fatalf("created pricing %s", mustMarshal(d.Pricing))
		}
		wantBudget("created deployment", d.MaxBudget, d.BudgetRefill, "250.125", "daily")
		ev, err := s.store.getDeployment(context.Background(), d.Project, d.ID)
		if err != nil {
			t.Fatal(err)
		}
		if p := ev.Pricing; p == nil || p.Currency != "USD" || p.Prompt != 150_000_000 || p.Completion != 600_000_000 || p.Cached == nil || *p.Cached != 75_000_000 ||
			ev.Tokens == nil || ev.Tokens.Budget == nil || *ev.Tokens.Budget != (event.Budget{MaxNanos: 250_125_000_000, Refill: "daily"}) {
			t.Fatalf("the deployment's record: pricing %+v tokens %+v", ev.Pricing, ev.Tokens)
		}
		d = api.Deployment{}
		c.must(200, "PATCH", deps+"/chat", body{"name": "chat", "max_budget": 10}, &d)
		wantBudget("deployment with a new max_budget", d.MaxBudget, d.BudgetRefill, "10", "daily")
		if d.Pricing == nil || d.Pricing.PromptPerMillion != "0.15" {
			t.Fatalf("pricing after an unrelated patch: %+v", d.Pricing)
		}
		d = api.Deployment{}
		c.must(200, "PATCH", deps+"/chat", body{"pricing": body{"currency": "EUR", "prompt_per_million": 1, "completion_per_million": 2}}, &d)
		if d.Pricing == nil || string(mustMarshal(d.Pricing)) != `{"currency":"EUR","prompt_per_million":1,"completion_per_million":2,"cached_per_million":null}` {
			t.Fatalf("pricing replaced: %s", mustMarshal(d.Pricing))
		}
		st, raw := c.do("PATCH", deps+"/chat", body{"pricing": nil, "max_budget": nil})
		if st != 200 || !strings.Contains(string(raw), `"max_budget":null,"budget_refill":null,"pricing":null`) {
			t.Fatalf("deployment's pricing and budget removed: %d %s", st, raw)
		}
		c.must(200, "GET", deps+"/chat", nil, &d)
		if d.Pricing != nil || d.MaxBudget != nil {
			t.Fatalf("read back: %+v %v", d.Pricing, d.MaxBudget)
		}

		var k api.Key
		c.must(201, "POST", keys, body{"name": "ci", "max_budget": jsonRaw("0.000001")}, &k)
		wantBudget("created key", k.MaxBudget, k.BudgetRefill, "0.000001", "null")
		c.must(200, "PATCH", keys+"/"+k.ID, body{"max_budget": 20, "budget_refill": "monthly"}, &k)
		c.must(200, "GET", keys+"/"+k.ID, nil, &k)
		wantBudget("key read back", k.MaxBudget, k.BudgetRefill, "20", "monthly")
		id := k.ID
		k = api.Key{}
		c.must(200, "PATCH", keys+"/"+id, body{"max_budget": 0, "budget_refill": nil}, &k)
		wantBudget("a zero budget that never refills", k.MaxBudget, k.BudgetRefill, "0", "null")
		k = api.Key{}
		c.must(200, "PATCH", keys+"/"+id, body{"max_budget": nil}, &k)
		wantBudget("key budget removed", k.MaxBudget, k.BudgetRefill, "null", "null")

		var p api.ProjectDetail
		c.must(200, "PATCH", "/v1/projects/default", body{"max_budget": 1000, "budget_refill": "monthly"}, &p)
		wantBudget("project patched", p.MaxBudget, p.BudgetRefill, "1000", "monthly")
		ev, err = s.store.getDeployment(context.Background(), d.Project, d.ID)
		if err != nil {
			t.Fatal(err)
		}
		if ev.ProjectTokens == nil || ev.ProjectTokens.Budget == nil || *ev.ProjectTokens.Budget != (event.Budget{MaxNanos: 1000 * event.NanosPerUnit, Refill: "monthly"}) {
			t.Fatalf("the deployment's record does not carry its project's budget: %+v", ev.ProjectTokens)
		}
		p = api.ProjectDetail{}
		c.must(200, "GET", "/v1/projects/default", nil, &p)
		wantBudget("project read back", p.MaxBudget, p.BudgetRefill, "1000", "monthly")
		p = api.ProjectDetail{}
		c.must(200, "PATCH", "/v1/projects/default", body{"max_budget": nil}, &p)
		wantBudget("project budget removed", p.MaxBudget, p.BudgetRefill, "null", "null")
	})
}

// The ledger prices each record at ingest, at its deployment's pricing
// then: /v1/usage sums the cost, a later price change leaves what was
// stored as it was, an unpriced deployment costs 0, and GET /v1/key shows
// the key's budget and what the ledger holds against it in its period.
func TestUsageCostAtIngest(t *testing.T) {
	eachStore(t, func(t *testing.T, cfg Config) {
		clk := &fakeClock{t: usageClock}
		cfg.now = clk.now
		s := startServer(t, cfg)
		c := newClient(t, s)
		type body = map[string]any
		var priced, free api.Deployment
		b := dep("priced", nil, "/")
		b["pricing"] = body{"currency": "USD", "prompt_per_million": 1, "completion_per_million": 2, "cached_per_million": jsonRaw("0.5")}
		c.must(201, "POST", "/v1/projects/default/deployments", b, &priced)
		c.must(201, "POST", "/v1/projects/default/deployments", dep("free", nil, "/free"), &free)
		var k struct{ ID, Project, Key string }
		c.must(201, "POST", "/v1/projects/default/keys", body{"deployments": []string{"priced", "free"}, "max_budget": 1, "budget_refill": "daily"}, &k)
		e := newEdgePublisher(t, s.NATSURL(), s, "edge-1")
		rec := func(id, depID string, at time.Time, p, cpl, cached int64) {
			e.must(event.Usage{ID: id, Edge: "edge-1", KeyID: k.ID, Project: k.Project, Deployment: depID, Model: "m",
				PromptTokens: p, CompletionTokens: cpl, CachedTokens: cached, Status: 200, Time: at}, id)
		}
		// 1,000,000 prompt tokens, 400,000 of them cached, and 250,000
		// completion: 0.6 + 0.2 + 0.5 = 1.3 USD.
		rec("a", priced.ID, usageClock.Add(-time.Hour), 1_000_000, 250_000, 400_000)
		rec("b", free.ID, usageClock.Add(-time.Hour), 1_000_000, 1_000_000, 0)
		rec("c", priced.ID, usageClock.AddDate(0, 0, -2), 1, 0, 0) // 0.000001, days ago
		waitUsageStats(t, s, 3, 0, 0)
		cost := func(query string) string {
			t.Helper()
			r := usageReport(t, c, query)
			if len(r.Items) != 1 {
				t.Fatalf("usage %s: %+v", query, r.Items)
			}
			return r.Items[0].Cost.String()
		}
		win := "since=2026-03-15&until=2026-03-16"
		if got := cost(win); got != "1.3" {
			t.Fatalf("today's cost %s, want 1.3", got)
		}
		if got := cost("project=default&deployment=free&" + win); got != "0" {
			t.Fatalf("the unpriced deployment's cost %s, want 0", got)
		}
		// A price change applies to what is stored after it only.
		c.must(200, "PATCH", "/v1/projects/default/deployments/priced", body{"pricing": body{"currency": "USD", "prompt_per_million": 10, "completion_per_million": 10}}, nil)
		rec("d", priced.ID, usageClock.Add(-time.Minute), 100_000, 0, 50_000) // 1 USD: the cached ones at the prompt price
		waitUsageStats(t, s, 4, 0, 0)
		if got := cost(win); got != "2.3" {
			t.Fatalf("today's cost after the price change %s, want 2.3", got)
		}
		if got := cost("since=2026-03-10&until=2026-03-16"); got != "2.300001" {
			t.Fatalf("the week's cost %s, want 2.300001", got)
		}
		st, raw := keyClient(t, s, k.Key).do("GET", "/v1/key", nil)
		if st != 200 {
			t.Fatalf("GET /v1/key: %d %s", st, raw)
		}
		self := checkAnswer[api.KeySelf](t, "GET /v1/key", raw)
		if self.MaxBudget == nil || self.MaxBudget.String() != "1" || self.BudgetRefill == nil || *self.BudgetRefill != "daily" ||
			self.BudgetSpent == nil || self.BudgetSpent.String() != "2.3" || self.Usage.Month.Cost.String() != "2.300001" {
			t.Fatalf("GET /v1/key: %s", raw)
		}
		c.must(200, "PATCH", "/v1/projects/default/keys/"+k.ID, body{"max_budget": 5, "budget_refill": nil}, nil)
		_, raw = keyClient(t, s, k.Key).do("GET", "/v1/key", nil)
		if self = checkAnswer[api.KeySelf](t, "GET /v1/key", raw); self.BudgetSpent == nil || self.BudgetSpent.String() != "2.300001" {
			t.Fatalf("a budget that never refills counts everything: %s", raw)
		}
	})
}
