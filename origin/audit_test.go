package origin

import (
	"context"
	"encoding/json"
	"net/url"
	"strings"
	"testing"
	"time"

	"github.com/keymesh/keymesh/api"
	"github.com/keymesh/keymesh/event"
)

// auditItems is GET path's page of audit records.
func auditItems(c *client, path string) []api.AuditRecord {
	c.t.Helper()
	var pg api.AuditPage
	c.must(200, "GET", path, nil, &pg)
	return pg.Items
}

func TestAuditStoresEdgeAndAdminRecords(t *testing.T) {
	testAuditRecords(t, testConfig(t.TempDir()))
}

func TestAuditPostgres(t *testing.T) {
	t.Run("records", func(t *testing.T) {
		cfg := testConfig(t.TempDir())
		cfg.Store = postgresDSN(t)
		testAuditRecords(t, cfg)
	})
	t.Run("retention", func(t *testing.T) {
		cfg := testConfig(t.TempDir())
		cfg.Store = postgresDSN(t)
		testAuditRetention(t, cfg)
	})
}

func testAuditRecords(t *testing.T, cfg Config) {
	s := startServer(t, cfg)
	c := newClient(t, s)
	nc := connect(t, s)

	var d struct{ ID string }
	c.must(201, "POST", "/v1/projects/default/deployments", map[string]any{"name": "chat", "upstreams": map[string][]string{"*": {"http://127.0.0.1:1"}}}, &d)
	var k struct {
		ID, Project, Key string
	}
	c.must(201, "POST", "/v1/projects/default/keys", map[string]any{"name": "k", "deployments": []string{d.ID}}, &k)

	batch, _ := json.Marshal([]map[string]any{
		{"time": time.Now().UTC(), "edge": "edge-1", "site": "eu", "client_ip": "192.0.2.7", "key_id": k.ID, "project": k.Project,
			"deployment": d.ID, "deployment_name": "chat", "method": "POST", "path": "/v1/chat/completions", "status": 200,
			"duration_ms": 12.5, "request_id": "req-1"},
		{"time": time.Now().UTC(), "edge": "edge-1", "site": "eu", "client_ip": "192.0.2.8", "project": k.Project,
			"deployment": d.ID, "deployment_name": "chat", "method": "POST", "path": "/v1/chat/completions", "status": 401,
			"duration_ms": 0.1, "request_id": "req-2"},
	})
	if err := nc.Publish(event.EdgeSubject(event.EdgeAuditSubject, "edge-1"), batch); err != nil {
		t.Fatal(err)
	}
	if err := nc.Publish(event.EdgeSubject(event.EdgeAuditSubject, "edge-1"), []byte("garbage")); err != nil {
		t.Fatal(err)
	}

	var recs []api.AuditRecord
	waitFor(t, "edge record stored", func() bool {
		recs = auditItems(c, "/v1/audit?key_id="+k.ID+"&source=edge")
		return len(recs) == 1
	})
	r := recs[0]
	if r.Edge != "edge-1" || r.ClientIP != "192.0.2.7" || r.Deployment != d.ID || r.Status != 200 || r.DurationMS != 12.5 ||
		r.RequestID != "req-1" || r.Method != "POST" || r.Path != "/v1/chat/completions" {
		t.Fatalf("edge record %+v", r)
	}
	// By deployment name, newest first, both edge records.
	recs = auditItems(c, "/v1/audit?deployment=chat&source=edge&project=default")
	if len(recs) != 2 {
		t.Fatalf("by deployment: %+v", recs)
	}
	waitFor(t, "bad batch counted", func() bool { _, _, bad := s.AuditStats(); return bad == 1 })

	// Admin actions: key creation, with who, what, when, from where.
	waitFor(t, "admin record stored", func() bool {
		recs = auditItems(c, "/v1/audit?key_id="+k.ID+"&source=admin")
		return len(recs) == 1
	})
	r = recs[0]
	if r.Actor != "user:admin" || r.Action != "POST /v1/projects/{p}/keys" || r.Target != k.ID || r.ClientIP != "127.0.0.1" ||
		r.Status != 201 || time.Since(r.Time) > time.Minute || r.Project != k.Project {
		t.Fatalf("admin record %+v", r)
	}
	recs = auditItems(c, "/v1/audit?since="+url.QueryEscape(time.Now().Add(-time.Hour).Format(time.RFC3339))+"&limit=1000")
	if len(recs) < 4 || !sortedNewestFirst(recs) {
		t.Fatalf("since an hour ago: %d records", len(recs))
	}
	recs = auditItems(c, "/v1/audit?limit=1")
	if len(recs) != 1 {
		t.Fatalf("limit=1: %d records", len(recs))
	}

	// A project key sees its own project's records only.
	var p2 struct{ ID string }
	c.must(201, "POST", "/v1/projects", map[string]any{"name": "other"}, &p2)
	var ak struct{ Key string }
	c.must(201, "POST", "/v1/projects/default/keys", map[string]any{"name": "auditor", "permissions": []string{"view_audit_logs"}}, &ak)
	kc := &client{t: t, base: c.base}
	st, b, _ := kc.doH("GET", "/v1/audit?project=other", nil, map[string]string{"X-API-Key": ak.Key})
	if st != 403 {
		t.Fatalf("project key reading another project: %d %s", st, b)
	}
	waitFor(t, "project creation recorded", func() bool {
		recs = auditItems(c, "/v1/audit?project=other")
		return len(recs) == 1 && recs[0].Action == "POST /v1/projects" && recs[0].Project == p2.ID
	})
	st, b, _ = kc.doH("GET", "/v1/audit?limit=1000", nil, map[string]string{"X-API-Key": ak.Key})
	if st != 200 {
		t.Fatalf("project key reading its project: %d %s", st, b)
	}
	var pg api.AuditPage
	mustJSON(t, b, &pg)
	recs = pg.Items
	if len(recs) == 0 {
		t.Fatal("project key sees no records")
	}
	for _, r := range recs {
		if r.Project != k.Project {
			t.Fatalf("project key sees a record of project %q", r.Project)
		}
	}

	// No secret anywhere in the stored records.
	_, raw := c.do("GET", "/v1/audit?limit=1000", nil)
	for _, secret := range []string{k.Key, testPassword, c.token, ak.Key} {
		if strings.Contains(string(raw), secret) {
			t.Fatal("a secret appears in the audit log")
		}
	}

	for _, q := range []string{"since=yesterday", "since=2025-13-01", "limit=0", "limit=x", "source=other"} {
		st, b := c.do("GET", "/v1/audit?"+q, nil)
		var e apiErr
		mustJSON(t, b, &e)
		if st != 400 || e.Error.Code != "VALIDATION_ERROR" || e.Error.Details["field"] != strings.SplitN(q, "=", 2)[0] {
			t.Fatalf("%s: %d %s", q, st, b)
		}
	}
}

