package cache

import (
	"context"
	"errors"
	"fmt"
	"path/filepath"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/keymesh/keymesh/apikey"
	"github.com/keymesh/keymesh/event"
)

// fakeClock is a settable clock shared by a test's View and origin.
type fakeClock struct{ ns atomic.Int64 }

func newFakeClock() *fakeClock {
	c := &fakeClock{}
	c.ns.Store(time.Date(2030, 1, 1, 0, 0, 0, 0, time.UTC).UnixNano())
	return c
}

func (c *fakeClock) now() time.Time          { return time.Unix(0, c.ns.Load()) }
func (c *fakeClock) advance(d time.Duration) { c.ns.Add(int64(d)) }
func (o *origin) beatAt(rev uint64, at time.Time) []byte {
	return o.seal(&event.Record{Revision: rev, Kind: event.KindHeartbeat, Time: at})
}

// Invariant 6: a gossip peer's answer is as fresh as the origin's signature
// on it, not as the moment it arrived. Two equally stale edges cannot
// vouch for each other: in closed mode a View that cannot prove it is
// current refuses a record the origin signed longer ago than the bound,
// whether the key was cached (re-validation) or not (a miss), and takes a
// recent one; open-cached serves it and counts it.
func TestPeerAnswerFreshnessIsItsSignedTime(t *testing.T) {
	for _, failOpen := range []bool{false, true} {
		t.Run(fmt.Sprintf("failOpen=%v", failOpen), func(t *testing.T) {
			o := newOrigin(t)
			clock := newFakeClock()
			o.now = clock.now
			var answer func(apikey.Hash) ([]byte, error) // the origin, then "a peer"
			v, err := New(bounds(Config{Verifier: mustVerifier(t, o), MaxKeys: 100, MaxStaleness: 3 * time.Second,
				FailOpen: failOpen, Now: clock.now,
				Lookup: func(_ context.Context, h apikey.Hash) ([]byte, error) { return answer(h) }}))
			if err != nil {
				t.Fatal(err)
			}
			defer v.Close()
			answer = func(h apikey.Hash) ([]byte, error) { return o.lookup(context.Background(), h) }
			cached, other := newSecret(t), newSecret(t)
			k := linked(cached, "d1")
			k.Secrets = append(k.Secrets, event.Secret{Hash: other})
			mustApply(t, v, o.change(k))
			if _, err := v.Heartbeat(o.beatAt(v.AppliedRevision(), clock.now())); err != nil {
				t.Fatal(err)
			}
			if _, err := v.Authorize(context.Background(), cached); err != nil {
				t.Fatal(err)
			}
			v.keys.Wait()
			// What a peer kept: records the origin signed now.
			peerCached, _ := o.lookup(context.Background(), cached)
			peerOther, _ := o.lookup(context.Background(), other)

			// The origin goes away; 10 s pass with no heartbeat.
			clock.advance(10 * time.Second)
			answer = func(h apikey.Hash) ([]byte, error) {
				if h == cached {
					return peerCached, nil
				}
				return peerOther, nil
			}
			if ok, _ := v.Current(); ok {
				t.Fatal("current without a heartbeat for 10s")
			}
			if v.Fresh(mustOpen(t, v, peerCached)) != failOpen {
				t.Fatalf("Fresh(10 s old record) = %v in failOpen=%v", !failOpen, failOpen)
			}
			for name, h := range map[string]apikey.Hash{"cached": cached, "uncached": other} {
				_, err := v.Authorize(context.Background(), h)
				if failOpen && err != nil {
					t.Fatalf("%s: open-cached refused a peer's answer: %v", name, err)
				}
				if !failOpen && !errors.Is(err, ErrUnavailable) {
					t.Fatalf("%s: closed took a peer's answer the origin signed 10 s ago: %v", name, err)
				}
			}
			if st := v.Stats(); st.StaleAnswers != 2 || (failOpen && st.StaleServed < 2) {
				t.Fatalf("stale answers %d, served %d", st.StaleAnswers, st.StaleServed)
			}
			// Nor does the refused answer refresh the entry: still refused later.
			clock.advance(time.Second)
			if _, err := v.Authorize(context.Background(), cached); !failOpen && !errors.Is(err, ErrUnavailable) {
				t.Fatalf("second request after a peer's stale answer: %v", err)
			}

			// A peer that asked the origin a second ago vouches for a second.
			recent, _ := o.lookup(context.Background(), cached)
			clock.advance(time.Second)
			answer = func(apikey.Hash) ([]byte, error) { return recent, nil }
			if _, err := v.Authorize(context.Background(), cached); err != nil {
				t.Fatalf("a record signed 1 s ago: %v", err)
			}
			// A View proven current takes an old record: its generation checks suffice.
			if _, err := v.Heartbeat(o.beatAt(v.AppliedRevision(), clock.now())); err != nil {
				t.Fatal(err)
			}
			answer = func(apikey.Hash) ([]byte, error) { return peerOther, nil }
			v.keys.Del(slot(&other))
			v.keys.Wait()
			if _, err := v.Authorize(context.Background(), other); err != nil {
				t.Fatalf("a current View refused a peer's older record: %v", err)
			}
		})
	}
}

