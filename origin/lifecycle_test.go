package origin

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net/http"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/keymesh/keymesh/internal/testutil"
)

// Cursor pagination stays correct while keys are added and deleted between
// pages: every key present throughout is listed exactly once, none twice,
// and a key deleted before its page came is not listed.
func TestPaginationWhileKeysChange(t *testing.T) {
	eachStore(t, func(t *testing.T, cfg Config) {
		s := startServer(t, cfg)
		c := newClient(t, s)
		create := func(name string) string {
			var k keyResp
			c.must(201, "POST", "/v1/projects/default/keys", map[string]any{"name": name}, &k)
			return k.ID
		}
		var initial []string
		for i := range 12 {
			initial = append(initial, create(fmt.Sprint("k", i)))
		}
		slices.Sort(initial)
		deleted := map[string]bool{}
		del := func(id string) {
			c.must(http.StatusNoContent, "DELETE", "/v1/projects/default/keys/"+id, nil, nil)
			deleted[id] = true
		}
		var added []string
		seen := map[string]int{}
		var order []string
		cursor := ""
		for page := 0; ; page++ {
			var pg struct {
				Items      []keyResp
				NextCursor *string `json:"next_cursor"`
			}
			path := "/v1/projects/default/keys?limit=3"
			if cursor != "" {
				path += "&cursor=" + cursor
			}
			c.must(200, "GET", path, nil, &pg)
			for _, k := range pg.Items {
				seen[k.ID]++
				order = append(order, k.ID)
				if deleted[k.ID] {
					t.Fatalf("page %d lists %s, deleted before it was asked for", page, k.ID)
				}
			}
			if pg.NextCursor == nil {
				break
			}
			cursor = *pg.NextCursor
			switch page {
			case 0: // one already listed, one still to come; two new ones
				del(pg.Items[0].ID)
				del(initial[7])
				added = append(added, create("new-a"), create("new-b"))
			case 1: // the key the cursor points at, and one further on
				del(pg.Items[len(pg.Items)-1].ID)
				del(initial[10])
				added = append(added, create("new-c"))
			}
			if page > 20 {
				t.Fatal("pagination does not end")
			}
		}
		for id, n := range seen {
			if n != 1 {
				t.Errorf("%s listed %d times", id, n)
			}
		}
		for _, id := range initial {
			throughout := !deleted[id]
			if throughout && seen[id] != 1 {
				t.Errorf("%s, present throughout, listed %d times", id, seen[id])
			}
		}
		if !slices.IsSorted(order) {
			t.Errorf("pages not in id order: %v", order)
		}
		newListed := 0
		for _, id := range added {
			newListed += seen[id]
		}
		t.Logf("listed %d keys; of %d added during the listing, %d", len(order), len(added), newListed)
	})
}

// Links set from the key's side (PATCH deployments) are the same links as
// PUT/DELETE on the deployment's side make, and PATCH without deployments
// leaves them.
func TestPatchKeyDeploymentsLinks(t *testing.T) {
	eachStore(t, func(t *testing.T, cfg Config) {
		s := startServer(t, cfg)
		c := newClient(t, s)
		var chat, embed depResp
		c.must(201, "POST", "/v1/projects/default/deployments", chatDep, &chat)
		c.must(201, "POST", "/v1/projects/default/deployments", map[string]any{"name": "embed", "upstreams": map[string][]string{"*": {"http://x:1"}}}, &embed)
		var k keyResp
		c.must(201, "POST", "/v1/projects/default/keys", map[string]any{"name": "k"}, &k)
		keyPath := "/v1/projects/default/keys/" + k.ID
		linked := func(dep string) []string {
			var page struct{ Items []keyResp }
			c.must(200, "GET", "/v1/projects/default/deployments/"+dep+"/keys", nil, &page)
			var ids []string
			for _, it := range page.Items {
				ids = append(ids, it.ID)
			}
			return ids
		}

		var got keyResp
		c.must(200, "PATCH", keyPath, map[string]any{"deployments": []string{"chat", embed.ID}}, &got) // by name and by id
		if !slices.Equal(got.Deployments, sortedIDs(chat.ID, embed.ID)) || !slices.Equal(linked("chat"), []string{k.ID}) ||
			!slices.Equal(linked("embed"), []string{k.ID}) {
			t.Fatalf("linked from the key side: %v; chat has %v, embed %v", got.Deployments, linked("chat"), linked("embed"))
		}
		c.must(200, "PATCH", keyPath, map[string]any{"name": "renamed"}, &got)
		if len(got.Deployments) != 2 {
			t.Fatalf("PATCH without deployments changed the links: %v", got.Deployments)
		}
		c.must(200, "PATCH", keyPath, map[string]any{"deployments": []string{"embed"}}, &got)
		if !slices.Equal(got.Deployments, []string{embed.ID}) || len(linked("chat")) != 0 {
			t.Fatalf("after replacing the links: %v; chat has %v", got.Deployments, linked("chat"))
		}
		// The deployment's side sees and changes the same links.
		c.must(200, "PUT", "/v1/projects/default/deployments/chat/keys/"+k.ID, nil, &got)
		if len(got.Deployments) != 2 {
			t.Fatalf("after PUT: %v", got.Deployments)
		}
		c.must(200, "PATCH", keyPath, map[string]any{"deployments": []string{}}, &got)
		if len(got.Deployments) != 0 || len(linked("chat")) != 0 || len(linked("embed")) != 0 {
			t.Fatalf("after unlinking all: %v", got.Deployments)
		}
		// Every change is an event with the key's links at that revision.
		recs := streamRecords(t, s, got.Revision)
		want := [][]string{sortedIDs(chat.ID, embed.ID), sortedIDs(chat.ID, embed.ID), {embed.ID}, sortedIDs(chat.ID, embed.ID), {}}
		for i, r := range recs[3:] {
			if r.Key == nil || r.Key.ID != k.ID || !slices.Equal(r.Key.Deployments, want[i]) {
				t.Fatalf("event %d: %+v, want deployments %v", r.Revision, r.Key, want[i])
			}
		}
	})
}

