package origin

import (
	"context"
	"crypto/sha256"
	"database/sql"
	"errors"
	"fmt"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/keymesh/keymesh/apikey"
	"github.com/keymesh/keymesh/event"
)

// storeOpener opens a fresh, empty store sealing with signer. The suite
// below runs against every store implementation: SQLite here, PostgreSQL in
// postgres_test.go (TestStorePostgres).
type storeOpener func(t *testing.T, seal func(*event.Record) ([]byte, error)) *Store

func openTestSQLite(t *testing.T, seal func(*event.Record) ([]byte, error)) *Store {
	st, err := openStore("sqlite://"+filepath.Join(t.TempDir(), "o.db"), "")
	if err != nil {
		t.Fatal(err)
	}
	st.seal = seal
	t.Cleanup(func() { st.Close() })
	return st
}

func TestStoreSQLite(t *testing.T) { runStoreSuite(t, openTestSQLite) }

func runStoreSuite(t *testing.T, open storeOpener) {
	priv, err := event.GenerateKey()
	if err != nil {
		t.Fatal(err)
	}
	signer, _ := event.NewSigner(priv)
	verifier, _ := event.NewVerifier(signer.Public())
	ctx := context.Background()

	setup := func(t *testing.T) (*Store, *Project) {
		st := open(t, signer.Seal)
		if err := st.ensureProject(ctx, "default"); err != nil {
			t.Fatal(err)
		}
		if err := st.ensureProject(ctx, "default"); err != nil { // idempotent
			t.Fatal(err)
		}
		p, err := st.project(ctx, "default")
		if err != nil {
			t.Fatal(err)
		}
		return st, p
	}
	newDep := func(p *Project, name string) *event.Deployment {
		d := defaultDeployment()
		d.ID, d.Project, d.Name = newID("dep"), p.ID, name
		d.Upstreams = map[string][]string{"*": {"http://x:1"}}
		return d
	}
	newKey := func(p *Project) (*Key, apikey.Hash) {
		h := apikey.Hash(sha256.Sum256([]byte(newID("s"))))
		return &Key{ID: newID("key"), ProjectID: p.ID, Prefix: "km_test", Permissions: []string{event.PermRunInference}}, h
	}
	events := func(t *testing.T, st *Store) []*event.Record {
		evs, err := st.unpublished(ctx, 1000)
		if err != nil {
			t.Fatal(err)
		}
		var out []*event.Record
		for i, e := range evs {
			r, err := verifier.Open(e.Payload)
			if err != nil {
				t.Fatal(err)
			}
			if r.Revision != uint64(i+1) || e.Revision != r.Revision || e.Subject != event.Subject(r.Kind, r.Revision) {
				t.Fatalf("event %d: revision %d/%d subject %s", i, e.Revision, r.Revision, e.Subject)
			}
			out = append(out, r)
		}
		return out
	}

	t.Run("revisions are gap-free across failed mutations", func(t *testing.T) {
		st, p := setup(t)
		if _, err := st.createDeployment(ctx, newDep(p, "a")); err != nil {
			t.Fatal(err)
		}
		if _, err := st.createDeployment(ctx, newDep(p, "a")); !errors.Is(err, ErrConflict) {
			t.Fatalf("duplicate name: %v", err)
		}
		k, h := newKey(p)
		if _, err := st.createKey(ctx, k, h, []string{"nope"}); !errors.Is(err, ErrInvalid) {
			t.Fatalf("unknown deployment: %v", err)
		}
		if _, err := st.updateKey(ctx, p.ID, "key_missing", nil, nil); !errors.Is(err, ErrNotFound) {
			t.Fatalf("missing key: %v", err)
		}
		k, h = newKey(p)
		if _, err := st.createKey(ctx, k, h, []string{"a"}); err != nil {
			t.Fatal(err)
		}
		if rev, _ := st.revision(ctx, st.db); rev != 2 {
			t.Fatalf("revision %d, want 2", rev)
		}
		recs := events(t, st)
		if len(recs) != 2 || recs[1].Key.ID != k.ID || len(recs[1].Key.Deployments) != 1 {
			t.Fatalf("events %+v", recs)
		}
	})

	t.Run("links, lookups and deletion", func(t *testing.T) {
		st, p := setup(t)
		da, _ := st.createDeployment(ctx, newDep(p, "a"))
		db, _ := st.createDeployment(ctx, newDep(p, "b"))
		k, h := newKey(p)
		if _, err := st.createKey(ctx, k, h, nil); err != nil {
			t.Fatal(err)
		}
		if _, err := st.link(ctx, p.ID, "a", k.ID, true, nil); err != nil {
			t.Fatal(err)
		}
		if _, err := st.link(ctx, p.ID, db.ID, k.ID, true, nil); err != nil {
			t.Fatal(err)
		}
		rev, got, notAfter, err := st.keyByHash(ctx, h)
		if err != nil || got == nil || notAfter != nil || rev != 5 || !slices.Equal(got.Deployments, sortedIDs(da.ID, db.ID)) {
			t.Fatalf("keyByHash: %v %+v rev %d", err, got, rev)
		}
		if _, err := st.deleteDeployment(ctx, p.ID, "a"); err != nil {
			t.Fatal(err)
		}
		if _, got, _, _ = st.keyByHash(ctx, h); !slices.Equal(got.Deployments, []string{db.ID}) {
			t.Fatalf("after deleting a deployment: %+v", got.Deployments)
		}
		if _, err := st.deleteKey(ctx, p.ID, k.ID, nil); err != nil {
			t.Fatal(err)
		}
		if _, got, _, _ = st.keyByHash(ctx, h); got != nil {
			t.Fatal("deleted key still found by hash")
		}
		recs := events(t, st)
		last := recs[len(recs)-1]
		if last.Kind != event.KindKey || !last.Key.Deleted || !last.Key.Secrets[0].Hash.Equal(h) {
			t.Fatalf("delete event %+v", last.Key)
		}
		if d := recs[5].Deployment; d == nil || !d.Deleted || d.ID != da.ID {
			t.Fatalf("deployment delete event %+v", recs[5])
		}
		rev, deps, err := st.snapshot(ctx)
		if err != nil || rev != 7 || len(deps) != 1 || deps[0].ID != db.ID {
			t.Fatalf("snapshot %v %d %+v", err, rev, deps)
		}
	})

	t.Run("rotation ends old secrets", func(t *testing.T) {
		st, p := setup(t)
		k, h1 := newKey(p)
		st.createKey(ctx, k, h1, nil)
		h2 := apikey.Hash(sha256.Sum256([]byte("two")))
		if _, err := st.rotateKey(ctx, p.ID, k.ID, h2, "km_two", time.Hour, nil); err != nil {
			t.Fatal(err)
		}
		_, got, na, _ := st.keyByHash(ctx, h1)
		if got == nil || na == nil || time.Until(*na) < 59*time.Minute || len(got.Secrets) != 2 {
			t.Fatalf("old secret in grace: %+v %v", got, na)
		}
		_, _, na, _ = st.keyByHash(ctx, h2)
		if na != nil {
			t.Fatal("new secret has an end")
		}
	})

	t.Run("outbox marks", func(t *testing.T) {
		st, p := setup(t)
		for _, n := range []string{"a", "b", "c"} {
			st.createDeployment(ctx, newDep(p, n))
		}
		if r, _ := st.publishedRevision(ctx); r != 0 {
			t.Fatalf("published %d", r)
		}
		st.markPublished(ctx, 1)
		st.markPublished(ctx, 2)
		if r, _ := st.publishedRevision(ctx); r != 2 {
			t.Fatalf("published %d", r)
		}
		st.markPublished(ctx, 3)
		if r, _ := st.publishedRevision(ctx); r != 3 {
			t.Fatalf("published %d", r)
		}
		st.markUnpublishedAfter(ctx, 1)
		if evs, _ := st.unpublished(ctx, 10); len(evs) != 2 || evs[0].Revision != 2 {
			t.Fatalf("requeued %+v", evs)
		}
	})

	t.Run("outbox pruning deletes old published events only", func(t *testing.T) {
		st, p := setup(t)
		for _, n := range []string{"a", "b", "c", "d", "e"} {
			if _, err := st.createDeployment(ctx, newDep(p, n)); err != nil {
				t.Fatal(err)
			}
		}
		if err := st.markPublishedRange(ctx, 1, 3); err != nil {
			t.Fatal(err)
		}
		if n, err := st.pruneEvents(ctx, time.Now().Add(-time.Hour), 10); err != nil || n != 0 {
			t.Fatalf("pruned %d events younger than the cutoff (%v)", n, err)
		}
		later := time.Now().Add(time.Hour)
		if n, err := st.pruneEvents(ctx, later, 2); err != nil || n != 2 {
			t.Fatalf("first chunk pruned %d (%v), want 2", n, err)
		}
		if n, err := st.pruneEvents(ctx, later, 2); err != nil || n != 1 {
			t.Fatalf("second chunk pruned %d (%v), want 1", n, err)
		}
		if n, err := st.pruneEvents(ctx, later, 2); err != nil || n != 0 {
			t.Fatalf("pruned %d unpublished events (%v)", n, err)
		}
		if first, err := st.firstEventRevision(ctx); err != nil || first != 4 {
			t.Fatalf("first event %d (%v), want 4", first, err)
		}
		if evs, _ := st.unpublished(ctx, 10); len(evs) != 2 || evs[0].Revision != 4 {
			t.Fatalf("unpublished after pruning: %+v", evs)
		}
		if r, _ := st.publishedRevision(ctx); r != 3 {
			t.Fatalf("published revision %d, want 3", r)
		}
		// Revisions go on from the counter, not from the events left.
		if d, err := st.createDeployment(ctx, newDep(p, "f")); err != nil || d.Revision != 6 {
			t.Fatalf("after pruning: %v %+v", err, d)
		}
	})

	t.Run("concurrent writers get gap-free revisions in commit order", func(t *testing.T) {
		st, p := setup(t)
		stop, watch := make(chan struct{}), make(chan error, 1)
		go func() { watch <- watchRevisionPrefix(st, stop) }()
		const writers, each = 6, 20
		errs := make(chan error, writers)
		for range writers {
			go func() {
				for range each {
					k, h := newKey(p)
					if _, err := st.createKey(ctx, k, h, nil); err != nil {
						errs <- err
						return
					}
				}
				errs <- nil
			}()
		}
		for range writers {
			if err := <-errs; err != nil {
				t.Fatal(err)
			}
		}
		close(stop)
		if err := <-watch; err != nil {
			t.Fatal(err)
		}
		if recs := events(t, st); len(recs) != writers*each { // checks 1..n in order
			t.Fatalf("%d events", len(recs))
		}
	})

	t.Run("keys page bytewise by id", func(t *testing.T) {
		st, p := setup(t)
		ids := []string{"key_a", "key_B", "key-c", "key_C", "key_0", "key__"}
		for _, id := range ids {
			k, h := newKey(p)
			k.ID = id
			if _, err := st.createKey(ctx, k, h, nil); err != nil {
				t.Fatal(err)
			}
		}
		slices.Sort(ids) // Go sorts strings bytewise
		var got []string
		after := ""
		for {
			page, more, err := st.listKeys(ctx, p.ID, after, 2)
			if err != nil {
				t.Fatal(err)
			}
			for _, k := range page {
				got = append(got, k.ID)
			}
			if !more {
				break
			}
			after = page[len(page)-1].ID
		}
		if !slices.Equal(got, ids) {
			t.Fatalf("paged %v, want %v", got, ids)
		}
	})

	t.Run("creating a user twice creates it once", func(t *testing.T) {
		st, _ := setup(t)
		created, err := st.createUser(ctx, "admin", "hash-1")
		if err != nil || !created {
			t.Fatalf("first: %v %v", created, err)
		}
		// A second origin starting at once on this store does the same.
		if created, err = st.createUser(ctx, "admin", "hash-2"); err != nil || created {
			t.Fatalf("second: created %v, err %v", created, err)
		}
		if _, hash, err := st.userLogin(ctx, "admin"); err != nil || hash != "hash-1" {
			t.Fatalf("stored hash %q %v", hash, err)
		}
	})

	t.Run("metadata: the first value stays", func(t *testing.T) {
		st, _ := setup(t)
		if v, err := st.claimMetadata(ctx, "k", "one"); err != nil || v != "one" {
			t.Fatalf("first claim: %q %v", v, err)
		}
		if v, err := st.claimMetadata(ctx, "k", "two"); err != nil || v != "one" {
			t.Fatalf("second claim: %q %v", v, err)
		}
	})

	t.Run("only hashes stored", func(t *testing.T) {
		st, p := setup(t)
		k, h := newKey(p)
		st.createKey(ctx, k, h, nil)
		var n int
		if err := st.db.QueryRowContext(ctx, st.q(`SELECT COUNT(*) FROM key_secrets WHERE hash = ?`), h[:]).Scan(&n); err != nil || n != 1 {
			t.Fatalf("hash row: %v %d", err, n)
		}
		var blob []byte
		if err := st.db.QueryRowContext(ctx, st.q(`SELECT hash FROM key_secrets`)).Scan(&blob); err != nil && !errors.Is(err, sql.ErrNoRows) {
			t.Fatal(err)
		}
		if len(blob) != 32 {
			t.Fatalf("stored hash is %d bytes", len(blob))
		}
	})

	t.Run("model allow-lists and concurrency caps persist and reach the events", func(t *testing.T) {
		st, p := setup(t)
		d := newDep(p, "chat")
		d.Models, d.MaxConcurrency = []string{"meta-llama/*"}, 8
		if _, err := st.createDeployment(ctx, d); err != nil {
			t.Fatal(err)
		}
		k, h := newKey(p)
		k.Name, k.Models, k.MaxConcurrency = "ci", []string{"meta-llama/*", "mock-model"}, 2
		if _, err := st.createKey(ctx, k, h, []string{"chat"}); err != nil {
			t.Fatal(err)
		}
		gotD, err := st.getDeployment(ctx, p.ID, "chat")
		if err != nil || strings.Join(gotD.Models, ",") != "meta-llama/*" || gotD.MaxConcurrency != 8 {
			t.Fatalf("deployment read back %+v %v", gotD, err)
		}
		gotK, err := st.getKey(ctx, p.ID, k.ID)
		if err != nil || strings.Join(gotK.Models, ",") != "meta-llama/*,mock-model" || gotK.MaxConcurrency != 2 {
			t.Fatalf("key read back %+v %v", gotK, err)
		}
		if _, byHash, _, err := st.keyByHash(ctx, h); err != nil || byHash.MaxConcurrency != 2 || len(byHash.Models) != 2 {
			t.Fatalf("key by hash %+v %v", byHash, err)
		}
		// Cleared: any model, no cap, stored as NULL.
		if _, err := st.updateKey(ctx, p.ID, k.ID, func(k *Key) error { k.Models, k.MaxConcurrency = nil, 0; return nil }, nil); err != nil {
			t.Fatal(err)
		}
		if _, err := st.updateDeployment(ctx, p.ID, "chat", func(d *event.Deployment) error { d.Models, d.MaxConcurrency = nil, 0; return nil }); err != nil {
			t.Fatal(err)
		}
		var models sql.NullString
		var conc sql.NullInt64
		if err := st.db.QueryRowContext(ctx, st.q(`SELECT models, max_concurrency FROM keys WHERE id = ?`), k.ID).Scan(&models, &conc); err != nil || models.Valid || conc.Valid {
			t.Fatalf("cleared key columns %v %v %v", models, conc, err)
		}
		recs := events(t, st)
		if len(recs) != 4 {
			t.Fatalf("%d events", len(recs))
		}
		if dd := recs[0].Deployment; strings.Join(dd.Models, ",") != "meta-llama/*" || dd.MaxConcurrency != 8 {
			t.Fatalf("deployment event %+v", dd)
		}
		if ek := recs[1].Key; ek.Name != "ci" || len(ek.Models) != 2 || ek.MaxConcurrency != 2 {
			t.Fatalf("key event %+v", ek)
		}
		if ek := recs[2].Key; ek.Models != nil || ek.MaxConcurrency != 0 {
			t.Fatalf("cleared key event %+v", ek)
		}
		if dd := recs[3].Deployment; dd.Models != nil || dd.MaxConcurrency != 0 {
			t.Fatalf("cleared deployment event %+v", dd)
		}
	})

	t.Run("token limits persist and reach the events; a project's re-send its deployments", func(t *testing.T) {
		st, p := setup(t)
		d := newDep(p, "chat")
		d.Tokens = &event.TokenLimits{TokensPerMinute: 100, Quota: &event.Quota{Tokens: 5000, Refill: event.QuotaRefillDaily}}
		d.DefaultMaxTokens = 256
		if _, err := st.createDeployment(ctx, d); err != nil {
			t.Fatal(err)
		}
		k, h := newKey(p)
		k.Tokens = &event.TokenLimits{TokensPerDay: 9, Quota: &event.Quota{Requests: 3}}
		if _, err := st.createKey(ctx, k, h, []string{"chat"}); err != nil {
			t.Fatal(err)
		}
		gotD, err := st.getDeployment(ctx, p.ID, "chat")
		if err != nil || !tokensEqual(gotD.Tokens, d.Tokens) || gotD.DefaultMaxTokens != 256 || gotD.ProjectTokens != nil {
			t.Fatalf("deployment read back %+v %v", gotD, err)
		}
		if _, byHash, _, err := st.keyByHash(ctx, h); err != nil || !tokensEqual(byHash.Tokens, k.Tokens) {
			t.Fatalf("key by hash %+v %v", byHash, err)
		}
		var ch tokensChange
		ch.perMinuteSet, ch.perMinute = true, 7
		r, rev, err := st.setRules(ctx, p.ID, rulesChange{tokens: ch})
		if err != nil || r.Tokens == nil || r.Tokens.TokensPerMinute != 7 || rev != 3 {
			t.Fatalf("setRules: %+v rev %d %v", r, rev, err)
		}
		// Cleared: stored as NULL.
		if _, err := st.updateKey(ctx, p.ID, k.ID, func(k *Key) error { k.Tokens = nil; return nil }, nil); err != nil {
			t.Fatal(err)
		}
		var col sql.NullString
		if err := st.db.QueryRowContext(ctx, st.q(`SELECT tokens FROM keys WHERE id = ?`), k.ID).Scan(&col); err != nil || col.Valid {
			t.Fatalf("cleared key column %v %v", col, err)
		}
		recs := events(t, st)
		if len(recs) != 4 {
			t.Fatalf("%d events", len(recs))
		}
		if dd := recs[0].Deployment; !tokensEqual(dd.Tokens, d.Tokens) || dd.DefaultMaxTokens != 256 || dd.ProjectTokens != nil {
			t.Fatalf("deployment event %+v", dd)
		}
		if ek := recs[1].Key; !tokensEqual(ek.Tokens, k.Tokens) {
			t.Fatalf("key event %+v", ek.Tokens)
		}
		if dd := recs[2].Deployment; dd == nil || dd.ID != d.ID || dd.Revision != 3 || !tokensEqual(dd.Tokens, d.Tokens) ||
			!tokensEqual(dd.ProjectTokens, &event.TokenLimits{TokensPerMinute: 7}) {
			t.Fatalf("re-sent deployment event %+v", dd)
		}
		if ek := recs[3].Key; ek.Tokens != nil {
			t.Fatalf("cleared key event %+v", ek.Tokens)
		}

		// A deployment stored before events were bounded, too large for an
		// event: the project's bounds cannot be re-sent with it, so the
		// change is refused whole — no revision, no bound, no event.
		big := newDep(p, "big")
		if _, err := st.createDeployment(ctx, big); err != nil {
			t.Fatal(err)
		}
		ups := fmt.Sprintf(`{"*":["http://x:1/%s"]}`, strings.Repeat("p", MaxEventBytes))
		if _, err := st.db.ExecContext(ctx, st.q(`UPDATE deployments SET upstreams = ? WHERE id = ?`), ups, big.ID); err != nil {
			t.Fatal(err)
		}
		revBefore, _ := st.revision(ctx, st.db)
		ch.perMinute = 8
		if _, _, err := st.setRules(ctx, p.ID, rulesChange{tokens: ch}); !errors.Is(err, ErrTooLarge) {
			t.Fatalf("re-sending an oversized deployment: %v", err)
		}
		if rev, _ := st.revision(ctx, st.db); rev != revBefore {
			t.Fatalf("a refused change took revisions: %d → %d", revBefore, rev)
		}
		if r, err := st.rules(ctx, p.ID); err != nil || r.Tokens == nil || r.Tokens.TokensPerMinute != 7 {
			t.Fatalf("a refused change was stored: %+v %v", r, err)
		}
		if n := len(events(t, st)); n != 5 {
			t.Fatalf("%d events after the refused change, want 5", n)
		}
	})
}

