package origin

import (
	"encoding/json"
	"fmt"
	"net/url"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/keymesh/keymesh/api"
	"github.com/keymesh/keymesh/event"
)

func TestAuditFiltersAndPages(t *testing.T) {
	testAuditFilters(t, testConfig(t.TempDir()))
}

func TestAuditFiltersPostgres(t *testing.T) {
	cfg := testConfig(t.TempDir())
	cfg.Store = postgresDSN(t)
	testAuditFilters(t, cfg)
}

// GET /v1/audit filters by status (a code or a class) and refusal reason,
// and between since and until; it answers {items, next_cursor} and its
// pages, followed, hold every matching record once, newest first.
func testAuditFilters(t *testing.T, cfg Config) {
	s := startServer(t, cfg)
	c := newClient(t, s)
	nc := connect(t, s)
	base := time.Now().UTC().Add(-time.Minute).Truncate(time.Millisecond)
	var batch []map[string]any
	reasons := []string{"", "unlinked", "disabled", "rate_limited", "unlinked"}
	statuses := []int{200, 401, 401, 429, 401}
	const n = 25
	for i := range n {
		r := map[string]any{"time": base.Add(time.Duration(i/2) * time.Second), "edge": "edge-1", "site": "eu", "client_ip": "192.0.2.7",
			"key_id": "key_f", "deployment": "dep_f", "deployment_name": "filters", "method": "POST", "path": "/v1/chat/completions",
			"status": statuses[i%5], "duration_ms": 1, "request_id": fmt.Sprintf("req-%02d", i)}
		if reasons[i%5] != "" {
			r["reason"] = reasons[i%5]
		}
		batch = append(batch, r)
	}
	raw, _ := json.Marshal(batch)
	if err := nc.Publish(event.EdgeSubject(event.EdgeAuditSubject, "edge-1"), raw); err != nil {
		t.Fatal(err)
	}
	q := "/v1/audit?deployment=filters"
	waitFor(t, "edge records stored", func() bool { return len(auditItems(c, q+"&limit=1000")) == n })

	count := func(query string) int { return len(auditItems(c, q+"&limit=1000&"+query)) }
	for query, want := range map[string]int{
		"status=401": 15, "status=4xx": 20, "status=4XX": 20, "status=2xx": 5, "status=5xx": 0, "status=429": 5,
		"reason=unlinked": 10, "reason=disabled": 5, "reason=unlinked&status=429": 0, "reason=rate_limited&status=4xx": 5,
		"until=" + url.QueryEscape(base.Add(5*time.Second).Format(time.RFC3339Nano)):                                                                                 10,
		"since=" + url.QueryEscape(base.Add(5*time.Second).Format(time.RFC3339Nano)) + "&until=" + url.QueryEscape(base.Add(7*time.Second).Format(time.RFC3339Nano)): 4,
	} {
		if got := count(query); got != want {
			t.Errorf("%s: %d records, want %d", query, got, want)
		}
	}
	for _, rec := range auditItems(c, q+"&reason=unlinked") {
		if rec.Reason != "unlinked" || rec.KeyID != "key_f" || rec.Status != 401 {
			t.Fatalf("reason=unlinked answered %+v", rec)
		}
	}
	for _, bad := range []string{"status=4x", "status=600", "status=abc", "reason=nope", "until=tomorrow", "cursor=!!", "cursor=" + encodeAuditCursor(1, "")[:3]} {
		if st, b := c.do("GET", q+"&"+bad, nil); st != 400 || !strings.Contains(string(b), "VALIDATION_ERROR") {
			t.Errorf("%s: %d %s", bad, st, b)
		}
	}

	// Paged by 7 (records share times two by two): 4 pages, each record
	// once, in order, the last page's cursor null.
	var all []api.AuditRecord
	cursor, pages := "", 0
	for {
		path := q + "&limit=7"
		if cursor != "" {
			path += "&cursor=" + url.QueryEscape(cursor)
		}
		var pg api.AuditPage
		c.must(200, "GET", path, nil, &pg)
		pages++
		all = append(all, pg.Items...)
		if pg.NextCursor == nil {
			break
		}
		if len(pg.Items) != 7 || pages > n {
			t.Fatalf("page %d: %d items, next %v", pages, len(pg.Items), *pg.NextCursor)
		}
		cursor = *pg.NextCursor
	}
	if pages != 4 || len(all) != n || !sortedNewestFirst(all) {
		t.Fatalf("%d pages, %d records", pages, len(all))
	}
	seen := map[string]bool{}
	for _, r := range all {
		if seen[r.RequestID] {
			t.Fatalf("record %s on two pages", r.RequestID)
		}
		seen[r.RequestID] = true
	}
	// A page that ends exactly at the end has no next cursor.
	var pg api.AuditPage
	c.must(200, "GET", q+"&limit=25", nil, &pg)
	if len(pg.Items) != n || pg.NextCursor != nil {
		t.Fatalf("limit=25: %d items, next %v", len(pg.Items), pg.NextCursor)
	}
}

// An audit table made before reason and changed existed gets them: the
// origin starts on it, keeps its records and stores reasons.
func TestAuditTableUpgraded(t *testing.T) {
	cfg := testConfig(t.TempDir())
	old, err := openAuditSQLite(filepath.Join(cfg.DataDir, "origin.db"))
	if err != nil {
		t.Fatal(err)
	}
	oldSchema := strings.Replace(auditSchema[0], `request_id TEXT NOT NULL DEFAULT '',
		reason TEXT NOT NULL DEFAULT '',
		changed TEXT NOT NULL DEFAULT ''`, `request_id TEXT NOT NULL DEFAULT ''`, 1)
	if oldSchema == auditSchema[0] {
		t.Fatal("the old schema is not the current one less two columns")
	}
	if _, err := old.db.Exec(oldSchema); err != nil {
		t.Fatal(err)
	}
	if _, err := old.db.Exec(`INSERT INTO audit_log (id, ts, source, status) VALUES ('aud_old', ?, 'edge', 200)`, time.Now().UnixMicro()); err != nil {
		t.Fatal(err)
	}
	if err := old.Close(); err != nil {
		t.Fatal(err)
	}
	s := startServer(t, cfg)
	c := newClient(t, s)
	if recs := auditItems(c, "/v1/audit?source=edge"); len(recs) != 1 || recs[0].ID != "aud_old" || recs[0].Reason != "" {
		t.Fatalf("old records %+v", recs)
	}
	raw, _ := json.Marshal([]map[string]any{{"time": time.Now().UTC(), "edge": "edge-1", "site": "eu", "client_ip": "192.0.2.7",
		"key_id": "key_u", "method": "GET", "path": "/", "status": 401, "reason": "expired"}})
	if err := connect(t, s).Publish(event.EdgeSubject(event.EdgeAuditSubject, "edge-1"), raw); err != nil {
		t.Fatal(err)
	}
	waitFor(t, "the new record stored", func() bool {
		recs := auditItems(c, "/v1/audit?reason=expired")
		return len(recs) == 1 && recs[0].KeyID == "key_u"
	})
}
