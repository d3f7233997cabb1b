// Package cache owns an edge's view of keys and deployments: what it knows,
// how current that knowledge is, and how it fills gaps.
//
// Keys live in a ristretto cache that is only ever a positive cache and never
// the authority. The authority is a generation record per key ID, kept by the
// View itself: every applied change to a key raises its generation to the
// change's revision, and every cached entry remembers the revision its state
// was read at. Generations live in a fixed table indexed by a hash of the key
// ID, so they cost no memory per key and never need pruning; two keys that
// share a slot only make each other look changed more often, which costs a
// lookup and is never unsafe. A hit whose entry is older than its key's generation, or older
// than the View's floor (raised when a gap in the event stream is found), is
// treated as a miss. This makes ristretto's asynchronous Set harmless: a
// queued or racing Set can at worst store an entry that is already stale,
// never resurrect a revoked key. A miss-path answer read before a revocation
// the View has applied is refused for the same reason and fetched again.
//
// Deployments are few and all held, in an immutable snapshot swapped
// atomically on change. A change is visible to readers before the View
// reports its revision as applied, so a request that starts after
// AppliedRevision() reaches N sees every change up to N.
//
// All methods are safe for concurrent use. Apply must be called in revision
// order by one goroutine (the Feed does).
package cache

import (
	"context"
	"errors"
	"fmt"
	"hash/maphash"
	"log/slog"
	"sync"
	"sync/atomic"
	"time"

	"github.com/dgraph-io/ristretto/v2"
	"golang.org/x/sync/singleflight"

	"github.com/keymesh/keymesh/apikey"
	"github.com/keymesh/keymesh/event"
	"github.com/keymesh/keymesh/internal/modelglob"
)

// Errors returned by Authorize. All but ErrUnavailable mean the key must be
// refused; ErrUnavailable means the View could not prove anything either way.
var (
	ErrUnknownKey  = errors.New("cache: unknown key")
	ErrExpired     = errors.New("cache: key expired")
	ErrDisabled    = errors.New("cache: key disabled")
	ErrUnavailable = errors.New("cache: key lookup unavailable")
	// ErrGap is returned (as a *GapError) by Apply when a record does not
	// follow the applied revision; the caller must resynchronise.
	ErrGap = errors.New("cache: revision gap")
)

// GapError says which revisions are missing: those after Have and before Got.
type GapError struct{ Have, Got uint64 }

func (e *GapError) Error() string {
	return fmt.Sprintf("cache: revision gap: applied %d, next record is %d", e.Have, e.Got)
}

// Is makes errors.Is(err, ErrGap) true.
func (e *GapError) Is(target error) bool { return target == ErrGap }

// Lookup fetches the origin's sealed answer for one key hash. The View
// verifies what it returns.
type Lookup func(ctx context.Context, h apikey.Hash) ([]byte, error)

// Config configures a View. Zero fields take the documented defaults; the
// bounds an edge operator sets (MaxKeys, LookupTimeout, MaxLookups,
// MaxStaleness) have none here and are required: the edge's defaults live
// in package edge (edge.DefaultConfig), written once.
type Config struct {
	// Verifier checks the origin's signature on every record. Required.
	Verifier *event.Verifier
	// Lookup answers cache misses. Required.
	Lookup Lookup
	// MaxKeys bounds the number of cached key secrets. Required.
	MaxKeys int64
	// NegativeKeys bounds the cache of well-formed keys the origin does not
	// know, kept apart from the positive cache so that a flood of them
	// cannot evict valid keys. Default 100,000; negative disables it.
	NegativeKeys int64
	// NegativeTTL is how long an unknown key is remembered. Default 1m.
	NegativeTTL time.Duration
	// LookupTimeout bounds one miss-path lookup. Required.
	LookupTimeout time.Duration
	// MaxLookups bounds the miss-path lookups in flight at once (distinct
	// keys; one key's concurrent misses share one). Past it a miss fails
	// at once with ErrUnavailable and is counted in Stats.LookupsShed, so
	// that a flood of fresh well-formed keys costs the origin a bounded
	// load. Required.
	MaxLookups int
	// MaxStaleness is how long the View trusts its cache without proof that
	// it is current: a signed origin heartbeat naming a committed head it
	// has applied. Past it, a cached key vouched for (by the origin-signed
	// time of the record it was read from) longer ago than MaxStaleness is
	// re-validated by lookup before use, and Trusted reports false. State
	// restored from disk is as old as the newest signed record in it.
	// Required; negative disables the guard.
	MaxStaleness time.Duration
	// FailOpen decides what a stale View does when it cannot re-validate: false
	// (the default, "closed") answers ErrUnavailable for what it cannot
	// prove — a lookup that fails, or an answer (a gossip peer's) vouched
	// for no more recently than MaxStaleness —; true ("open-cached") keeps
	// serving the cached state, and takes such answers.
	FailOpen bool
	// ObserveLookup, if set, is told how long each miss-path lookup took.
	ObserveLookup func(d time.Duration, err error)
	// PeerRecordBytes bounds the sealed key records the View keeps so that
	// it can answer gossip peers' lookups (SealedRecord): the last record
	// it read or applied for each secret it has looked up. Default 16 MiB;
	// negative keeps none.
	PeerRecordBytes int64
	// Logger receives warnings. Default slog.Default().
	Logger *slog.Logger
	// Now is the clock for expiry checks. Default time.Now.
	Now func() time.Time
}

