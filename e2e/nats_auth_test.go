package e2e

import (
	"context"
	"crypto/x509"
	"encoding/json"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/nats-io/nats.go"

	"github.com/keymesh/keymesh/edge"
	"github.com/keymesh/keymesh/event"
	"github.com/keymesh/keymesh/internal/natsauth"
	"github.com/keymesh/keymesh/internal/testutil"
	"github.com/keymesh/keymesh/origin"
)

// These tests speak to NATS directly, as an attacker who reaches it would.

// TestNATSEmbeddedRequiresCredentials: the origin's embedded NATS refuses a
// client without credentials, or with credentials another operator
// issued, so nobody can read the events or publish a phantom edge's
// heartbeat; an edge credential the origin issued connects.
func TestNATSEmbeddedRequiresCredentials(t *testing.T) {
	o := embeddedOrigin(t, t.TempDir(), &logSink{}, nil)

	if nc, err := nats.Connect(o.NATSURL()); err == nil {
		_ = nc.Publish(event.EdgeSubject(event.EdgeHeartbeatSubject, "phantom"), hb("phantom", 1<<40, ""))
		_ = nc.Flush()
		nc.Close()
		t.Error("the embedded NATS admitted a client without credentials")
	}
	stranger, err := natsauth.LoadOrCreate(t.TempDir()) // another operator
	if err != nil {
		t.Fatal(err)
	}
	creds := writeCreds(t, stranger, natsauth.RoleOrigin, "x")
	if nc, err := nats.Connect(o.NATSURL(), nats.UserCredentials(creds)); err == nil {
		nc.Close()
		t.Error("the embedded NATS admitted a credential of another operator")
	}

	edgeCreds, err := o.NATSCreds(natsauth.RoleEdge, "real-edge")
	if err != nil {
		t.Fatal(err)
	}
	path := t.TempDir() + "/edge.creds"
	writeFile(t, path, edgeCreds)
	nc, err := nats.Connect(o.NATSURL(), nats.UserCredentials(path), nats.CustomInboxPrefix(event.EdgeInbox("real-edge")))
	if err != nil {
		t.Fatalf("an issued edge credential was refused: %v", err)
	}
	defer nc.Close()
	if err := nc.Publish(event.EdgeSubject(event.EdgeHeartbeatSubject, "real-edge"), hb("real-edge", 1, "")); err != nil {
		t.Fatal(err)
	}
	testutil.CheckFor(t, 10*time.Second, 0, func() error {
		if edges := o.Edges(); len(edges) != 1 || edges[0].ID != "real-edge" {
			return errorf("edges %+v, want real-edge only (no phantom)", edges)
		}
		return nil
	})
}

// TestNATSEdgeCredentialPermissions: an edge's credential may publish its
// own heartbeat, audit, usage and limit-report subjects and read events and
// every edge's limit reports, nothing that speaks for the origin or another
// edge.
func TestNATSEdgeCredentialPermissions(t *testing.T) {
	s := newStack(t)
	nc, errs := s.edgeConn(t, "edge-a")

	// Allowed: its own subjects, lookups, events.
	for _, subj := range []string{event.EdgeSubject(event.EdgeHeartbeatSubject, "edge-a"),
		event.EdgeSubject(event.EdgeAuditSubject, "edge-a"), event.EdgeSubject(event.EdgeUsageSubject, "edge-a"),
		event.EdgeSubject(event.EdgeLimitsSubject, "edge-a")} {
		if err := nc.Publish(subj, []byte("[]")); err != nil {
			t.Fatal(err)
		}
	}
	if _, err := nc.Request(event.SnapshotSubject, nil, 10*time.Second); err != nil {
		t.Errorf("snapshot lookup: %v", err)
	}
	for _, subj := range []string{event.StreamSubjects, event.EdgeLimitsSubject + ".*"} {
		if _, err := nc.SubscribeSync(subj); err != nil {
			t.Fatal(err)
		}
	}
	if err := nc.Flush(); err != nil {
		t.Fatal(err)
	}
	select {
	case err := <-errs:
		t.Fatalf("an allowed operation was refused: %v", err)
	default:
	}

	// Refused: publishing events, the origin's subjects, another edge's.
	for _, subj := range []string{event.Subject(event.KindKey, 999), event.OriginHeartbeatSubject,
		event.EdgeSubject(event.EdgeHeartbeatSubject, "edge-b"), event.EdgeSubject(event.EdgeAuditSubject, "edge-b"),
		event.EdgeSubject(event.EdgeUsageSubject, "edge-b"), event.EdgeSubject(event.EdgeLimitsSubject, "edge-b"),
		event.EdgeLimitsSubject, event.EdgeLimitsSubject + ".edge-a.x", event.EdgeHeartbeatSubject, event.EdgeAuditSubject,
		event.EdgeInbox("edge-b") + ".reply", "$JS.API.STREAM.PURGE." + event.StreamName,
		"$JS.API.STREAM.DELETE." + event.StreamName} {
		if err := nc.Publish(subj, []byte("[]")); err != nil {
			t.Fatal(err)
		}
		expectViolation(t, errs, "Publish", subj)
	}
	// Refused: reading another edge's inbox, the audit or heartbeats of any
	// edge, answering lookups.
	for _, subj := range []string{event.EdgeInbox("edge-b") + ".>", "_INBOX.>", event.EdgeAuditSubject + ".*",
		event.EdgeSubject(event.EdgeAuditSubject, "edge-b"), event.EdgeHeartbeatSubject + ".>", event.LookupKeySubject, ">"} {
		if _, err := nc.SubscribeSync(subj); err != nil {
			t.Fatal(err)
		}
		expectViolation(t, errs, "Subscription", subj)
	}
}

