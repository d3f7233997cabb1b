package e2e

import (
	"context"
	"fmt"
	"net/http"
	"testing"
	"time"

	"github.com/keymesh/keymesh/internal/testutil"
)

// With the origin gone (no heartbeats, no lookups), a cached key is served
// only in open-cached mode; the default fails closed once the bound passes.
func TestStalenessGuardFailModes(t *testing.T) {
	for _, failOpen := range []bool{false, true} {
		t.Run(fmt.Sprintf("failOpen=%v", failOpen), func(t *testing.T) {
			s := newStack(t)
			d := s.deployment("demo", nil)
			k := s.key(d.ID)
			e := s.startEdge(edgeOpts{staleness: 500 * time.Millisecond, failOpen: failOpen})
			expect(t, e, withKey(k), 200, "")

			// While heartbeats arrive, the edge stays current past the bound.
			testutil.CheckFor(t, 10*time.Second, 0, func() error {
				if st := e.View().Stats(); st.Revalidations > 0 {
					return fmt.Errorf("re-validated while the origin was up")
				}
				if ok, at := e.View().Current(); !ok || time.Since(at) > 300*time.Millisecond {
					return fmt.Errorf("no recent heartbeat yet")
				}
				return nil
			})

			if err := s.origin.Shutdown(context.Background()); err != nil {
				t.Fatal(err)
			}
			want := http.StatusServiceUnavailable
			if failOpen {
				want = http.StatusOK
			}
			testutil.CheckFor(t, 10*time.Second, 0, func() error {
				if ok, _ := e.View().Current(); ok {
					return fmt.Errorf("still current")
				}
				if st, _ := chat(t, e, withKey(k)); st != want {
					return fmt.Errorf("stale edge answered %d, want %d", st, want)
				}
				if e.View().Stats().Revalidations == 0 {
					return fmt.Errorf("the key is not old enough to need re-validation yet")
				}
				return nil
			})
		})
	}
}