// An admin token is refused once it expires (and accepted until then);
// the same clock expires project keys on the admin API.
func TestExpiredCredentialsRefused(t *testing.T) {
	clk := &fakeClock{t: time.Now()}
	cfg := testConfig(t.TempDir())
	cfg.TokenTTL = time.Hour
	cfg.now = clk.now
	s := startServer(t, cfg)
	c := newClient(t, s)
	var k keyResp
	c.must(201, "POST", "/v1/projects/default/keys", map[string]any{"permissions": []string{"write_config"}, "expires_in_days": 1}, &k)
	kc := keyClient(t, s, *k.Key)

	clk.add(59 * time.Minute)
	c.must(200, "GET", "/v1/projects", nil, nil)
	clk.add(2 * time.Minute) // past the expiry and its 5 s leeway
	st, b, h := c.doH("GET", "/v1/projects", nil, nil)
	wantError(t, "expired token", st, b, http.StatusUnauthorized, "AUTHENTICATION_FAILED")
	if h.Get("WWW-Authenticate") != "Bearer" {
		t.Fatalf("WWW-Authenticate %q", h.Get("WWW-Authenticate"))
	}
	c = newClient(t, s) // a new login works
	kc.must(200, "GET", "/v1/projects/default/keys", nil, nil)

	clk.add(24 * time.Hour)
	st, b = kc.do("GET", "/v1/projects/default/keys", nil)
	wantError(t, "expired key", st, b, http.StatusUnauthorized, "AUTHENTICATION_FAILED")
}

// expires_at takes an RFC 3339 time with any offset and answers it in UTC;
// description is stored and answered as given.
func TestExpiryOffsetAndDescription(t *testing.T) {
	eachStore(t, func(t *testing.T, cfg Config) {
		s := startServer(t, cfg)
		c := newClient(t, s)
		desc := "nightly CI — ünïcode, \"quotes\" and\nnewlines"
		st, b := c.do("POST", "/v1/projects/default/keys", map[string]any{"description": desc, "expires_at": "2099-06-01T12:00:00+02:00"})
		if st != 201 {
			t.Fatalf("create: %d %s", st, b)
		}
		var k struct {
			ID          string
			Description string
			ExpiresAt   *time.Time `json:"expires_at"`
		}
		mustJSON(t, b, &k)
		want := time.Date(2099, 6, 1, 10, 0, 0, 0, time.UTC)
		if k.ExpiresAt == nil || !k.ExpiresAt.Equal(want) || !bytes.Contains(b, []byte(`"expires_at":"2099-06-01T10:00:00Z"`)) {
			t.Fatalf("expires_at with +02:00: %s", b)
		}
		if k.Description != desc {
			t.Fatalf("description %q, want %q", k.Description, desc)
		}
		keyPath := "/v1/projects/default/keys/" + k.ID
		c.must(200, "GET", keyPath, nil, &k)
		if k.Description != desc || !k.ExpiresAt.Equal(want) {
			t.Fatalf("GET: %+v", k)
		}
		c.must(200, "PATCH", keyPath, map[string]any{"expires_at": "2099-06-01T00:00:00.5-05:30"}, &k)
		if !k.ExpiresAt.Equal(time.Date(2099, 6, 1, 5, 30, 0, 5e8, time.UTC)) || k.Description != desc {
			t.Fatalf("PATCH expires_at with -05:30: %+v", k)
		}
		var list struct {
			Items []struct{ ID, Description string }
		}
		c.must(200, "GET", "/v1/projects/default/keys", nil, &list)
		if len(list.Items) != 1 || list.Items[0].Description != desc {
			t.Fatalf("list: %+v", list.Items)
		}
		c.must(200, "PATCH", keyPath, map[string]any{"description": ""}, &k)
		if k.Description != "" {
			t.Fatalf("description not cleared: %q", k.Description)
		}
		st, b = c.do("PATCH", keyPath, map[string]any{"description": strings.Repeat("d", 2001)})
		wantError(t, "2001-character description", st, b, 400, "VALIDATION_ERROR")
	})
}

