package e2e

import (
	"context"
	"net/http"
	"slices"
	"testing"
	"time"

	"github.com/keymesh/keymesh/edge"
	"github.com/keymesh/keymesh/internal/testutil"
)

// TestEdgeLeavesOnShutdown: an edge that shuts down gracefully says so, and
// leaves GET /v1/edges' live set at once rather than after the origin's
// edge liveness (10 s); a ?wait mutation right after answers without
// waiting for it or naming it pending.
func TestEdgeLeavesOnShutdown(t *testing.T) {
	s := newStack(t)
	d := s.deployment("demo", nil)
	k := s.key(d.ID)
	a := s.startEdge(edgeOpts{site: "eu", configure: fastHeartbeat})
	b := s.startEdge(edgeOpts{site: "us", configure: fastHeartbeat})
	testutil.CheckFor(t, 10*time.Second, 0, func() error {
		reg := s.edgeRegistry()
		for _, e := range []*edge.Node{a, b} {
			if !reg[e.ID()].Live {
				return errorf("edge %s not live: %+v", e.ID(), reg[e.ID()])
			}
		}
		return nil
	})

	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if err := b.Shutdown(ctx); err != nil {
		t.Fatal(err)
	}
	// Well under the liveness: only the leaving heartbeat can do this.
	testutil.CheckFor(t, 2*time.Second, 0, func() error {
		reg := s.edgeRegistry()
		if got, ok := reg[b.ID()]; !ok || got.Live {
			return errorf("edge %s after its shutdown: %+v (listed %v)", b.ID(), got, ok)
		}
		if !reg[a.ID()].Live {
			return errorf("edge %s is not live", a.ID())
		}
		return nil
	})

	var rep propagationReport
	start := time.Now()
	s.call(http.MethodDelete, "/v1/projects/"+project+"/deployments/"+d.ID+"/keys/"+k.ID+"?wait=8s", nil, &rep)
	if took := time.Since(start); took > 5*time.Second {
		t.Fatalf("?wait took %v: it waited for the edge that left", took)
	}
	if rep.Propagation == nil || !slices.Equal(rep.Propagation.Applied, []string{a.ID()}) || len(rep.Propagation.Pending) != 0 {
		t.Fatalf("propagation %+v, want applied [%s] and nothing pending", rep.Propagation, a.ID())
	}
}