func sortedNewestFirst(recs []api.AuditRecord) bool {
	for i := 1; i < len(recs); i++ {
		if recs[i].Time.After(recs[i-1].Time) {
			return false
		}
	}
	return true
}

func TestAuditRetentionAndBounds(t *testing.T) {
	testAuditRetention(t, testConfig(t.TempDir()))
}

func testAuditRetention(t *testing.T, cfg Config) {
	cfg.AuditRetention = time.Hour
	cfg.AuditMaxRows = 3
	cfg.AuditPruneInterval = time.Hour // pruned by hand below
	s := startServer(t, cfg)

	now := time.Now()
	var batch []AuditRecord
	for i := range 5 {
		batch = append(batch, AuditRecord{Time: now.Add(-time.Duration(i) * time.Minute), Source: auditSourceEdge, Path: "/fresh"})
	}
	batch = append(batch, AuditRecord{Time: now.Add(-2 * time.Hour), Source: auditSourceEdge, Path: "/old"})
	s.audit.insert(batch)
	s.audit.prune()
	var n int
	if err := s.auditStore.db.QueryRow(`SELECT COUNT(*) FROM audit_log WHERE path = '/old'`).Scan(&n); err != nil || n != 0 {
		t.Fatalf("old records left: %d %v", n, err)
	}
	if err := s.auditStore.db.QueryRow(`SELECT COUNT(*) FROM audit_log`).Scan(&n); err != nil || n != 3 {
		t.Fatalf("rows after pruning to 3: %d %v", n, err)
	}

	// A full queue drops and counts, without blocking.
	a := &auditLog{s: s, ch: make(chan AuditRecord, 2)}
	done := make(chan struct{})
	go func() {
		for range 10 {
			a.add(AuditRecord{})
		}
		close(done)
	}()
	select {
	case <-done:
	case <-time.After(5 * time.Second):
		t.Fatal("add blocked on a full queue")
	}
	if a.dropped[auditQueueFull].Load() != 8 {
		t.Fatalf("dropped %d, want 8", a.dropped[auditQueueFull].Load())
	}
}

