package origin

import (
	"bytes"
	"context"
	"crypto/ed25519"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/keymesh/keymesh/api"
	"github.com/keymesh/keymesh/apikey"
	"github.com/keymesh/keymesh/event"
)

// Two origins on one PostgreSQL and one NATS, written to concurrently: the
// revisions they hand out are unique and gap-free, become visible in
// revision order (never a later one before an earlier), every revision is in
// the stream exactly once at sequence == revision, and both answer lookups
// in the queue group.
func TestReplicasShareRevisionsAndLookups(t *testing.T) {
	dsn := postgresDSN(t)
	ns := startExternalNATS(t, t.TempDir(), -1)

	cfgA := testConfig(t.TempDir())
	cfgA.Store, cfgA.NATSURL = dsn, ns.url
	a := startServer(t, cfgA)
	// The replica signs with the same key (edges trust one origin key) and
	// accepts the same admin tokens.
	cfgB := testConfig(t.TempDir())
	cfgB.Store, cfgB.NATSURL = dsn, ns.url
	for _, f := range []string{"signing.key", "jwt.key"} {
		b, err := os.ReadFile(filepath.Join(cfgA.DataDir, f))
		if err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(filepath.Join(cfgB.DataDir, f), b, 0o600); err != nil {
			t.Fatal(err)
		}
	}
	b := startServer(t, cfgB)
	if !bytes.Equal(a.PublicKey(), b.PublicKey()) {
		t.Fatal("replicas sign with different keys")
	}
	ca, cb := newClient(t, a), newClient(t, b)

	const writers, perWriter = 4, 50
	const total = writers * perWriter

	// A watcher checks that the committed events are always exactly the
	// revisions 1..max: no later revision is visible before an earlier one.
	// The writers start after its first check, and it must see some
	// snapshots strictly between none and all written, or it checked
	// nothing that could break the rule.
	stopWatch := make(chan struct{})
	var watchErr atomic.Value
	var watched, midWrite atomic.Int64
	watchDone, watching := make(chan struct{}), make(chan struct{})
	var watchOnce sync.Once
	go func() {
		defer close(watchDone)
		defer watchOnce.Do(func() { close(watching) })
		for {
			select {
			case <-stopWatch:
				return
			default:
			}
			var n, max int64
			if err := b.store.db.QueryRow(`SELECT COUNT(*), COALESCE(MAX(revision), 0) FROM events`).Scan(&n, &max); err != nil {
				watchErr.Store(err)
				return
			}
			if n != max {
				watchErr.Store(fmt.Errorf("%d events visible up to revision %d: a later revision committed before an earlier one", n, max))
				return
			}
			watched.Add(1)
			if max > 0 && max < total {
				midWrite.Add(1)
			}
			watchOnce.Do(func() { close(watching) })
		}
	}()
	<-watching

	type created struct {
		id  string
		rev uint64
		key string
	}
	results := make(chan created, total)
	errs := make(chan error, total)
	var wg sync.WaitGroup
	for w := range writers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := range perWriter {
				c := ca
				if (w+i)%2 == 1 {
					c = cb
				}
				var k keyResp
				if err := postJSON(c, "/v1/projects/default/keys", map[string]any{"name": fmt.Sprintf("w%d-%d", w, i)}, &k, 201); err != nil {
					errs <- err
					return
				}
				results <- created{k.ID, k.Revision, *k.Key}
			}
		}()
	}
	wg.Wait()
	close(stopWatch)
	<-watchDone
	close(results)
	close(errs)
	for err := range errs {
		t.Fatal(err)
	}
	if err, _ := watchErr.Load().(error); err != nil {
		t.Fatal(err)
	}
	t.Logf("watcher checked %d snapshots, %d of them mid-write", watched.Load(), midWrite.Load())
	if midWrite.Load() == 0 {
		t.Fatalf("watcher checked %d snapshots but none while the %d writes were under way: the ordering rule went unchecked", watched.Load(), total)
	}

	byRev := map[uint64]created{}
	for r := range results {
		if prev, dup := byRev[r.rev]; dup {
			t.Fatalf("revision %d given to %s and %s", r.rev, prev.id, r.id)
		}
		byRev[r.rev] = r
	}
	for rev := uint64(1); rev <= total; rev++ {
		if _, ok := byRev[rev]; !ok {
			t.Fatalf("revision %d missing (gap); %d revisions handed out", rev, len(byRev))
		}
	}

	// Both publishers drained the one outbox; the stream has each revision
	// once, at its own sequence, holding the key created at it.
	recs := streamRecords(t, a, total)
	for _, r := range recs {
		if r.Kind != event.KindKey || r.Key.ID != byRev[r.Revision].id {
			t.Fatalf("stream revision %d holds %+v, want key %s", r.Revision, r.Key, byRev[r.Revision].id)
		}
	}
	waitFor(t, "both origins to see everything published", func() bool {
		return a.PublishedRevision() == total && b.PublishedRevision() == total
	})

	// Both origins are in the lookup queue group and both answer.
	nc := connect(t, a)
	v, err := event.NewVerifier(a.PublicKey())
	if err != nil {
		t.Fatal(err)
	}
	const lookups = 60
	n := 0
	for _, c := range byRev {
		if n == lookups {
			break
		}
		n++
		h, err := apikey.ParseString(c.key)
		if err != nil {
			t.Fatal(err)
		}
		m, err := nc.Request(event.LookupKeySubject, h[:], 5*time.Second)
		if err != nil {
			t.Fatal(err)
		}
		r, err := v.Open(m.Data)
		if err != nil {
			t.Fatalf("lookup reply: %v (%s)", err, m.Header.Get(event.ErrorHeader))
		}
		if r.Kind != event.KindKey || r.Key.ID != c.id || r.Revision != total {
			t.Fatalf("lookup of %s: %+v", c.id, r)
		}
	}
	if n != lookups {
		t.Fatalf("looked up %d keys, want %d", n, lookups)
	}
	for name, s := range map[string]*Server{"a": a, "b": b} {
		if d := lookupDelivered(s); d == 0 {
			t.Errorf("origin %s answered no lookups of %d", name, n)
		}
	}
}