// Key is an edge's compiled, read-only view of a key at one revision.
type Key struct {
	ID          string
	Project     string
	Name        string
	Revision    uint64
	Deployments []string
	RateLimit   *event.RateLimit
	// Models is the key's model allow-list as the origin sent it (for
	// GET /v1/key); AllowedModels is it compiled, for the request path.
	Models        []string
	AllowedModels modelglob.List
	// MaxConcurrency bounds the key's requests in flight at this edge (0:
	// none).
	MaxConcurrency int
	// Tokens bounds the key's tokens and credits (nil: none).
	Tokens *event.TokenLimits
	// checkedAt is when the origin vouched for this state (unix nanos):
	// the signed time of the lookup answer or event it was read from,
	// never later than its arrival, never the local time it was fetched.
	checkedAt int64
	expiresAt int64 // unix nanoseconds, 0 = never
	perms     perms
	disabled  bool
}

// Linked reports whether the key is linked to the deployment with id.
func (k *Key) Linked(id string) bool {
	for _, d := range k.Deployments {
		if d == id {
			return true
		}
	}
	return false
}

// Has reports whether the key holds permission p.
func (k *Key) Has(p string) bool { return k.perms&permBit(p) != 0 }

// Permissions lists the permissions the key holds, in event.Permissions
// order.
func (k *Key) Permissions() []string {
	out := []string{}
	for _, p := range event.Permissions {
		if k.Has(p) {
			out = append(out, p)
		}
	}
	return out
}

// ExpiresAt is when the key expires; ok is false for a key that never does.
func (k *Key) ExpiresAt() (t time.Time, ok bool) {
	if k.expiresAt == 0 {
		return time.Time{}, false
	}
	return time.Unix(0, k.expiresAt).UTC(), true
}

// entry is what ristretto holds for one secret hash. The key is held by
// value: one allocation per cached secret (240 bytes, plus a key's model
// patterns when it has any), which is most of what a million cached keys
// cost. Entries are never modified once built.
type entry struct {
	hash     apikey.Hash
	notAfter int64  // unix nanoseconds this secret stops working, 0 = never
	gen      uint32 // slot of the key's generation
	key      Key
}

// negative is a remembered "no such key" answer.
type negative struct {
	hash apikey.Hash
	rev  uint64
}

// generations is the authoritative revocation record: per slot, the
// revision of the last change applied to any key whose ID hashes there.
type generations struct {
	seed  maphash.Seed
	slots []atomic.Uint64 // power-of-two length
}

func newGenerations(n int64) *generations {
	size := int64(1 << 16)
	for size < 2*n {
		size <<= 1
	}
	return &generations{seed: maphash.MakeSeed(), slots: make([]atomic.Uint64, size)}
}

func (g *generations) slot(id string) uint32 {
	return uint32(maphash.String(g.seed, id) & uint64(len(g.slots)-1))
}

func (g *generations) get(slot uint32) uint64 { return g.slots[slot].Load() }

func (g *generations) raise(slot uint32, rev uint64) {
	s := &g.slots[slot]
	for {
		cur := s.Load()
		if rev <= cur || s.CompareAndSwap(cur, rev) {
			return
		}
	}
}

// Stats are the View's counters.
type Stats struct {
	Hits, Misses, Lookups, LookupErrors, StaleHits, Resyncs, Applied, Rejected, NegativeHits uint64
	// LookupsShed counts misses refused because MaxLookups were in flight.
	LookupsShed uint64
	// Revalidations counts cached keys looked up again because the View
	// could not prove it was current; StaleServed, those served from the
	// cache anyway because the lookup failed and FailOpen is set.
	Revalidations, StaleServed uint64
	// OldHeartbeats counts heartbeats ignored for being no newer than one
	// already taken (replays, or copies that came twice).
	OldHeartbeats uint64
	// Evictions counts positive entries ristretto evicted for room.
	Evictions uint64
	// LatestRevision is the highest committed head the origin has named
	// in a heartbeat (or the applied revision, if higher); minus
	// AppliedRevision it is the lag.
	LatestRevision uint64
	// StaleAnswers counts lookup answers (a gossip peer's) that were
	// genuine but vouched for longer ago than MaxStaleness while the View
	// was not current: refused when closed, served (and counted in
	// StaleServed) when open-cached.
	StaleAnswers uint64
	// UntrustedRefusals counts requests refused because the View could
	// not prove its deployments current (Trusted false; see proxy).
	UntrustedRefusals uint64
	// PeerHeartbeats counts origin heartbeats relayed by gossip peers that
	// were genuine and new; PeerRecordsServed, sealed records handed to
	// peers asking (SealedRecord).
	PeerHeartbeats, PeerRecordsServed uint64
}

// View is an edge's knowledge of keys and deployments.
type View struct {
	cfg  Config
	keys *ristretto.Cache[uint64, *entry]
	// neg remembers hashes the origin said no key has. An entry read at
	// revision R counts only while R >= negFloor, which every key change
	// raises: a key created (or rotated in) after the answer is never
	// refused because of it, whatever order ristretto applies Sets in.
	neg      *ristretto.Cache[uint64, negative]
	negFloor atomic.Uint64
	log      *slog.Logger
	now      func() time.Time
	fill     singleflight.Group
	// lookupSlots holds one token per lookup in flight (MaxLookups).
	lookupSlots chan struct{}
	gens        *generations

	applied atomic.Uint64 // last revision whose effects are visible
	floor   atomic.Uint64 // entries read before this revision are stale
	deps    atomic.Pointer[Deployments]

	depsMu   sync.Mutex        // serialises Apply, Resync, State and Restore
	depFloor uint64            // deployment records at or below are in the snapshot
	snapshot [][]byte          // the last sealed snapshot applied (its chunks)
	depWires map[string][]byte // the last sealed record per deployment since

	// sealed holds, per secret hash, the last sealed key record read or
	// applied for it, to answer peers (nil: PeerRecordBytes < 0).
	sealed *ristretto.Cache[uint64, *sealedRecord]

	// current is when the View last proved it was current (unix nanos);
	// a heartbeat ahead of the applied revision is held in pending until
	// the stream catches up to it.
	current    atomic.Int64
	latest     atomic.Uint64 // highest revision a heartbeat named
	hbTime     atomic.Int64  // newest heartbeat's own Time seen (unix nanos)
	pendingMu  sync.Mutex
	pendingRev uint64
	pendingAt  int64
	// behindSince is when (unix nanos) a heartbeat first named a committed
	// head above the applied revision, 0 while caught up (pendingMu).
	behindSince int64
	// restored is set while the View runs on state restored from disk with
	// no proof of currency since.
	restored atomic.Bool

	hits, misses, lookups, lookupErrs, staleHits, resyncs, appliedN, rejected, negHits atomic.Uint64
	revalidations, staleServed, peerHeartbeats, peerServed, oldBeats, lookupsShed      atomic.Uint64
	staleAnswers, untrusted                                                            atomic.Uint64
}

