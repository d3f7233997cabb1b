package origin

// The balance publisher: the origin tells the edges, in sealed KindBalance
// records on event.OriginBalanceSubject, what its usage ledger says every
// long-period counter has used in the current period — a key's,
// deployment's or project's tokens_per_day (the UTC day), quota and spend
// cap (max_budget: the ledger's priced cost; each over its refill period). Edges take each figure as a floor for the counter (see
// event/balance.go): the ledger is durable, so an edge that restarted with
// empty counters learns from it that a daily quota is spent, and no peer can
// lower what the origin signed.
//
// What is computed, and when:
//
//   - An owner (key, deployment or project) is recomputed when the usage
//     ledger stored records naming it (touch, from usage.go, after the
//     commit; recomputed within balanceCoalesce of the wake, or at the
//     next Config.BalanceInterval tick), and at start for every owner with
//     bounds (boundedOwners: one read of the three tables). Each counter's
//     figure is one index-backed SUM over the daily aggregates of its
//     period (balance_store.go); at most balanceOwnersPerPass owners are
//     recomputed per pass, the rest wait for the next one. Owners without
//     bounds cost one primary-key read when they are used, nothing else.
//   - A figure that changed is published at once; every figure of the
//     current periods is published again every Config.BalanceRefresh, so
//     an edge that just started (or missed a message: core NATS) learns
//     them within it. Figures of a period that ended are dropped.
//   - Replicas sharing a store each publish what they computed (each
//     recomputes the owners of the records it stored, from the shared
//     store): a figure only grows within its period, and edges keep the
//     largest, so a replica's older figure is harmless.

import (
	"context"
	"sync"
	"sync/atomic"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/keymesh/keymesh/event"
)

const (
	// balanceCoalesce is how long after the ledger stored records the
	// publisher recomputes: records stored meanwhile share the pass.
	balanceCoalesce = 50 * time.Millisecond
	// balanceOwnersPerPass bounds the owners one pass recomputes (a few
	// index-backed queries each); more wait for the next pass.
	balanceOwnersPerPass = 1024
)

// balanceCounter names one counter the publisher tracks.
type balanceCounter struct {
	Scope event.LimitScope
	ID    string
	Kind  event.LimitKind
}

// balanceFigure is a counter's last published figure; Refill says when
// its period ends.
type balanceFigure struct {
	Period, Used int64
	Refill       string
}

// balancePublisher recomputes and publishes balances until stopped.
type balancePublisher struct {
	s    *Server
	wake chan struct{}
	stop chan struct{}
	done chan struct{}
	once sync.Once

	mu     sync.Mutex
	dirty  map[balanceOwner]struct{}
	rescan bool // the dirty set overflowed (or at start): read every bounded owner

	// last is what the loop published, per counter (the loop's alone).
	last map[balanceCounter]balanceFigure

	records  atomic.Uint64 // sealed records sent
	balances atomic.Uint64 // balances in them
	failures atomic.Uint64 // passes that failed to read the store
}

// startBalances starts the publisher, unless Config.BalanceInterval is
// negative.
func (s *Server) startBalances() {
	if s.cfg.BalanceInterval < 0 {
		return
	}
	b := &balancePublisher{s: s, wake: make(chan struct{}, 1), stop: make(chan struct{}), done: make(chan struct{}),
		dirty: map[balanceOwner]struct{}{}, rescan: true, last: map[balanceCounter]balanceFigure{}}
	s.balances = b
	go b.run()
}

// stopBalances stops the publisher after a last pass, so that what the
// ledger stored before Shutdown stopped it is published.
func (s *Server) stopBalances() {
	if s.balances == nil {
		return
	}
	s.balances.once.Do(func() {
		close(s.balances.stop)
		<-s.balances.done
	})
}

// touch marks the owners of stored usage records for recomputing. It is
// called on the ledger's goroutine and never blocks.
func (b *balancePublisher) touch(recs []usageRecord) {
	if b == nil || len(recs) == 0 {
		return
	}
	max := b.s.cfg.MaxBalances
	b.mu.Lock()
	for i := range recs {
		r := &recs[i]
		for _, o := range [...]balanceOwner{
			{event.LimitScopeKey, r.KeyID, r.Project},
			{event.LimitScopeDeployment, r.Deployment, r.Project},
			{event.LimitScopeProject, r.Project, r.Project},
		} {
			if o.ID == "" {
				continue
			}
			if len(b.dirty) >= max {
				b.rescan = true // the pass reads every bounded owner instead
				continue
			}
			b.dirty[o] = struct{}{}
		}
	}
	b.mu.Unlock()
	select {
	case b.wake <- struct{}{}:
	default:
	}
}

