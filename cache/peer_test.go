package cache

import (
	"context"
	"errors"
	"sync/atomic"
	"testing"
	"time"

	"github.com/keymesh/keymesh/apikey"
	"github.com/keymesh/keymesh/event"
)

// A heartbeat relayed by a peer proves currency as of its signed time, not
// its arrival: a replayed old one proves nothing, a forged one is refused,
// and only a newer one is worth passing on.
func TestPeerHeartbeat(t *testing.T) {
	o := newOrigin(t)
	var now atomic.Int64
	start := time.Unix(1_000_000, 0)
	now.Store(start.UnixNano())
	clock := func() time.Time { return time.Unix(0, now.Load()) }
	v, err := New(bounds(Config{Verifier: mustVerifier(t, o), Lookup: o.lookup, MaxKeys: 100, MaxStaleness: 10 * time.Second, Now: clock}))
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
