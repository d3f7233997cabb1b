package origin

import (
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/keymesh/keymesh/api"
	"github.com/keymesh/keymesh/event"
)

// Token limits and quotas are bounded and checked on keys, deployments and
// projects alike: a refusal is 400 VALIDATION_ERROR naming the field, and
// nothing is committed.
func TestTokenLimitsValidated(t *testing.T) {
	f := newRefusals(t)
	c, keys, deps := f.c, defaultKeys, defaultDeps
	type body = map[string]any
	cases := []struct {
		what, field string
		body        body
	}{
		{"zero per minute", "tokens_per_minute", body{"tokens_per_minute": 0}},
		{"negative per minute", "tokens_per_minute", body{"tokens_per_minute": -5}},
		{"huge per minute", "tokens_per_minute", body{"tokens_per_minute": int64(maxTokensPerPeriod) + 1}},
		{"per minute not a number", "tokens_per_minute", body{"tokens_per_minute": "100"}},
		{"per minute a fraction", "tokens_per_minute", body{"tokens_per_minute": 1.5}},
		{"zero per day", "tokens_per_day", body{"tokens_per_day": 0}},
		{"huge per day", "tokens_per_day", body{"tokens_per_day": int64(maxTokensPerPeriod) + 1}},
		{"quota not an object", "quota", body{"quota": 5}},
		{"quota empty", "quota", body{"quota": body{}}},
		{"quota both", "quota", body{"quota": body{"tokens": 1, "requests": 1}}},
		{"quota refill only", "quota", body{"quota": body{"refill": "daily"}}},
		{"quota zero tokens", "quota", body{"quota": body{"tokens": 0}}},
		{"quota huge requests", "quota", body{"quota": body{"requests": int64(maxQuotaAmount) + 1}}},
		{"quota unknown refill", "quota", body{"quota": body{"tokens": 10, "refill": "weekly"}}},
		{"quota empty refill", "quota", body{"quota": body{"tokens": 10, "refill": ""}}},
		{"quota unknown member", "quota", body{"quota": body{"tokens": 10, "credits": 5}}},
	}
	targets := []struct{ method, path string }{{"POST", keys}, {"PATCH", keys + "/" + f.keyID}, {"PATCH", deps + "/d"}, {"PATCH", "/v1/projects/default"}}
	for _, tc := range cases {
		for _, target := range targets {
			f.refused(tc.what, tc.field, target.method, target.path, tc.body)
		}
	}
	// default_max_tokens is a deployment's only.
	for _, v := range []any{0, -1, maxDefaultMaxToks + 1, "10"} {
		st, b := c.do("PATCH", deps+"/d", body{"default_max_tokens": v})
		wantError(t, "default_max_tokens "+strings.TrimSpace(string(mustMarshal(v))), st, b, 400, "VALIDATION_ERROR")
	}
	st, b := c.do("PATCH", keys+"/"+f.keyID, body{"default_max_tokens": 10})
	wantError(t, "default_max_tokens on a key", st, b, 400, "VALIDATION_ERROR")
	f.unchanged()
	// The bounds themselves are accepted.
	c.must(200, "PATCH", keys+"/"+f.keyID, body{"tokens_per_minute": maxTokensPerPeriod, "tokens_per_day": 1,
		"quota": body{"requests": maxQuotaAmount, "refill": nil}}, nil)
	c.must(200, "PATCH", deps+"/d", body{"default_max_tokens": maxDefaultMaxToks, "quota": body{"tokens": 1, "refill": "monthly"}}, nil)
}

// wantTokens fails unless an answer's token members are as given (0: null).
func wantTokens(t *testing.T, what string, perMin, perDay *int64, q *api.Quota, wantMin, wantDay int64, wantQuota string) {
	t.Helper()
	got := func(p *int64) int64 {
		if p == nil {
			return 0
		}
		return *p
	}
	gq := "null"
	if q != nil {
		gq = string(mustMarshal(q))
	}
	if got(perMin) != wantMin || got(perDay) != wantDay || gq != wantQuota {
		t.Fatalf("%s: tokens_per_minute %d tokens_per_day %d quota %s; want %d %d %s", what, got(perMin), got(perDay), gq, wantMin, wantDay, wantQuota)
	}
}