// lookupDelivered counts the key lookups s's responder has received.
func lookupDelivered(s *Server) int64 {
	var n int64
	for _, sub := range s.subs {
		if sub.Subject == event.LookupKeySubject {
			d, _ := sub.Delivered()
			n += d
		}
	}
	return n
}

// postJSON posts body with c's token and decodes a want-status reply into
// out; unlike client.do it is safe off the test goroutine.
func postJSON(c *client, path string, body, out any, want int) error {
	raw, err := json.Marshal(body)
	if err != nil {
		return err
	}
	req, err := http.NewRequest("POST", c.base+path, bytes.NewReader(raw))
	if err != nil {
		return err
	}
	req.Header.Set("Authorization", "Bearer "+c.token)
	req.Header.Set("Content-Type", "application/json")
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	if resp.StatusCode != want {
		return fmt.Errorf("POST %s: %d %s", path, resp.StatusCode, b)
	}
	if out != nil {
		return json.Unmarshal(b, out)
	}
	return nil
}

// An origin whose signing.key (or jwt.key) differs from the one the store
// was first used with refuses to start, naming both fingerprints and no
// key: otherwise edges would silently drop everything it signs.
func TestOriginWithAnotherKeyRefusesTheStore(t *testing.T) {
	eachStore(t, func(t *testing.T, cfg Config) {
		if cfg.Store == "" {
			cfg.Store = "sqlite://" + filepath.Join(cfg.DataDir, "origin.db")
		}
		a := startServer(t, cfg)
		aPub := a.PublicKey()

		cfgB := testConfig(t.TempDir())
		cfgB.Store = cfg.Store
		secrets := func() []string {
			var out []string
			for _, dir := range []string{cfg.DataDir, cfgB.DataDir} {
				for _, f := range []string{"signing.key", "jwt.key"} {
					if b, err := os.ReadFile(filepath.Join(dir, f)); err == nil {
						out = append(out, strings.TrimSpace(string(b)))
					}
				}
			}
			return out
		}
		_, err := New(cfgB)
		if !errors.Is(err, ErrKeyMismatch) {
			t.Fatalf("origin with its own signing key: %v", err)
		}
		bPriv, rerr := os.ReadFile(filepath.Join(cfgB.DataDir, "signing.key"))
		if rerr != nil {
			t.Fatal(rerr)
		}
		raw, _ := base64.StdEncoding.DecodeString(strings.TrimSpace(string(bPriv)))
		bPub := ed25519.PrivateKey(raw).Public().(ed25519.PublicKey)
		for _, want := range []string{publicKeyFingerprint(event.EncodePublicKey(aPub)), publicKeyFingerprint(event.EncodePublicKey(bPub)), "signing.key"} {
			if !strings.Contains(err.Error(), want) {
				t.Errorf("error does not name %q: %v", want, err)
			}
		}
		for _, sec := range secrets() {
			if strings.Contains(err.Error(), sec) {
				t.Fatalf("error contains a key: %v", err)
			}
		}

		// Same signing key, another jwt.key: refused too.
		b, rerr := os.ReadFile(filepath.Join(cfg.DataDir, "signing.key"))
		if rerr != nil {
			t.Fatal(rerr)
		}
		if err := os.WriteFile(filepath.Join(cfgB.DataDir, "signing.key"), b, 0o600); err != nil {
			t.Fatal(err)
		}
		_, err = New(cfgB)
		if !errors.Is(err, ErrKeyMismatch) || !strings.Contains(err.Error(), "jwt.key") {
			t.Fatalf("origin with its own jwt.key: %v", err)
		}
		for _, sec := range secrets() {
			if strings.Contains(err.Error(), sec) {
				t.Fatalf("error contains a key: %v", err)
			}
		}

		// With both keys copied it is a replica.
		copyIdentity(t, cfg.DataDir, cfgB.DataDir)
		b2 := startServer(t, cfgB)
		if !b2.PublicKey().Equal(aPub) {
			t.Fatal("replica signs with another key")
		}
		newClient(t, b2).must(201, "POST", "/v1/projects/default/deployments", chatDep, nil)
	})
}