// The random first admin password goes to its file only: the log names the
// file, never the password, on the first start and after.
func TestRandomAdminPasswordNeverLogged(t *testing.T) {
	dir := t.TempDir()
	var logs testutil.Buffer
	cfg := testConfig(dir)
	cfg.AdminPassword = ""
	cfg.Logger = slog.New(slog.NewTextHandler(&logs, &slog.HandlerOptions{Level: slog.LevelDebug}))
	s := startServer(t, cfg)
	b, err := os.ReadFile(filepath.Join(dir, "admin-password"))
	if err != nil {
		t.Fatal(err)
	}
	pw := strings.TrimSpace(string(b))
	c := newClientWith(t, s, pw)
	c.must(201, "POST", "/v1/projects/default/keys", map[string]any{}, nil)
	(&client{t: t, base: c.base}).do("POST", "/v1/auth/login", map[string]string{"username": "admin", "password": pw + "x"})
	if err := s.Shutdown(t.Context()); err != nil {
		t.Fatal(err)
	}
	s = startServer(t, cfg) // a restart neither rewrites nor logs it
	newClientWith(t, s, pw)
	if !bytes.Contains(logs.Bytes(), []byte(filepath.Join(dir, "admin-password"))) {
		t.Fatalf("the log does not say where the password is:\n%s", logs.Bytes())
	}
	if len(pw) < 16 || bytes.Contains(logs.Bytes(), []byte(pw)) {
		t.Fatalf("the log contains the admin password:\n%s", logs.Bytes())
	}
}

// New builds without serving: the listener is bound (Addr is known) but no
// request is answered until Start, which serves once. An origin never
// started is released by Shutdown (its data dir takes another origin), and
// Start after Shutdown is refused.
func TestNewBuildsStartServes(t *testing.T) {
	dir := t.TempDir()
	s, err := New(testConfig(dir))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = s.Shutdown(context.Background()) })
	quick := &http.Client{Timeout: 300 * time.Millisecond}
	if resp, err := quick.Get("http://" + s.Addr() + "/health"); err == nil {
		resp.Body.Close()
		t.Fatalf("answered before Start: %s", resp.Status)
	}
	if err := s.Start(); err != nil {
		t.Fatal(err)
	}
	resp, err := (&http.Client{Timeout: 10 * time.Second}).Get("http://" + s.Addr() + "/health")
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		t.Fatalf("health after Start: %s", resp.Status)
	}
	if err := s.Start(); err == nil {
		t.Fatal("second Start accepted")
	}
	if err := s.Shutdown(context.Background()); err != nil {
		t.Fatal(err)
	}

	built, err := New(testConfig(dir))
	if err != nil {
		t.Fatalf("New after Shutdown: %v", err)
	}
	if err := built.Shutdown(context.Background()); err != nil {
		t.Fatalf("Shutdown of an origin never started: %v", err)
	}
	if err := built.Start(); !errors.Is(err, ErrClosed) {
		t.Fatalf("Start after Shutdown: %v, want ErrClosed", err)
	}
	again, err := New(testConfig(dir))
	if err != nil {
		t.Fatalf("New after an origin never started: %v", err)
	}
	if err := again.Shutdown(context.Background()); err != nil {
		t.Fatal(err)
	}
}
