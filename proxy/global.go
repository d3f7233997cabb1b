package proxy

// Limits across edges (issue 15; docs/design.md, "Edge: limits across
// edges"). Every limit counter the edge's buckets and quotas keep — a key's
// or a deployment's rate_limit (rpm), and the token bounds of a key, a
// deployment or a project (tpm, tpd, quota_tokens, quota_requests) — also
// has a global counter here: per window, the edge's own exact settled plus
// held use, and what every other edge run (edge id, boot id) reported it
// had used, as G-counters (the largest value its writer ever had, merged by
// taking the maximum: a lost, repeated, reordered or forged report can only
// raise counts). A request admitted by the local bucket is also checked
// against the global estimate (own use plus the others', over the sliding
// window or the quota's period) once this edge knows of peers; near the
// limit each edge spends at most its share of the room left (strict mode);
// an edge that hears no peer for several sync intervals while it knows of
// live ones admits at most its own share (partition mode).
//
// No request that is under no limit ever reaches this code: the request
// limiter and the token table call it only from their takes.

import (
	"crypto/rand"
	"encoding/hex"
	"fmt"
	"hash/maphash"
	"sync"
	"sync/atomic"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/keymesh/keymesh/event"
)

// Partition modes (Config.LimitPartition).
const (
	// LimitPartitionShare (the default, ""): a partitioned edge admits at
	// most its share of each bound — limit / live edges for rates,
	// room-at-last-sync / live edges for quotas — fail-closed at the share.
	LimitPartitionShare = "share"
	// LimitPartitionDeny: a partitioned edge refuses every request under a
	// bound.
	LimitPartitionDeny = "deny"
	// LimitPartitionLocal: a partitioned edge admits on its own counters
	// only (each edge up to the whole bound: the release-14 behaviour).
	LimitPartitionLocal = "local"
)

// DefaultLimitSync is the sync interval assumed when Config.LimitSync is
// zero: the transport's default (--limits-sync).
const DefaultLimitSync = 200 * time.Millisecond

// partitionAfter is how many sync intervals without any peer report make
// an edge that knows of live peers partitioned.
const partitionAfter = 5

// maxLimitRuns bounds the edge runs (edge id, boot id) whose reports are
// kept: a report of a new run beyond it is dropped (counted "full") — a
// sender inventing boot ids cannot grow the table without bound.
const maxLimitRuns = 4096

// Global kinds: what a counter counts, and its window sequence.
const (
	gRPM uint8 = iota
	gTPM
	gTPD
	gQuotaTokens
	gQuotaRequests
	gBudget
	numGKinds
)

var gKindNames = [numGKinds]event.LimitKind{event.LimitRPM, event.LimitTPM, event.LimitTPD,
	event.LimitQuotaTokens, event.LimitQuotaRequests, event.LimitBudget}

var gScopeNames = [...]event.LimitScope{scopeKey: event.LimitScopeKey, scopeDeployment: event.LimitScopeDeployment,
	scopeProject: event.LimitScopeProject}

// tokenGKind maps a token table kind to its global kind.
var tokenGKind = [...]uint8{tokMinute: gTPM, tokDay: gTPD, tokQuota: gQuotaTokens, tokRequests: gQuotaRequests, tokBudget: gBudget}

// sliding reports whether kind counts over a sliding window of
// sub-windows (rpm, tpm, tpd), and returns the sub-window's length in ms
// and how many whole sub-windows the span holds; quotas and budgets count
// over their refill period.
func sliding(kind uint8) (subMS int64, n int64, ok bool) {
	switch kind {
	case gRPM, gTPM:
		return event.LimitMinuteSubWindowMS, 6, true
	case gTPD:
		return event.LimitDaySubWindowMS, 24, true
	}
	return 0, 0, false
}

// windowOf is the index of the window now falls in for a counter of kind
// (refill: a quota's schedule).
func windowOf(kind uint8, refill string, now time.Time) int64 {
	if sub, _, ok := sliding(kind); ok {
		return now.UnixMilli() / sub
	}
	p, _ := quotaPeriod(refill, now)
	return p
}

// gid names a global counter.
type gid struct {
	id    string
	scope uint8
	kind  uint8
}

// limitRun is one edge run that reported.
type limitRun struct {
	edge, boot string
	heard      atomic.Int64 // unix ms of its last report
}

