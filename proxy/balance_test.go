package proxy

import (
	"fmt"
	"testing"
	"time"

	"github.com/keymesh/keymesh/event"
)

// floorProxy is the part of a Proxy MergeBalance and admission use: its
// token table, on clock.
func floorProxy(clock *testClock) *Proxy {
	return &Proxy{tokens: newTokenTable(clock.now, 1<<16)}
}

func balance(scope event.LimitScope, id string, kind event.LimitKind, period, used int64) event.Balance {
	return event.Balance{Scope: scope, ID: id, Kind: kind, Period: period, Used: used, AsOf: time.Now()}
}

// A ledger figure floors a quota in its period: a fresh counter (an edge
// that restarted) starts from it, the larger of the edge's count and the
// figure wins, a smaller or older figure changes nothing, and a figure of
// another period does not apply.
func TestBalanceFloorsQuotas(t *testing.T) {
	clock := &testClock{t: time.Date(2030, 1, 10, 12, 0, 0, 0, time.UTC)}
	p := floorProxy(clock)
	day, _ := quotaPeriod(event.QuotaRefillDaily, clock.now())
	month, _ := quotaPeriod(event.QuotaRefillMonthly, clock.now())
	daily := &event.TokenLimits{Quota: &event.Quota{Tokens: 1000, Refill: event.QuotaRefillDaily}}
	monthlyReq := &event.TokenLimits{Quota: &event.Quota{Requests: 5, Refill: event.QuotaRefillMonthly}}
	never := &event.TokenLimits{Quota: &event.Quota{Tokens: 100}}
	left := func(id string, kind uint8, limit int64, refill string) int64 {
		return p.tokens.remaining(tokenID{id, scopeKey, kind}, limit, refill)
	}
	p.MergeBalance([]event.Balance{
		balance(event.LimitScopeKey, "k", event.LimitQuotaTokens, day, 900),
		balance(event.LimitScopeKey, "k", event.LimitQuotaTokens, day, 400), // smaller: ignored
		balance(event.LimitScopeDeployment, "d", event.LimitQuotaRequests, month, 5),
		balance(event.LimitScopeProject, "p", event.LimitQuotaTokens, 0, 100),
		balance(event.LimitScopeKey, "other-day", event.LimitQuotaTokens, day-1, 1000), // yesterday's
		balance("tenant", "x", event.LimitQuotaTokens, day, 1),                         // malformed
		balance(event.LimitScopeKey, "neg", event.LimitQuotaTokens, day, -1),           // malformed
	})
	if got := left("k", tokQuota, 1000, event.QuotaRefillDaily); got != 100 {
		t.Fatalf("remaining after the ledger's 900: %d", got)
	}
	if got := left("other-day", tokQuota, 1000, event.QuotaRefillDaily); got != 1000 {
		t.Fatalf("yesterday's figure applied today: %d left", got)
	}
	if got := left("neg", tokQuota, 1000, event.QuotaRefillDaily); got != 1000 {
		t.Fatalf("a malformed figure applied: %d left", got)
	}
	// Admission: 100 left of the key's quota, none of the deployment's
	// requests, none of the project's never-refilling quota.
	if h, res := p.tokens.reserve([]tokenBound{{"k", scopeKey, daily}}, 150); h != nil || res.refusal != errQuota {
		t.Fatalf("150 tokens admitted with 100 left: %+v", res)
	}
	h, res := p.tokens.reserve([]tokenBound{{"k", scopeKey, daily}}, 60)
	if h == nil {
		t.Fatalf("60 tokens refused with 100 left: %+v", res)
	}
	p.tokens.settle(h, 60)
	// The ledger later counts those 60 too: max, not sum.
	p.MergeBalance([]event.Balance{balance(event.LimitScopeKey, "k", event.LimitQuotaTokens, day, 960)})
	if got := left("k", tokQuota, 1000, event.QuotaRefillDaily); got != 40 {
		t.Fatalf("remaining after the ledger counted the edge's own 60: %d", got)
	}
	if h, res := p.tokens.reserve([]tokenBound{{"d", scopeDeployment, monthlyReq}}, 0); h != nil || res.refusal != errQuota {
		t.Fatalf("a spent request quota admitted: %+v", res)
	}
	if h, res := p.tokens.reserve([]tokenBound{{"p", scopeProject, never}}, 0); h != nil || res.refusal != errQuota || !res.never {
		t.Fatalf("a spent never-refilling quota admitted: %+v", res)
	}
	// The next day the key's quota is full again: the floor was of
	// yesterday's period.
	clock.advance(24 * time.Hour)
	if got := left("k", tokQuota, 1000, event.QuotaRefillDaily); got != 1000 {
		t.Fatalf("the next day: %d left", got)
	}
	if m, _ := p.BalanceStats(); m != 5 {
		t.Fatalf("%d figures merged, want 5", m)
	}
}