// TestNATSForgedAuditAndHeartbeatsDropped: what an edge publishes on its own
// subjects in another edge's name never reaches /v1/audit or GET
// /v1/edges; its own records do (the marker that proves the forged ones had
// their chance).
func TestNATSForgedAuditAndHeartbeatsDropped(t *testing.T) {
	s := newStack(t)
	d := s.deployment("forged", nil)
	k := s.key(d.ID)
	nc, errs := s.edgeConn(t, "edge-a")

	rec := func(edge, reqID string) map[string]any {
		return map[string]any{"time": time.Now().UTC(), "edge": edge, "site": "eu", "client_ip": "192.0.2.66",
			"key_id": k.ID, "deployment": d.ID, "method": "POST", "path": "/v1/chat/completions",
			"status": 200, "request_id": reqID}
	}
	forged, _ := json.Marshal([]map[string]any{rec("edge-b", "forged-1")})
	mixed, _ := json.Marshal([]map[string]any{rec("edge-b", "forged-2"), rec("edge-a", "marker")})
	for _, m := range []struct {
		subj string
		data []byte
	}{
		{event.EdgeSubject(event.EdgeAuditSubject, "edge-a"), forged},
		{event.EdgeSubject(event.EdgeHeartbeatSubject, "edge-a"), hb("phantom", 1<<40, "")},
		{event.EdgeSubject(event.EdgeHeartbeatSubject, "edge-a"), hb("phantom-relayed", 1<<40, "edge-a")},
		{event.EdgeSubject(event.EdgeHeartbeatSubject, "edge-a"), hb("edge-a", 1<<40, "edge-b")},
		{event.EdgeSubject(event.EdgeAuditSubject, "edge-a"), mixed},
		{event.EdgeSubject(event.EdgeHeartbeatSubject, "edge-a"), hb("edge-a", 1, "")},
	} {
		if err := nc.Publish(m.subj, m.data); err != nil {
			t.Fatal(err)
		}
	}
	if err := nc.Flush(); err != nil {
		t.Fatal(err)
	}
	testutil.CheckFor(t, 10*time.Second, 0, func() error {
		recs, _ := s.auditRecords("key_id=" + k.ID + "&source=edge")
		if len(recs) == 0 {
			return errorf("the marker record is not stored yet")
		}
		if len(recs) != 1 || recs[0]["request_id"] != "marker" || recs[0]["edge"] != "edge-a" {
			t.Fatalf("audit holds %v, want the marker only", recs)
		}
		return nil
	})
	testutil.CheckFor(t, 10*time.Second, 0, func() error {
		reg := s.edgeRegistry()
		if _, ok := reg["edge-a"]; !ok {
			return errorf("edge-a not registered yet")
		}
		if len(reg) != 1 || reg["edge-a"].AppliedRevision != 1 || reg["edge-a"].RelayedBy != "" {
			t.Fatalf("edges %+v, want edge-a at revision 1 only", reg)
		}
		return nil
	})
	select {
	case err := <-errs:
		t.Fatalf("publishing on its own subjects was refused: %v", err)
	default:
	}
}

