package e2e

import (
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/keymesh/keymesh/edge"
	"github.com/keymesh/keymesh/internal/testutil"
)

// TestAuditThroughEdge: requests through an edge, allowed and refused, end up
// as records in the origin's audit log, next to the admin actions that set
// them up; none holds a secret.
func TestAuditThroughEdge(t *testing.T) {
	s := newStack(t)
	d := s.deployment("audited", nil)
	k := s.key(d.ID)
	other := s.key() // valid, but not linked to d
	file := filepath.Join(t.TempDir(), "audit.jsonl")
	e := s.startEdge(edgeOpts{configure: func(c *edge.Config) {
		c.AuditFile = file
		c.AuditFlushInterval = 20 * time.Millisecond
	}})

	expect(t, e, map[string]string{"X-API-Key": k.Secret, "X-Request-Id": "audit-req-1"}, http.StatusOK, "")
	expect(t, e, withKey(other), http.StatusUnauthorized, "AUTHENTICATION_FAILED")
	expect(t, e, map[string]string{"Authorization": "Bearer " + k.Secret + "x"}, http.StatusUnauthorized, "AUTHENTICATION_FAILED")

	var rec map[string]any
	testutil.CheckFor(t, 10*time.Second, 0, func() error {
		recs, _ := s.auditRecords("key_id=" + k.ID + "&source=edge")
		if len(recs) != 1 {
			return errorf("%d edge records for the key", len(recs))
		}
		rec = recs[0]
		return nil
	})
	for field, want := range map[string]any{"edge": e.ID(), "deployment": d.ID, "deployment_name": "audited",
		"method": "POST", "path": "/v1/chat/completions", "status": float64(200), "client_ip": "127.0.0.1",
		"request_id": "audit-req-1"} {
		if rec[field] != want {
			t.Errorf("record %s = %v, want %v (%v)", field, rec[field], want, rec)
		}
	}
	if p, _ := rec["project"].(string); !strings.HasPrefix(p, "prj_") {
		t.Errorf("record project %v", rec["project"])
	}
	if ms, _ := rec["duration_ms"].(float64); ms <= 0 {
		t.Errorf("duration_ms %v", rec["duration_ms"])
	}

	// All three requests are on record by deployment, newest first.
	testutil.CheckFor(t, 10*time.Second, 0, func() error {
		recs, _ := s.auditRecords("deployment=" + d.ID + "&source=edge")
		if len(recs) != 3 {
			return errorf("%d edge records for the deployment", len(recs))
		}
		if recs[0]["status"] != float64(401) || recs[2]["status"] != float64(200) {
			return errorf("order or statuses: %v", recs)
		}
		return nil
	})

	// The key's creation is an admin record: who, what, when, from where.
	recs, _ := s.auditRecords("key_id=" + k.ID + "&source=admin")
	if len(recs) != 1 || recs[0]["actor"] != "user:admin" || recs[0]["action"] != "POST /v1/projects/{p}/keys" ||
		recs[0]["target"] != k.ID || recs[0]["client_ip"] != "127.0.0.1" || recs[0]["time"] == nil {
		t.Fatalf("admin records for the key: %v", recs)
	}

	// Bad filters are refused.
	if _, err := s.api.Do(t.Context(), http.MethodGet, "/v1/audit?since=last-week", nil, nil); err == nil ||
		!strings.Contains(err.Error(), "400") && !strings.Contains(err.Error(), "since") {
		t.Fatalf("bad since: %v", err)
	}

	// No secret in any stored record, nor in the edge's audit file.
	_, raw := s.auditRecords("limit=1000")
	if err := e.Shutdown(t.Context()); err != nil {
		t.Fatal(err)
	}
	lines, err := os.ReadFile(file)
	if err != nil {
		t.Fatal(err)
	}
	if n := strings.Count(string(lines), "\n"); n != 3 {
		t.Fatalf("audit file holds %d lines, want 3", n)
	}
	for _, secret := range s.secrets {
		if secret != "" && (strings.Contains(raw, secret) || strings.Contains(string(lines), secret)) {
			t.Fatalf("a secret (%s...) appears in an audit record", secret[:6])
		}
	}
	if _, dropped, failed := e.AuditStats(); dropped != 0 || failed != 0 {
		t.Fatalf("dropped %d, failed %d", dropped, failed)
	}
}
