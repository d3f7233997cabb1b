package origin

import (
	"fmt"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/nats-io/nats.go"

	"github.com/keymesh/keymesh/event"
	"github.com/keymesh/keymesh/internal/natsauth"
	"github.com/keymesh/keymesh/internal/testutil"
)

// balanceWatcher collects the balances the origin publishes, as an edge
// receives them: over NATS with an edge's credentials (so the edge's
// permission to subscribe is tested too), opened with the origin's key.
type balanceWatcher struct {
	mu      sync.Mutex
	got     map[balanceCounter]event.Balance
	records int
	bad     int
}

func watchBalances(t *testing.T, s *Server) *balanceWatcher {
	t.Helper()
	keys, err := natsauth.Load(s.cfg.DataDir)
	if err != nil {
		t.Fatal(err)
	}
	tok, seed, err := keys.UserJWT(natsauth.RoleEdge, "edge-watch")
	if err != nil {
		t.Fatal(err)
	}
	nc, err := nats.Connect(s.NATSURL(), nats.UserJWTAndSeed(tok, string(seed)), nats.CustomInboxPrefix(event.EdgeInbox("edge-watch")))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(nc.Close)
	ver, err := event.NewVerifier(s.PublicKey())
	if err != nil {
		t.Fatal(err)
	}
	w := &balanceWatcher{got: map[balanceCounter]event.Balance{}}
	if _, err := nc.Subscribe(event.OriginBalanceSubject, func(m *nats.Msg) {
		rec, err := ver.Open(m.Data)
		w.mu.Lock()
		defer w.mu.Unlock()
		if err != nil || event.CheckBalances(rec) != nil {
			w.bad++
			return
		}
		w.records++
		for _, b := range rec.Balances {
			w.got[balanceCounter{b.Scope, b.ID, b.Kind}] = b
		}
	}); err != nil {
		t.Fatal(err)
	}
	if err := nc.Flush(); err != nil {
		t.Fatal(err)
	}
	return w
}

func (w *balanceWatcher) get(scope event.LimitScope, id string, kind event.LimitKind) (event.Balance, bool) {
	w.mu.Lock()
	defer w.mu.Unlock()
	b, ok := w.got[balanceCounter{scope, id, kind}]
	return b, ok
}

func (w *balanceWatcher) reset() {
	w.mu.Lock()
	w.got = map[balanceCounter]event.Balance{}
	w.mu.Unlock()
}

func TestBalancesFromTheLedger(t *testing.T) {
	eachStore(t, testBalancesFromTheLedger)
}