// Token bounds are stored, answered, left alone by a patch that does not
// name them, and removed one by one by null: on keys, deployments and
// projects, on both stores.
func TestTokenLimitsRoundTrip(t *testing.T) {
	eachStore(t, func(t *testing.T, cfg Config) {
		s := startServer(t, cfg)
		c := newClient(t, s)
		keys, deps := "/v1/projects/default/keys", "/v1/projects/default/deployments"
		type body = map[string]any

		var d api.Deployment
		b := dep("chat", nil, "/")
		b["tokens_per_minute"], b["quota"], b["default_max_tokens"] = 1000, body{"tokens": 5000, "refill": "daily"}, 256
		c.must(201, "POST", deps, b, &d)
		wantTokens(t, "created deployment", d.TokensPerMinute, d.TokensPerDay, d.Quota, 1000, 0, `{"tokens":5000,"refill":"daily"}`)
		if d.DefaultMaxTokens == nil || *d.DefaultMaxTokens != 256 {
			t.Fatalf("default_max_tokens %v", d.DefaultMaxTokens)
		}
		c.must(200, "PATCH", deps+"/chat", body{"name": "chat"}, &d)
		wantTokens(t, "deployment after an unrelated patch", d.TokensPerMinute, d.TokensPerDay, d.Quota, 1000, 0, `{"tokens":5000,"refill":"daily"}`)
		c.must(200, "PATCH", deps+"/chat", body{"tokens_per_minute": nil, "tokens_per_day": 9, "default_max_tokens": nil}, &d)
		wantTokens(t, "deployment patched", d.TokensPerMinute, d.TokensPerDay, d.Quota, 0, 9, `{"tokens":5000,"refill":"daily"}`)
		if d.DefaultMaxTokens != nil {
			t.Fatalf("default_max_tokens not removed: %v", *d.DefaultMaxTokens)
		}
		c.must(200, "GET", deps+"/chat", nil, &d)
		wantTokens(t, "deployment read back", d.TokensPerMinute, d.TokensPerDay, d.Quota, 0, 9, `{"tokens":5000,"refill":"daily"}`)

		var k api.Key
		c.must(201, "POST", keys, body{"name": "ci", "tokens_per_day": 100000, "quota": body{"requests": 50}}, &k)
		wantTokens(t, "created key", k.TokensPerMinute, k.TokensPerDay, k.Quota, 0, 100000, `{"requests":50,"refill":null}`)
		c.must(200, "PATCH", keys+"/"+k.ID, body{"description": "x", "tokens_per_minute": 10}, &k)
		wantTokens(t, "key patched", k.TokensPerMinute, k.TokensPerDay, k.Quota, 10, 100000, `{"requests":50,"refill":null}`)
		k = api.Key{ID: k.ID} // decoded afresh: json would merge into the old quota
		c.must(200, "PATCH", keys+"/"+k.ID, body{"quota": body{"tokens": 7, "refill": "monthly"}}, &k)
		wantTokens(t, "key quota replaced", k.TokensPerMinute, k.TokensPerDay, k.Quota, 10, 100000, `{"tokens":7,"refill":"monthly"}`)
		c.must(200, "GET", keys+"/"+k.ID, nil, &k)
		wantTokens(t, "key read back", k.TokensPerMinute, k.TokensPerDay, k.Quota, 10, 100000, `{"tokens":7,"refill":"monthly"}`)
		st, raw := c.do("PATCH", keys+"/"+k.ID, body{"tokens_per_minute": nil, "tokens_per_day": nil, "quota": nil})
		if st != 200 || !strings.Contains(string(raw), `"tokens_per_minute":null,"tokens_per_day":null,"quota":null`) {
			t.Fatalf("key bounds removed: %d %s", st, raw)
		}
		var plain api.Key
		c.must(201, "POST", keys, body{}, &plain)
		wantTokens(t, "a key without bounds", plain.TokensPerMinute, plain.TokensPerDay, plain.Quota, 0, 0, "null")

		var p api.ProjectDetail
		c.must(200, "PATCH", "/v1/projects/default", body{"tokens_per_minute": 60000, "quota": body{"tokens": 1000000, "refill": "monthly"}}, &p)
		wantTokens(t, "project patched", p.TokensPerMinute, p.TokensPerDay, p.Quota, 60000, 0, `{"tokens":1000000,"refill":"monthly"}`)
		c.must(200, "PATCH", "/v1/projects/default", body{"max_keys": 50}, &p)
		wantTokens(t, "project after an unrelated patch", p.TokensPerMinute, p.TokensPerDay, p.Quota, 60000, 0, `{"tokens":1000000,"refill":"monthly"}`)
		c.must(200, "GET", "/v1/projects/default", nil, &p)
		wantTokens(t, "project read back", p.TokensPerMinute, p.TokensPerDay, p.Quota, 60000, 0, `{"tokens":1000000,"refill":"monthly"}`)
		c.must(200, "PATCH", "/v1/projects/default", body{"tokens_per_minute": nil, "quota": nil}, &p)
		wantTokens(t, "project bounds removed", p.TokensPerMinute, p.TokensPerDay, p.Quota, 0, 0, "null")

		// A project key may not change its project's bounds.
		var admin struct{ Key string }
		c.must(201, "POST", keys, body{"permissions": event.Permissions}, &admin)
		st, raw = keyClient(t, s, admin.Key).do("PATCH", "/v1/projects/default", body{"tokens_per_minute": 1})
		wantError(t, "a project key setting its project's bounds", st, raw, 403, "PERMISSION_DENIED")
	})
}

