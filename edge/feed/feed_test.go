package feed

import (
	"context"
	"log/slog"
	"slices"
	"sync"
	"testing"
	"time"

	"github.com/keymesh/keymesh/apikey"
	"github.com/keymesh/keymesh/cache"
	"github.com/keymesh/keymesh/event"
)

// origin is a stand-in for the origin's signed records, without NATS: the
// tests offer records as gossip peers would (the e2e tests run the real
// stream).
type origin struct {
	t      testing.TB
	signer *event.Signer
	rev    uint64
	keys   map[apikey.Hash]*event.Key
}

func newOrigin(t testing.TB) *origin {
	priv, err := event.GenerateKey()
	if err != nil {
		t.Fatal(err)
	}
	s, err := event.NewSigner(priv)
	if err != nil {
		t.Fatal(err)
	}
	return &origin{t: t, signer: s, keys: map[apikey.Hash]*event.Key{}}
}

func (o *origin) seal(r *event.Record) []byte {
	w, err := o.signer.Seal(r)
	if err != nil {
		o.t.Fatal(err)
	}
	return w
}

// change stores k at the next revision and returns the sealed event.
func (o *origin) change(k event.Key) []byte {
	o.rev++
	for _, s := range k.Secrets {
		c := k
		o.keys[s.Hash] = &c
	}
	return o.seal(&event.Record{Revision: o.rev, Kind: event.KindKey, Time: time.Now(), Key: &k})
}

// lookup answers a miss as the origin would, with its latest state (the
// tests look keys up from one goroutine, after their changes).
func (o *origin) lookup(_ context.Context, h apikey.Hash) ([]byte, error) {
	if k := o.keys[h]; k != nil {
		return o.seal(&event.Record{Revision: o.rev, Kind: event.KindKey, Time: time.Now(), Key: k}), nil
	}
	return o.seal(&event.Record{Revision: o.rev, Kind: event.KindKeyNotFound, Time: time.Now(), Hash: &h}), nil
}

// newView returns a View of o's records.
func newView(t *testing.T, o *origin) *cache.View {
	t.Helper()
	ver, err := event.NewVerifier(o.signer.Public())
	if err != nil {
		t.Fatal(err)
	}
	v, err := cache.New(cache.Config{Verifier: ver, MaxKeys: 1000, Lookup: o.lookup,
		LookupTimeout: time.Second, MaxLookups: 16, MaxStaleness: 10 * time.Second})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(v.Close)
	return v
}

func newSecret(t testing.TB) apikey.Hash {
	k, err := apikey.Generate()
	if err != nil {
		t.Fatal(err)
	}
	h, err := apikey.ParseString(k)
	if err != nil {
		t.Fatal(err)
	}
	return h
}

func linked(h apikey.Hash, deps ...string) event.Key {
	return event.Key{ID: "k1", Project: "p", Secrets: []event.Secret{{Hash: h}},
		Permissions: event.DefaultPermissions, Deployments: deps}
}

// gossipFeed is a Feed as the gossip layer uses it, without NATS: only Offer
// (and what it calls) is exercised.
type gossipFeed struct {
	*Feed
	mu       sync.Mutex
	verified []uint64 // revisions passed on, in order
}

func newGossipFeed(t *testing.T, v *cache.View) *gossipFeed {
	g := &gossipFeed{}
	g.Feed = &Feed{v: v, log: slog.New(slog.DiscardHandler), pending: map[uint64][]byte{},
		cfg: Config{OnVerified: func(rev uint64, _ []byte) {
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
	v := newView(t, o)
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
	v := newView(t, o)
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
	v := newView(t, o)
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