// After usage is ingested, the origin publishes, sealed with its key, what
// the ledger holds of each long-period bound in its current period: a
// key's daily token quota and tokens_per_day (today's tokens), a
// deployment's monthly request quota (this month's requests), a project's
// tokens_per_day, a key's daily spend cap (today's cost, priced at
// ingest); nothing for a key without bounds. A changed figure is
// sent again; unchanged ones are refreshed.
func testBalancesFromTheLedger(t *testing.T, cfg Config) {
	clk := &fakeClock{t: usageClock}
	cfg.now = clk.now
	cfg.BalanceInterval = 50 * time.Millisecond
	cfg.BalanceRefresh = 200 * time.Millisecond
	s := startServer(t, cfg)
	c := newClient(t, s)
	w := watchBalances(t, s)

	var d struct{ ID string }
	c.must(201, "POST", "/v1/projects/default/deployments", dep("chat", []string{"chat.example"}, "/"), &d)
	c.must(200, "PATCH", "/v1/projects/default/deployments/chat", map[string]any{"quota": map[string]any{"requests": 100, "refill": "monthly"},
		"pricing": map[string]any{"currency": "USD", "prompt_per_million": 1, "completion_per_million": 2}}, nil)
	c.must(200, "PATCH", "/v1/projects/default", map[string]any{"tokens_per_day": 1_000_000}, nil)
	var k, k2, plain struct{ ID, Project string }
	c.must(201, "POST", "/v1/projects/default/keys", map[string]any{"name": "quota", "deployments": []string{d.ID},
		"quota": map[string]any{"tokens": 1000, "refill": "daily"}, "tokens_per_day": 5000, "max_budget": 10, "budget_refill": "daily"}, &k)
	c.must(201, "POST", "/v1/projects/default/keys", map[string]any{"name": "never", "deployments": []string{d.ID},
		"quota": map[string]any{"requests": 10, "refill": nil}}, &k2)
	c.must(201, "POST", "/v1/projects/default/keys", map[string]any{"name": "plain", "deployments": []string{d.ID}}, &plain)
	project := k.Project

	e := newEdgePublisher(t, s.NATSURL(), s, "edge-1")
	rec := func(id, key string, at time.Time, p, cpl int64) event.Usage {
		return event.Usage{ID: id, Edge: "edge-1", KeyID: key, Project: project, Deployment: d.ID, Model: "m",
			PromptTokens: p, CompletionTokens: cpl, Status: 200, DurationMS: 3, Time: at}
	}
	today := usageClock.Add(-time.Hour)
	yesterday := usageClock.Add(-24 * time.Hour)
	for _, u := range []event.Usage{
		rec("a1", k.ID, today, 100, 50),
		rec("a2", k.ID, yesterday, 600, 400), // another day: not today's quota, but this month's
		rec("a3", k2.ID, today, 10, 20),
		rec("a4", k2.ID, yesterday, 1, 1),
		rec("a5", plain.ID, today, 7, 3),
	} {
		e.must(u, u.ID)
	}
	waitUsageStats(t, s, 5, 0, 0)

	day, _, _ := periodDays(event.QuotaRefillDaily, usageClock)
	month, _, _ := periodDays(event.QuotaRefillMonthly, usageClock)
	type want struct {
		scope        event.LimitScope
		id           string
		kind         event.LimitKind
		period, used int64
	}
	wants := []want{
		{event.LimitScopeKey, k.ID, event.LimitQuotaTokens, day, 150},
		{event.LimitScopeKey, k.ID, event.LimitTPD, day, 150},
		{event.LimitScopeKey, k2.ID, event.LimitQuotaRequests, 0, 2}, // never refills: all time
		{event.LimitScopeDeployment, d.ID, event.LimitQuotaRequests, month, 5},
		{event.LimitScopeProject, project, event.LimitTPD, day, 150 + 30 + 10},
		// priced at ingest: 1,000 nano-units a prompt token, 2,000 a
		// completion token
		{event.LimitScopeKey, k.ID, event.LimitBudget, day, 100*1000 + 50*2000},
	}
	check := func(ws []want) {
		t.Helper()
		testutil.CheckFor(t, 10*time.Second, 10*time.Millisecond, func() error {
			for _, x := range ws {
				b, ok := w.get(x.scope, x.id, x.kind)
				if !ok || b.Period != x.period || b.Used != x.used || !b.AsOf.Equal(clk.now()) {
					return fmt.Errorf("balance %s %s %s: got %+v (%v), want period %d used %d", x.scope, x.id, x.kind, b, ok, x.period, x.used)
				}
			}
			return nil
		})
	}
	check(wants)
	if day != usageClock.Unix()/86400 || month != 2026*12+3 {
		t.Fatalf("periods: day %d, month %d", day, month)
	}
	for _, kind := range []event.LimitKind{event.LimitTPD, event.LimitQuotaTokens, event.LimitQuotaRequests, event.LimitBudget} {
		if b, ok := w.get(event.LimitScopeKey, plain.ID, kind); ok {
			t.Fatalf("a key without bounds got a balance: %+v", b)
		}
	}

	// More usage: the changed figures are sent again.
	e.must(rec("a6", k.ID, today, 200, 0), "a6")
	wants[0].used, wants[1].used, wants[3].used, wants[4].used, wants[5].used = 350, 350, 6, 390, 400_000
	check(wants)

	// Unchanged figures are refreshed for edges that just started.
	w.reset()
	check(wants)

	// A new day: yesterday's figures are no longer sent; today's usage
	// starts from nothing.
	clk.add(12 * time.Hour)
	e.must(rec("a7", k.ID, clk.now(), 5, 5), "a7")
	w.reset()
	check([]want{{event.LimitScopeKey, k.ID, event.LimitQuotaTokens, day + 1, 10},
		{event.LimitScopeKey, k.ID, event.LimitBudget, day + 1, 5*1000 + 5*2000}})

	w.mu.Lock()
	bad := w.bad
	w.mu.Unlock()
	if bad != 0 {
		t.Fatalf("%d balance messages did not verify", bad)
	}
	_, m := c.do("GET", "/metrics", nil)
	if !strings.Contains(string(m), "keymesh_origin_balance_records_total") || strings.Contains(string(m), "keymesh_origin_balance_failures_total 1") {
		t.Fatalf("/metrics lacks the balance counters, or shows failures")
	}
}

// With BalanceInterval negative the origin publishes no balances; a
// BalanceRefresh under the interval is refused.
func TestBalanceConfig(t *testing.T) {
	cfg := testConfig(t.TempDir())
	cfg.BalanceInterval, cfg.BalanceRefresh = time.Second, time.Millisecond
	if _, err := New(cfg); err == nil || !strings.Contains(err.Error(), "BalanceRefresh") {
		t.Fatalf("BalanceRefresh < BalanceInterval: %v", err)
	}
	d := DefaultConfig()
	if d.BalanceInterval != 2*time.Second || d.BalanceRefresh != 10*time.Second || d.MaxBalances != 100_000 {
		t.Fatalf("defaults: %v %v %d", d.BalanceInterval, d.BalanceRefresh, d.MaxBalances)
	}
	cfg = testConfig(t.TempDir())
	cfg.BalanceInterval = -1
	s := startServer(t, cfg)
	if s.balances != nil {
		t.Fatal("a negative BalanceInterval started the publisher")
	}
}