// ownWin is this edge's use of a counter in one window: exact settled and
// held, and the largest their sum ever was (what is reported).
type ownWin struct {
	w             int64
	settled, held int64
	max, sent     int64 // sent: max as last reported
}

// remoteWin is another run's reported use of a counter in one window.
type remoteWin struct {
	run  *limitRun
	w    int64
	used int64
}

type gcounter struct {
	id     gid
	limit  int64
	refill string
	own    []ownWin
	remote []remoteWin
	dirty  bool // an own max rose since the last report
	held   int  // reservations not settled: never swept while > 0

	// Strict mode: the room at the start of this sync round, what this
	// edge spent in it and what it was asked for, and the same of the
	// round before.
	round                              int64
	roundRoom, roundSpent, roundDemand int64
	lastSpent, lastDemand              int64
	// Partition share: own use and room as of the last admission made
	// while connected, in window syncW.
	syncW, syncOwn, syncRoom int64
	synced                   bool
	// overW and over: the largest excess over the limit a merge showed in
	// window overW (keymesh_edge_limit_overshoot_total counts its rises).
	overW, over int64
}

type gshard struct {
	mu    sync.Mutex
	m     map[gid]*gcounter
	dirty []*gcounter
}

// globalLimits is the edge's global counter table.
type globalLimits struct {
	now  func() time.Time
	edge string
	boot string
	mode string
	sync time.Duration
	seed maphash.Seed
	max  int // counters per shard

	shards [64]gshard

	runsMu sync.Mutex
	runs   map[[2]string]*limitRun

	live      atomic.Int64 // SetLimitPeers: live edges, this one included
	liveHeard atomic.Int64 // live as of the last merged report
	heard     atomic.Int64 // unix ms of the last merged report (or of peers appearing)
	peers     atomic.Bool  // this edge has known of a peer: global checks apply
	// lastReport is when report last returned a report (unix ms).
	lastReport atomic.Int64

	untracked atomic.Uint64
	// floors are the origin's signed ledger figures (balance.go).
	floors *floorTable

	refusals  *prometheus.CounterVec // by reason: global, strict, partition
	refGlobal prometheus.Counter
	refStrict prometheus.Counter
	refPart   prometheus.Counter
	reports   *prometheus.CounterVec // by result
	overshoot *prometheus.CounterVec // by kind
}

func newGlobalLimits(now func() time.Time, edge, mode string, syncEvery time.Duration, maxCounters int) (*globalLimits, error) {
	switch mode {
	case "":
		mode = LimitPartitionShare
	case LimitPartitionShare, LimitPartitionDeny, LimitPartitionLocal:
	default:
		return nil, fmt.Errorf("%w: LimitPartition %q (want share, deny or local)", ErrConfig, mode)
	}
	if syncEvery < 0 || (syncEvery > 0 && syncEvery < time.Millisecond) {
		return nil, fmt.Errorf("%w: LimitSync must be zero (the default) or at least 1ms", ErrConfig)
	}
	if syncEvery == 0 {
		syncEvery = DefaultLimitSync
	}
	var b [12]byte
	_, _ = rand.Read(b[:])
	if edge == "" {
		edge = "edge"
	}
	g := &globalLimits{now: now, edge: edge, boot: hex.EncodeToString(b[:]), mode: mode, sync: syncEvery,
		seed: maphash.MakeSeed(), max: max(maxCounters/64, 16), runs: map[[2]string]*limitRun{}}
	g.live.Store(1)
	for i := range g.shards {
		g.shards[i].m = map[gid]*gcounter{}
	}
	g.refusals = prometheus.NewCounterVec(prometheus.CounterOpts{Name: "keymesh_edge_limit_global_refusals_total",
		Help: "Requests the local limits admitted but the limits across edges refused, by reason: global (the global estimate was spent), strict (this edge's share near the limit was spent), partition (partitioned: the local share was spent, or --limits-partition=deny)."},
		[]string{"reason"})
	g.refGlobal, g.refStrict, g.refPart = g.refusals.WithLabelValues("global"), g.refusals.WithLabelValues("strict"),
		g.refusals.WithLabelValues("partition")
	g.reports = prometheus.NewCounterVec(prometheus.CounterOpts{Name: "keymesh_edge_limit_peer_reports_total",
		Help: "Limit reports of other edges, by result: merged, own (this edge's own id: ignored), invalid (malformed or out of bounds), full (a new edge run beyond the table's bound)."},
		[]string{"result"})
	for _, r := range []string{"merged", "own", "invalid", "full"} {
		g.reports.WithLabelValues(r)
	}
	g.overshoot = prometheus.NewCounterVec(prometheus.CounterOpts{Name: "keymesh_edge_limit_overshoot_total",
		Help: "Use admitted beyond a limit across edges, as this edge saw it when merging reports: the rises of each counter's largest excess over its limit per window, by kind (requests for rpm and quota_requests, tokens for the others)."},
		[]string{"kind"})
	for _, k := range gKindNames {
		g.overshoot.WithLabelValues(string(k))
	}
	return g, nil
}

