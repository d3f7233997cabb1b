package main

import (
	"context"
	"database/sql"
	"fmt"
	"path/filepath"
	"slices"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	_ "modernc.org/sqlite"

	"github.com/keymesh/keymesh/bench"
	"github.com/keymesh/keymesh/event"
	"github.com/keymesh/keymesh/internal/natsauth"
	"github.com/keymesh/keymesh/internal/testutil"
)

// Issue 12.2 with a crash: a real origin process hears an edge, is killed
// (SIGKILL: no final write) and started again on its data dir. The first
// mutation with ?wait waits for that edge and names it pending, instead of
// answering at once that there are no edges.
func TestKilledOriginProcessKeepsItsEdgeRegistry(t *testing.T) {
	dir := t.TempDir()
	p := startOriginProcess(t, dir)
	keys, err := natsauth.Load(dir)
	if err != nil {
		t.Fatal(err)
	}
	tok, seed, err := keys.UserJWT(natsauth.RoleEdge, "edge-1")
	if err != nil {
		t.Fatal(err)
	}
	nc, err := nats.Connect(p.natsURL, nats.UserJWTAndSeed(tok, string(seed)))
	if err != nil {
		t.Fatal(err)
	}
	defer nc.Close()
	hb := []byte(`{"id":"edge-1","site":"eu","address":"127.0.0.1:8080","applied_revision":0}`)
	if err := nc.Publish(event.EdgeSubject(event.EdgeHeartbeatSubject, "edge-1"), hb); err != nil {
		t.Fatal(err)
	}
	nc.Flush()
	db, err := sql.Open("sqlite", "file:"+filepath.Join(dir, "origin.db")+"?mode=ro")
	if err != nil {
		t.Fatal(err)
	}
	defer db.Close()
	testutil.CheckFor(t, 20*time.Second, 50*time.Millisecond, func() error {
		var n int
		if err := db.QueryRow(`SELECT COUNT(*) FROM edges WHERE id = 'edge-1'`).Scan(&n); err != nil || n != 1 {
			return fmt.Errorf("edge row: %d %v", n, err)
		}
		return nil
	})
	nc.Close()
	p.kill(t)

	p2 := startOriginProcess(t, dir)
	api := &bench.OriginClient{BaseURL: p2.base}
	ctx := context.Background()
	if err := api.Login(ctx, "admin", processPassword); err != nil {
		t.Fatal(err)
	}
	var out struct {
		Propagation struct {
			Applied []string `json:"applied"`
			Pending []string `json:"pending"`
		} `json:"propagation"`
	}
	start := time.Now()
	if _, err := api.Do(ctx, "POST", "/v1/projects/default/keys?wait=2s", map[string]any{"name": "k"}, &out); err != nil {
		t.Fatal(err)
	}
	took := time.Since(start)
	if len(out.Propagation.Applied) != 0 || !slices.Equal(out.Propagation.Pending, []string{"edge-1"}) {
		t.Fatalf("propagation after a crash and restart = %+v (took %v), want pending [edge-1]", out.Propagation, took)
	}
	if took < 2*time.Second {
		t.Fatalf("answered after %v, before the wait", took)
	}
}