// A tokens_per_day bucket refills evenly over 24 h: today's figure caps
// its level at limit - used + what it refilled since 00:00 UTC.
func TestBalanceFloorsTokensPerDay(t *testing.T) {
	clock := &testClock{t: time.Date(2030, 1, 10, 6, 0, 0, 0, time.UTC)} // a quarter of the day
	p := floorProxy(clock)
	day, _ := quotaPeriod(event.QuotaRefillDaily, clock.now())
	p.MergeBalance([]event.Balance{balance(event.LimitScopeKey, "k", event.LimitTPD, day, 9000)})
	// 10,000 - 9,000 + 2,500 refilled since midnight.
	if got := p.tokens.remaining(tokenID{"k", scopeKey, tokDay}, 10_000, ""); got != 3500 {
		t.Fatalf("remaining: %d, want 3500", got)
	}
	lim := &event.TokenLimits{TokensPerDay: 10_000}
	if h, res := p.tokens.reserve([]tokenBound{{"k", scopeKey, lim}}, 4000); h != nil || res.refusal != errTokenLimit {
		t.Fatalf("4000 tokens admitted with 3500 left: %+v", res)
	}
	// Yesterday's figure caps nothing.
	p.MergeBalance([]event.Balance{balance(event.LimitScopeKey, "y", event.LimitTPD, day-1, 10_000)})
	if got := p.tokens.remaining(tokenID{"y", scopeKey, tokDay}, 10_000, ""); got != 10_000 {
		t.Fatalf("yesterday's figure applied: %d", got)
	}
}

// Floors are bounded: figures of periods that ended are swept for room,
// and past the bound a figure is dropped and counted.
func TestBalanceFloorsBounded(t *testing.T) {
	clock := &testClock{t: time.Date(2030, 1, 10, 12, 0, 0, 0, time.UTC)}
	p := floorProxy(clock)
	p.tokens.floors.max = 16
	day, _ := quotaPeriod(event.QuotaRefillDaily, clock.now())
	const n = 64*16 + 500
	bs := make([]event.Balance, 0, n)
	for i := range n {
		bs = append(bs, balance(event.LimitScopeKey, fmt.Sprintf("k%d", i), event.LimitQuotaTokens, day, 1))
	}
	p.MergeBalance(bs)
	if _, dropped := p.BalanceStats(); dropped == 0 {
		t.Fatal("nothing dropped past the bound")
	}
	kept := func() int {
		total := 0
		for i := range p.tokens.floors.shards {
			total += len(p.tokens.floors.shards[i].m)
		}
		return total
	}
	if k := kept(); k > 64*16 {
		t.Fatalf("%d floors kept", k)
	}
	// A day later, those are of a period that ended: swept for new ones.
	// (128 new ones: the shards are picked by a seeded hash, and some shard
	// taking more than its 16 new ones would drop one rightly; with 500,
	// one in about eight runs did.)
	clock.advance(24 * time.Hour)
	_, before := p.BalanceStats()
	for i := range 128 {
		p.MergeBalance([]event.Balance{balance(event.LimitScopeKey, fmt.Sprintf("n%d", i), event.LimitQuotaTokens, day+1, 1)})
	}
	if _, after := p.BalanceStats(); after != before {
		t.Fatalf("%d new figures dropped though the old ones had ended", after-before)
	}
}