// On SQLite the audit log is a database of its own: its writer and pruner
// queue behind that database's writer lock (rather than waiting in SQLite's
// busy handler), and a mutation never waits for either — not even while an
// audit transaction holds the lock.
func TestAuditWritesNeverHoldUpMutations(t *testing.T) {
	cfg := testConfig(t.TempDir())
	cfg.AuditPruneInterval = time.Hour
	cfg.AuditRetention = time.Hour
	s := startServer(t, cfg)
	st := s.auditStore
	if st == s.store {
		t.Fatal("on SQLite the audit log shares the store's database")
	}
	rows := func(n int, age time.Duration) []AuditRecord {
		out := make([]AuditRecord, n)
		for i := range out {
			out[i] = AuditRecord{Time: time.Now().Add(-age), Source: auditSourceEdge, Path: "/v1/chat/completions"}
		}
		return out
	}
	count := func() int {
		var n int
		if err := st.db.QueryRow(`SELECT COUNT(*) FROM audit_log WHERE source = 'edge'`).Scan(&n); err != nil {
			t.Fatal(err)
		}
		return n
	}
	c := newClient(t, s)
	blocked := func(what string, f func()) {
		t.Helper()
		unlock := st.lockWrites()
		done := make(chan struct{})
		go func() { f(); close(done) }()
		select {
		case <-done:
			unlock()
			t.Fatalf("%s ran while another audit writer held the lock", what)
		case <-time.After(200 * time.Millisecond):
		}
		// The audit database is locked; the store is not.
		c.must(201, "POST", "/v1/projects/default/keys", map[string]any{}, nil)
		unlock()
		select {
		case <-done:
		case <-time.After(10 * time.Second):
			t.Fatalf("%s did not finish once the lock was free", what)
		}
	}
	blocked("audit insert", func() { s.audit.insert(rows(10, 2*time.Hour)) })
	blocked("audit prune", s.audit.prune)
	if n := count(); n != 0 {
		t.Fatalf("%d records left after pruning what is past retention", n)
	}
}

// Pruning deletes a bounded number of rows per statement, on both stores.
func TestAuditPrunesInChunks(t *testing.T) {
	eachStore(t, func(t *testing.T, cfg Config) {
		cfg.AuditPruneInterval = time.Hour
		cfg.AuditRetention = time.Hour
		cfg.AuditMaxRows = 100
		s := startServer(t, cfg)
		var batch []AuditRecord
		for i := range auditPruneRows + 150 {
			batch = append(batch, AuditRecord{Time: time.Now().Add(-2*time.Hour - time.Duration(i)*time.Second), Source: auditSourceEdge, Path: "/old"})
		}
		for i := range 300 {
			batch = append(batch, AuditRecord{Time: time.Now().Add(-time.Duration(i) * time.Second), Source: auditSourceEdge, Path: "/fresh"})
		}
		s.audit.insert(batch)
		cutoff := time.Now().Add(-time.Hour).UnixMicro()
		n, err := s.audit.pruneChunk(context.Background(), `ts < ?`, cutoff)
		if err != nil || n != auditPruneRows {
			t.Fatalf("one chunk deleted %d rows (%v), want %d", n, err, auditPruneRows)
		}
		s.audit.prune()
		var old, fresh int
		s.auditStore.db.QueryRow(`SELECT COUNT(*) FROM audit_log WHERE path = '/old'`).Scan(&old)
		s.auditStore.db.QueryRow(`SELECT COUNT(*) FROM audit_log WHERE path = '/fresh'`).Scan(&fresh)
		if old != 0 || fresh != 100 {
			t.Fatalf("after pruning: %d old and %d fresh records, want 0 and 100", old, fresh)
		}
	})
}

