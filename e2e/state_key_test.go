package e2e

import (
	"path/filepath"
	"strings"
	"testing"

	"github.com/keymesh/keymesh/cache"
	"github.com/keymesh/keymesh/event"
)

// State persisted under another origin key (the origin's was rotated, or
// the edge was pointed at another origin) is discarded with one log line,
// and the edge starts and syncs from its origin instead of refusing to
// start (issue 12.8). Nothing from the untrusted state takes effect.
func TestStateSignedByAnotherKeyIsDiscarded(t *testing.T) {
	s := newStack(t)
	d := s.deployment("demo", nil)
	k := s.key(d.ID)

	priv, err := event.GenerateKey()
	if err != nil {
		t.Fatal(err)
	}
	other, err := event.NewSigner(priv)
	if err != nil {
		t.Fatal(err)
	}
	rogue := event.Deployment{ID: "dep_rogue", Project: "p", Name: "rogue", Hosts: []string{"rogue.example"}}
	snap, err := other.Seal(&event.Record{Revision: 1000, Kind: event.KindSnapshot, Deployments: []event.Deployment{rogue}})
	if err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	if err := cache.SaveState(filepath.Join(dir, "state.json"), cache.State{Revision: 1000, Snapshot: snap}); err != nil {
		t.Fatal(err)
	}

	e := s.startEdge(edgeOpts{dataDir: dir}) // waits for the edge to sync
	const line = "persisted edge state is not signed by the origin public key"
	if n := strings.Count(s.logs.String(), line); n != 1 {
		t.Fatalf("%d log lines about the discarded state, want 1:\n%s", n, s.logs.String())
	}
	if _, ok := e.View().Deployments().Get("dep_rogue"); ok {
		t.Fatal("a deployment from the untrusted state was restored")
	}
	if got, want := e.View().AppliedRevision(), s.origin.Revision(); got != want {
		t.Fatalf("applied %d, want the origin's %d (not the untrusted state's 1000)", got, want)
	}
	expect(t, e, withKey(k), 200, "")
}