func (b *balancePublisher) run() {
	defer close(b.done)
	s := b.s
	tick := time.NewTicker(s.cfg.BalanceInterval)
	defer tick.Stop()
	var coalesce <-chan time.Time
	lastFull := time.Time{}
	for {
		select {
		case <-b.stop:
			b.pass(false)
			return
		case <-b.wake:
			if coalesce == nil {
				coalesce = time.After(balanceCoalesce)
			}
			continue
		case <-coalesce:
			coalesce = nil
		case <-tick.C:
		}
		full := time.Since(lastFull) >= s.cfg.BalanceRefresh
		if b.pass(full) && full {
			lastFull = time.Now()
		}
	}
}

// pass recomputes the dirty owners (at most balanceOwnersPerPass) and
// publishes what changed, or with full every figure of the current
// periods. It reports whether it could read the store.
func (b *balancePublisher) pass(full bool) bool {
	s := b.s
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	b.mu.Lock()
	rescan := b.rescan
	b.rescan = false
	b.mu.Unlock()
	if rescan {
		owners, err := s.store.boundedOwners(ctx)
		if err != nil {
			b.failed(true, nil, err)
			return false
		}
		b.mu.Lock()
		for _, o := range owners {
			b.dirty[o] = struct{}{}
		}
		b.mu.Unlock()
	}
	b.mu.Lock()
	owners := make([]balanceOwner, 0, min(len(b.dirty), balanceOwnersPerPass))
	for o := range b.dirty {
		if len(owners) == balanceOwnersPerPass {
			break
		}
		owners = append(owners, o)
		delete(b.dirty, o)
	}
	more := len(b.dirty) > 0
	b.mu.Unlock()
	if more {
		select {
		case b.wake <- struct{}{}:
		default:
		}
	}
	now := s.cfg.now().UTC()
	var out []event.Balance
	for i, o := range owners {
		changed, err := b.recompute(ctx, o, now)
		if err != nil {
			b.failed(false, owners[i:], err)
			b.publish(out, now)
			return false
		}
		out = append(out, changed...)
	}
	if full {
		sent := make(map[balanceCounter]bool, len(out))
		for _, x := range out {
			sent[balanceCounter{x.Scope, x.ID, x.Kind}] = true
		}
		for c, f := range b.last {
			if p, _, _ := periodDays(f.Refill, now); p != f.Period {
				delete(b.last, c) // the period ended: the edges' counters start over
				continue
			}
			if !sent[c] {
				out = append(out, event.Balance{Scope: c.Scope, ID: c.ID, Kind: c.Kind, Period: f.Period, Used: f.Used, AsOf: now})
			}
		}
	}
	b.publish(out, now)
	return true
}

// failed puts owners back for the next pass (and asks for the rescan
// again) and logs the store's error.
func (b *balancePublisher) failed(rescan bool, owners []balanceOwner, err error) {
	b.failures.Add(1)
	b.mu.Lock()
	b.rescan = b.rescan || rescan
	for _, o := range owners {
		b.dirty[o] = struct{}{}
	}
	b.mu.Unlock()
	b.s.log.Warn("balances: reading the usage ledger failed; retrying at the next tick", "err", err)
}

