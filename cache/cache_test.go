package cache

import (
	"context"
	"errors"
	"fmt"
	"path/filepath"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/keymesh/keymesh/apikey"
	"github.com/keymesh/keymesh/event"
	"github.com/keymesh/keymesh/internal/testutil"
)

// origin is a stand-in for the origin's signed answers: the tests drive the
// View directly, without NATS (the edge integration tests use the real one).
type origin struct {
	t      testing.TB
	signer *event.Signer
	mu     sync.Mutex
	rev    uint64
	keys   map[apikey.Hash]*event.Key
	calls  atomic.Int64
	beats  int64 // heartbeats sealed
	// hook, if set, runs inside Lookup before the answer is sealed.
	hook func()
	// now stamps changes and answers, as the origin's clock; default
	// time.Now.
	now func() time.Time
}

func (o *origin) clock() time.Time {
	if o.now != nil {
		return o.now()
	}
	return time.Now()
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
	o.mu.Lock()
	defer o.mu.Unlock()
	o.rev++
	for _, s := range k.Secrets {
		c := k
		o.keys[s.Hash] = &c
	}
	return o.seal(&event.Record{Revision: o.rev, Kind: event.KindKey, Time: o.clock(), Key: &k})
}

func (o *origin) lookup(ctx context.Context, h apikey.Hash) ([]byte, error) {
	o.calls.Add(1)
	o.mu.Lock()
	rev, k := o.rev, o.keys[h]
	o.mu.Unlock()
	if o.hook != nil {
		o.hook()
	}
	if k == nil {
		return o.seal(&event.Record{Revision: rev, Kind: event.KindKeyNotFound, Time: o.clock(), Hash: &h}), nil
	}
	return o.seal(&event.Record{Revision: rev, Kind: event.KindKey, Time: o.clock(), Key: k}), nil
}

func mustVerifier(t testing.TB, o *origin) *event.Verifier {
	ver, err := event.NewVerifier(o.signer.Public())
	if err != nil {
		t.Fatal(err)
	}
	return ver
}

func newView(t *testing.T, o *origin, now func() time.Time) *View {
	t.Helper()
	ver := mustVerifier(t, o)
	if now != nil {
		o.now = now // the origin's clock agrees with the edge's
	}
	v, err := New(bounds(Config{Verifier: ver, Lookup: o.lookup, MaxKeys: 1000, Now: now}))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(v.Close)
	return v
}

