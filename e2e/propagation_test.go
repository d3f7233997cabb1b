package e2e

import (
	"net/http"
	"slices"
	"testing"
	"time"

	"github.com/keymesh/keymesh/edge"
	"github.com/keymesh/keymesh/internal/testutil"
)

func fastHeartbeat(c *edge.Config) { c.HeartbeatInterval = 100 * time.Millisecond }

// TestPropagationWait: ?wait holds a mutation's answer until every live
// edge has applied it, and names an edge cut off from NATS as pending.
func TestPropagationWait(t *testing.T) {
	s := newStack(t)
	d := s.deployment("demo", nil)
	k := s.key(d.ID)
	a := s.startEdge(edgeOpts{site: "eu", configure: fastHeartbeat})
	link := newRelay(t, s.nats.Addr().String())
	b := s.startEdge(edgeOpts{site: "us", natsURL: link.URL(), configure: fastHeartbeat})
	if a.ID() == b.ID() {
		t.Fatalf("two edges share id %q", a.ID())
	}

	// Both edges register with their site, address and applied revision.
	rev := s.origin.Revision()
	testutil.CheckFor(t, 10*time.Second, 0, func() error {
		reg := s.edgeRegistry()
		for _, e := range []*edge.Node{a, b} {
			got, ok := reg[e.ID()]
			if !ok || !got.Live || got.AppliedRevision < rev || got.Address != e.Addr() {
				return errorf("edge %s registered as %+v", e.ID(), got)
			}
		}
		return nil
	})
	if reg := s.edgeRegistry(); reg[a.ID()].Site != "eu" || reg[b.ID()].Site != "us" {
		t.Fatalf("sites: %+v", reg)
	}
	expect(t, a, withKey(k), http.StatusOK, "")

	// Unlink with ?wait: both edges have applied it when the answer comes,
	// so the very next request through either is refused.
	var rep propagationReport
	unlink := "/v1/projects/" + project + "/deployments/" + d.ID + "/keys/" + k.ID + "?wait=2s"
	start := time.Now()
	s.call(http.MethodDelete, unlink, nil, &rep)
	if rep.Propagation == nil {
		t.Fatal("no propagation report")
	}
	want := []string{a.ID(), b.ID()}
	slices.Sort(want)
	if !slices.Equal(rep.Propagation.Applied, want) || len(rep.Propagation.Pending) != 0 {
		t.Fatalf("after %v: propagation %+v, want applied %v", time.Since(start), rep.Propagation, want)
	}
	for _, e := range []*edge.Node{a, b} {
		if got := e.View().AppliedRevision(); got < rep.Revision {
			t.Fatalf("edge %s reported applied but is at %d < %d", e.ID(), got, rep.Revision)
		}
		expect(t, e, withKey(k), http.StatusUnauthorized, "AUTHENTICATION_FAILED")
	}

	// Cut b off NATS: it stays live (its last heartbeat is recent) but
	// cannot apply the link, so the wait runs out with b pending.
	link.Cut()
	start = time.Now()
	s.call(http.MethodPut, "/v1/projects/"+project+"/deployments/"+d.ID+"/keys/"+k.ID+"?wait=1s", nil, &rep)
	took := time.Since(start)
	if took < time.Second {
		t.Fatalf("answered after %v with an edge pending", took)
	}
	if !slices.Equal(rep.Propagation.Applied, []string{a.ID()}) || !slices.Equal(rep.Propagation.Pending, []string{b.ID()}) {
		t.Fatalf("propagation %+v", rep.Propagation)
	}
	expect(t, a, withKey(k), http.StatusOK, "")

	// Healed, b catches up and a new wait covers both again.
	link.Heal()
	s.call(http.MethodPatch, "/v1/projects/"+project+"/keys/"+k.ID+"?wait=10s", map[string]any{"name": "renamed"}, &rep)
	if !slices.Equal(rep.Propagation.Applied, want) || len(rep.Propagation.Pending) != 0 {
		t.Fatalf("after healing: propagation %+v", rep.Propagation)
	}
}