// recompute reads o's bounds and, for each long-period one, what the
// ledger holds of it in the current period; it returns the figures that
// differ from those last published, and forgets those of bounds o no
// longer has.
func (b *balancePublisher) recompute(ctx context.Context, o balanceOwner, now time.Time) ([]event.Balance, error) {
	lim, err := b.s.store.ownerBounds(ctx, o)
	if err != nil {
		return nil, err
	}
	type want struct {
		kind   event.LimitKind
		refill string
	}
	var ws []want
	if lim != nil {
		if lim.TokensPerDay > 0 {
			ws = append(ws, want{event.LimitTPD, event.QuotaRefillDaily})
		}
		if q := lim.Quota; q != nil {
			switch {
			case q.Tokens > 0:
				ws = append(ws, want{event.LimitQuotaTokens, q.Refill})
			case q.Requests > 0:
				ws = append(ws, want{event.LimitQuotaRequests, q.Refill})
			}
		}
		if bg := lim.Budget; bg != nil {
			ws = append(ws, want{event.LimitBudget, bg.Refill})
		}
	}
	kept := map[event.LimitKind]bool{}
	var out []event.Balance
	read := map[string]ledgerSums{} // per refill: tpd, a daily quota and a daily budget share one query
	for _, w := range ws {
		kept[w.kind] = true
		period, since, until := periodDays(w.refill, now)
		got, ok := read[w.refill]
		if !ok {
			got, err = b.s.store.ledgerUsed(ctx, o, since, until)
			if err != nil {
				return nil, err
			}
			read[w.refill] = got
		}
		used := got.tokens
		switch w.kind {
		case event.LimitQuotaRequests:
			used = got.requests
		case event.LimitBudget:
			used = got.cost
		}
		c := balanceCounter{o.Scope, o.ID, w.kind}
		f := balanceFigure{Period: period, Used: used, Refill: w.refill}
		if prev, ok := b.last[c]; ok && prev == f {
			continue
		}
		if _, ok := b.last[c]; ok || len(b.last) < b.s.cfg.MaxBalances {
			b.last[c] = f // else published now, but not refreshed
		}
		out = append(out, event.Balance{Scope: o.Scope, ID: o.ID, Kind: w.kind, Period: period, Used: used, AsOf: now})
	}
	for _, k := range [...]event.LimitKind{event.LimitTPD, event.LimitQuotaTokens, event.LimitQuotaRequests, event.LimitBudget} {
		if !kept[k] {
			delete(b.last, balanceCounter{o.Scope, o.ID, k})
		}
	}
	return out, nil
}

// periodDays returns the index of the period of refill now falls in (as
// the edges number it: event.QuotaPeriod), and the unix seconds its first
// day starts at and its end (0: none).
func periodDays(refill string, now time.Time) (period, since, until int64) {
	p, start, next := event.QuotaPeriod(refill, now)
	if next.IsZero() {
		return p, 0, 0
	}
	return p, start.Unix(), next.Unix()
}

// publish seals bs in records of at most event.MaxBalancesPerRecord and
// sends them (core NATS: a lost one is healed by the next refresh).
func (b *balancePublisher) publish(bs []event.Balance, now time.Time) {
	s := b.s
	for len(bs) > 0 {
		n := min(len(bs), event.MaxBalancesPerRecord)
		wire, err := s.signer.Seal(&event.Record{Kind: event.KindBalance, Time: now, Balances: bs[:n]})
		if err != nil {
			s.log.Error("sealing balances", "err", err)
			return
		}
		if err := s.nc.Publish(event.OriginBalanceSubject, wire); err != nil {
			s.log.Debug("balances not sent", "err", err)
			return
		}
		b.records.Add(1)
		b.balances.Add(uint64(n))
		bs = bs[n:]
	}
}

// balanceCollector exports the publisher's counts at scrape time.
type balanceCollector struct {
	s                           *Server
	records, balances, failures *prometheus.Desc
}

func newBalanceCollector(s *Server) *balanceCollector {
	return &balanceCollector{s: s,
		records: prometheus.NewDesc("keymesh_origin_balance_records_total",
			"Sealed balance records this replica published to the edges.", nil, nil),
		balances: prometheus.NewDesc("keymesh_origin_balances_total",
			"Balances (one counter's period usage each) in the records this replica published.", nil, nil),
		failures: prometheus.NewDesc("keymesh_origin_balance_failures_total",
			"Balance passes that could not read the usage ledger (retried at the next tick).", nil, nil)}
}

func (c *balanceCollector) Describe(ch chan<- *prometheus.Desc) {
	ch <- c.records
	ch <- c.balances
	ch <- c.failures
}

func (c *balanceCollector) Collect(ch chan<- prometheus.Metric) {
	var r, n, f uint64
	if b := c.s.balances; b != nil {
		r, n, f = b.records.Load(), b.balances.Load(), b.failures.Load()
	}
	ch <- prometheus.MustNewConstMetric(c.records, prometheus.CounterValue, float64(r))
	ch <- prometheus.MustNewConstMetric(c.balances, prometheus.CounterValue, float64(n))
	ch <- prometheus.MustNewConstMetric(c.failures, prometheus.CounterValue, float64(f))
}