func (g *globalLimits) register(reg prometheus.Registerer) error {
	part := prometheus.NewGaugeFunc(prometheus.GaugeOpts{Name: "keymesh_edge_limit_partitioned",
		Help: "1 while this edge knows of live peers but has heard no limit report for several sync intervals (it admits at most its share, per --limits-partition), else 0."},
		func() float64 {
			if g.partitioned(g.now()) {
				return 1
			}
			return 0
		})
	untracked := prometheus.NewCounterFunc(prometheus.CounterOpts{Name: "keymesh_edge_limit_untracked_total",
		Help: "Global limit counters not kept because the table was full (the request was checked on its local limits only, or a peer's entry dropped)."},
		func() float64 { return float64(g.untracked.Load()) })
	for _, c := range []prometheus.Collector{g.refusals, g.reports, g.overshoot, part, untracked} {
		if err := reg.Register(c); err != nil {
			return fmt.Errorf("registering metrics: %w", err)
		}
	}
	return nil
}

func (g *globalLimits) shard(id gid) *gshard {
	return &g.shards[id.hash(g.seed)%uint64(len(g.shards))]
}

// hash picks a counter's shard (the global table's and the floors').
func (id gid) hash(seed maphash.Seed) uint64 {
	return maphash.String(seed, id.id) + uint64(id.scope)*7 + uint64(id.kind)*131
}

// partitioned reports whether this edge knows of live peers but has heard
// none for partitionAfter sync intervals.
func (g *globalLimits) partitioned(now time.Time) bool {
	if g.live.Load() <= 1 {
		return false
	}
	return now.UnixMilli()-g.heard.Load() > partitionAfter*g.sync.Milliseconds()
}

// edges is how many edges share a bound: the live edges this edge knows
// of, or knew of when it last heard a peer, whichever is more.
func (g *globalLimits) edges() int64 {
	return max(g.live.Load(), g.liveHeard.Load(), 1)
}

// get returns the counter id, creating it; nil when the table is full.
func (g *globalLimits) get(sh *gshard, id gid, limit int64, refill string, now time.Time) *gcounter {
	c := sh.m[id]
	if c == nil {
		if len(sh.m) >= g.max {
			g.sweep(sh, now)
		}
		if len(sh.m) >= g.max {
			g.untracked.Add(1)
			return nil
		}
		c = &gcounter{id: id, limit: limit, refill: refill, overW: -1}
		sh.m[id] = c
	}
	if limit > 0 {
		c.limit, c.refill = limit, refill
	}
	return c
}

// windowWeight reports whether window w of a counter of kind counts at now, and
// with what weight (the sliding-window counter: the oldest sub-window
// counts for the part of it still inside the span).
func windowWeight(kind uint8, w, cur int64, nowMS int64) float64 {
	sub, n, ok := sliding(kind)
	if !ok {
		if w == cur {
			return 1
		}
		return 0
	}
	switch {
	case w > cur || w < cur-n:
		return 0
	case w == cur-n:
		return 1 - float64(nowMS-cur*sub)/float64(sub)
	}
	return 1
}

// estimate returns this edge's exact use of c and the others' reported
// use, over the window at now.
func (c *gcounter) estimate(now time.Time, refill string) (own, others float64) {
	cur := windowOf(c.id.kind, refill, now)
	ms := now.UnixMilli()
	for i := range c.own {
		o := &c.own[i]
		if wt := windowWeight(c.id.kind, o.w, cur, ms); wt > 0 {
			own += wt * float64(o.settled+o.held)
		}
	}
	for i := range c.remote {
		r := &c.remote[i]
		if wt := windowWeight(c.id.kind, r.w, cur, ms); wt > 0 {
			others += wt * float64(r.used)
		}
	}
	return own, others
}