// sealedRecord is a sealed key record kept for peers, with what is needed
// to tell it is still current without opening it again.
type sealedRecord struct {
	hash apikey.Hash
	rev  uint64
	gen  uint32
	wire []byte
}

// New validates cfg and returns an empty View.
func New(cfg Config) (*View, error) {
	if cfg.Verifier == nil {
		return nil, errors.New("cache: Config.Verifier is required")
	}
	if cfg.Lookup == nil {
		return nil, errors.New("cache: Config.Lookup is required")
	}
	if cfg.MaxKeys <= 0 || cfg.MaxLookups <= 0 || cfg.LookupTimeout <= 0 || cfg.MaxStaleness == 0 {
		return nil, errors.New("cache: Config.MaxKeys, MaxLookups and LookupTimeout must be positive, and MaxStaleness set (negative disables it)")
	}
	if cfg.NegativeKeys == 0 {
		cfg.NegativeKeys = 100_000
	}
	if cfg.NegativeTTL <= 0 {
		cfg.NegativeTTL = time.Minute
	}
	if cfg.PeerRecordBytes == 0 {
		cfg.PeerRecordBytes = 16 << 20
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.Default()
	}
	if cfg.Now == nil {
		cfg.Now = time.Now
	}
	keys, err := ristretto.NewCache(&ristretto.Config[uint64, *entry]{
		// 4 counters per key rather than ristretto's suggested 10: admission
		// stays good for a working set of keys, and 1M keys save 30 MB.
		NumCounters:        cfg.MaxKeys * 4,
		MaxCost:            cfg.MaxKeys,
		BufferItems:        64,
		IgnoreInternalCost: true,
		Metrics:            true,
	})
	if err != nil {
		return nil, fmt.Errorf("creating key cache: %w", err)
	}
	var neg *ristretto.Cache[uint64, negative]
	if cfg.NegativeKeys > 0 {
		neg, err = ristretto.NewCache(&ristretto.Config[uint64, negative]{
			NumCounters:        cfg.NegativeKeys * 10,
			MaxCost:            cfg.NegativeKeys,
			BufferItems:        64,
			IgnoreInternalCost: true,
		})
		if err != nil {
			keys.Close()
			return nil, fmt.Errorf("creating negative key cache: %w", err)
		}
	}
	var sealed *ristretto.Cache[uint64, *sealedRecord]
	if cfg.PeerRecordBytes > 0 {
		sealed, err = ristretto.NewCache(&ristretto.Config[uint64, *sealedRecord]{
			NumCounters:        max(cfg.PeerRecordBytes/50, 1000), // ~10 per record of ~500 bytes
			MaxCost:            cfg.PeerRecordBytes,
			BufferItems:        64,
			IgnoreInternalCost: true,
		})
		if err != nil {
			keys.Close()
			if neg != nil {
				neg.Close()
			}
			return nil, fmt.Errorf("creating peer record cache: %w", err)
		}
	}
	v := &View{cfg: cfg, keys: keys, neg: neg, sealed: sealed, log: cfg.Logger, now: cfg.Now, lookupSlots: make(chan struct{}, cfg.MaxLookups),
		gens: newGenerations(cfg.MaxKeys), depWires: map[string][]byte{}}
	v.deps.Store(emptyDeployments)
	v.current.Store(cfg.Now().UnixNano()) // a fresh View has had no time to fall behind
	return v, nil
}

// Close releases the cache.
func (v *View) Close() {
	v.keys.Close()
	if v.neg != nil {
		v.neg.Close()
	}
	if v.sealed != nil {
		v.sealed.Close()
	}
}

// AppliedRevision is the last revision whose effects every subsequent call
// observes.
func (v *View) AppliedRevision() uint64 { return v.applied.Load() }

// Stats returns a copy of the counters.
func (v *View) Stats() Stats {
	return Stats{
		Hits: v.hits.Load(), Misses: v.misses.Load(), Lookups: v.lookups.Load(),
		LookupErrors: v.lookupErrs.Load(), LookupsShed: v.lookupsShed.Load(), StaleHits: v.staleHits.Load(), Resyncs: v.resyncs.Load(),
		Applied: v.appliedN.Load(), Rejected: v.rejected.Load(), NegativeHits: v.negHits.Load(),
		Revalidations: v.revalidations.Load(), StaleServed: v.staleServed.Load(), OldHeartbeats: v.oldBeats.Load(),
		Evictions: v.keys.Metrics.KeysEvicted(), LatestRevision: max(v.latest.Load(), v.applied.Load()),
		PeerHeartbeats: v.peerHeartbeats.Load(), PeerRecordsServed: v.peerServed.Load(),
		StaleAnswers: v.staleAnswers.Load(), UntrustedRefusals: v.untrusted.Load(),
	}
}

