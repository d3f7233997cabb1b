package proxy

// Balances from the ledger (issue 15): the origin's usage ledger is the
// durable record of what each key, deployment and project used, and the
// origin publishes, sealed, what it says each long-period counter
// (tokens_per_day, a quota) used in its current period (event.Balance; the
// edge package verifies the signature before handing them here). The edge
// takes the figure as a floor: a counter counts at least what the ledger
// signed for its period. So an edge that restarted, and lost its counters,
// refuses a daily quota the ledger says is spent instead of granting it
// again; and since only the origin's signature makes a figure, no peer can
// lower one.
//
// In this release the floor applies to the edge's own token table
// (tokens.go): a quota's used is raised to the figure when the figure is of
// the counter's period; a tokens_per_day bucket, which refills evenly over
// 24 h, is lowered to what the figure allows, limit - used + the refill
// since the start of the figure's UTC day (whatever the bucket held at
// 00:00 UTC, at most its limit, it has since lost used and regained at
// most that refill). Budgets (spend) are kept for when the edge counts
// them.
//
// Floors are bounded (maxFloorsPerShard per token-table shard): a figure
// of a newer period replaces the counter's older one, figures of periods
// that ended are swept when a shard is full, and a figure that finds its
// shard full anyway is dropped and counted.

import (
	"hash/maphash"
	"sync"
	"sync/atomic"
	"time"

	"github.com/keymesh/keymesh/event"
)

// maxFloorsPerShard bounds the floors one token-table shard keeps (64
// shards: about a million counters in all).
const maxFloorsPerShard = 16384

// ledgerFloor is a counter's signed ledger figure: used in period.
type ledgerFloor struct {
	period int64
	used   int64
}

// floorShard holds the floors of one token-table shard's counters.
type floorShard struct {
	mu sync.Mutex
	m  map[tokenID]ledgerFloor
}

// floorTable holds the edge's ledger floors, in 64 shards.
type floorTable struct {
	seed   maphash.Seed
	shards [64]floorShard
	max    int // per shard

	merged  atomic.Uint64 // figures that raised (or set) a floor
	dropped atomic.Uint64 // figures not kept: their shard was full
}

func newFloorTable() *floorTable {
	f := &floorTable{seed: maphash.MakeSeed(), max: maxFloorsPerShard}
	for i := range f.shards {
		f.shards[i].m = map[tokenID]ledgerFloor{}
	}
	return f
}

// BalanceStats reports the ledger figures MergeBalance kept and those it
// dropped because its table was full.
func (s *Proxy) BalanceStats() (merged, dropped uint64) {
	f := s.tokens.floors
	return f.merged.Load(), f.dropped.Load()
}

// MergeBalance takes balances from the origin's signed KindBalance records
// (the caller verified them): each becomes the floor of its counter for its
// period, the larger figure winning within a period. Malformed balances,
// and kinds the edge does not count, are ignored. It never blocks on a
// request.
func (s *Proxy) MergeBalance(bs []event.Balance) {
	f := s.tokens.floors
	now := s.tokens.now()
	for i := range bs {
		b := &bs[i]
		id, ok := balanceCounter(b)
		if !ok || b.Check() != nil {
			continue
		}
		f.merge(id, ledgerFloor{period: b.Period, used: b.Used}, now)
	}
}

// balanceCounter maps a balance to the token-table counter it floors.
func balanceCounter(b *event.Balance) (tokenID, bool) {
	id := tokenID{id: b.ID}
	switch b.Scope {
	case event.BalanceScopeKey:
		id.scope = scopeKey
	case event.BalanceScopeDeployment:
		id.scope = scopeDeployment
	case event.BalanceScopeProject:
		id.scope = scopeProject
	default:
		return id, false
	}
	switch b.Kind {
	case event.BalanceTPD:
		id.kind = tokDay
	case event.BalanceQuotaTokens:
		id.kind = tokQuota
	case event.BalanceQuotaRequests:
		id.kind = tokRequests
	default:
		return id, false
	}
	return id, true
}

func (f *floorTable) shard(id tokenID) *floorShard {
	h := maphash.String(f.seed, id.id) + uint64(id.scope)*7 + uint64(id.kind)
	return &f.shards[h%uint64(len(f.shards))]
}

func (f *floorTable) merge(id tokenID, fl ledgerFloor, now time.Time) {
	sh := f.shard(id)
	sh.mu.Lock()
	defer sh.mu.Unlock()
	old, ok := sh.m[id]
	switch {
	case ok && old.period > fl.period: // a stale figure of an earlier period
		return
	case ok && old.period == fl.period && old.used >= fl.used:
		return
	}
	if !ok && len(sh.m) >= f.max {
		sweepFloors(sh, now)
		if len(sh.m) >= f.max {
			f.dropped.Add(1)
			return
		}
	}
	sh.m[id] = fl
	f.merged.Add(1)
}

// sweepFloors drops the floors of periods that ended: the counters they
// floored have started a new period. A quota's period depends on its
// refill, which a floor does not know; a floor older than every period it
// could be is one of a month that ended, or of a day that ended, or of a
// quota that never refills (period 0), which is kept.
func sweepFloors(sh *floorShard, now time.Time) {
	day, _ := quotaPeriod(event.QuotaRefillDaily, now)
	month, _ := quotaPeriod(event.QuotaRefillMonthly, now)
	for id, fl := range sh.m {
		switch {
		case fl.period == 0, fl.period == day, fl.period == month:
		default:
			delete(sh.m, id)
		}
	}
}

// get returns id's floor, if the edge holds one.
func (f *floorTable) get(id tokenID) (ledgerFloor, bool) {
	sh := f.shard(id)
	sh.mu.Lock()
	fl, ok := sh.m[id]
	sh.mu.Unlock()
	return fl, ok
}

// apply raises counter c (of id, brought to now) to id's floor: a quota's
// used to the figure of its period, a tokens_per_day bucket's level down
// to what the figure of today leaves. The caller holds c's shard lock.
func (f *floorTable) apply(id tokenID, c *tokenCounter, now time.Time) {
	if f == nil {
		return
	}
	fl, ok := f.get(id)
	if !ok {
		return
	}
	switch id.kind {
	case tokDay:
		day, _ := quotaPeriod(event.QuotaRefillDaily, now)
		if fl.period != day || c.limit <= 0 {
			return
		}
		start := time.Unix(day*86400, 0)
		refilled := now.Sub(start).Seconds() * float64(c.limit) / window(tokDay).Seconds()
		if most := float64(c.limit-fl.used) + refilled; c.level > most {
			c.level = most
		}
	case tokQuota, tokRequests:
		if fl.period == c.period && c.used < fl.used {
			c.used = fl.used
		}
	}
}