// ownWin returns c's own window w, adding it.
func (c *gcounter) ownWin(w int64) *ownWin {
	for i := len(c.own) - 1; i >= 0; i-- {
		if c.own[i].w == w {
			return &c.own[i]
		}
	}
	c.own = append(c.own, ownWin{w: w})
	return &c.own[len(c.own)-1]
}

// trim drops the windows of c (own and remote) that no longer count at
// now. An own window with a reservation held stays until settled. A
// counter whose schedule this edge does not know yet (one only peers have
// reported on) keeps the periods that may be current.
func (c *gcounter) trim(now time.Time) {
	cur := windowOf(c.id.kind, c.refill, now)
	keep := func(w int64) bool {
		if _, n, ok := sliding(c.id.kind); ok {
			return w >= cur-n
		}
		if c.limit == 0 {
			return windowPlausible(c.id.kind, w, now)
		}
		return w >= cur
	}
	own := c.own[:0]
	for _, o := range c.own {
		if o.held > 0 || keep(o.w) {
			own = append(own, o)
		}
	}
	clear(c.own[len(own):])
	c.own = own
	rem := c.remote[:0]
	for _, r := range c.remote {
		if keep(r.w) {
			rem = append(rem, r)
		}
	}
	clear(c.remote[len(rem):])
	c.remote = rem
}

// add changes c's own use in window w by settled and held, and marks c
// dirty when its largest value rose.
func (g *globalLimits) add(sh *gshard, c *gcounter, w, settled, held int64) {
	o := c.ownWin(w)
	o.settled += settled
	o.held += held
	if v := o.settled + o.held; v > o.max {
		o.max = v
		if !c.dirty {
			c.dirty = true
			sh.dirty = append(sh.dirty, c)
		}
	}
}

// gref is what a take recorded in a global counter, to settle it.
type gref struct {
	sh *gshard
	c  *gcounter // nil: nothing recorded
	w  int64
}

// gResult is a global check's answer.
type gResult struct {
	ok     bool
	reason uint8 // when refused: gRefGlobal, gRefStrict or gRefPartition
	// remaining is the global room left after this request (or before it,
	// when refused); applies says it was computed.
	remaining int64
	applies   bool
	retry     time.Duration
}

const (
	gRefGlobal uint8 = iota + 1
	gRefStrict
	gRefPartition
)

// take checks need against counter id's global estimate and, if admitted,
// records took (held when hold, else settled) in this edge's own use. A
// counter the table cannot keep admits (its local limit decided).
func (g *globalLimits) take(id gid, limit int64, refill string, need, took int64, hold bool, now time.Time) (gref, gResult) {
	sh := g.shard(id)
	sh.mu.Lock()
	defer sh.mu.Unlock()
	c := g.get(sh, id, limit, refill, now)
	if c == nil {
		return gref{}, gResult{ok: true}
	}
	w := windowOf(id.kind, refill, now)
	res := g.check(c, w, need, now)
	if !res.ok {
		return gref{}, res
	}
	if hold {
		g.add(sh, c, w, 0, took)
		c.held++
	} else {
		g.add(sh, c, w, took, 0)
	}
	c.roundSpent += took
	return gref{sh: sh, c: c, w: w}, res
}