// The events carry the bounds: a key's its own; a deployment's its own,
// its default reservation and its project's. A change of the project's
// bounds re-sends every deployment of the project, one revision each, in
// one transaction; ?wait waits for the last, X-Revision names it. A change
// of anything else of the project, or to the same bounds, sends nothing.
func TestProjectTokensResendDeployments(t *testing.T) {
	eachStore(t, func(t *testing.T, cfg Config) {
		s := startServer(t, cfg)
		c := newClient(t, s)
		type body = map[string]any
		deps := "/v1/projects/default/deployments"
		c.must(201, "POST", "/v1/projects", body{"name": "other"}, nil)
		c.must(201, "POST", "/v1/projects/other/deployments", dep("theirs", []string{"theirs.example"}, "/"), nil)
		var a, b, gone api.Deployment
		c.must(201, "POST", deps, dep("a", []string{"a.example"}, "/"), &a)
		bb := dep("b", []string{"b.example"}, "/")
		bb["tokens_per_day"], bb["default_max_tokens"] = 500, 64
		c.must(201, "POST", deps, bb, &b)
		c.must(201, "POST", deps, dep("gone", []string{"gone.example"}, "/"), &gone)
		c.must(204, "DELETE", deps+"/gone", nil, nil)
		var k api.Key
		c.must(201, "POST", "/v1/projects/default/keys", body{"deployments": []string{"a"}, "tokens_per_minute": 30,
			"quota": body{"tokens": 1000, "refill": "daily"}}, &k)
		before := s.Revision()

		st, raw, h := c.doH("PATCH", "/v1/projects/default?wait=5s", body{"tokens_per_minute": 1000, "quota": body{"requests": 10, "refill": "monthly"}}, nil)
		if st != 200 {
			t.Fatalf("PATCH project: %d %s", st, raw)
		}
		var p api.ProjectDetail
		mustJSON(t, raw, &p)
		if p.Propagation == nil {
			t.Fatalf("?wait answered no propagation: %s", raw)
		}
		if got := h.Get("X-Revision"); got != strconv.FormatUint(before+2, 10) || s.Revision() != before+2 {
			t.Fatalf("X-Revision %s, store at %d; want %d (one revision for each of the two live deployments)", got, s.Revision(), before+2)
		}
		want := &event.TokenLimits{TokensPerMinute: 1000, Quota: &event.Quota{Requests: 10, Refill: event.QuotaRefillMonthly}}
		recs := streamRecords(t, s, before+2)
		for _, r := range recs[before:] {
			d := r.Deployment
			if r.Kind != event.KindDeployment || d == nil || d.Deleted || d.Revision != r.Revision || !tokensEqual(d.ProjectTokens, want) {
				t.Fatalf("re-sent event %d: %+v", r.Revision, r)
			}
		}
		ra, rb := recs[before].Deployment, recs[before+1].Deployment
		if ids := []string{ra.ID, rb.ID}; !(ids[0] == a.ID && ids[1] == b.ID || ids[0] == b.ID && ids[1] == a.ID) {
			t.Fatalf("re-sent %v, want %s and %s", ids, a.ID, b.ID)
		}
		if ra.ID == b.ID {
			ra, rb = rb, ra
		}
		if ra.Tokens != nil || rb.Tokens == nil || rb.Tokens.TokensPerDay != 500 || rb.DefaultMaxTokens != 64 || len(rb.Hosts) != 1 || rb.Hosts[0] != "b.example" {
			t.Fatalf("re-sent deployments changed: %+v %+v", ra, rb)
		}
		// The deployments' own revisions moved with their events.
		var got api.Deployment
		c.must(200, "GET", deps+"/b", nil, &got)
		if got.Revision != rb.Revision {
			t.Fatalf("deployment b at revision %d, its event %d", got.Revision, rb.Revision)
		}
		// The key's event carries its own bounds.
		for _, r := range recs {
			if r.Kind == event.KindKey && r.Key.ID == k.ID &&
				!tokensEqual(r.Key.Tokens, &event.TokenLimits{TokensPerMinute: 30, Quota: &event.Quota{Tokens: 1000, Refill: event.QuotaRefillDaily}}) {
				t.Fatalf("key event %+v", r.Key.Tokens)
			}
		}

		// No events: the same bounds again, or another rule of the project.
		rev := s.Revision()
		c.must(200, "PATCH", "/v1/projects/default", body{"tokens_per_minute": 1000}, nil)
		c.must(200, "PATCH", "/v1/projects/default", body{"max_keys": 500}, nil)
		if s.Revision() != rev {
			t.Fatalf("a change that is no event took revisions: %d → %d", rev, s.Revision())
		}
		// A new deployment, and a changed one, carry the project's bounds.
		var cdep api.Deployment
		c.must(201, "POST", deps, dep("c", []string{"c.example"}, "/"), &cdep)
		c.must(200, "PATCH", deps+"/a", body{"tokens_per_minute": 5}, nil)
		recs = streamRecords(t, s, rev+2)
		for _, r := range recs[rev:] {
			if r.Deployment == nil || !tokensEqual(r.Deployment.ProjectTokens, want) {
				t.Fatalf("event %d does not carry the project's bounds: %+v", r.Revision, r.Deployment)
			}
		}
		// Removing them re-sends the three deployments without.
		rev = s.Revision()
		c.must(200, "PATCH", "/v1/projects/default", body{"tokens_per_minute": nil, "quota": nil}, nil)
		recs = streamRecords(t, s, rev+3)
		for _, r := range recs[rev:] {
			if r.Deployment == nil || r.Deployment.ProjectTokens != nil {
				t.Fatalf("event %d after removal: %+v", r.Revision, r.Deployment)
			}
		}
		// The other project's deployment was never re-sent.
		for _, r := range recs[before:] {
			if r.Deployment != nil && r.Deployment.Project != a.Project {
				t.Fatalf("another project's deployment re-sent: %+v", r.Deployment)
			}
		}
		// The snapshot edges start from carries them too.
		c.must(200, "PATCH", "/v1/projects/default", body{"tokens_per_day": 77}, nil)
		_, ds, err := s.store.snapshot(t.Context())
		if err != nil {
			t.Fatal(err)
		}
		for _, d := range ds {
			if (d.Project == a.Project) != (d.ProjectTokens != nil && d.ProjectTokens.TokensPerDay == 77) {
				t.Fatalf("snapshot deployment %s: project tokens %+v", d.Name, d.ProjectTokens)
			}
		}
	})
}

