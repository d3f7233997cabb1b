package opcli

import (
	"context"
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/nats-io/nats.go"

	"github.com/keymesh/keymesh/api"
	"github.com/keymesh/keymesh/event"
	"github.com/keymesh/keymesh/internal/natsauth"
	"github.com/keymesh/keymesh/internal/testutil"
	"github.com/keymesh/keymesh/origin/apiclient"
)

// origin audit prints GET /v1/audit's records as a table with their
// refusal reasons, or the API's page as JSON, filtered as its flags say
// and paged by --cursor.
func TestCLIAudit(t *testing.T) {
	s := startOrigin(t)
	r, _ := newRunner(t, s)
	ctx := context.Background()
	ac := &apiclient.Client{BaseURL: "http://" + s.Addr()}
	if _, err := ac.Login(ctx, "admin", cliPassword); err != nil {
		t.Fatal(err)
	}
	r.env["ORIGIN_TOKEN"] = ac.Token
	d, err := ac.CreateDeployment(ctx, "default", apiclient.DeploymentInput{Name: ptr("chat"), Upstreams: map[string][]string{"*": {"http://127.0.0.1:9"}}})
	if err != nil {
		t.Fatal(err)
	}
	k, err := ac.CreateKey(ctx, "default", apiclient.KeyCreate{Name: "k", Deployments: []string{d.ID}})
	if err != nil {
		t.Fatal(err)
	}
	r.ok("keys", "update", k.ID, "--name", "k2")

	creds, err := s.NATSCreds(natsauth.RoleEdge, "edge-1")
	if err != nil {
		t.Fatal(err)
	}
	credsFile := filepath.Join(t.TempDir(), "edge.creds")
	if err := os.WriteFile(credsFile, creds, 0o600); err != nil {
		t.Fatal(err)
	}
	nc, err := nats.Connect(s.NATSURL(), nats.UserCredentials(credsFile), nats.CustomInboxPrefix(event.EdgeInbox("edge-1")))
	if err != nil {
		t.Fatal(err)
	}
	defer nc.Close()
	now := time.Now().UTC()
	rec := func(ago time.Duration, status int, reason, id string) map[string]any {
		m := map[string]any{"time": now.Add(-ago), "edge": "edge-1", "site": "eu", "client_ip": "192.0.2.7", "key_id": k.ID,
			"project": k.Project, "deployment": d.ID, "deployment_name": "chat", "method": "POST", "path": "/v1/chat/completions",
			"status": status, "duration_ms": 1, "request_id": id}
		if reason != "" {
			m["reason"] = reason
		}
		return m
	}
	raw, _ := json.Marshal([]map[string]any{rec(3*time.Hour, 200, "", "old"), rec(2*time.Second, 401, "unlinked", "r1"),
		rec(time.Second, 429, "rate_limited", "r2")})
	if err := nc.Publish(event.EdgeSubject(event.EdgeAuditSubject, "edge-1"), raw); err != nil {
		t.Fatal(err)
	}
	testutil.CheckFor(t, 10*time.Second, 10*time.Millisecond, func() error {
		if stored, _, _ := s.AuditStats(); stored < 6 { // three edge records, three admin actions
			return fmt.Errorf("%d of 6 records stored", stored)
		}
		return nil
	})

	out := r.ok("audit", "--reason", "unlinked")
	lines := strings.Split(strings.TrimSpace(out), "\n")
	if len(lines) != 2 || strings.Join(strings.Fields(lines[0]), " ") != "TIME SOURCE STATUS REASON KEY DEPLOYMENT REQUEST BY" ||
		!strings.Contains(lines[1], " unlinked ") || !strings.Contains(lines[1], k.ID) || !strings.Contains(lines[1], " 401 ") ||
		!strings.Contains(lines[1], " chat ") {
		t.Fatalf("audit --reason unlinked:\n%s", out)
	}
	if out := r.ok("audit", "--status", "4xx", "--key", k.ID); strings.Count(out, "\n") != 3 {
		t.Fatalf("audit --status 4xx:\n%s", out)
	}
	if out := r.ok("audit", "--source", "admin", "--key", k.ID); !strings.Contains(out, "changed name") {
		t.Fatalf("the key's PATCH names no changed field:\n%s", out)
	}
	var pg api.AuditPage
	r.json(&pg, "audit", "--source", "edge", "--since", "1h")
	if len(pg.Items) != 2 || pg.Items[0].RequestID != "r2" || pg.Items[0].Reason != "rate_limited" || pg.NextCursor != nil {
		t.Fatalf("audit --json --since 1h: %+v", pg)
	}
	var older api.AuditPage
	r.json(&older, "audit", "--source", "edge", "--until", "1h")
	if len(older.Items) != 1 || older.Items[0].RequestID != "old" || older.Items[0].Reason != "" {
		t.Fatalf("audit --json --until 1h: %+v", older)
	}
	// Paged: --limit 1, then the printed cursor.
	out = r.ok("audit", "--source", "edge", "--limit", "1")
	_, cur, ok := strings.Cut(out, "More records: --cursor ")
	if !ok || !strings.Contains(out, "rate_limited") {
		t.Fatalf("audit --limit 1:\n%s", out)
	}
	if out := r.ok("audit", "--source", "edge", "--limit", "1", "--cursor", strings.TrimSpace(cur)); !strings.Contains(out, "unlinked") || strings.Contains(out, "rate_limited") {
		t.Fatalf("audit --cursor:\n%s", out)
	}
	r.fails(1, "VALIDATION_ERROR", "audit", "--reason", "nope")
	r.fails(2, "--since must be", "audit", "--since", "last week")
	r.fails(2, "--limit must be", "audit", "--limit", "5000")
}