// watchRevisionPrefix checks, until stop closes, that the committed events
// are always exactly revisions 1..max: a later revision never becomes
// visible before an earlier one (what the publisher relies on).
func watchRevisionPrefix(st *Store, stop <-chan struct{}) error {
	for {
		select {
		case <-stop:
			return nil
		default:
		}
		var n, max int64
		if err := st.db.QueryRow(`SELECT COUNT(*), COALESCE(MAX(revision), 0) FROM events`).Scan(&n, &max); err != nil {
			return err
		}
		if n != max {
			return fmt.Errorf("%d events visible up to revision %d: a later revision committed before an earlier one", n, max)
		}
	}
}

func sortedIDs(ids ...string) []string {
	slices.Sort(ids)
	return ids
}

func TestRebindForPostgres(t *testing.T) {
	st := &Store{dialect: dialectPostgres}
	if got := st.q(`SELECT a FROM t WHERE x = ? AND y = ?`); got != `SELECT a FROM t WHERE x = $1 AND y = $2` {
		t.Fatal(got)
	}
}

// A committed change must survive a power loss: WAL with synchronous=FULL
// (NORMAL may lose the last commits in WAL mode), on every pooled
// connection.
func TestSQLiteDurablePragmas(t *testing.T) {
	st := openTestSQLite(t, nil)
	ctx := context.Background()
	conns := make([]*sql.Conn, 3) // hold several so each is a distinct connection
	for i := range conns {
		c, err := st.db.Conn(ctx)
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
		conns[i] = c
	}
	for i, c := range conns {
		var sync int
		var journal string
		if err := c.QueryRowContext(ctx, `PRAGMA synchronous`).Scan(&sync); err != nil {
			t.Fatal(err)
		}
		if err := c.QueryRowContext(ctx, `PRAGMA journal_mode`).Scan(&journal); err != nil {
			t.Fatal(err)
		}
		if sync != 2 || journal != "wal" {
			t.Fatalf("connection %d: synchronous=%d journal_mode=%s, want 2 (FULL) and wal", i, sync, journal)
		}
	}
}