// check decides need against c at now (window w), with c's shard locked,
// and counts a refusal by its reason.
func (g *globalLimits) check(c *gcounter, w, need int64, now time.Time) gResult {
	peers := g.peers.Load()
	if !peers && len(c.remote) == 0 {
		return gResult{ok: true} // a lone edge: its local limits are the limits
	}
	c.trim(now)
	own, others := c.estimate(now, c.refill)
	others = g.floored(c, w, own, others, now)
	est := own + others
	room := float64(c.limit) - est
	res := gResult{ok: true, applies: true, remaining: max(0, int64(room)-need)}
	refuse := func(why uint8) gResult {
		res.ok, res.reason, res.remaining = false, why, max(0, int64(room))
		// Counted here, where admission and a stream's extension both ask.
		switch why {
		case gRefGlobal:
			g.refGlobal.Inc()
			res.retry = g.retry(c, now)
		case gRefStrict: // the next round, with a fresh share
			g.refStrict.Inc()
			res.retry = time.Duration(g.sync.Milliseconds()-now.UnixMilli()%g.sync.Milliseconds()) * time.Millisecond
		default: // until the partition heals: no schedule to name
			g.refPart.Inc()
			res.retry = time.Second
		}
		return res
	}
	if g.partitioned(now) {
		switch g.mode {
		case LimitPartitionDeny:
			return refuse(gRefPartition)
		case LimitPartitionLocal:
			return gResult{ok: true}
		}
		e := g.edges()
		if _, _, ok := sliding(c.id.kind); ok {
			if own+float64(need) > float64(c.limit)/float64(e) || need > int64(room) {
				return refuse(gRefPartition)
			}
			return res
		}
		if !c.synced || c.syncW != w {
			c.syncW, c.syncOwn, c.syncRoom, c.synced = w, int64(own), int64(room), true
		}
		if own+float64(need) > float64(c.syncOwn)+float64(max(0, c.syncRoom))/float64(e) || need > int64(room) {
			return refuse(gRefPartition)
		}
		return res
	}
	c.syncW, c.syncOwn, c.syncRoom, c.synced = w, int64(own), int64(room), true
	if float64(need) > room {
		return refuse(gRefGlobal)
	}
	// This edge's pace: what it spent in the last sync round.
	round := now.UnixMilli() / g.sync.Milliseconds()
	if round != c.round {
		if round == c.round+1 {
			c.lastSpent, c.lastDemand = c.roundSpent, c.roundDemand
		} else {
			c.lastSpent, c.lastDemand = 0, 0
		}
		c.round, c.roundSpent, c.roundDemand, c.roundRoom = round, 0, 0, int64(room)
	}
	c.roundDemand += need
	// Strict mode: others may be spending too, reported or not yet.
	if e := g.edges(); e > 1 || len(c.remote) > 0 {
		// Strict once the room is less than every edge asking at this
		// edge's last pace would use in two rounds, or than a quarter of
		// the limit. The share is of the room less what the others may
		// have spent unseen in the last round, if they spent as this edge
		// did.
		if c.roundRoom < max(c.limit/4, 2*e*c.lastDemand) {
			share := (max(c.roundRoom-(e-1)*c.lastSpent, 0) + e - 1) / e // at least 1 while room is left
			if c.roundSpent+need > share {
				return refuse(gRefStrict)
			}
		}
	}
	return res
}

// retry is how long a refused request should wait: until the next
// sub-window starts (when the oldest one's weight falls), or the quota's
// next period.
func (g *globalLimits) retry(c *gcounter, now time.Time) time.Duration {
	if sub, _, ok := sliding(c.id.kind); ok {
		ms := now.UnixMilli()
		return time.Duration(sub-ms%sub) * time.Millisecond
	}
	if _, next := quotaPeriod(c.refill, now); !next.IsZero() {
		return next.Sub(now)
	}
	return 0
}

// settle replaces a hold's took by used (held → settled) in the window it
// was taken in; cancel gives everything back. The largest value reported
// never falls.
func (g *globalLimits) settle(r gref, took, used int64) {
	if r.c == nil {
		return
	}
	r.sh.mu.Lock()
	g.add(r.sh, r.c, r.w, used, -took)
	r.c.held--
	r.sh.mu.Unlock()
}

// refund gives back a settled take of one (a request the deployment's
// rate limit refused after the key's took).
func (g *globalLimits) refund(r gref) {
	if r.c == nil {
		return
	}
	r.sh.mu.Lock()
	g.add(r.sh, r.c, r.w, -1, 0)
	r.sh.mu.Unlock()
}

// sweep drops counters that hold no reservation, have nothing left to
// report and no window that still counts.
func (g *globalLimits) sweep(sh *gshard, now time.Time) {
	for id, c := range sh.m {
		if c.held > 0 || c.dirty {
			continue
		}
		c.trim(now)
		if len(c.own) == 0 && len(c.remote) == 0 {
			delete(sh.m, id)
		}
	}
}