func mustOpen(t *testing.T, v *View, wire []byte) *event.Record {
	t.Helper()
	rec, err := v.Verify(wire)
	if err != nil {
		t.Fatal(err)
	}
	return rec
}

// An entry refreshed by an applied change is vouched for as of the
// change's signed time: a change the edge applies late (gossip catching
// up while the origin is away) does not make the key look freshly proven.
func TestAppliedChangeVouchesAsOfItsSignedTime(t *testing.T) {
	o := newOrigin(t)
	clock := newFakeClock()
	o.now = clock.now
	v, err := New(bounds(Config{Verifier: mustVerifier(t, o), Lookup: o.lookup, MaxKeys: 100, MaxStaleness: 3 * time.Second, Now: clock.now}))
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
	change := o.change(linked(h, "d1", "d2")) // signed now, applied 10 s later
	clock.advance(10 * time.Second)
	mustApply(t, v, change)
	v.keys.Wait()
	v.cfg.Lookup = func(context.Context, apikey.Hash) ([]byte, error) { return nil, errors.New("no responders") }
	if _, err := v.Authorize(context.Background(), h); !errors.Is(err, ErrUnavailable) {
		t.Fatalf("a 10 s old change applied now counted as fresh proof: %v", err)
	}
}

// Invariant 6: state restored from disk is as stale as the newest record
// the origin signed in it; until a heartbeat names a committed head the
// View has applied, a closed View does not trust it (Trusted), and
// Currency says why.
func TestRestoredStateIsAsOldAsItsRecords(t *testing.T) {
	for _, failOpen := range []bool{false, true} {
		t.Run(fmt.Sprintf("failOpen=%v", failOpen), func(t *testing.T) {
			o := newOrigin(t)
			clock := newFakeClock()
			o.now = clock.now
			snap := o.seal(&event.Record{Revision: 1, Kind: event.KindSnapshot, Time: clock.now(),
				Deployments: []event.Deployment{{ID: "d1", Name: "demo", Revision: 1}}})
			clock.advance(time.Second)
			dep := o.seal(&event.Record{Revision: 2, Kind: event.KindDeployment, Time: clock.now(),
				Deployment: &event.Deployment{ID: "d1", Name: "demo", Revision: 2}})
			path := filepath.Join(t.TempDir(), "state.json")
			if err := SaveState(path, State{Revision: 2, Snapshot: snap, Deployments: [][]byte{dep}}); err != nil {
				t.Fatal(err)
			}
			signed := clock.now()
			clock.advance(20 * time.Second) // the edge was down
			o.rev = 2
			v, err := New(bounds(Config{Verifier: mustVerifier(t, o), Lookup: o.lookup, MaxKeys: 100,
				MaxStaleness: 5 * time.Second, FailOpen: failOpen, Now: clock.now}))
			if err != nil {
				t.Fatal(err)
			}
			defer v.Close()
			s, _, err := LoadState(path)
			if err != nil {
				t.Fatal(err)
			}
			if err := v.Restore(s); err != nil {
				t.Fatal(err)
			}
			c := v.Currency()
			if c.Current || !c.Restored || !c.ProvenAt.Equal(signed) || !strings.Contains(c.Reason, "restored") {
				t.Fatalf("restored state 20 s old: %+v", c)
			}
			if v.Trusted() != failOpen {
				t.Fatalf("Trusted() = %v with failOpen=%v", !failOpen, failOpen)
			}
			// The origin announces a head the View has not applied: behind.
			clock.advance(time.Second)
			if _, err := v.Heartbeat(o.beatAt(3, clock.now())); err != nil {
				t.Fatal(err)
			}
			clock.advance(1500 * time.Millisecond)
			if c := v.Currency(); c.Current || c.Head != 3 || !strings.Contains(c.Reason, "behind committed head 3 (applied 2) for 1.5s") {
				t.Fatalf("behind: %+v", c)
			}
			// Caught up: current, trusted.
			mustApply(t, v, o.change(event.Key{ID: "k9", Project: "p"}))
			if c := v.Currency(); !c.Current || c.Restored || c.Reason != "" || c.BehindFor != 0 || !v.Trusted() {
				t.Fatalf("caught up: %+v", c)
			}
		})
	}
}
