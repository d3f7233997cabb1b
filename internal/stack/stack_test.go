package stack

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/nats-io/nats-server/v2/server"

	"github.com/keymesh/keymesh/edge"
	"github.com/keymesh/keymesh/internal/testutil"
)

// Start returns synchronised, listening edges on the origin's embedded NATS
// that gossip in one ring and apply what the origin commits; Shutdown stops
// them and removes the directory Start made.
func TestStartAndShutdown(t *testing.T) {
	ctx := context.Background()
	s, err := Start(ctx, Config{Edges: 2, Edge: EdgeOptions{Gossip: true, CuttableNATS: true, Admin: true}})
	if err != nil {
		t.Fatal(err)
	}
	if s.AdminPassword() != DefaultAdminPassword || s.Token() == "" {
		t.Errorf("a zero Config's origin: password %q, token %q", s.AdminPassword(), s.Token())
	}
	edges := s.Edges()
	if len(edges) != 2 {
		t.Fatalf("%d edges", len(edges))
	}
	for i, e := range edges {
		select {
		case <-e.Synced():
		default:
			t.Errorf("edge %d returned unsynchronised", i)
		}
		if e.Addr() == "" || e.URL != "http://"+e.Addr() {
			t.Errorf("edge %d: URL %q, Addr %q", i, e.URL, e.Addr())
		}
		if want := fmt.Sprintf("stack-edge-%02d", i); e.ID() != want {
			t.Errorf("edge %d has id %q, want %q", i, e.ID(), want)
		}
		if e.Link == nil {
			t.Errorf("edge %d has no NATS link to cut", i)
		}
		resp, err := http.Get(e.AdminURL + "/health")
		if err != nil || resp.StatusCode != http.StatusOK {
			t.Fatalf("edge %d admin: %v %v", i, resp, err)
		}
		resp.Body.Close()
	}
	testutil.CheckFor(t, 20*time.Second, 0, func() error {
		for i, e := range edges {
			if n := len(e.Peers()); n != 1 {
				return fmt.Errorf("edge %d sees %d peers", i, n)
			}
		}
		return nil
	})
	rev, err := s.API.Do(ctx, http.MethodPost, "/v1/projects/default/keys", map[string]any{"name": "k"}, nil)
	if err != nil || rev == 0 {
		t.Fatalf("creating a key as admin: rev %d, %v", rev, err)
	}
	testutil.CheckFor(t, 10*time.Second, 0, func() error {
		for i, e := range edges {
			if got := e.View().AppliedRevision(); got < rev {
				return fmt.Errorf("edge %d applied %d, want %d", i, got, rev)
			}
		}
		return nil
	})

	ctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	if err := s.Shutdown(ctx); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(s.Dir()); !os.IsNotExist(err) {
		t.Errorf("Shutdown left %s: %v", s.Dir(), err)
	}
	if resp, err := http.Get(edges[0].URL + "/health"); err == nil {
		resp.Body.Close()
		t.Error("an edge still answers after Shutdown")
	}
	if err := s.Shutdown(ctx); err != nil {
		t.Errorf("a second Shutdown: %v", err)
	}
}

// An edge's credential is for the id it runs under: the one Configure sets,
// else the one its data dir keeps (so a restarted edge is admitted as
// itself). A Dir the caller gave is left in place.
func TestEdgeCredentialsFollowItsID(t *testing.T) {
	dir := t.TempDir()
	s := ForTest(t, Config{Dir: dir, Name: "x"})
	ctx := context.Background()
	e, err := s.AddEdge(ctx, EdgeOptions{Configure: func(c *edge.Config) { c.ID = "chosen" }})
	if err != nil || e.ID() != "chosen" {
		t.Fatalf("edge with a chosen id: %v, %v", e, err)
	}
	data := t.TempDir()
	first, err := s.AddEdge(ctx, EdgeOptions{DataDir: data})
	if err != nil {
		t.Fatal(err)
	}
	id := first.ID()
	if err := first.Shutdown(ctx); err != nil {
		t.Fatal(err)
	}
	again, err := s.AddEdge(ctx, EdgeOptions{DataDir: data})
	if err != nil {
		t.Fatalf("restarting an edge on its data dir: %v", err)
	}
	if again.ID() != id || id != "x-edge-01" {
		t.Fatalf("ids %q then %q, want x-edge-01 both times", id, again.ID())
	}
	if err := s.Shutdown(ctx); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(filepath.Join(dir, "origin")); err != nil {
		t.Fatalf("Shutdown removed the caller's Dir: %v", err)
	}
}

// On a NATS of the caller's without its keys the origin runs, but no edge
// can be given credentials: AddEdge says so rather than starting one that
// cannot connect.
func TestCallerNATSWithoutKeys(t *testing.T) {
	ns, err := server.NewServer(&server.Options{Host: "127.0.0.1", Port: -1, JetStream: true, StoreDir: t.TempDir(), NoLog: true, NoSigs: true})
	if err != nil {
		t.Fatal(err)
	}
	go ns.Start()
	t.Cleanup(ns.Shutdown)
	if !ns.ReadyForConnections(10 * time.Second) {
		t.Fatal("nats did not start")
	}
	s := ForTest(t, Config{Dir: t.TempDir(), NATSURL: ns.ClientURL()})
	if s.NATSURL() != ns.ClientURL() {
		t.Fatalf("origin on %s, want %s", s.NATSURL(), ns.ClientURL())
	}
	if _, err := s.AddEdge(context.Background(), EdgeOptions{}); !errors.Is(err, ErrNoNATSKeys) {
		t.Fatalf("AddEdge without NATS keys: %v, want ErrNoNATSKeys", err)
	}
}