// report returns this edge's entries changed since the last report (full:
// every entry of the windows that still count), or nil when there are
// none.
func (g *globalLimits) report(full bool) *event.LimitReport {
	now := g.now()
	r := &event.LimitReport{Edge: g.edge, Boot: g.boot, TimeMS: now.UnixMilli(), Full: full}
	for i := range g.shards {
		sh := &g.shards[i]
		sh.mu.Lock()
		if full {
			for _, c := range sh.m {
				c.trim(now)
				r.Entries = c.appendEntries(r.Entries, true)
			}
		} else {
			for _, c := range sh.dirty {
				if sh.m[c.id] == c {
					r.Entries = c.appendEntries(r.Entries, false)
				}
			}
		}
		for _, c := range sh.dirty {
			c.dirty = false
		}
		clear(sh.dirty)
		sh.dirty = sh.dirty[:0]
		sh.mu.Unlock()
	}
	if len(r.Entries) == 0 && !full {
		// Nothing to say; but peers take silence for a partition, so say
		// so every two sync intervals.
		if last := g.lastReport.Load(); r.TimeMS-last < 2*g.sync.Milliseconds() && r.TimeMS >= last {
			return nil
		}
	}
	g.lastReport.Store(r.TimeMS)
	return r
}

func (c *gcounter) appendEntries(dst []event.LimitEntry, all bool) []event.LimitEntry {
	for i := range c.own {
		o := &c.own[i]
		if o.max > 0 && (all || o.max > o.sent) {
			dst = append(dst, event.LimitEntry{Scope: gScopeNames[c.id.scope], ID: c.id.id,
				Kind: gKindNames[c.id.kind], Window: o.w, Used: o.max})
			o.sent = o.max
		}
	}
	return dst
}

// run returns the run (edge, boot), adding it; nil when the table of runs
// is full.
func (g *globalLimits) run(edge, boot string, nowMS int64) *limitRun {
	g.runsMu.Lock()
	defer g.runsMu.Unlock()
	k := [2]string{edge, boot}
	r := g.runs[k]
	if r == nil {
		if len(g.runs) >= maxLimitRuns {
			// Forget runs silent for longer than any window counts (a
			// monthly quota's).
			for k, old := range g.runs {
				if nowMS-old.heard.Load() > 32*24*3_600_000 {
					delete(g.runs, k)
				}
			}
			if len(g.runs) >= maxLimitRuns {
				return nil
			}
		}
		r = &limitRun{edge: edge, boot: boot}
		g.runs[k] = r
	}
	return r
}

// merge takes another run's report: per entry, the larger of what is known
// and what it says.
func (g *globalLimits) merge(rep *event.LimitReport) error {
	if err := rep.Validate(); err != nil {
		g.reports.WithLabelValues("invalid").Inc()
		return err
	}
	if rep.Edge == g.edge {
		g.reports.WithLabelValues("own").Inc()
		return nil
	}
	now := g.now()
	nowMS := now.UnixMilli()
	run := g.run(rep.Edge, rep.Boot, nowMS)
	if run == nil {
		g.reports.WithLabelValues("full").Inc()
		return fmt.Errorf("%w: too many edge runs", event.ErrLimitReport)
	}
	run.heard.Store(nowMS)
	for i := range rep.Entries {
		e := &rep.Entries[i]
		id := gid{id: e.ID, scope: scopeOf(e.Scope), kind: kindOf(e.Kind)}
		sh := g.shard(id)
		sh.mu.Lock()
		g.mergeEntry(sh, id, run, e.Window, e.Used, now)
		sh.mu.Unlock()
	}
	g.liveHeard.Store(g.live.Load())
	g.heard.Store(nowMS)
	g.peers.Store(true)
	g.reports.WithLabelValues("merged").Inc()
	return nil
}

func (g *globalLimits) mergeEntry(sh *gshard, id gid, run *limitRun, w, used int64, now time.Time) {
	c := sh.m[id]
	if c == nil {
		// A window that no longer counts (or is far ahead of this edge's
		// clock) is not worth a counter.
		if !windowPlausible(id.kind, w, now) {
			return
		}
		if c = g.get(sh, id, 0, "", now); c == nil {
			return
		}
	}
	cur := windowOf(id.kind, c.refill, now)
	if !windowPlausible(id.kind, w, now) && w != cur {
		return
	}
	c.trim(now)
	found := false
	for i := range c.remote {
		if r := &c.remote[i]; r.run == run && r.w == w {
			r.used = max(r.used, used)
			found = true
			break
		}
	}
	if !found {
		if _, n, ok := sliding(id.kind); (ok && w < cur-n) || (!ok && w < cur && c.limit > 0) {
			return
		}
		c.remote = append(c.remote, remoteWin{run: run, w: w, used: used})
	}
	if c.limit > 0 {
		if own, others := c.estimate(now, c.refill); own+others > float64(c.limit) {
			over := int64(own+others) - c.limit
			if c.overW != cur {
				c.overW, c.over = cur, 0
			}
			if over > c.over {
				g.overshoot.WithLabelValues(string(gKindNames[id.kind])).Add(float64(over - c.over))
				c.over = over
			}
		}
	}
}