func slot(h *apikey.Hash) uint64 {
	return uint64(h[0]) | uint64(h[1])<<8 | uint64(h[2])<<16 | uint64(h[3])<<24 |
		uint64(h[4])<<32 | uint64(h[5])<<40 | uint64(h[6])<<48 | uint64(h[7])<<56
}

// Authorize returns the key whose secret hashes to h, checking the cache
// first and asking the origin on a miss, and refuses keys that are unknown,
// expired, disabled or past a rotation's grace period.
func (v *View) Authorize(ctx context.Context, h apikey.Hash) (*Key, error) {
	now := v.now().UnixNano()
	e, ok := v.cached(&h)
	switch {
	case !ok:
		v.misses.Add(1)
		var err error
		if e, err = v.miss(ctx, h); err != nil {
			return nil, err
		}
		if v.stale(e, now) {
			// Answered (by a peer) with a record vouched for too long ago,
			// while the View cannot prove it is current either.
			v.staleAnswers.Add(1)
			if !v.cfg.FailOpen {
				return nil, errStaleAnswer
			}
			v.staleServed.Add(1)
		}
	case v.stale(e, now):
		v.revalidations.Add(1)
		fresh, err := v.miss(ctx, h)
		switch {
		case err == nil && !v.stale(fresh, now):
			e = fresh
		case err == nil:
			v.staleAnswers.Add(1)
			if !v.cfg.FailOpen {
				return nil, errStaleAnswer
			}
			v.staleServed.Add(1)
			e = fresh // as new as any change applied to the key
		case errors.Is(err, ErrUnavailable) && v.cfg.FailOpen:
			v.staleServed.Add(1)
		default:
			return nil, err
		}
	default:
		v.hits.Add(1)
	}
	return &e.key, v.check(e, now)
}

// errStaleAnswer is why a stale View in closed mode refused an answer that
// no one could vouch for recently enough.
var errStaleAnswer = fmt.Errorf("%w: the only answer was vouched for by the origin longer ago than the staleness bound", ErrUnavailable)

// stale reports whether e must be proven again before use: the View has not
// proven it is current for MaxStaleness, and the origin vouched for e
// longer ago than that too.
func (v *View) stale(e *entry, now int64) bool {
	bound := int64(v.cfg.MaxStaleness)
	return bound > 0 && now-v.current.Load() > bound && now-e.key.checkedAt > bound
}

// vouchedAt is the time (unix nanos) a record signed at signed vouches for
// its state: the signed time, never later than now (an origin clock ahead
// proves nothing more); 0 for a record without one.
func (v *View) vouchedAt(signed time.Time) int64 {
	if signed.IsZero() {
		return 0
	}
	return min(signed.UnixNano(), v.now().UnixNano())
}

// Current reports whether the View has proven it is current within
// MaxStaleness, and when it last did.
func (v *View) Current() (bool, time.Time) {
	at := v.current.Load()
	return v.cfg.MaxStaleness <= 0 || v.now().UnixNano()-at <= int64(v.cfg.MaxStaleness), time.Unix(0, at)
}

// Trusted reports whether state the View holds may decide a request on its
// own, without a lookup that proves it (a deployment without auth): when
// the View is current, or in open-cached mode. A false answer is a refusal
// and is counted (Stats.UntrustedRefusals).
func (v *View) Trusted() bool {
	if v.cfg.FailOpen {
		return true
	}
	ok, _ := v.Current()
	if !ok {
		v.untrusted.Add(1)
	}
	return ok
}

// Fresh reports whether a verified lookup answer would be taken as it is:
// the View is current, or the origin vouched for the record within
// MaxStaleness, or the View is open-cached. Gossip uses it to wait for a
// fresher peer's answer rather than take a stale one.
func (v *View) Fresh(rec *event.Record) bool {
	bound := int64(v.cfg.MaxStaleness)
	now := v.now().UnixNano()
	return v.cfg.FailOpen || bound <= 0 || now-v.current.Load() <= bound || now-v.vouchedAt(rec.Time) <= bound
}

// Currency is what the View can say about being current, for /status.
type Currency struct {
	Current bool
	// ProvenAt is when the View last proved it was current (a heartbeat
	// naming a committed head it had applied, or for restored state the
	// newest signed time in it); Staleness is how long ago that was.
	ProvenAt     time.Time
	Staleness    time.Duration
	MaxStaleness time.Duration
	// Head is the highest committed head an origin heartbeat named (0 when
	// none was heard); Applied the View's applied revision.
	Head, Applied uint64
	// BehindFor is how long heartbeats have named a head above Applied
	// (0 while caught up).
	BehindFor time.Duration
	// Restored is set while the View runs on state restored from disk with
	// no proof of currency since.
	Restored bool
	// Reason says why the View is not current; "" when it is.
	Reason string
}

// Currency reports the View's proof of currency and, when it has none
// within MaxStaleness, why.
func (v *View) Currency() Currency {
	now := v.now()
	ok, at := v.Current()
	c := Currency{Current: ok, ProvenAt: at, Staleness: max(now.Sub(at), 0), MaxStaleness: v.cfg.MaxStaleness,
		Head: v.latest.Load(), Applied: v.applied.Load(), Restored: v.restored.Load()}
	v.pendingMu.Lock()
	if v.behindSince != 0 && c.Head > c.Applied {
		c.BehindFor = max(now.Sub(time.Unix(0, v.behindSince)), 0)
	}
	v.pendingMu.Unlock()
	if ok {
		return c
	}
	round := func(d time.Duration) time.Duration { return d.Round(100 * time.Millisecond) }
	switch {
	case c.Head > c.Applied:
		c.Reason = fmt.Sprintf("behind committed head %d (applied %d) for %v; last proven current %v ago",
			c.Head, c.Applied, round(c.BehindFor), round(c.Staleness))
	case c.Restored:
		c.Reason = fmt.Sprintf("running on state restored from disk (applied %d), vouched for by the origin %v ago; not caught up with a committed head the origin announced since",
			c.Applied, round(c.Staleness))
	default:
		c.Reason = fmt.Sprintf("no origin heartbeat naming an applied committed head for %v (applied %d, committed head %d)",
			round(c.Staleness), c.Applied, c.Head)
	}
	return c
}

