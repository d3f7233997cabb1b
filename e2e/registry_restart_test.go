package e2e

import (
	"context"
	"fmt"
	"net/http"
	"slices"
	"testing"
	"time"

	"github.com/keymesh/keymesh/api"
	"github.com/keymesh/keymesh/edge"
	"github.com/keymesh/keymesh/internal/testutil"
)

// restartOriginInPlace stops the stack's origin and starts a new one on the same
// data dir (store, keys, edge registry) and NATS, with the same credential.
func (s *stack) restartOriginInPlace() {
	s.t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if err := s.st.RestartOrigin(ctx); err != nil {
		s.t.Fatal(err)
	}
	s.adoptOrigin()
}

// Issue 12.2: right after an origin restart its edge registry is the one it
// had, not empty: a mutation with ?wait waits for the edge that was
// connected, reports it, and the edge refuses the disabled key as soon as
// the answer is in. (Before, the registry refilled from heartbeats only and
// the answer was an immediate {"applied":[],"pending":[]}.)
func TestWaitAfterOriginRestartWaitsForKnownEdges(t *testing.T) {
	s := newStack(t)
	d := s.deployment("demo", nil)
	k := s.key(d.ID)
	// Heartbeats every 30 s: only the one after applying a change reaches
	// the new origin within the test, so the registry it has is the stored one.
	e := s.startEdge(edgeOpts{configure: func(c *edge.Config) { c.HeartbeatInterval = 30 * time.Second }})
	expect(t, e, withKey(k), 200, "")
	testutil.CheckFor(t, 10*time.Second, 0, func() error {
		for _, ed := range s.origin.Edges() {
			if ed.ID == e.ID() && ed.Live {
				return nil
			}
		}
		return fmt.Errorf("edge %s not registered: %+v", e.ID(), s.origin.Edges())
	})

	s.restartOriginInPlace()

	var out struct {
		Propagation struct {
			Applied []string `json:"applied"`
			Pending []string `json:"pending"`
		} `json:"propagation"`
	}
	start := time.Now()
	s.call(http.MethodPatch, "/v1/projects/"+project+"/keys/"+k.ID+"?wait=10s", map[string]any{"disabled": true}, &out)
	took := time.Since(start)
	if !slices.Equal(out.Propagation.Applied, []string{e.ID()}) || len(out.Propagation.Pending) != 0 {
		t.Fatalf("propagation after restart = %+v (took %v), want applied [%s]", out.Propagation, took, e.ID())
	}
	if st, body := chat(t, e, withKey(k)); st == http.StatusOK {
		t.Fatalf("edge still accepts the disabled key after ?wait: %d %s", st, body)
	}
	var listed []api.Edge
	s.call(http.MethodGet, "/v1/edges", nil, &listed)
	if len(listed) != 1 || listed[0].ID != e.ID() || !listed[0].Live {
		t.Fatalf("GET /v1/edges after restart = %+v", listed)
	}
	t.Logf("?wait after restart answered in %v", took)
}
