package e2e

import (
	"testing"

	"github.com/keymesh/keymesh/internal/netcut"
)

// relay is a TCP forwarder the tests put between an edge and NATS, so one
// edge's link can be cut and healed while everything else keeps running.
type relay struct{ *netcut.Relay }

func newRelay(t testing.TB, target string) *relay {
	r, err := netcut.NewRelay(target)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(r.Close)
	return &relay{r}
}

func (r *relay) URL() string { return "nats://" + r.Addr() }