// Heartbeat takes a sealed origin heartbeat that came from the origin
// (over NATS). Once the View has applied the revision it names, the View is
// proven current as of the heartbeat's arrival. Only a heartbeat newer (by
// the origin's clock) than every one taken before counts: an old one
// replayed, or a copy arriving twice by another path, proves nothing and is
// ignored (counted in Stats.OldHeartbeats). fresh reports a genuine
// heartbeat newer than any the View had seen: the one worth passing on to
// gossip peers.
func (v *View) Heartbeat(wire []byte) (fresh bool, err error) {
	return v.heartbeat(wire, false)
}

// PeerHeartbeat takes a sealed origin heartbeat a gossip peer relayed. It
// proves currency as of the heartbeat's own signed Time (never later than
// now), not its arrival, so a replayed old heartbeat proves nothing new.
// fresh reports a genuine heartbeat newer than any the View had seen: the
// one worth passing on to other peers.
func (v *View) PeerHeartbeat(wire []byte) (fresh bool, err error) {
	fresh, err = v.heartbeat(wire, true)
	if fresh {
		v.peerHeartbeats.Add(1)
	}
	return fresh, err
}

func (v *View) heartbeat(wire []byte, fromPeer bool) (fresh bool, err error) {
	rec, err := v.open(wire)
	if err != nil {
		return false, err
	}
	if rec.Kind != event.KindHeartbeat {
		v.rejected.Add(1)
		return false, fmt.Errorf("%w: want a heartbeat, got %q", event.ErrMalformed, rec.Kind)
	}
	now := v.now().UnixNano()
	signed := rec.Time.UnixNano()
	if rec.Time.IsZero() {
		signed = 0
	}
	for cur := v.hbTime.Load(); ; cur = v.hbTime.Load() {
		if signed <= cur {
			break
		}
		if v.hbTime.CompareAndSwap(cur, signed) {
			fresh = true
			break
		}
	}
	if !fresh {
		v.oldBeats.Add(1)
		return false, nil
	}
	at := now
	if fromPeer {
		at = min(now, signed) // the origin's word for when it was so, not ours
	}
	for cur := v.latest.Load(); rec.Revision > cur && !v.latest.CompareAndSwap(cur, rec.Revision); cur = v.latest.Load() {
	}
	v.pendingMu.Lock()
	defer v.pendingMu.Unlock()
	if applied := v.applied.Load(); rec.Revision <= applied {
		v.proven(at)
		if at >= v.pendingAt {
			v.pendingRev = 0
		}
		if v.latest.Load() <= applied {
			v.behindSince = 0
		}
		return fresh, nil
	}
	if v.pendingRev == 0 || at >= v.pendingAt {
		v.pendingRev, v.pendingAt = rec.Revision, at
	}
	if v.behindSince == 0 {
		v.behindSince = at
	}
	return fresh, nil
}

// proven moves the View's proof of currency forward to at (never back).
func (v *View) proven(at int64) {
	for cur := v.current.Load(); at > cur && !v.current.CompareAndSwap(cur, at); cur = v.current.Load() {
	}
	if at >= v.current.Load() {
		v.restored.Store(false)
	}
}

// caughtUp credits a held heartbeat once rev reaches it.
func (v *View) caughtUp(rev uint64) {
	v.pendingMu.Lock()
	defer v.pendingMu.Unlock()
	if v.pendingRev != 0 && rev >= v.pendingRev {
		v.proven(v.pendingAt)
		v.pendingRev = 0
	}
	if rev >= v.latest.Load() {
		v.behindSince = 0
	}
}

// restoredFrom marks the View as running on state restored from disk,
// vouched for by the origin no later than the newest signed time among
// recs: until a heartbeat proves otherwise, the state is as stale as that
// is old. depsMu is held (Restore).
func (v *View) restoredFrom(times ...time.Time) {
	var newest int64
	for _, t := range times {
		newest = max(newest, v.vouchedAt(t))
	}
	v.current.Store(newest)
	v.restored.Store(true)
}

// cached returns a current entry for h, if the cache holds one.
func (v *View) cached(h *apikey.Hash) (*entry, bool) {
	e, ok := v.keys.Get(slot(h))
	if !ok || e.hash != *h {
		return nil, false
	}
	gen := v.gens.get(e.gen)
	if e.key.Revision < gen && gen > v.applied.Load() {
		// An Apply of this key is under way: it raises the key's generation
		// first (no older entry may serve from then on) and refreshes the
		// cached entry after. Wait for it (it holds depsMu) and look again,
		// rather than ask the origin, a network round trip away, for what
		// is about to be here: on a loaded edge the Apply can be preempted
		// in between, and a request then waited 2 × the WAN delay (bench
		// wan, issue 17).
		v.depsMu.Lock()
		v.depsMu.Unlock() // an empty critical section: the waiting is the point
		if e, ok = v.keys.Get(slot(h)); !ok || e.hash != *h {
			return nil, false
		}
		gen = v.gens.get(e.gen)
	}
	if e.key.Revision < gen || e.key.Revision < v.floor.Load() {
		v.staleHits.Add(1)
		return nil, false
	}
	return e, true
}