// edgeConn connects to the stack's NATS with edge id's credential, as the
// edge does; errs receives the server's asynchronous refusals.
func (s *stack) edgeConn(t *testing.T, id string) (*nats.Conn, chan error) {
	t.Helper()
	errs := make(chan error, 64)
	nc, err := nats.Connect(s.nats.ClientURL(), nats.UserCredentials(s.natsCreds(natsauth.RoleEdge, id)),
		nats.CustomInboxPrefix(event.EdgeInbox(id)),
		nats.ErrorHandler(func(_ *nats.Conn, _ *nats.Subscription, err error) {
			select {
			case errs <- err:
			default:
			}
		}))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(nc.Close)
	return nc, errs
}

// expectViolation waits for the server's permissions violation on subj.
func expectViolation(t *testing.T, errs chan error, op, subj string) {
	t.Helper()
	deadline := time.After(10 * time.Second)
	for {
		select {
		case err := <-errs:
			msg := err.Error()
			if strings.Contains(msg, "Permissions Violation for "+op) && strings.Contains(msg, `"`+subj+`"`) {
				return
			}
			t.Logf("other error: %v", err)
		case <-deadline:
			t.Fatalf("%s on %q was not refused", op, subj)
		}
	}
}

func hb(id string, rev uint64, relayedBy string) []byte {
	b, _ := json.Marshal(map[string]any{"id": id, "site": "eu", "address": "203.0.113.9:443",
		"applied_revision": rev, "relayed_by": relayedBy})
	return b
}

func writeCreds(t *testing.T, keys *natsauth.Keys, role natsauth.Role, id string) string {
	t.Helper()
	b, err := keys.Creds(role, id)
	if err != nil {
		t.Fatal(err)
	}
	path := t.TempDir() + "/x.creds"
	writeFile(t, path, b)
	return path
}

func writeFile(t *testing.T, path string, b []byte) {
	t.Helper()
	if err := os.WriteFile(path, b, 0o600); err != nil {
		t.Fatal(err)
	}
}

// TestNATSEmbeddedTLSAndEdgeIdentity: the embedded NATS can serve TLS; an
// edge verifies it with --nats-tls-ca and takes its id from its credential,
// refusing to start under another id.
func TestNATSEmbeddedTLSAndEdgeIdentity(t *testing.T) {
	ca := newCA(t)
	dir := t.TempDir()
	cert, key := ca.issue(t, dir, "nats", 2, x509.ExtKeyUsageServerAuth)
	caPath := filepath.Join(dir, "ca.pem")
	writeFile(t, caPath, ca.pem)

	o := embeddedOrigin(t, t.TempDir(), &logSink{}, func(c *origin.Config) { c.NATSTLSCert, c.NATSTLSKey = cert, key })
	if !strings.HasPrefix(o.NATSURL(), "tls://") {
		t.Fatalf("NATS URL %s", o.NATSURL())
	}
	b, err := o.NATSCreds(natsauth.RoleEdge, "tls-edge")
	if err != nil {
		t.Fatal(err)
	}
	creds := filepath.Join(dir, "edge.creds")
	writeFile(t, creds, b)
	if nc, err := nats.Connect(o.NATSURL(), nats.UserCredentials(creds)); err == nil {
		nc.Close()
		t.Fatal("a client that does not trust the CA connected")
	}

	ecfg := edge.DefaultConfig()
	ecfg.Listen, ecfg.AdminListen, ecfg.DataDir = "127.0.0.1:0", "", ""
	ecfg.NATSURL, ecfg.NATSCreds, ecfg.NATSTLSCA = o.NATSURL(), creds, caPath
	ecfg.OriginPublicKey = o.PublicKey()
	ecfg.Logger = (&logSink{}).logger()
	bad := ecfg
	bad.ID = "someone-else"
	if e, err := edge.New(bad); err == nil {
		_ = e.Shutdown(context.Background())
		t.Fatal("an edge started under another id than its credential's")
	}
	e, err := edge.New(ecfg)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = e.Shutdown(context.Background()) })
	if e.ID() != "tls-edge" {
		t.Fatalf("edge id %q, want the credential's", e.ID())
	}
	select {
	case <-e.Synced():
	case <-time.After(10 * time.Second):
		t.Fatal("the edge did not synchronise over TLS")
	}
	testutil.CheckFor(t, 10*time.Second, 0, func() error {
		if edges := o.Edges(); len(edges) != 1 || edges[0].ID != "tls-edge" {
			return errorf("edges %+v", edges)
		}
		return nil
	})
}
