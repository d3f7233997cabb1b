package proxy

// Balances from the ledger (issue 15): the origin's usage ledger is the
// durable record of what each key, deployment and project used, and the
// origin publishes, sealed, what it says each long-period counter
// (tokens_per_day, a quota, a budget) used in its current period
// (event.Balance; the edge package verifies the signature before handing
// them here). The edge takes the figure as a floor: a counter counts at
// least what the ledger signed for its period. So an edge that restarted,
// and lost its counters, refuses a daily quota the ledger says is spent
// instead of granting it again; and since only the origin's signature makes
// a figure, no peer can lower one.
//
// The floor applies in two places, each sound on its own:
//
//   - The global estimate (global.go): a counter's use across edges is the
//     larger of the edges' reports (own plus others) and the figure, when
//     the figure is of the counter's current period — for tpd, of today
//     (UTC), every hour of which is inside the sliding 24 h; so the room,
//     the strict-mode share and the partition share all count it.
//   - The edge's own token table (tokens.go), which decides alone while
//     the edge knows of no peer (the restarted edge of a single-edge site)
//     and in partition mode local: a quota's used is raised to the figure
//     of its period; a tokens_per_day bucket, which refills evenly over
//     24 h, is lowered to what the figure leaves, limit - used + the refill
//     since 00:00 UTC (whatever it held then, at most its limit, it has
//     since lost used and regained at most that refill).
//
// Floors are bounded (maxFloorsPerShard per shard): a figure of a newer
// period replaces the counter's older one, figures of periods that ended
// are swept when a shard is full, and a figure that finds its shard full
// anyway is dropped and counted.

import (
	"hash/maphash"
	"sync"
	"sync/atomic"
	"time"

	"github.com/keymesh/keymesh/event"
)

// maxFloorsPerShard bounds the floors one shard keeps (64 shards: about a
// million counters in all).
const maxFloorsPerShard = 16384

// ledgerFloor is a counter's signed ledger figure: used in period.
type ledgerFloor struct {
	period int64
	used   int64
}

// floorShard holds the floors of some counters.
type floorShard struct {
	mu sync.Mutex
	m  map[gid]ledgerFloor
}

// floorTable holds the edge's ledger floors, keyed as the global counters
// are (gid: scope, id and global kind).
type floorTable struct {
	seed   maphash.Seed
	shards [64]floorShard
	max    int // per shard

	merged  atomic.Uint64 // figures that raised (or set) a floor
	dropped atomic.Uint64 // figures not kept: their shard was full
	// kept counts the floors held: while none is (no ledger figure merged
	// yet, or an origin that publishes none), a bounded request's checks
	// skip the shard locks and the calendar (of, apply).
	kept atomic.Int64
}

func newFloorTable() *floorTable {
	f := &floorTable{seed: maphash.MakeSeed(), max: maxFloorsPerShard}
	for i := range f.shards {
		f.shards[i].m = map[gid]ledgerFloor{}
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
// period, the larger figure winning within a period, a figure of an earlier
// period than the one held being ignored. Malformed balances are ignored.
// Safe for concurrent use; it never waits on a request.
func (s *Proxy) MergeBalance(bs []event.Balance) {
	f := s.tokens.floors
	now := s.tokens.now()
	for i := range bs {
		b := &bs[i]
		if b.Check() != nil {
			continue
		}
		id := gid{id: b.ID, scope: scopeOf(b.Scope), kind: kindOf(b.Kind)}
		f.merge(id, ledgerFloor{period: b.Period, used: b.Used}, now)
	}
}

func (f *floorTable) shard(id gid) *floorShard {
	return &f.shards[id.hash(f.seed)%uint64(len(f.shards))]
}

func (f *floorTable) merge(id gid, fl ledgerFloor, now time.Time) {
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
		f.kept.Add(-int64(sweepFloors(sh, now)))
		if len(sh.m) >= f.max {
			f.dropped.Add(1)
			return
		}
	}
	if !ok {
		f.kept.Add(1)
	}
	sh.m[id] = fl
	f.merged.Add(1)
}

// sweepFloors drops the floors of periods that ended: the counters they
// floored have started a new period. A quota's period depends on its
// refill, which a floor does not know: a floor of neither today nor this
// month is of a period that ended, except period 0 (a quota that never
// refills), which is kept. It returns how many it dropped.
func sweepFloors(sh *floorShard, now time.Time) (dropped int) {
	day, _ := quotaPeriod(event.QuotaRefillDaily, now)
	month, _ := quotaPeriod(event.QuotaRefillMonthly, now)
	for id, fl := range sh.m {
		switch fl.period {
		case 0, day, month:
		default:
			delete(sh.m, id)
			dropped++
		}
	}
	return dropped
}

// of returns the floor of counter id in window w at now (0: none): for tpd
// the figure of today, for a quota or budget the figure of period w.
func (f *floorTable) of(id gid, w int64, now time.Time) int64 {
	if f == nil || f.kept.Load() == 0 {
		return 0
	}
	sh := f.shard(id)
	sh.mu.Lock()
	fl, ok := sh.m[id]
	sh.mu.Unlock()
	if !ok {
		return 0
	}
	if id.kind == gTPD {
		w, _ = quotaPeriod(event.QuotaRefillDaily, now)
	}
	if fl.period != w {
		return 0
	}
	return fl.used
}

// floored is the global estimate with the ledger's floor: others raised so
// that own + others is at least the figure of c's window w.
func (g *globalLimits) floored(c *gcounter, w int64, own, others float64, now time.Time) float64 {
	if f := float64(g.floors.of(c.id, w, now)); own+others < f {
		return f - own
	}
	return others
}

// apply brings counter c of the token table (of id, brought to now) to
// id's floor: a quota's used up to the figure of its period, a
// tokens_per_day bucket's level down to what the figure of today leaves.
// The caller holds c's shard lock.
func (f *floorTable) apply(id tokenID, c *tokenCounter, now time.Time) {
	if f == nil || f.kept.Load() == 0 {
		return
	}
	g := gid{id.id, id.scope, tokenGKind[id.kind]}
	switch id.kind {
	case tokDay:
		day, _ := quotaPeriod(event.QuotaRefillDaily, now)
		used := f.of(g, day, now)
		if used == 0 || c.limit <= 0 {
			return
		}
		refilled := now.Sub(time.Unix(day*86400, 0)).Seconds() * float64(c.limit) / window(tokDay).Seconds()
		if most := float64(c.limit-used) + refilled; c.level > most {
			c.level = most
		}
	case tokQuota, tokRequests, tokBudget:
		if used := f.of(g, c.period, now); c.used < used {
			c.used = used
		}
	}
}
