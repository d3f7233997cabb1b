package origin

import (
	"context"
	"fmt"
	"log/slog"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/nats-io/nats-server/v2/server"
	"github.com/nats-io/nats.go"

	"github.com/keymesh/keymesh/cache"
	"github.com/keymesh/keymesh/edge/feed"
	"github.com/keymesh/keymesh/event"
	"github.com/keymesh/keymesh/internal/testutil"
)

// seedProject writes deps deployments and keys keys (each with one secret,
// linked to one deployment) into project "default" in one transaction,
// straight through the store's tables: a fast path for scale tests, not a
// mutation (no events, no revisions).
func seedProject(t *testing.T, s *Server, deps, keys int) {
	t.Helper()
	ctx := context.Background()
	p, err := s.store.project(ctx, "default")
	if err != nil {
		t.Fatal(err)
	}
	unlock := s.store.lockWrites()
	defer unlock()
	tx, err := s.store.db.BeginTx(ctx, nil)
	if err != nil {
		t.Fatal(err)
	}
	defer tx.Rollback()
	now := ts(time.Now())
	insDep, err := tx.PrepareContext(ctx, s.store.q(`INSERT INTO deployments (`+deploymentColumns+`, created_at, updated_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)`))
	if err != nil {
		t.Fatal(err)
	}
	for i := range deps {
		hosts := fmt.Sprintf(`["model-%05d.inference.example.com","m%05d.eu.inference.example.com"]`, i, i)
		ups := fmt.Sprintf(`{"*":["http://10.0.%d.%d:8000","http://10.1.%d.%d:8000"],"eu":["http://10.2.%d.%d:8000"]}`,
			i/256, i%256, i/256, i%256, i/256, i%256)
		if _, err := insDep.ExecContext(ctx, fmt.Sprintf("dep_seed%06d", i), p.ID, fmt.Sprintf("model-%05d", i), hosts, "/v1",
			ups, 1, 401, nil, `{"requests_per_minute":600}`, 1<<20, 100000, 1, nil, nil, nil, nil, 0, nil, now, now); err != nil {
			t.Fatal(err)
		}
	}
	// The keys in three statements, generated inside SQLite (110,000
	// round trips through the driver take minutes under -race).
	for _, q := range []string{
		`INSERT INTO keys (` + keyColumns + `) SELECT printf('key_seed%07d', x), ?, printf('key_seed%07d', x), '', 'km_seed',
			'["run_inference"]', NULL, NULL, 0, ?, ?, 1, NULL, NULL, NULL FROM seq`,
		`INSERT INTO key_secrets (hash, key_id, not_after) SELECT randomblob(32), printf('key_seed%07d', x), NULL FROM seq`,
		`INSERT INTO links (key_id, deployment_id) SELECT printf('key_seed%07d', x), printf('dep_seed%06d', x % ?) FROM seq`,
	} {
		args := []any{p.ID, now, now}
		if strings.HasPrefix(q, "INSERT INTO key_secrets") {
			args = nil
		} else if strings.HasPrefix(q, "INSERT INTO links") {
			args = []any{max(deps, 1)}
		}
		seq := fmt.Sprintf(`WITH RECURSIVE seq(x) AS (SELECT 0 UNION ALL SELECT x + 1 FROM seq WHERE x + 1 < %d) `, keys)
		if _, err := tx.ExecContext(ctx, seq+q, args...); err != nil {
			t.Fatal(err)
		}
	}
	if err := tx.Commit(); err != nil {
		t.Fatal(err)
	}
}

// A project of 10,000 deployments and 100,000 keys: its snapshot is far
// over NATS's default max_payload (1 MiB), so as one message it cannot be
// sent at all; chunked, each chunk is well under it, and an edge syncs
// every deployment on a NATS server with default limits (issue 11.4).
func TestSnapshotOfTenThousandDeployments(t *testing.T) {
	if testing.Short() {
		t.Skip("seeds 110,000 rows")
	}
	ns, err := server.NewServer(&server.Options{Host: "127.0.0.1", Port: -1, JetStream: true, StoreDir: t.TempDir(), NoLog: true, NoSigs: true})
	if err != nil {
		t.Fatal(err)
	}
	go ns.Start()
	if !ns.ReadyForConnections(10 * time.Second) {
		t.Fatal("nats did not start")
	}
	t.Cleanup(ns.Shutdown)
	cfg := testConfig(t.TempDir())
	cfg.NATSURL = ns.ClientURL()
	s := startServer(t, cfg)
	const deps, keys = 10_000, 100_000
	start := time.Now()
	seedProject(t, s, deps, keys)
	t.Logf("seeded %d deployments and %d keys in %v", deps, keys, time.Since(start).Round(time.Millisecond))

	nc, err := nats.Connect(ns.ClientURL())
	if err != nil {
		t.Fatal(err)
	}
	defer nc.Close()
	if mp := nc.MaxPayload(); mp != 1<<20 {
		t.Fatalf("max_payload %d, want the default 1 MiB", mp)
	}

	// As one message (what an old edge asks for), the answer cannot be sent.
	if _, err := nc.Request(event.SnapshotSubject, nil, 5*time.Second); err == nil {
		t.Fatal("a one-message snapshot of 10,000 deployments was sent")
	}

	// Every chunk is signed, bounded, and of one answer at one revision.
	_, list, err := s.store.snapshot(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	chunks, err := sealChunks(s.signer, s.Revision(), time.Now(), list, snapshotChunkBytes)
	if err != nil {
		t.Fatal(err)
	}
	total := 0
	for _, c := range chunks {
		if len(c) > snapshotChunkBytes+4096 {
			t.Fatalf("chunk of %d bytes, over the bound %d", len(c), snapshotChunkBytes)
		}
		total += len(c)
	}
	if len(chunks) < 2 {
		t.Fatalf("%d deployments sealed into %d chunks: the bound went unchecked", len(list), len(chunks))
	}
	t.Logf("snapshot: %d deployments, %d chunks, %d bytes", len(list), len(chunks), total)

	ver, err := event.NewVerifier(s.PublicKey())
	if err != nil {
		t.Fatal(err)
	}
	v, err := cache.New(cache.Config{Verifier: ver, Lookup: feed.NATSLookup(nc), MaxKeys: 1000,
		LookupTimeout: 2 * time.Second, MaxLookups: 16, MaxStaleness: 10 * time.Second})
	if err != nil {
		t.Fatal(err)
	}
	defer v.Close()
	logs := &testutil.Buffer{}
	f, err := feed.New(v, feed.Config{Conn: nc, RequestTimeout: 60 * time.Second,
		Logger: slog.New(slog.NewTextHandler(logs, nil))})
	if err != nil {
		t.Fatal(err)
	}
	start = time.Now()
	if err := f.Start(); err != nil {
		t.Fatal(err)
	}
	defer func() { _ = f.Shutdown(context.Background()) }()
	select {
	case <-f.Synced():
	case <-time.After(120 * time.Second):
		t.Fatalf("edge did not sync:\n%s", logs.String())
	}
	took := time.Since(start)
	if n := len(v.Deployments().List()); n != deps {
		t.Fatalf("edge holds %d deployments, want %d", n, deps)
	}
	line := regexp.MustCompile(`synchronised from snapshot.*`).FindString(logs.String())
	t.Logf("edge synced in %v: %s", took.Round(time.Millisecond), line)
}