// Origins started at once on one fresh PostgreSQL all come up: schema,
// default project and admin user are created once, and the random admin
// password is left in the data dir of the one origin that created the user.
func TestReplicasStartingAtOnceOnAFreshStore(t *testing.T) {
	for round := range 2 {
		t.Run(fmt.Sprint("round ", round), func(t *testing.T) {
			dsn := postgresDSN(t)
			const n = 3
			cfgs := make([]Config, n)
			for i := range cfgs {
				cfgs[i] = testConfig(t.TempDir())
				cfgs[i].Store, cfgs[i].AdminPassword = dsn, ""
				// Hashing the password between counting the users and
				// creating the admin widens the window they race in.
				cfgs[i].PasswordCost = 7
			}
			if _, err := loadSigningKey(cfgs[0].DataDir); err != nil {
				t.Fatal(err)
			}
			if _, err := loadSecretFile(filepath.Join(cfgs[0].DataDir, "jwt.key"), 32); err != nil {
				t.Fatal(err)
			}
			for i := 1; i < n; i++ {
				copyIdentity(t, cfgs[0].DataDir, cfgs[i].DataDir)
			}
			servers := make([]*Server, n)
			errs := make([]error, n)
			start := make(chan struct{})
			var wg sync.WaitGroup
			for i := range cfgs {
				wg.Add(1)
				go func() {
					defer wg.Done()
					<-start
					servers[i], errs[i] = New(cfgs[i])
					if errs[i] == nil {
						errs[i] = servers[i].Start()
					}
				}()
			}
			close(start)
			wg.Wait()
			for i, s := range servers {
				if s != nil {
					t.Cleanup(func() { _ = s.Shutdown(context.Background()) })
				}
				if errs[i] != nil {
					t.Fatalf("origin %d of %d starting at once: %v", i, n, errs[i])
				}
			}
			var password string
			files := 0
			for _, cfg := range cfgs {
				if b, err := os.ReadFile(filepath.Join(cfg.DataDir, "admin-password")); err == nil {
					files++
					password = strings.TrimSpace(string(b))
				}
			}
			if files != 1 {
				t.Fatalf("%d admin-password files, want the one of the origin that created the user", files)
			}
			for i, s := range servers {
				c := &client{t: t, base: "http://" + s.Addr()}
				c.must(200, "POST", "/v1/auth/login", map[string]string{"username": "admin", "password": password}, nil)
				var ps struct{ Items []api.Project }
				c.token = newClientWith(t, s, password).token
				c.must(200, "GET", "/v1/projects", nil, &ps)
				if len(ps.Items) != 1 || ps.Items[0].Name != "default" {
					t.Fatalf("origin %d: projects %+v", i, ps.Items)
				}
			}
		})
	}
}