// GET /v1/key shows the key's token bounds and what the ledger holds
// against its quota in the quota's period: today, this month, or ever.
func TestOwnKeyShowsTokenLimitsAndQuotaUsed(t *testing.T) {
	cfg := testConfig(t.TempDir())
	clk := &fakeClock{t: usageClock}
	cfg.now = clk.now
	cfg.UsageDedupRetention = 400 * 24 * time.Hour // a record of last year is taken
	s := startServer(t, cfg)
	c := newClient(t, s)
	type body = map[string]any
	var d api.Deployment
	c.must(201, "POST", "/v1/projects/default/deployments", dep("chat", nil, "/"), &d)
	var k struct{ ID, Project, Key string }
	c.must(201, "POST", "/v1/projects/default/keys", body{"deployments": []string{"chat"}, "tokens_per_minute": 100,
		"quota": body{"tokens": 1000, "refill": "daily"}}, &k)
	e := newEdgePublisher(t, s.NATSURL(), s, "edge-1")
	rec := func(id string, at time.Time, p, cpl int64) {
		e.must(event.Usage{ID: id, Edge: "edge-1", KeyID: k.ID, Project: k.Project, Deployment: d.ID, Model: "m",
			PromptTokens: p, CompletionTokens: cpl, Status: 200, Time: at}, id)
	}
	rec("today", usageClock.Add(-time.Hour), 10, 5)
	rec("this-month", usageClock.AddDate(0, 0, -3), 100, 50)
	rec("last-year", usageClock.AddDate(-1, 0, 0), 1000, 500)
	waitUsageStats(t, s, 3, 0, 0)
	self := func() api.KeySelf {
		st, b := keyClient(t, s, k.Key).do("GET", "/v1/key", nil)
		if st != 200 {
			t.Fatalf("GET /v1/key: %d %s", st, b)
		}
		return checkAnswer[api.KeySelf](t, "GET /v1/key", b)
	}
	used := func(v api.KeySelf) int64 {
		if v.QuotaUsed == nil {
			return -1
		}
		return *v.QuotaUsed
	}
	v := self()
	wantTokens(t, "GET /v1/key", v.TokensPerMinute, v.TokensPerDay, v.Quota, 100, 0, `{"tokens":1000,"refill":"daily"}`)
	if used(v) != 15 {
		t.Fatalf("daily quota used %d, want 15", used(v))
	}
	for _, tc := range []struct {
		quota body
		want  int64
	}{
		{body{"tokens": 1000, "refill": "monthly"}, 165},
		{body{"tokens": 1000}, 1665},
		{body{"requests": 10, "refill": "monthly"}, 2},
		{body{"requests": 10}, 3},
	} {
		c.must(200, "PATCH", "/v1/projects/default/keys/"+k.ID, body{"quota": tc.quota}, nil)
		if got := used(self()); got != tc.want {
			t.Fatalf("quota %v: used %d, want %d", tc.quota, got, tc.want)
		}
	}
	c.must(200, "PATCH", "/v1/projects/default/keys/"+k.ID, body{"quota": nil}, nil)
	if v := self(); v.QuotaUsed != nil || v.Quota != nil {
		t.Fatalf("without a quota: %+v %v", v.Quota, v.QuotaUsed)
	}
}