// Every admin mutation's record names what it acted on as the handler knew
// it: the key or deployment (by the reference the path gave, for deletes and
// links), the project, or the user; a delete answered under ?wait records
// the 200 it answered.
func TestAdminAuditTargets(t *testing.T) {
	s := startServer(t, testConfig(t.TempDir()))
	c := newClient(t, s)
	var def struct{ ID string }
	c.must(200, "GET", "/v1/projects/default", nil, &def)
	var d depResp
	c.must(201, "POST", "/v1/projects/default/deployments", chatDep, &d)
	c.must(200, "PATCH", "/v1/projects/default/deployments/"+d.ID, map[string]any{"path_prefix": "/v1", "auth_enabled": true,
		"upstream_auth": map[string]any{"mode": "none"}}, nil)
	var k keyResp
	c.must(201, "POST", "/v1/projects/default/keys", map[string]any{"name": "a"}, &k)
	c.must(200, "PATCH", "/v1/projects/default/keys/"+k.ID, map[string]any{"name": "b", "expires_at": nil, "deployments": []string{}}, nil)
	c.must(200, "POST", "/v1/projects/default/keys/"+k.ID+"/rotate", map[string]any{}, nil)
	c.must(200, "PUT", "/v1/projects/default/deployments/chat/keys/"+k.ID, nil, nil)
	c.must(200, "DELETE", "/v1/projects/default/deployments/chat/keys/"+k.ID, nil, nil)
	c.must(200, "DELETE", "/v1/projects/default/keys/"+k.ID+"?wait=1ms", nil, nil)
	c.must(204, "DELETE", "/v1/projects/default/deployments/chat", nil, nil)
	var p struct{ ID string }
	c.must(201, "POST", "/v1/projects", map[string]any{"name": "other"}, &p)
	c.must(200, "PATCH", "/v1/projects/default", map[string]any{"max_keys": 10, "max_deployments": 20}, nil)
	var u struct{ ID string }
	c.must(201, "POST", "/v1/users", map[string]any{"username": "ops", "password": "ops password 1"}, &u)
	c.must(204, "PUT", "/v1/users/ops/password", map[string]any{"password": "ops password 2"}, nil)
	c.must(204, "DELETE", "/v1/users/ops", nil, nil)

	type want struct {
		action, target, key, dep, project string
		status                            int
		changed                           string // the fields it set, names only
	}
	const pk, pd = "/v1/projects/{p}/keys", "/v1/projects/{p}/deployments"
	wants := []want{
		{"POST " + pd, d.ID, "", d.ID, def.ID, 201, ""},
		{"PATCH " + pd + "/{id}", d.ID, "", d.ID, def.ID, 200, "auth_enabled,path_prefix,upstream_auth"},
		{"POST " + pk, k.ID, k.ID, "", def.ID, 201, ""},
		{"PATCH " + pk + "/{id}", k.ID, k.ID, "", def.ID, 200, "deployments,expires_at,name"},
		{"POST " + pk + "/{id}/rotate", k.ID, k.ID, "", def.ID, 200, ""},
		{"PUT " + pd + "/{id}/keys/{key_id}", k.ID, k.ID, "chat", def.ID, 200, "deployments"},
		{"DELETE " + pd + "/{id}/keys/{key_id}", k.ID, k.ID, "chat", def.ID, 200, "deployments"},
		{"DELETE " + pk + "/{id}", k.ID, k.ID, "", def.ID, 200, ""},
		{"DELETE " + pd + "/{id}", "chat", "", "chat", def.ID, 204, ""},
		{"POST /v1/projects", p.ID, "", "", p.ID, 201, ""},
		{"PATCH /v1/projects/{p}", def.ID, "", "", def.ID, 200, "max_deployments,max_keys"},
		{"POST /v1/users", u.ID, "", "", "", 201, ""},
		{"PUT /v1/users/{u}/password", u.ID, "", "", "", 204, ""},
		{"DELETE /v1/users/{u}", u.ID, "", "", "", 204, ""},
	}
	var recs []api.AuditRecord
	waitFor(t, "every admin action recorded", func() bool {
		recs = nil // decoding into old records would keep their fields
		recs = auditItems(c, "/v1/audit?source=admin&limit=1000")
		return len(recs) == len(wants)
	})
	for i, w := range wants {
		r := recs[len(recs)-1-i] // newest first
		got := want{r.Action, r.Target, r.KeyID, r.Deployment, r.Project, r.Status, strings.Join(r.Changed, ",")}
		if got != w || r.Actor != "user:admin" {
			t.Errorf("record %d: %+v (actor %q), want %+v", i, got, r.Actor, w)
		}
	}
}