// Across edges the figure floors the global estimate: an edge whose peers
// reported 100 of a quota counts the ledger's 600 (a previous run's use
// the peers no longer report, say), and when partitioned takes its share
// of the room that leaves, not of what the reports alone leave.
func TestBalanceFloorsTheGlobalEstimate(t *testing.T) {
	es := newEdges(t, 2, nil)
	q := &event.TokenLimits{Quota: &event.Quota{Requests: 1000, Refill: event.QuotaRefillMonthly}}
	bounds := []tokenBound{{"key_1", scopeKey, q}}
	for range 100 {
		h, _ := es.ps[1].tokens.reserve(bounds, 0)
		es.ps[1].tokens.settle(h, 0)
	}
	es.sync(t, false)
	p := es.ps[0]
	id := gid{"key_1", scopeKey, gQuotaRequests}
	if got := estimate(p, id, event.QuotaRefillMonthly); got != 100 {
		t.Fatalf("estimate from the reports: %d", got)
	}
	month, _ := quotaPeriod(event.QuotaRefillMonthly, es.clock.now())
	p.MergeBalance([]event.Balance{balance(event.LimitScopeKey, "key_1", event.LimitQuotaRequests, month, 600)})
	if got := estimate(p, id, event.QuotaRefillMonthly); got != 600 {
		t.Fatalf("estimate with the ledger's 600: %d", got)
	}
	h, _ := p.tokens.reserve(bounds, 0) // connected: remembers the room (400)
	p.tokens.settle(h, 0)
	es.clock.advance(2 * time.Second)
	if !p.global.partitioned(es.clock.now()) {
		t.Fatal("not partitioned")
	}
	n := 1
	for range 1000 {
		if h, _ := p.tokens.reserve(bounds, 0); h != nil {
			p.tokens.settle(h, 0)
			n++
		}
	}
	if want := 1 + (400-1)/2; n != want {
		t.Fatalf("a partitioned edge took %d of a quota with 400 left by the ledger among 2, want %d", n, want)
	}
}

// A spend cap is floored like a quota: a restarted edge learns from the
// ledger what its period has cost.
func TestBalanceFloorsBudgets(t *testing.T) {
	clock := &testClock{t: time.Date(2030, 1, 10, 12, 0, 0, 0, time.UTC)}
	p := floorProxy(clock)
	day, _ := quotaPeriod(event.QuotaRefillDaily, clock.now())
	capped := &event.TokenLimits{Budget: &event.Budget{MaxNanos: 1_000_000, Refill: event.QuotaRefillDaily}}
	p.MergeBalance([]event.Balance{balance(event.LimitScopeKey, "k", event.LimitBudget, day, 600_000)})
	if got := p.tokens.remaining(tokenID{"k", scopeKey, tokBudget}, 1_000_000, event.QuotaRefillDaily); got != 400_000 {
		t.Fatalf("remaining after the ledger's 600,000: %d", got)
	}
	if h, res := p.tokens.reserveCost([]tokenBound{{"k", scopeKey, capped}}, 0, 500_000); h != nil || res.refusal != errBudget {
		t.Fatalf("a cost of 500,000 admitted with 400,000 left: %+v", res)
	}
	h, _ := p.tokens.reserveCost([]tokenBound{{"k", scopeKey, capped}}, 0, 300_000)
	if h == nil {
		t.Fatal("a cost of 300,000 refused with 400,000 left")
	}
	h.spent = 300_000
	p.tokens.settle(h, 0)
	if got := p.tokens.remaining(tokenID{"k", scopeKey, tokBudget}, 1_000_000, event.QuotaRefillDaily); got != 100_000 {
		t.Fatalf("remaining after spending 300,000 more: %d", got)
	}
}
