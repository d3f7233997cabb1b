package origin

import (
	"encoding/json"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/nats-io/nkeys"

	"github.com/keymesh/keymesh/internal/natsauth"
)

// An edge cut off from NATS is kept live by peers relaying its signed
// presence; relayed revisions only move forward, and the edge's own
// heartbeat wins.
func TestEdgeRegistryRelayedHeartbeats(t *testing.T) {
	clk := &fakeClock{t: time.Unix(1_700_000_000, 0)}
	r := newEdgeRegistry(clk.now, 10*time.Second, 10)
	kp, pub := presenceKey(t)
	r.heartbeat("cut", ownHeartbeat("cut", 5, pub))
	clk.add(8 * time.Second) // its own heartbeats stopped
	r.heartbeat("a", relayedHeartbeat(t, kp, "cut", 7, 7, clk.now(), "a"))
	r.heartbeat("b", relayedHeartbeat(t, kp, "cut", 6, 6, clk.now(), "b")) // an older revision, by another relay
	clk.add(8 * time.Second)                                               // 16s after its last own heartbeat
	l := r.list()
	if len(l) != 1 || !l[0].Live || l[0].AppliedRevision != 7 || l[0].RelayedBy != "b" || r.rejected.Load() != 0 {
		t.Fatalf("relayed edge: %+v (rejected %d)", l, r.rejected.Load())
	}
	if applied, pending, _, _ := r.check(7); fmt.Sprint(applied, pending) != "[cut] []" {
		t.Fatalf("check(7) = %v %v", applied, pending)
	}
	r.heartbeat("cut", ownHeartbeat("cut", 3, pub)) // back on NATS, restarted without state
	if l := r.list(); l[0].AppliedRevision != 3 || l[0].RelayedBy != "" {
		t.Fatalf("after its own heartbeat: %+v", l)
	}
	if r.heartbeat(strings.Repeat("r", 300), relayedHeartbeat(t, kp, "x", 1, 1, clk.now(), strings.Repeat("r", 300))); r.rejected.Load() != 1 {
		t.Fatal("an oversized relayed_by was accepted")
	}
	// Over HTTP the field is there, the key is not.
	b, _ := json.Marshal(edgeAnswers(r.list()))
	if !strings.Contains(string(b), `"id":"cut"`) || strings.Contains(string(b), `"relayed_by":""`) || strings.Contains(string(b), pub) {
		t.Fatalf("json: %s", b)
	}
}

// Issue 11: one edge cannot speak for another. A relayed heartbeat counts
// only with the peer's own signature over exactly the id, revision and time
// it claims, made with the key the peer's own heartbeats gave, fresh, and
// no older than the last one accepted.
func TestEdgeRegistryRelaySignedPresence(t *testing.T) {
	clk := &fakeClock{t: time.Unix(1_700_000_000, 0)}
	r := newEdgeRegistry(clk.now, 10*time.Second, 10)
	kp, pub := presenceKey(t)
	other, _ := presenceKey(t)
	r.heartbeat("cut", ownHeartbeat("cut", 5, pub))
	r.heartbeat("relay", ownHeartbeat("relay", 9, ""))
	clk.add(time.Second)
	rev := func() uint64 {
		for _, e := range r.list() {
			if e.ID == "cut" {
				return e.AppliedRevision
			}
		}
		return 0
	}
	rejects := func(name string, hb []byte) {
		t.Helper()
		n := r.rejected.Load()
		r.heartbeat("relay", hb)
		if r.rejected.Load() != n+1 || rev() != 5 {
			t.Fatalf("%s: accepted (revision %d)", name, rev())
		}
	}
	at := clk.now()
	rejects("a higher revision than signed", relayedHeartbeat(t, kp, "cut", 9, 5, at, "relay"))
	rejects("another key", relayedHeartbeat(t, other, "cut", 9, 9, at, "relay"))
	rejects("unsigned", mustMarshal(map[string]any{"id": "cut", "applied_revision": 9, "relayed_by": "relay"}))
	rejects("signed for another edge", relayedHeartbeat(t, kp, "cut", 9, 9, at, "relay", "relay"))
	rejects("stale", relayedHeartbeat(t, kp, "cut", 9, 9, at.Add(-11*time.Second), "relay"))
	rejects("from the future", relayedHeartbeat(t, kp, "cut", 9, 9, at.Add(time.Minute), "relay"))
	// Correctly signed: accepted.
	r.heartbeat("relay", relayedHeartbeat(t, kp, "cut", 8, 8, at, "relay"))
	if rev() != 8 {
		t.Fatalf("a signed presence was not accepted: revision %d", rev())
	}
	// The edge goes back (restarted without state, still cut off) and
	// signs that; a replay of its older presence does not roll it forward
	// again, nor does an older one roll a newer back.
	clk.add(time.Second)
	r.heartbeat("cut", ownHeartbeat("cut", 2, pub))
	clk.add(time.Second)
	n := r.rejected.Load()
	r.heartbeat("relay", relayedHeartbeat(t, kp, "cut", 8, 8, at, "relay")) // the replay, before any new presence
	r.heartbeat("relay", relayedHeartbeat(t, kp, "cut", 3, 3, clk.now(), "relay"))
	r.heartbeat("relay", relayedHeartbeat(t, kp, "cut", 8, 8, at, "relay")) // the replay again
	if rev() != 3 || r.rejected.Load() != n+2 {
		t.Fatalf("after replays: revision %d, rejected %d more", rev(), r.rejected.Load()-n)
	}
	// A registry entry without a key (restored, or an edge that sent none)
	// accepts no relay until the edge gives one.
	r.heartbeat("cut", ownHeartbeat("cut", 4, ""))
	n = r.rejected.Load()
	r.heartbeat("relay", relayedHeartbeat(t, kp, "cut", 6, 6, clk.now(), "relay"))
	if rev() != 4 || r.rejected.Load() != n+1 {
		t.Fatalf("a relay was accepted without a key: revision %d", rev())
	}
}

func presenceKey(t *testing.T) (nkeys.KeyPair, string) {
	t.Helper()
	kp, err := nkeys.CreateUser()
	if err != nil {
		t.Fatal(err)
	}
	pub, _ := kp.PublicKey()
	return kp, pub
}

func mustMarshal(v any) []byte {
	b, err := json.Marshal(v)
	if err != nil {
		panic(err)
	}
	return b
}

// ownHeartbeat is an edge's heartbeat on its own subject, giving its
// presence key pub ("" for none).
func ownHeartbeat(id string, rev uint64, pub string) []byte {
	return mustMarshal(map[string]any{"id": id, "site": "eu", "address": "127.0.0.1:8080",
		"applied_revision": rev, "time": time.Now(), "nkey": pub})
}

// relayedHeartbeat is edge by's heartbeat relaying id at revision rev with
// a presence signed by kp for signedRev at time at (for signedID[0] if
// given, else id).
func relayedHeartbeat(t *testing.T, kp nkeys.KeyPair, id string, rev, signedRev uint64, at time.Time, by string, signedID ...string) []byte {
	t.Helper()
	sid := id
	if len(signedID) > 0 {
		sid = signedID[0]
	}
	sig, err := natsauth.SignPresence(kp, sid, signedRev, at.UnixMilli())
	if err != nil {
		t.Fatal(err)
	}
	return mustMarshal(map[string]any{"id": id, "site": "eu", "address": "127.0.0.1:8080",
		"applied_revision": rev, "relayed_by": by, "presence": map[string]any{"time_ms": at.UnixMilli(), "sig": sig}})
}