func (v *View) check(e *entry, now int64) error {
	k := &e.key
	if k.disabled {
		return ErrDisabled
	}
	if k.expiresAt != 0 && now >= k.expiresAt {
		return ErrExpired
	}
	if e.notAfter != 0 && now >= e.notAfter {
		return ErrUnknownKey // a rotated-out secret is no longer this key's
	}
	return nil
}

// maxStaleRetries bounds how often a miss is re-fetched because the answer
// predates a change the View has already applied.
const maxStaleRetries = 3

func (v *View) miss(ctx context.Context, h apikey.Hash) (*entry, error) {
	if v.neg != nil {
		if n, ok := v.neg.Get(slot(&h)); ok && n.hash == h && n.rev >= v.negFloor.Load() {
			v.negHits.Add(1)
			return nil, ErrUnknownKey
		}
	}
	var err error
	for range maxStaleRetries {
		var res any
		res, err, _ = v.fill.Do(string(h[:]), func() (any, error) { return v.fetch(ctx, h) })
		if errors.Is(err, errPredates) {
			continue // read before a commit a heartbeat has named since: ask again
		}
		if err != nil {
			return nil, err
		}
		rec, wire := res.(fetched).rec, res.(fetched).wire
		if rec.Kind == event.KindKeyNotFound {
			if v.neg != nil && rec.Revision >= v.negFloor.Load() {
				v.neg.SetWithTTL(slot(&h), negative{hash: h, rev: rec.Revision}, 1, v.cfg.NegativeTTL)
			}
			return nil, ErrUnknownKey
		}
		e := v.compile(rec.Key, rec.Revision, v.vouchedAt(rec.Time), h)
		if e == nil {
			return nil, ErrUnknownKey
		}
		// Only an answer at least as new as everything applied to this key
		// may be used or cached (no resurrection through the miss path).
		if e.key.Revision < v.gens.get(e.gen) || e.key.Revision < v.floor.Load() {
			v.staleHits.Add(1)
			continue
		}
		v.keys.Set(slot(&h), e, 1)
		v.keepSealed(h, e.gen, rec.Revision, wire)
		return e, nil
	}
	if err != nil {
		return nil, err
	}
	return nil, ErrUnavailable
}

// fetched is a verified lookup answer and its sealed bytes.
type fetched struct {
	rec  *event.Record
	wire []byte
}

// fetch asks the origin (or, through Lookup, a peer) about h and verifies
// the answer is signed and about h.
func (v *View) fetch(ctx context.Context, h apikey.Hash) (fetched, error) {
	select {
	case v.lookupSlots <- struct{}{}:
		defer func() { <-v.lookupSlots }()
	default:
		v.lookupsShed.Add(1)
		return fetched{}, fmt.Errorf("%w: %d lookups in flight already", ErrUnavailable, v.cfg.MaxLookups)
	}
	v.lookups.Add(1)
	ctx, cancel := context.WithTimeout(ctx, v.cfg.LookupTimeout)
	defer cancel()
	start := time.Now()
	wire, err := v.cfg.Lookup(ctx, h)
	if v.cfg.ObserveLookup != nil {
		v.cfg.ObserveLookup(time.Since(start), err)
	}
	if err != nil {
		v.lookupErrs.Add(1)
		return fetched{}, fmt.Errorf("%w: %v", ErrUnavailable, err)
	}
	rec, err := v.CheckLookupReply(h, wire)
	if err != nil {
		v.lookupErrs.Add(1)
		return fetched{}, fmt.Errorf("%w: %w", ErrUnavailable, err)
	}
	return fetched{rec, wire}, nil
}

// CheckLookupReply verifies a sealed answer to a lookup for h, as the miss
// path does: signed by the origin, and a key holding h or a "no such key"
// for h. A failure is counted as rejected. It changes nothing.
//
// A genuine answer is rarely older than the origin's last heartbeat (it is
// read at the store's committed head, which the heartbeat names; only an
// answer read just before a commit that a heartbeat then overtook is, and
// the miss path asks again). An older one is otherwise a replay — of an origin reply on NATS, or a peer's kept
// record — and may predate a change in the revisions the View knows exist
// but has not applied, which no generation check can catch; it is refused.
// Once the View has applied everything the origin announced, the
// generation checks suffice and an older record (a peer's) is taken.
func (v *View) CheckLookupReply(h apikey.Hash, wire []byte) (*event.Record, error) {
	rec, err := v.cfg.Verifier.Open(wire)
	if err != nil {
		v.rejected.Add(1)
		return nil, fmt.Errorf("lookup reply: %w", err)
	}
	if latest := v.latest.Load(); rec.Revision < latest && v.applied.Load() < latest {
		v.rejected.Add(1)
		return nil, fmt.Errorf("%w: at revision %d, the origin announced %d, not yet applied", errPredates, rec.Revision, latest)
	}
	switch {
	case rec.Kind == event.KindKeyNotFound && rec.Hash != nil && *rec.Hash == h:
		return rec, nil
	case rec.Kind == event.KindKey && rec.Key != nil && holds(rec.Key, h):
		return rec, nil
	}
	v.rejected.Add(1)
	return nil, errors.New("lookup reply is not about the asked key")
}

// errPredates refuses a lookup answer read before a committed head the
// origin has announced (and the View not applied): a replay, or an answer
// read just before a commit that a heartbeat overtook. The miss path asks
// again.
var errPredates = errors.New("lookup reply predates the announced committed head")

// keepSealed keeps wire, the sealed record of the key (generation slot
// gen) holding secret h at rev, to answer peers.
func (v *View) keepSealed(h apikey.Hash, gen uint32, rev uint64, wire []byte) {
	if v.sealed == nil || wire == nil {
		return
	}
	v.sealed.Set(slot(&h), &sealedRecord{hash: h, rev: rev, gen: gen, wire: wire}, int64(len(wire)))
}

