package cache

import (
	"context"
	"errors"
	"log/slog"
	"slices"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/keymesh/keymesh/apikey"
	"github.com/keymesh/keymesh/event"
)

// gossipFeed is a Feed as the gossip layer uses it, without NATS: only Offer
// (and what it calls) is exercised.
type gossipFeed struct {
	*Feed
	mu       sync.Mutex
	verified []uint64 // revisions passed on, in order
}

func newGossipFeed(t *testing.T, v *View) *gossipFeed {
	g := &gossipFeed{}
	g.Feed = &Feed{v: v, log: slog.New(slog.DiscardHandler), pending: map[uint64][]byte{},
		cfg: FeedConfig{OnVerified: func(rev uint64, _ []byte) {
			g.mu.Lock()
			g.verified = append(g.verified, rev)
			g.mu.Unlock()
		}}}
	return g
}

func (g *gossipFeed) passedOn() []uint64 {
	g.mu.Lock()
	defer g.mu.Unlock()
	return slices.Clone(g.verified)
}

// Records from peers arrive in any order; they are applied in revision
// order, each once, and every verified one is passed on exactly once.
func TestOfferAppliesInOrder(t *testing.T) {
	o := newOrigin(t)
	v := newView(t, o, nil)
	f := newGossipFeed(t, v)
	h := newSecret(t)
	var wires [][]byte
	for i := range 5 {
		k := linked(h, "d1")
		k.Deployments = append(k.Deployments, string(rune('a'+i)))
		wires = append(wires, o.change(k))
	}
	for _, rev := range []uint64{3, 5, 2} {
		f.Offer(rev, wires[rev-1])
	}
	if got := v.AppliedRevision(); got != 0 {
		t.Fatalf("applied %d with revision 1 missing", got)
	}
	f.Offer(1, wires[0])
	if got := v.AppliedRevision(); got != 3 {
		t.Fatalf("applied %d, want 3 (4 still missing)", got)
	}
	f.Offer(3, wires[2]) // again: ignored
	f.Offer(4, wires[3])
	if got := v.AppliedRevision(); got != 5 {
		t.Fatalf("applied %d, want 5", got)
	}
	if st := v.Stats(); st.Applied != 5 {
		t.Fatalf("%d records applied for 5 revisions", st.Applied)
	}
	got := f.passedOn()
	slices.Sort(got)
	if !slices.Equal(got, []uint64{1, 2, 3, 4, 5}) {
		t.Fatalf("passed on %v, want each revision once", f.passedOn())
	}
	k, err := v.Authorize(context.Background(), h)
	if err != nil || !k.Linked("e") {
		t.Fatalf("state after revision 5: %v %+v", err, k)
	}
}

// A forged record, or a genuine one offered under another revision, is
// refused, counted and never passed on; it does not block the real one.
func TestOfferRefusesBadSignatures(t *testing.T) {
	o := newOrigin(t)
	rogue := newOrigin(t)
	v := newView(t, o, nil)
	f := newGossipFeed(t, v)
	h := newSecret(t)
	forged := rogue.change(linked(h, "d1"))
	f.Offer(1, forged)
	real := o.change(linked(h))
	f.Offer(2, real) // genuine, but claimed as another revision
	f.Offer(1, []byte("not even a record"))
	if rejected, _ := f.GossipStats(); rejected != 3 {
		t.Fatalf("rejected %d, want 3", rejected)
	}
	if v.AppliedRevision() != 0 || len(f.passedOn()) != 0 {
		t.Fatalf("applied %d, passed on %v", v.AppliedRevision(), f.passedOn())
	}
	f.Offer(1, real)
	if v.AppliedRevision() != 1 || !slices.Equal(f.passedOn(), []uint64{1}) {
		t.Fatalf("the real record: applied %d, passed on %v", v.AppliedRevision(), f.passedOn())
	}
	if k, err := v.Authorize(context.Background(), h); err != nil || k.Linked("d1") {
		t.Fatalf("the forged link took effect: %v %+v", err, k)
	}
}

// Records held for a gap are bounded: past maxPending, more are dropped and
// counted, and what was held still applies once the gap is filled.
func TestOfferPendingLimit(t *testing.T) {
	o := newOrigin(t)
	v := newView(t, o, nil)
	f := newGossipFeed(t, v)
	h := newSecret(t)
	first := o.change(linked(h))
	var held [][]byte
	for range maxPending + 1 {
		held = append(held, o.change(linked(h)))
	}
	for i, w := range held {
		f.Offer(uint64(i+2), w)
	}
	if _, dropped := f.GossipStats(); dropped != 1 {
		t.Fatalf("dropped %d, want 1", dropped)
	}
	if n := len(f.pending); n != maxPending {
		t.Fatalf("holding %d, limit %d", n, maxPending)
	}
	f.Offer(1, first)
	if got, want := v.AppliedRevision(), uint64(maxPending+1); got != want {
		t.Fatalf("applied %d, want %d (the dropped one is fetched again later)", got, want)
	}
	f.Offer(maxPending+2, held[maxPending])
	if got, want := v.AppliedRevision(), uint64(maxPending+2); got != want {
		t.Fatalf("applied %d, want %d", got, want)
	}
}