// windowPlausible reports whether window w of kind may count at now or
// soon (a peer's clock a little ahead): a sliding sub-window within the
// span or up to two ahead, any quota period not before today's daily or
// this month's monthly one (this edge may not know the quota's schedule
// yet).
func windowPlausible(kind uint8, w int64, now time.Time) bool {
	if sub, n, ok := sliding(kind); ok {
		cur := now.UnixMilli() / sub
		return w >= cur-n && w <= cur+2
	}
	day, _ := quotaPeriod(event.QuotaRefillDaily, now)
	month, _ := quotaPeriod(event.QuotaRefillMonthly, now)
	return w == 0 || (w >= month && w <= month+1) || (w >= day && w <= day+1)
}

func scopeOf(s event.LimitScope) uint8 {
	switch s {
	case event.LimitScopeDeployment:
		return scopeDeployment
	case event.LimitScopeProject:
		return scopeProject
	}
	return scopeKey
}

func kindOf(k event.LimitKind) uint8 {
	for i, n := range gKindNames {
		if n == k {
			return uint8(i)
		}
	}
	return gRPM
}

// usage is counter id's global use now (this edge's plus the others'), for
// a bound of schedule refill.
func (g *globalLimits) usage(id gid, refill string) int64 {
	now := g.now()
	sh := g.shard(id)
	sh.mu.Lock()
	defer sh.mu.Unlock()
	c := sh.m[id]
	if c == nil {
		return 0
	}
	c.trim(now)
	own, others := c.estimate(now, refill)
	others = g.floored(c, windowOf(id.kind, refill, now), own, others, now)
	return int64(own + others + 0.5)
}

// LimitReport returns what this edge has to tell the other edges of its
// use of the limit counters: the entries whose value rose since the last
// call (full: every entry of the windows that still count, the periodic
// refresh), or nil when there is nothing to say — but at least every two
// sync intervals it returns a report, of no entries if need be: peers take
// an edge they do not hear from for partitioned. Never nil when full. The
// transport calls it every sync interval (Config.LimitSync) and sends
// every report it returns to every peer; it may hold more than event.MaxLimitEntries
// entries: Split it before Marshal. Safe for concurrent use, but the
// entries changed since the last call are handed to one caller only.
func (s *Proxy) LimitReport(full bool) *event.LimitReport {
	return s.global.report(full)
}

// MergeLimitReport takes another edge's report: every entry raises this
// edge's knowledge of that edge run's use to at least its value (a report
// can never lower a count). A report carrying this edge's own id is ignored
// (nil); one that fails Validate is refused with an error wrapping
// event.ErrLimitReport, as is a report of a new edge run when the table of
// runs is full. Counted in keymesh_edge_limit_peer_reports_total. Safe for
// concurrent use; merging a report twice, or reports in any order, gives
// the same state.
func (s *Proxy) MergeLimitReport(r *event.LimitReport) error {
	return s.global.merge(r)
}

// SetLimitPeers tells the edge how many edges, itself included, are live:
// it shares the bounds near the limit and when partitioned among that many.
// Count an edge that is only unreachable as live (that is what a partition
// is); live < 1 counts as 1. Once live > 1 the global checks apply to every
// bounded request; and while live > 1 an edge that merges no report for
// five sync intervals is partitioned (Config.LimitPartition).
func (s *Proxy) SetLimitPeers(live int) {
	s.global.setPeers(live)
}

func (g *globalLimits) setPeers(live int) {
	live = max(live, 1)
	old := g.live.Swap(int64(live))
	if live > 1 {
		if old <= 1 && !g.peers.Load() {
			// Peers just appeared: they have until partitionAfter intervals
			// from now to be heard.
			g.heard.Store(g.now().UnixMilli())
		}
		g.peers.Store(true)
	}
}

// LimitBoot returns this edge run's random boot id, the Boot of its
// reports.
func (s *Proxy) LimitBoot() string { return s.global.boot }
