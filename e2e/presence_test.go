package e2e

import (
	"encoding/json"
	"net/http"
	"slices"
	"testing"
	"time"

	"github.com/keymesh/keymesh/cluster"
	"github.com/keymesh/keymesh/edge"
	"github.com/keymesh/keymesh/event"
	"github.com/keymesh/keymesh/internal/netcut"
	"github.com/keymesh/keymesh/internal/testutil"
)

// Issue 11: one edge cannot speak for another. An edge that reaches NATS
// only by gossip is kept in the origin's registry by a peer relaying its
// signed presence; a compromised relay that copies that presence but
// claims a revision the peer never signed is dropped, so ?wait does not
// count the peer as having applied a change it has not.
func TestRelayForgedRevisionNotCounted(t *testing.T) {
	s := newStack(t)
	d := s.deployment("presence", nil)
	k := s.key(d.ID)
	tr, err := netcut.New()
	if err != nil {
		t.Fatal(err)
	}
	edges, links := s.gossipEdgesWith(2, gossipOpts{configure: func(i int, c *edge.Config) {
		if i == 1 {
			c.Gossip.Configure = func(cc *cluster.Config) { cc.Transport, cc.BindAddr = tr, tr.Addr() }
		}
	}})
	everyEdge(t, edges, k.Secret, 200, time.Now())
	relay, cut := edges[0], edges[1]
	links[1].Cut()
	// The genuine relay is accepted: the cut edge stays live, relayed.
	testutil.CheckFor(t, 20*time.Second, 0, func() error {
		e, ok := s.edgeRegistry()[cut.ID()]
		if !ok || !e.Live || e.RelayedBy != relay.ID() {
			return errorf("cut edge in the registry: %+v", e)
		}
		return nil
	})
	var peer cluster.Peer
	for _, p := range relay.Peers() {
		if p.ID == cut.ID() {
			peer = p
		}
	}
	if len(peer.Signature) == 0 {
		t.Fatalf("the relay sees no signed presence for the cut edge: %+v", relay.Peers())
	}
	// Now the cut edge hears nothing more, by NATS or gossip.
	tr.Cut()

	// The relay's credential forges: the peer's real presence, a revision
	// it never signed, with the signed time and with a fresh one.
	nc, _ := s.edgeConn(t, relay.ID())
	forge := func(rev uint64, at int64) []byte {
		b, _ := json.Marshal(map[string]any{"id": cut.ID(), "site": peer.Site, "address": peer.Address,
			"applied_revision": rev, "relayed_by": relay.ID(),
			"presence": map[string]any{"time_ms": at, "sig": peer.Signature}})
		return b
	}
	for _, b := range [][]byte{forge(1<<40, peer.SignedAt), forge(1<<40, time.Now().UnixMilli())} {
		if err := nc.Publish(event.EdgeSubject(event.EdgeHeartbeatSubject, relay.ID()), b); err != nil {
			t.Fatal(err)
		}
	}
	if err := nc.Flush(); err != nil {
		t.Fatal(err)
	}
	// The origin handles them in order with the genuine relays on the same
	// subject; this marker (the relay's own heartbeat) says they are in.
	marker, _ := json.Marshal(map[string]any{"id": relay.ID(), "site": "forger", "address": "203.0.113.9:443",
		"applied_revision": relay.View().AppliedRevision()})
	testutil.CheckFor(t, 10*time.Second, 0, func() error { // again: the relay's own heartbeats overwrite it
		if err := nc.Publish(event.EdgeSubject(event.EdgeHeartbeatSubject, relay.ID()), marker); err != nil {
			t.Fatal(err)
		}
		_ = nc.Flush()
		if e := s.edgeRegistry()[relay.ID()]; e.Site != "forger" {
			return errorf("marker not seen yet: %+v", e)
		}
		return nil
	})
	if e := s.edgeRegistry()[cut.ID()]; e.AppliedRevision >= 1<<40 {
		t.Fatalf("the forged revision was accepted: %+v", e)
	}

	var rep propagationReport
	s.call(http.MethodPatch, "/v1/projects/"+project+"/keys/"+k.ID+"?wait=1s", map[string]any{"name": "forged"}, &rep)
	if rep.Propagation == nil {
		t.Fatal("no propagation report")
	}
	if slices.Contains(rep.Propagation.Applied, cut.ID()) {
		t.Fatalf("?wait counted the cut-off edge as applied: %+v (its revision %d)", rep.Propagation, cut.View().AppliedRevision())
	}
}