// A heartbeat relayed by a peer proves currency as of its signed time, not
// its arrival: a replayed old one proves nothing, a forged one is refused,
// and only a newer one is worth passing on.
func TestPeerHeartbeat(t *testing.T) {
	o := newOrigin(t)
	var now atomic.Int64
	start := time.Unix(1_000_000, 0)
	now.Store(start.UnixNano())
	clock := func() time.Time { return time.Unix(0, now.Load()) }
	v, err := New(Config{Verifier: mustVerifier(t, o), Lookup: o.lookup, MaxKeys: 100, MaxStaleness: 10 * time.Second, Now: clock})
	if err != nil {
		t.Fatal(err)
	}
	defer v.Close()
	hb := func(rev uint64, at time.Time) []byte {
		return o.seal(&event.Record{Revision: rev, Kind: event.KindHeartbeat, Time: at})
	}
	old := hb(0, start)
	now.Add(int64(30 * time.Second))
	if ok, _ := v.Current(); ok {
		t.Fatal("current without any heartbeat for 30s")
	}
	if fresh, err := v.PeerHeartbeat(old); err != nil || !fresh {
		t.Fatalf("first heartbeat: fresh %v, %v", fresh, err)
	}
	if ok, _ := v.Current(); ok {
		t.Fatal("a 30s old heartbeat, relayed now, made the View current")
	}
	if fresh, _ := v.PeerHeartbeat(old); fresh {
		t.Fatal("the same heartbeat again counted as fresh")
	}
	recent := hb(0, clock().Add(-time.Second))
	if fresh, err := v.PeerHeartbeat(recent); err != nil || !fresh {
		t.Fatalf("recent heartbeat: fresh %v, %v", fresh, err)
	}
	if ok, at := v.Current(); !ok || !at.Equal(clock().Add(-time.Second)) {
		t.Fatalf("current %v as of %v, want as of the heartbeat's own time", ok, at)
	}
	// From the future (origin clock ahead): proves no later than now.
	if _, err := v.PeerHeartbeat(hb(0, clock().Add(time.Hour))); err != nil {
		t.Fatal(err)
	}
	if _, at := v.Current(); !at.Equal(clock()) {
		t.Fatalf("proven as of %v, want no later than now (%v)", at, clock())
	}
	rogue := newOrigin(t)
	now.Add(int64(20 * time.Second))
	if _, err := v.PeerHeartbeat(rogue.seal(&event.Record{Kind: event.KindHeartbeat, Time: clock()})); !errors.Is(err, event.ErrBadSignature) {
		t.Fatalf("forged heartbeat: %v", err)
	}
	if ok, _ := v.Current(); ok {
		t.Fatal("a forged heartbeat made the View current")
	}
}

// The View answers a peer's lookup only with a record no older than what
// it has applied to that key (no resurrection through a peer), and a peer's
// answer goes through the same revision checks as the origin's.
func TestSealedRecordsForPeers(t *testing.T) {
	o := newOrigin(t)
	a := newView(t, o, nil)
	h := newSecret(t)
	first := o.change(linked(h, "d1"))
	mustApply(t, a, first)
	if _, err := a.Authorize(context.Background(), h); err != nil {
		t.Fatal(err)
	}
	a.sealed.Wait()
	linkedWire := a.SealedRecord(h[:])
	if linkedWire == nil {
		t.Fatal("no sealed record kept for a looked-up key")
	}
	if a.SealedRecord(make([]byte, 3)) != nil {
		t.Fatal("answered a malformed hash")
	}

	// b has applied the unlink; a peer (a, before it hears of it) still
	// answers with the linked record: b must not take it.
	b := newView(t, o, nil)
	mustApply(t, b, first)
	unlink := o.change(linked(h))
	mustApply(t, b, unlink)
	b.cfg.Lookup = func(context.Context, apikey.Hash) ([]byte, error) { return linkedWire, nil }
	if k, err := b.Authorize(context.Background(), h); !errors.Is(err, ErrUnavailable) {
		t.Fatalf("an older peer answer was used after the unlink: %v %+v", err, k)
	}
	// A forged peer answer is refused.
	rogue := newOrigin(t)
	forged := rogue.seal(&event.Record{Revision: 9, Kind: event.KindKey, Key: func() *event.Key { k := linked(h, "d1"); return &k }()})
	before := b.Stats().Rejected
	if _, err := b.CheckLookupReply(h, forged); err == nil || b.Stats().Rejected != before+1 {
		t.Fatalf("forged answer: %v, rejected %d", err, b.Stats().Rejected-before)
	}

	// Once a applies the unlink, it stops handing out the linked record and
	// hands out the unlinked one.
	mustApply(t, a, unlink)
	checkFor(t, func() bool {
		w := a.SealedRecord(h[:])
		if w == nil {
			return false
		}
		rec, err := a.CheckLookupReply(h, w)
		return err == nil && rec.Revision == 2
	})
	b.cfg.Lookup = func(context.Context, apikey.Hash) ([]byte, error) { return a.SealedRecord(h[:]), nil }
	if k, err := b.Authorize(context.Background(), h); err != nil || k.Linked("d1") {
		t.Fatalf("b with a's current record: %v %+v", err, k)
	}
}