// SealedRecord returns the sealed key record the View holds for the secret
// hash h (32 bytes) — for a gossip peer whose origin lookup failed — or
// nil. A record older than a change the View has applied to that key is
// never handed out; the asking peer verifies the signature and its own
// revision checks as for any lookup reply.
func (v *View) SealedRecord(h []byte) []byte {
	if v.sealed == nil || len(h) != len(apikey.Hash{}) {
		return nil
	}
	hash := apikey.Hash(h)
	r, ok := v.sealed.Get(slot(&hash))
	if !ok || r.hash != hash || r.rev < v.gens.get(r.gen) || r.rev < v.floor.Load() {
		return nil
	}
	v.peerServed.Add(1)
	return r.wire
}

func holds(k *event.Key, h apikey.Hash) bool {
	for _, s := range k.Secrets {
		if s.Hash == h {
			return true
		}
	}
	return false
}

// compile builds the cache entry for secret h of k read at rev and vouched
// for by the origin at vouched (unix nanos), or nil if k is deleted or h is
// not one of its secrets.
func (v *View) compile(k *event.Key, rev uint64, vouched int64, h apikey.Hash) *entry {
	if k.Deleted {
		return nil
	}
	g := v.gens.slot(k.ID)
	for _, s := range k.Secrets {
		if s.Hash == h {
			return newEntry(k, rev, vouched, g, s)
		}
	}
	return nil
}

// NewKey compiles k as read at revision rev, as a View would, vouched for
// by the origin now: for a State of the data plane other than a View (the
// proxy's tests). Whether a secret is k's, expired or rotated out is the
// View's to decide; a Key is what is left once it has.
func NewKey(k *event.Key, rev uint64) *Key {
	key := newEntry(k, rev, time.Now().UnixNano(), 0, event.Secret{}).key
	return &key
}

// newEntry compiles secret s of k, as read at rev and vouched for at
// vouched, into a cache entry.
func newEntry(k *event.Key, rev uint64, vouched int64, g uint32, s event.Secret) *entry {
	e := &entry{hash: s.Hash, gen: g, key: Key{ID: k.ID, Project: k.Project, Name: k.Name, Revision: rev,
		Deployments: k.Deployments, RateLimit: k.RateLimit, Models: k.Models, AllowedModels: modelglob.Compile(k.Models),
		MaxConcurrency: k.MaxConcurrency, Tokens: k.Tokens, disabled: k.Disabled, checkedAt: vouched}}
	for _, p := range k.Permissions {
		e.key.perms |= permBit(p)
	}
	if k.ExpiresAt != nil {
		e.key.expiresAt = k.ExpiresAt.UnixNano()
	}
	if s.NotAfter != nil {
		e.notAfter = s.NotAfter.UnixNano()
	}
	return e
}

// Apply verifies a sealed change from the event stream and makes it
// visible, and returns its revision once verified. Records must come in
// revision order: one at or below the applied revision is ignored, one
// beyond the next returns ErrGap (a *GapError saying which revisions are
// missing) and changes nothing. Anything not signed by the origin is
// refused and counted.
func (v *View) Apply(wire []byte) (uint64, error) {
	rec, err := v.open(wire)
	if err != nil {
		return 0, err
	}
	if notAnEvent(rec.Kind) {
		// Signed by the origin, but never a change: a heartbeat, a lookup's
		// not-found, a snapshot, a balance. Taken as the next revision it
		// would advance the View past the real change there (a peer or a
		// live copy can offer any record the origin signed).
		v.rejected.Add(1)
		return 0, fmt.Errorf("%w: a %s record is not an event", event.ErrMalformed, rec.Kind)
	}
	v.depsMu.Lock()
	defer v.depsMu.Unlock()
	cur := v.applied.Load()
	switch {
	case rec.Revision <= cur:
		return rec.Revision, nil
	case rec.Revision != cur+1:
		// Changes were lost: nothing cached can be proven current any more.
		v.floor.Store(max(v.floor.Load(), rec.Revision-1))
		v.negFloor.Store(max(v.negFloor.Load(), rec.Revision-1))
		return rec.Revision, &GapError{Have: cur, Got: rec.Revision}
	}
	switch rec.Kind {
	case event.KindKey:
		if rec.Key == nil {
			v.rejected.Add(1)
			return 0, fmt.Errorf("%w: key record without key", event.ErrMalformed)
		}
		v.applyKey(rec.Key, rec.Revision, rec.Time, wire)
	case event.KindDeployment:
		if rec.Deployment == nil {
			v.rejected.Add(1)
			return 0, fmt.Errorf("%w: deployment record without deployment", event.ErrMalformed)
		}
		if rec.Revision > v.depFloor {
			v.deps.Store(v.deps.Load().with(rec.Deployment, rec.Revision))
			v.depWires[rec.Deployment.ID] = wire
		}
	default:
		v.log.Warn("ignoring event of unknown kind", "kind", rec.Kind, "revision", rec.Revision)
	}
	v.appliedN.Add(1)
	v.applied.Store(rec.Revision) // last: publishes everything above
	v.caughtUp(rec.Revision)
	return rec.Revision, nil
}

// notAnEvent reports whether records of kind k are signed by the origin
// for something other than the event stream. (A kind this edge does not
// know at all is taken as a future event kind and skipped: an edge older
// than its origin keeps applying the stream.)
func notAnEvent(k event.Kind) bool {
	switch k {
	case event.KindKeyNotFound, event.KindSnapshot, event.KindSnapshotChunk, event.KindHeartbeat, event.KindBalance:
		return true
	}
	return false
}