// bounds fills in the bounds a View needs and a test does not set.
func bounds(c Config) Config {
	if c.LookupTimeout == 0 {
		c.LookupTimeout = 2 * time.Second
	}
	if c.MaxLookups == 0 {
		c.MaxLookups = 256
	}
	if c.MaxStaleness == 0 {
		c.MaxStaleness = 10 * time.Second
	}
	return c
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

func mustApply(t *testing.T, v *View, wire []byte) {
	t.Helper()
	if _, err := v.Apply(wire); err != nil {
		t.Fatal(err)
	}
}

func TestMissFillsAndHits(t *testing.T) {
	o := newOrigin(t)
	v := newView(t, o, nil)
	h := newSecret(t)
	mustApply(t, v, o.change(linked(h, "d1")))

	k, err := v.Authorize(context.Background(), h)
	if err != nil || !k.Linked("d1") || !k.Has(event.PermRunInference) || k.Has(event.PermManageUsers) {
		t.Fatalf("authorize: %v %+v", err, k)
	}
	if _, err := v.Authorize(context.Background(), newSecret(t)); !errors.Is(err, ErrUnknownKey) {
		t.Fatalf("unknown key: %v", err)
	}
}

// Invariant 1: once an unlink is applied, no lookup of the key returns the
// linked state, even though ristretto's Set of the new state is asynchronous.
func TestNoResurrectionAfterApply(t *testing.T) {
	o := newOrigin(t)
	v := newView(t, o, nil)
	h := newSecret(t)
	mustApply(t, v, o.change(linked(h, "d1")))
	for i := 0; i < 200; i++ {
		if _, err := v.Authorize(context.Background(), h); err != nil {
			t.Fatal(err)
		}
		deps := []string{}
		if i%2 == 1 {
			deps = []string{"d1"}
		}
		mustApply(t, v, o.change(linked(h, deps...)))
		k, err := v.Authorize(context.Background(), h)
		if err != nil {
			t.Fatal(err)
		}
		if k.Linked("d1") != (i%2 == 1) {
			t.Fatalf("round %d: key served with state from before revision %d", i, v.AppliedRevision())
		}
	}
}

// Invariant 1, miss path: an answer read before a revocation that the View
// applies while the answer is in flight is neither used nor cached.
func TestMissFillRacingRevocationIsNotCached(t *testing.T) {
	o := newOrigin(t)
	v := newView(t, o, nil)
	h := newSecret(t)
	mustApply(t, v, o.change(linked(h, "d1")))

	var once sync.Once
	o.hook = func() {
		once.Do(func() { mustApply(t, v, o.change(linked(h))) }) // unlink lands mid-lookup
	}
	k, err := v.Authorize(context.Background(), h)
	if err != nil {
		t.Fatal(err)
	}
	if k.Linked("d1") {
		t.Fatal("a lookup answer older than an applied unlink was used")
	}
	if o.calls.Load() != 2 {
		t.Fatalf("want the stale answer refetched once, lookups = %d", o.calls.Load())
	}
	v.keys.Wait()
	if k, _ := v.Authorize(context.Background(), h); k.Linked("d1") {
		t.Fatal("stale state was cached")
	}
}

func TestGapDropsCachedKeys(t *testing.T) {
	o := newOrigin(t)
	v := newView(t, o, nil)
	h := newSecret(t)
	mustApply(t, v, o.change(linked(h, "d1")))
	if _, err := v.Authorize(context.Background(), h); err != nil {
		t.Fatal(err)
	}
	v.keys.Wait()
	before := o.calls.Load()
	if _, err := v.Authorize(context.Background(), h); err != nil || o.calls.Load() != before {
		t.Fatalf("want a cache hit: %v, lookups %d→%d", err, before, o.calls.Load())
	}

	o.change(linked(h)) // revision 2 is lost on the way
	_, err := v.Apply(o.change(event.Key{ID: "other", Secrets: []event.Secret{{Hash: newSecret(t)}}}))
	var gap *GapError
	if !errors.As(err, &gap) || !errors.Is(err, ErrGap) || gap.Have != 1 || gap.Got != 3 {
		t.Fatalf("want a gap 1→3, got %v", err)
	}
	k, err := v.Authorize(context.Background(), h)
	if err != nil {
		t.Fatal(err)
	}
	if k.Linked("d1") || o.calls.Load() != before+1 {
		t.Fatal("cached state survived a gap")
	}
}

func TestRefusals(t *testing.T) {
	o := newOrigin(t)
	var now atomic.Int64
	now.Store(time.Date(2030, 1, 1, 0, 0, 0, 0, time.UTC).UnixNano())
	v := newView(t, o, func() time.Time { return time.Unix(0, now.Load()) })

	h := newSecret(t)
	k := linked(h, "d1")
	exp := time.Date(2030, 1, 2, 0, 0, 0, 0, time.UTC)
	k.ExpiresAt = &exp
	mustApply(t, v, o.change(k))
	if _, err := v.Authorize(context.Background(), h); err != nil {
		t.Fatal(err)
	}
	now.Store(exp.UnixNano())
	if _, err := v.Authorize(context.Background(), h); !errors.Is(err, ErrExpired) {
		t.Fatalf("expired: %v", err)
	}

	k.ExpiresAt, k.Disabled = nil, true
	mustApply(t, v, o.change(k))
	if _, err := v.Authorize(context.Background(), h); !errors.Is(err, ErrDisabled) {
		t.Fatalf("disabled: %v", err)
	}

	// Rotation with a grace period: the old secret works until NotAfter.
	fresh := newSecret(t)
	grace := exp.Add(time.Minute)
	k.Disabled = false
	k.Secrets = []event.Secret{{Hash: fresh}, {Hash: h, NotAfter: &grace}}
	mustApply(t, v, o.change(k))
	for _, s := range []apikey.Hash{h, fresh} {
		if _, err := v.Authorize(context.Background(), s); err != nil {
			t.Fatalf("within grace: %v", err)
		}
	}
	now.Store(grace.UnixNano())
	if _, err := v.Authorize(context.Background(), h); !errors.Is(err, ErrUnknownKey) {
		t.Fatalf("old secret after grace: %v", err)
	}
	if _, err := v.Authorize(context.Background(), fresh); err != nil {
		t.Fatalf("new secret: %v", err)
	}

	k.Deleted = true
	mustApply(t, v, o.change(k))
	delete(o.keys, fresh)
	if _, err := v.Authorize(context.Background(), fresh); !errors.Is(err, ErrUnknownKey) {
		t.Fatalf("deleted: %v", err)
	}
}

// Invariant 3: unsigned, forged or off-topic answers are refused.
func TestUnsignedStateRefused(t *testing.T) {
	o := newOrigin(t)
	rogue := newOrigin(t)
	v := newView(t, o, nil)
	h := newSecret(t)
	if _, err := v.Apply(rogue.change(linked(h, "d1"))); !errors.Is(err, event.ErrBadSignature) {
		t.Fatalf("forged event: %v", err)
	}
	if v.AppliedRevision() != 0 || v.Stats().Rejected != 1 {
		t.Fatal("forged event changed state or was not counted")
	}

	other := newSecret(t)
	o.change(linked(other, "d1"))
	v.cfg.Lookup = func(ctx context.Context, _ apikey.Hash) ([]byte, error) {
		return o.lookup(ctx, other) // a valid record, but about another key
	}
	if _, err := v.Authorize(context.Background(), h); !errors.Is(err, ErrUnavailable) {
		t.Fatalf("answer about another key: %v", err)
	}
	v.cfg.Lookup = func(ctx context.Context, h apikey.Hash) ([]byte, error) { return rogue.lookup(ctx, h) }
	if _, err := v.Authorize(context.Background(), h); !errors.Is(err, ErrUnavailable) {
		t.Fatalf("forged answer: %v", err)
	}
	v.cfg.Lookup = func(context.Context, apikey.Hash) ([]byte, error) { return nil, errors.New("no responders") }
	if _, err := v.Authorize(context.Background(), h); !errors.Is(err, ErrUnavailable) {
		t.Fatalf("origin down: %v", err)
	}
}

func TestStateRoundTrip(t *testing.T) {
	o := newOrigin(t)
	v := newView(t, o, nil)
	dep := event.Deployment{ID: "d1", Name: "demo", AuthEnabled: true}
	snap := o.seal(&event.Record{Revision: 4, Kind: event.KindSnapshot, Deployments: []event.Deployment{dep}})
	if _, err := v.Resync(snap, 0); err != nil {
		t.Fatal(err)
	}
	dep2 := event.Deployment{ID: "d2", Name: "second"}
	mustApply(t, v, o.seal(&event.Record{Revision: 5, Kind: event.KindDeployment, Deployment: &dep2}))
	off := dep
	off.AuthEnabled = false
	mustApply(t, v, o.seal(&event.Record{Revision: 6, Kind: event.KindDeployment, Deployment: &off}))

	path := filepath.Join(t.TempDir(), "state.json")
	if err := SaveState(path, v.State()); err != nil {
		t.Fatal(err)
	}
	s, ok, err := LoadState(path)
	if err != nil || !ok {
		t.Fatal(ok, err)
	}
	w := newView(t, o, nil)
	if err := w.Restore(s); err != nil {
		t.Fatal(err)
	}
	d1, _ := w.Deployments().Get("d1")
	_, ok2 := w.Deployments().Get("d2")
	if w.AppliedRevision() != 6 || d1 == nil || d1.AuthEnabled || !ok2 {
		t.Fatalf("restored %d %+v %v", w.AppliedRevision(), d1, ok2)
	}

	s.Deployments[0][len(s.Deployments[0])-2] ^= 1
	if err := newView(t, o, nil).Restore(s); !errors.Is(err, event.ErrBadSignature) {
		t.Fatalf("tampered state restored: %v", err)
	}
}

// Concurrent misses for one key share a lookup: never two in flight at once.
func TestConcurrentMissesShareOneLookup(t *testing.T) {
	o := newOrigin(t)
	v := newView(t, o, nil)
	h := newSecret(t)
	o.change(linked(h, "d1"))
	release := make(chan struct{})
	var inflight, maxInflight atomic.Int64
	o.hook = func() {
		n := inflight.Add(1)
		defer inflight.Add(-1)
		for m := maxInflight.Load(); n > m && !maxInflight.CompareAndSwap(m, n); m = maxInflight.Load() {
		}
		<-release
	}
	const n = 32
	var wg sync.WaitGroup
	errs := make(chan error, n)
	for range n {
		wg.Go(func() {
			_, err := v.Authorize(context.Background(), h)
			errs <- err
		})
	}
	// Hold the first lookup until every request has missed and piled up.
	checkFor(t, func() bool { return v.Stats().Misses == n && inflight.Load() == 1 })
	close(release)
	wg.Wait()
	close(errs)
	for err := range errs {
		if err != nil {
			t.Fatal(err)
		}
	}
	if maxInflight.Load() != 1 || o.calls.Load() > n/4 {
		t.Fatalf("%d concurrent misses: %d lookups, up to %d at once", n, o.calls.Load(), maxInflight.Load())
	}
}

// checkFor polls cond until it holds, failing the test after 10s.
func checkFor(t *testing.T, cond func() bool) {
	t.Helper()
	testutil.CheckFor(t, 10*time.Second, time.Millisecond, func() error {
		if !cond() {
			return errors.New("condition not met")
		}
		return nil
	})
}

// Invariant 1, ristretto's side: a Set queued before a revocation and landing
// after it (or a Del racing a Set) leaves a stale entry in ristretto; the
// generation check must refuse it.
func TestLateStaleSetCannotResurrect(t *testing.T) {
	o := newOrigin(t)
	v := newView(t, o, nil)
	h := newSecret(t)
	mustApply(t, v, o.change(linked(h, "d1")))
	if _, err := v.Authorize(context.Background(), h); err != nil {
		t.Fatal(err)
	}
	v.keys.Wait()
	stale, ok := v.keys.Get(slot(&h))
	if !ok {
		t.Fatal("fill not cached")
	}
	for _, revoke := range []event.Key{linked(h), {ID: "k1", Secrets: []event.Secret{{Hash: h}}, Deleted: true}} {
		mustApply(t, v, o.change(revoke))
		v.keys.Set(slot(&h), stale, 1) // the late Set lands after the revocation
		v.keys.Wait()
		k, err := v.Authorize(context.Background(), h)
		if err == nil && k.Linked("d1") {
			t.Fatalf("revoked key served from a late Set (revocation at %d)", v.AppliedRevision())
		}
	}
}

func TestUnknownKeysRememberedUntilAKeyChanges(t *testing.T) {
	o := newOrigin(t)
	v := newView(t, o, nil)
	h := newSecret(t)
	for i := range 2 {
		if _, err := v.Authorize(context.Background(), h); !errors.Is(err, ErrUnknownKey) {
			t.Fatalf("unknown key: %v", err)
		}
		if i == 0 {
			v.neg.Wait()
		}
	}
	if o.calls.Load() != 1 || v.Stats().NegativeHits != 1 {
		t.Fatalf("an unknown key was looked up %d times", o.calls.Load())
	}
	// The key is created (or rotated in) after the "unknown" answer: the
	// very next request must not be refused on the strength of it.
	mustApply(t, v, o.change(linked(h, "d1")))
	if k, err := v.Authorize(context.Background(), h); err != nil || !k.Linked("d1") {
		t.Fatalf("created key refused by a stale negative answer: %v", err)
	}
}

// A flood of unknown keys cannot push valid keys out of the positive cache.
func TestUnknownKeyFloodKeepsValidKeysCached(t *testing.T) {
	o := newOrigin(t)
	ver := mustVerifier(t, o)
	// Staleness is not what this test is about: a slow (loaded) run must
	// not see the valid keys re-validated because they aged past it.
	v, err := New(bounds(Config{Verifier: ver, Lookup: o.lookup, MaxKeys: 64, NegativeKeys: 256, MaxStaleness: time.Hour}))
	if err != nil {
		t.Fatal(err)
	}
	defer v.Close()
	valid := make([]apikey.Hash, 32)
	for i := range valid {
		valid[i] = newSecret(t)
		k := linked(valid[i], "d1")
		k.ID = fmt.Sprintf("k%d", i)
		o.change(k)
	}
	warm := func() {
		for _, h := range valid {
			if _, err := v.Authorize(context.Background(), h); err != nil {
				t.Fatal(err)
			}
		}
		v.keys.Wait()
	}
	warm()
	warm() // a second access makes every valid key frequent enough to keep
	before := o.calls.Load()
	for range 4_000 {
		if _, err := v.Authorize(context.Background(), newSecret(t)); !errors.Is(err, ErrUnknownKey) {
			t.Fatal(err)
		}
	}
	v.keys.Wait()
	flood := o.calls.Load() - before
	for _, h := range valid {
		if _, err := v.Authorize(context.Background(), h); err != nil {
			t.Fatal(err)
		}
	}
	if extra := o.calls.Load() - before - flood; extra != 0 {
		t.Fatalf("%d of %d valid keys were evicted by a flood of unknown keys", extra, len(valid))
	}
}

// heartbeat seals a heartbeat for rev, each one later than the last.
func (o *origin) heartbeat(rev uint64) []byte {
	o.beats++
	return o.seal(&event.Record{Revision: rev, Kind: event.KindHeartbeat, Time: time.Unix(1_000_000+o.beats, 0)})
}

// Invariant 2, second half: a View that cannot prove it is current stops
// trusting old cache entries; whether it then serves them when the origin
// cannot be asked is the fail mode.
func TestStalenessGuard(t *testing.T) {
	for _, failOpen := range []bool{false, true} {
		t.Run(fmt.Sprintf("failOpen=%v", failOpen), func(t *testing.T) {
			o := newOrigin(t)
			var now atomic.Int64
			now.Store(time.Unix(1_000_000, 0).UnixNano())
			clock := func() time.Time { return time.Unix(0, now.Load()) }
			o.now = clock
			v, err := New(bounds(Config{Verifier: mustVerifier(t, o), Lookup: o.lookup, MaxKeys: 100,
				MaxStaleness: 10 * time.Second, FailOpen: failOpen, Now: clock}))
			if err != nil {
				t.Fatal(err)
			}
			defer v.Close()
			h := newSecret(t)
			mustApply(t, v, o.change(linked(h, "d1")))
			if _, err := v.Authorize(context.Background(), h); err != nil {
				t.Fatal(err)
			}
			v.keys.Wait()
			advance := func(d time.Duration) { now.Add(int64(d)) }

			// Heartbeats keep the View current: hits, no lookups.
			for range 3 {
				advance(5 * time.Second)
				if _, err := v.Heartbeat(o.heartbeat(v.AppliedRevision())); err != nil {
					t.Fatal(err)
				}
				if _, err := v.Authorize(context.Background(), h); err != nil {
					t.Fatal(err)
				}
			}
			if o.calls.Load() != 1 {
				t.Fatalf("a current View re-validated: %d lookups", o.calls.Load())
			}
			// A heartbeat ahead of what the View applied proves nothing yet.
			for range 5 {
				o.change(event.Key{ID: "unrelated", Project: "p"}) // revisions the View does not apply
			}
			advance(5 * time.Second)
			if _, err := v.Heartbeat(o.heartbeat(o.rev)); err != nil {
				t.Fatal(err)
			}
			advance(6 * time.Second)
			if ok, _ := v.Current(); ok {
				t.Fatal("current on the strength of a heartbeat for revisions not applied")
			}
			// Stale: the cached key is looked up again before use.
			if _, err := v.Authorize(context.Background(), h); err != nil || o.calls.Load() != 2 {
				t.Fatalf("stale View did not re-validate: %v, %d lookups", err, o.calls.Load())
			}
			// Stale and the origin unreachable: the fail mode decides.
			advance(11 * time.Second)
			v.cfg.Lookup = func(context.Context, apikey.Hash) ([]byte, error) { return nil, errors.New("no responders") }
			_, err = v.Authorize(context.Background(), h)
			if failOpen && err != nil {
				t.Fatalf("open-cached refused a cached key: %v", err)
			}
			if !failOpen && !errors.Is(err, ErrUnavailable) {
				t.Fatalf("closed served what it could not prove: %v", err)
			}
			// An old heartbeat replayed proves nothing either.
			old := o.heartbeat(v.AppliedRevision())
			if _, err := v.Heartbeat(o.heartbeat(v.AppliedRevision())); err != nil {
				t.Fatal(err)
			}
			advance(11 * time.Second)
			if _, err := v.Heartbeat(old); err != nil {
				t.Fatal(err)
			}
			if ok, _ := v.Current(); ok || v.Stats().OldHeartbeats != 1 {
				t.Fatalf("a replayed heartbeat made the View current (old heartbeats %d)", v.Stats().OldHeartbeats)
			}
			// Forged heartbeats prove nothing.
			rogue := newOrigin(t)
			if _, err := v.Heartbeat(rogue.heartbeat(v.AppliedRevision())); !errors.Is(err, event.ErrBadSignature) {
				t.Fatalf("forged heartbeat: %v", err)
			}
			if ok, _ := v.Current(); ok {
				t.Fatal("a forged heartbeat made the View current")
			}
		})
	}
}

// A lookup answer older than what the origin has announced, while the View
// has not applied that far, is a replay that may predate a change: refused.
func TestReplayedLookupReplyRefused(t *testing.T) {
	o := newOrigin(t)
	h := newSecret(t)
	var reply []byte
	v, err := New(bounds(Config{Verifier: mustVerifier(t, o), MaxKeys: 100,
		Lookup: func(context.Context, apikey.Hash) ([]byte, error) { return reply, nil }}))
	if err != nil {
		t.Fatal(err)
	}
	defer v.Close()
	ev := o.change(linked(h, "d1"))
	old, _ := o.lookup(context.Background(), h) // sealed at revision 1
	mustApply(t, v, ev)
	// Revisions 2..4 happen; the View hears of them, applies none.
	for range 3 {
		o.change(event.Key{ID: "other", Project: "p"})
	}
	if _, err := v.Heartbeat(o.heartbeat(o.rev)); err != nil {
		t.Fatal(err)
	}
	reply = old
	if _, err := v.Authorize(context.Background(), h); !errors.Is(err, ErrUnavailable) {
		t.Fatalf("replayed reply at revision 1 with revision 4 announced: %v", err)
	}
	reply, _ = o.lookup(context.Background(), h) // fresh, at revision 4
	if _, err := v.Authorize(context.Background(), h); err != nil {
		t.Fatalf("fresh reply refused: %v", err)
	}
}

// A flood of distinct unknown keys holds at most MaxLookups lookups at the
// origin; the rest are refused at once (503 at the edge) and counted.
func TestLookupsBounded(t *testing.T) {
	o := newOrigin(t)
	release := make(chan struct{})
	var inFlight, most atomic.Int64
	v, err := New(bounds(Config{Verifier: mustVerifier(t, o), MaxKeys: 100, MaxLookups: 2,
		Lookup: func(ctx context.Context, h apikey.Hash) ([]byte, error) {
			n := inFlight.Add(1)
			defer inFlight.Add(-1)
			for m := most.Load(); n > m && !most.CompareAndSwap(m, n); m = most.Load() {
			}
			<-release
			return o.lookup(ctx, h)
		}}))
	if err != nil {
		t.Fatal(err)
	}
	defer v.Close()
	var wg sync.WaitGroup
	errs := make(chan error, 8)
	for range 8 {
		wg.Go(func() {
			_, err := v.Authorize(context.Background(), newSecret(t))
			errs <- err
		})
	}
	// Six of eight are shed at once; two wait on the origin.
	deadline := time.Now().Add(10 * time.Second)
	for v.Stats().LookupsShed < 6 {
		if time.Now().After(deadline) {
			t.Fatalf("shed %d lookups, want 6", v.Stats().LookupsShed)
		}
		time.Sleep(time.Millisecond)
	}
	close(release)
	wg.Wait()
	close(errs)
	var unavailable, unknown int
	for err := range errs {
		switch {
		case errors.Is(err, ErrUnavailable):
			unavailable++
		case errors.Is(err, ErrUnknownKey):
			unknown++
		}
	}
	if unavailable != 6 || unknown != 2 || most.Load() != 2 {
		t.Fatalf("unavailable %d, unknown %d, most in flight %d", unavailable, unknown, most.Load())
	}
}

// An edge restored from its state knows no key generations, so its floor is
// the restored revision: a lookup answer recorded before a deletion the
// edge had applied, replayed first after the restart, is refused every
// time and never cached (issue 12.6).
func TestRestoredFloorRefusesOlderReplay(t *testing.T) {
	o := newOrigin(t)
	h := newSecret(t)
	v := newView(t, o, nil)
	if _, err := v.Resync(o.seal(&event.Record{Kind: event.KindSnapshot}), 0); err != nil {
		t.Fatal(err)
	}
	mustApply(t, v, o.change(linked(h, "d1")))
	old, _ := o.lookup(context.Background(), h) // the key, at revision 1
	gone := linked(h, "d1")
	gone.Deleted = true
	mustApply(t, v, o.change(gone))
	path := filepath.Join(t.TempDir(), "state.json")
	if err := SaveState(path, v.State()); err != nil {
		t.Fatal(err)
	}

	s, ok, err := LoadState(path)
	if err != nil || !ok {
		t.Fatal(ok, err)
	}
	w, err := New(bounds(Config{Verifier: mustVerifier(t, o), MaxKeys: 100,
		Lookup: func(context.Context, apikey.Hash) ([]byte, error) { return old, nil }}))
	if err != nil {
		t.Fatal(err)
	}
	defer w.Close()
	if err := w.Restore(s); err != nil {
		t.Fatal(err)
	}
	for i := range 5 {
		if k, err := w.Authorize(context.Background(), h); err == nil {
			t.Fatalf("request %d: deleted key admitted from a replayed answer at revision 1: %+v", i+1, k)
		}
	}
	w.keys.Wait()
	if _, ok := w.cached(&h); ok {
		t.Fatal("the replayed answer was cached")
	}
}

// chunkSet seals deps as n chunks of one answer id at rev.
func (o *origin) chunkSet(id string, rev uint64, n int, deps ...event.Deployment) [][]byte {
	var out [][]byte
	for i := range n {
		var part []event.Deployment
		for j := i; j < len(deps); j += n {
			part = append(part, deps[j])
		}
		out = append(out, o.seal(&event.Record{Revision: rev, Kind: event.KindSnapshotChunk, Deployments: part,
			Chunk: &event.Chunk{ID: id, Index: i, Count: n}}))
	}
	return out
}

// A chunked snapshot applies only whole: missing, reordered, duplicated,
// forged chunks, or chunks of two answers or two revisions, are refused
// and change nothing; a complete set applies at once and round-trips
// through the persisted state (issue 11.4).
func TestSnapshotChunksAllOrNothing(t *testing.T) {
	o := newOrigin(t)
	rogue := newOrigin(t)
	var deps []event.Deployment
	for i := range 7 {
		deps = append(deps, event.Deployment{ID: fmt.Sprintf("d%d", i), Name: fmt.Sprintf("n%d", i)})
	}
	a := o.chunkSet("a", 5, 3, deps...)
	b := o.chunkSet("b", 5, 3, deps...)
	c := o.chunkSet("c", 6, 3, deps...)
	forged := rogue.chunkSet("a", 5, 3, deps...)
	for name, set := range map[string][][]byte{
		"missing last":    a[:2],
		"missing first":   a[1:],
		"reordered":       {a[1], a[0], a[2]},
		"duplicated":      {a[0], a[0], a[2]},
		"two answers":     {a[0], b[1], a[2]},
		"two revisions":   {a[0], a[1], c[2]},
		"forged chunk":    {a[0], forged[1], a[2]},
		"none":            {},
		"extra":           append(append([][]byte{}, a...), a[0]),
		"chunk as single": {a[0]},
	} {
		v := newView(t, o, nil)
		if _, err := v.ResyncChunks(set, 0); err == nil {
			t.Errorf("%s: applied", name)
		}
		if v.HasSnapshot() || len(v.Deployments().List()) != 0 || v.AppliedRevision() != 0 {
			t.Errorf("%s: refused set changed the view", name)
		}
	}
	v := newView(t, o, nil)
	if rev, err := v.ResyncChunks(a, 0); err != nil || rev != 5 || len(v.Deployments().List()) != len(deps) {
		t.Fatalf("complete set: %d %v, %d deployments", rev, err, len(v.Deployments().List()))
	}
	w := newView(t, o, nil)
	if err := w.Restore(v.State()); err != nil || len(w.Deployments().List()) != len(deps) || w.AppliedRevision() != 5 {
		t.Fatalf("restored chunked state: %v, %d deployments at %d", err, len(w.Deployments().List()), w.AppliedRevision())
	}
	// State written before chunks (one KindSnapshot in "snapshot") restores.
	old := State{Revision: 5, Snapshot: o.seal(&event.Record{Revision: 5, Kind: event.KindSnapshot, Deployments: deps})}
	if err := newView(t, o, nil).Restore(old); err != nil {
		t.Fatalf("pre-chunk state: %v", err)
	}
}

// Restore keeps each deployment's sealed record under its own id whatever
// order the state lists them in, so a change applied after the restart
// replaces that deployment's record only, and a second restart still has
// every deployment.
func TestRestoreKeepsRecordsWithTheirDeployments(t *testing.T) {
	o := newOrigin(t)
	v := newView(t, o, nil)
	if _, err := v.Resync(o.seal(&event.Record{Revision: 1, Kind: event.KindSnapshot}), 0); err != nil {
		t.Fatal(err)
	}
	a, b := event.Deployment{ID: "a", Name: "a"}, event.Deployment{ID: "b", Name: "b"}
	mustApply(t, v, o.seal(&event.Record{Revision: 2, Kind: event.KindDeployment, Deployment: &a}))
	mustApply(t, v, o.seal(&event.Record{Revision: 3, Kind: event.KindDeployment, Deployment: &b}))
	s := v.State()
	for _, order := range [][][]byte{s.Deployments, {s.Deployments[1], s.Deployments[0]}} {
		w := newView(t, o, nil)
		if err := w.Restore(State{Revision: 3, SnapshotChunks: s.SnapshotChunks, Deployments: order}); err != nil {
			t.Fatal(err)
		}
		a2 := event.Deployment{ID: "a", Name: "a2"}
		mustApply(t, w, o.seal(&event.Record{Revision: 4, Kind: event.KindDeployment, Deployment: &a2}))
		x := newView(t, o, nil)
		if err := x.Restore(w.State()); err != nil {
			t.Fatal(err)
		}
		got, _ := x.Deployments().Get("a")
		if _, ok := x.Deployments().Get("b"); !ok || got == nil || got.Name != "a2" {
			t.Fatalf("after two restarts: a=%+v, b present %v", got, ok)
		}
	}
}

// A key's name, model allow-list (compiled) and concurrency cap reach the
// compiled Key the data plane reads, as do its permissions and expiry.
func TestNewKeyCarriesModelsAndConcurrency(t *testing.T) {
	exp := time.Date(2031, 2, 3, 4, 5, 6, 0, time.UTC)
	k := NewKey(&event.Key{ID: "k1", Name: "ci", Permissions: []string{event.PermReadModels, event.PermRunInference},
		Models: []string{"meta-llama/*"}, MaxConcurrency: 3, ExpiresAt: &exp}, 9)
	if k.Name != "ci" || k.MaxConcurrency != 3 || len(k.Models) != 1 {
		t.Fatalf("key %+v", k)
	}
	if !k.AllowedModels.Allows([]byte("meta-llama/x")) || k.AllowedModels.Allows([]byte("gpt-4")) {
		t.Fatal("the compiled model list does not match as its patterns say")
	}
	if got, ok := k.ExpiresAt(); !ok || !got.Equal(exp) {
		t.Fatalf("ExpiresAt = %v, %v", got, ok)
	}
	if p := k.Permissions(); len(p) != 2 || p[0] != event.PermReadModels || p[1] != event.PermRunInference {
		t.Fatalf("Permissions = %v", p)
	}
	if _, ok := NewKey(&event.Key{ID: "k2"}, 1).ExpiresAt(); ok {
		t.Fatal("a key without expiry has one")
	}
}

// A request for a cached key while a change to it is being applied waits
// for the Apply (which raises the key's generation before it refreshes the
// entry) instead of asking the origin: across a WAN that lookup is a round
// trip, and on a loaded edge an Apply preempted in between sent requests
// there (bench wan, issue 17). The answer is the new state, without a
// lookup.
func TestRequestDuringApplyWaitsForIt(t *testing.T) {
	o := newOrigin(t)
	v := newView(t, o, nil)
	h := newSecret(t)
	mustApply(t, v, o.change(linked(h, "d1")))
	if _, err := v.Authorize(context.Background(), h); err != nil { // cached from here on
		t.Fatal(err)
	}
	v.keys.Wait()
	lookups := o.calls.Load()
	paused, resume := make(chan struct{}), make(chan struct{})
	afterRaise = func() { close(paused); <-resume }
	t.Cleanup(func() { afterRaise = nil })
	applied := make(chan error, 1)
	unlink := o.change(linked(h))
	go func() { _, err := v.Apply(unlink); applied <- err }()
	<-paused
	afterRaise = nil
	type answer struct {
		k   *Key
		err error
	}
	got := make(chan answer, 1)
	go func() { k, err := v.Authorize(context.Background(), h); got <- answer{k, err} }()
	// Without the wait, Authorize asks the origin now and returns the
	// origin's answer; with it, it is still waiting when the Apply goes on.
	// (A bound on how long to give it to go wrong, not a synchronisation.)
	select {
	case a := <-got:
		got <- a
	case <-time.After(200 * time.Millisecond):
	}
	close(resume)
	if err := <-applied; err != nil {
		t.Fatal(err)
	}
	a := <-got
	if a.err != nil {
		t.Fatal(a.err)
	}
	if a.k.Linked("d1") {
		t.Fatal("served the key as it was before the change being applied")
	}
	if n := o.calls.Load() - lookups; n != 0 {
		t.Fatalf("%d lookups at the origin for a key whose change was being applied", n)
	}
}

// A record the origin signed for something other than the stream — a
// heartbeat, a lookup's not-found, a balance, a snapshot — is never taken
// as the next event: offered at the next revision (by a gossip peer, or on
// the live subject) it is refused and counted, and the real change at that
// revision still applies.
func TestApplyRefusesRecordsThatAreNotEvents(t *testing.T) {
	o := newOrigin(t)
	v := newView(t, o, nil)
	h := newSecret(t)
	mustApply(t, v, o.change(linked(h, "d1")))
	next := v.AppliedRevision() + 1
	for _, wire := range [][]byte{
		o.heartbeat(next),
		o.seal(&event.Record{Revision: next, Kind: event.KindKeyNotFound, Time: time.Unix(1_000_000, 0)}),
		o.seal(&event.Record{Revision: next, Kind: event.KindBalance, Time: time.Unix(1_000_000, 0)}),
		o.seal(&event.Record{Revision: next, Kind: event.KindSnapshot, Time: time.Unix(1_000_000, 0)}),
	} {
		rejected := v.Stats().Rejected
		if _, err := v.Apply(wire); !errors.Is(err, event.ErrMalformed) {
			t.Fatalf("a record that is not an event applied at revision %d: %v", next, err)
		}
		if v.AppliedRevision() != next-1 || v.Stats().Rejected != rejected+1 {
			t.Fatalf("applied %d (want %d), rejected %d (want %d)", v.AppliedRevision(), next-1, v.Stats().Rejected, rejected+1)
		}
	}
	mustApply(t, v, o.change(linked(h))) // the real change at next: unlink
	k, err := v.Authorize(context.Background(), h)
	if err != nil || k.Linked("d1") {
		t.Fatalf("the change at revision %d was lost: %+v %v", next, k, err)
	}
}