// Verify checks a sealed record's signature and decodes it, counting a
// failure as rejected. It changes nothing.
func (v *View) Verify(wire []byte) (*event.Record, error) { return v.open(wire) }

func (v *View) open(wire []byte) (*event.Record, error) {
	rec, err := v.cfg.Verifier.Open(wire)
	if err != nil {
		v.rejected.Add(1)
		return nil, err
	}
	return rec, nil
}

func (v *View) applyKey(k *event.Key, rev uint64, signed time.Time, wire []byte) {
	g := v.gens.slot(k.ID)
	v.gens.raise(g, rev) // first: from here on every older entry of this key is stale
	if afterRaise != nil {
		afterRaise()
	}
	// Records kept for peers follow the change, so they learn of it too.
	if v.sealed != nil {
		for _, s := range k.Secrets {
			if r, ok := v.sealed.Get(slot(&s.Hash)); ok && r.hash == s.Hash {
				v.keepSealed(s.Hash, g, rev, wire)
			}
		}
	}
	if k.Deleted {
		// Nothing new to accept, so unknown-key answers stay true.
		for _, s := range k.Secrets {
			v.keys.Del(slot(&s.Hash))
		}
		return
	}
	// The key may have a secret some negative answer said was unknown.
	v.negFloor.Store(rev)
	// Refresh the secrets this edge has cached, so their next request is a
	// hit at the new revision instead of a lookup. Keys it has not seen stay
	// out: every edge hears of every key, but caches only its own traffic.
	// The refreshed entry is vouched for as of the change's signed time.
	vouched := v.vouchedAt(signed)
	for _, s := range k.Secrets {
		if e, ok := v.keys.Get(slot(&s.Hash)); ok && e.hash == s.Hash {
			v.keys.Set(slot(&s.Hash), newEntry(k, rev, vouched, g, s), 1)
		}
	}
}

// afterRaise, if set (by a test), runs in applyKey between raising a key's
// generation and refreshing its cached entries.
var afterRaise func()

// ErrIncompleteSnapshot is returned by ResyncChunks and Restore for a set
// of snapshot chunks that is not exactly one answer's, complete and in
// order; nothing is applied.
var ErrIncompleteSnapshot = errors.New("cache: incomplete or mixed snapshot chunks")

// Resync replaces the deployments with a sealed snapshot and continues the
// event stream after resume (0: after the snapshot's own revision): used on
// first start, and when a gap in the stream means changes were lost. Every
// cached key entry read before the snapshot becomes stale, so keys are
// fetched again on demand. It returns the revision Apply expects next - 1.
func (v *View) Resync(snapshot []byte, resume uint64) (uint64, error) {
	return v.ResyncChunks([][]byte{snapshot}, resume)
}

// ResyncChunks is Resync for a snapshot given as one KindSnapshot record or
// as every KindSnapshotChunk record of one answer, in order. All are
// verified before anything changes, and the deployments of all are applied
// at once: a set that is incomplete, out of order, of two answers or of two
// revisions is refused whole.
func (v *View) ResyncChunks(chunks [][]byte, resume uint64) (uint64, error) {
	rev, deps, _, err := v.openSnapshot(chunks)
	if err != nil {
		return 0, err
	}
	if resume == 0 {
		resume = rev
	}
	v.depsMu.Lock()
	defer v.depsMu.Unlock()
	v.resyncs.Add(1)
	v.floor.Store(max(v.floor.Load(), rev))
	v.negFloor.Store(max(v.negFloor.Load(), rev))
	v.depFloor = rev
	v.deps.Store(NewDeployments(deps, rev))
	v.snapshot = chunks
	clear(v.depWires)
	v.applied.Store(resume)
	v.caughtUp(resume)
	return resume, nil
}

// openSnapshot verifies a snapshot (see ResyncChunks) and returns its
// revision and deployments. A refusal is counted as rejected.
func (v *View) openSnapshot(chunks [][]byte) (rev uint64, deps []event.Deployment, signed time.Time, err error) {
	if len(chunks) == 0 || len(chunks) > event.MaxSnapshotChunks {
		v.rejected.Add(1)
		return 0, nil, time.Time{}, fmt.Errorf("%w: %d chunks", ErrIncompleteSnapshot, len(chunks))
	}
	var id string
	for i, w := range chunks {
		rec, err := v.open(w)
		if err != nil {
			return 0, nil, time.Time{}, err
		}
		if len(chunks) == 1 && rec.Kind == event.KindSnapshot {
			return rec.Revision, rec.Deployments, rec.Time, nil
		}
		if rec.Kind != event.KindSnapshotChunk || rec.Chunk == nil {
			v.rejected.Add(1)
			return 0, nil, time.Time{}, fmt.Errorf("%w: want a snapshot, got %q", event.ErrMalformed, rec.Kind)
		}
		c := rec.Chunk
		if i == 0 {
			rev, id, signed = rec.Revision, c.ID, rec.Time
		}
		if c.Count != len(chunks) || c.Index != i || c.ID != id || rec.Revision != rev {
			v.rejected.Add(1)
			return 0, nil, time.Time{}, fmt.Errorf("%w: chunk %d/%d of %q at revision %d where chunk %d/%d of %q at revision %d belongs",
				ErrIncompleteSnapshot, c.Index, c.Count, c.ID, rec.Revision, i, len(chunks), id, rev)
		}
		if rec.Time.Before(signed) {
			signed = rec.Time // the set vouches no later than its oldest chunk
		}
		deps = append(deps, rec.Deployments...)
	}
	return rev, deps, signed, nil
}

// HasSnapshot reports whether the View has deployments from a snapshot.
func (v *View) HasSnapshot() bool {
	v.depsMu.Lock()
	defer v.depsMu.Unlock()
	return v.snapshot != nil
}
