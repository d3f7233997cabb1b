package natsauth

import (
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/nats-io/jwt/v2"

	"github.com/keymesh/keymesh/event"
)

func TestKeysPersistedSecretAndStable(t *testing.T) {
	dir := t.TempDir()
	k1, err := LoadOrCreate(dir)
	if err != nil {
		t.Fatal(err)
	}
	for _, f := range []string{OperatorFile, SystemFile, AccountFile} {
		st, err := os.Stat(filepath.Join(dir, f))
		if err != nil {
			t.Fatal(err)
		}
		if st.Mode().Perm() != 0o600 {
			t.Errorf("%s mode %v, want 0600", f, st.Mode().Perm())
		}
	}
	k2, err := Load(dir)
	if err != nil {
		t.Fatal(err)
	}
	if k1.AccountPublicKey() != k2.AccountPublicKey() || k1.SystemPublicKey() != k2.SystemPublicKey() {
		t.Fatal("keys changed across loads")
	}
	if _, err := Load(t.TempDir()); err == nil {
		t.Fatal("Load created keys")
	}
	conf, err := k1.Config()
	if err != nil {
		t.Fatal(err)
	}
	seed, _ := k1.account.Seed()
	if strings.Contains(conf, string(seed)) || !strings.Contains(conf, k1.AccountPublicKey()) {
		t.Fatal("nats-config holds a seed, or not the account")
	}
}

func TestEdgeCredentialsNameTheEdge(t *testing.T) {
	k, err := LoadOrCreate(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	creds, err := k.Creds(RoleEdge, "host/127.0.0.1:8080")
	if err != nil {
		t.Fatal(err)
	}
	if id, err := EdgeIDFromCreds(creds); err != nil || id != "host/127.0.0.1:8080" {
		t.Fatalf("id %q, %v", id, err)
	}
	tok, _ := jwt.ParseDecoratedJWT(creds)
	uc, _ := jwt.DecodeUserClaims(tok)
	if uc.Issuer != k.AccountPublicKey() || !uc.Pub.Allow.Contains("keymesh.edge.heartbeat.host%2F127%2E0%2E0%2E1%3A8080") ||
		uc.Pub.Allow.Contains(event.StreamSubjects) || len(uc.Pub.Deny) != 0 {
		t.Fatalf("claims %+v", uc.Permissions)
	}
	// Limit reports: its own to publish, everyone's to read; no wildcard to
	// publish under, nothing deeper to read.
	if !uc.Pub.Allow.Contains("keymesh.edge.limits.host%2F127%2E0%2E0%2E1%3A8080") || !uc.Sub.Allow.Contains("keymesh.edge.limits.*") {
		t.Fatalf("limit reports not allowed: %+v", uc.Permissions)
	}
	for _, s := range uc.Pub.Allow {
		if strings.HasPrefix(s, event.EdgeLimitsSubject) && s != event.EdgeSubject(event.EdgeLimitsSubject, "host/127.0.0.1:8080") {
			t.Errorf("may publish limit reports on %q", s)
		}
	}
	for _, s := range uc.Sub.Allow {
		if strings.HasPrefix(s, event.EdgeLimitsSubject) && s != event.EdgeLimitsSubject+".*" {
			t.Errorf("may subscribe %q", s)
		}
	}
	if creds, _ := k.Creds(RoleOrigin, ""); creds == nil {
		t.Fatal("no origin credential")
	} else if id, err := EdgeIDFromCreds(creds); err != nil || id != "" {
		t.Fatalf("origin credential names edge %q (%v)", id, err)
	}
	for _, bad := range []struct {
		role Role
		id   string
	}{{RoleEdge, ""}, {RoleEdge, "a b"}, {RoleEdge, strings.Repeat("x", MaxEdgeID+1)}, {"admin", "x"}} {
		if _, err := k.Creds(bad.role, bad.id); !errors.Is(err, ErrInvalid) {
			t.Errorf("Creds(%q, %q): %v", bad.role, bad.id, err)
		}
	}
	if _, err := EdgeIDFromCreds([]byte("garbage")); !errors.Is(err, ErrInvalid) {
		t.Fatal(err)
	}
}

func TestEdgeTokenRoundTrip(t *testing.T) {
	for _, id := range []string{"edge-1", "a.b", "a*b>c", "x%41", "héllo/1:2", "_-"} {
		tok := event.EdgeToken(id)
		if strings.ContainsAny(tok, ".*> \t") {
			t.Errorf("token %q of %q is not one subject token", tok, id)
		}
		if got, err := event.ParseEdgeToken(tok); err != nil || got != id {
			t.Errorf("%q -> %q -> %q, %v", id, tok, got, err)
		}
		if got, ok := event.EdgeFromSubject(event.EdgeAuditSubject, event.EdgeSubject(event.EdgeAuditSubject, id)); !ok || got != id {
			t.Errorf("subject of %q read back as %q", id, got)
		}
	}
	// Only the canonical spelling is accepted, so one id has one subject.
	for _, tok := range []string{"%41", "%2e", "%2", "a.b", "a b", ""} {
		if got, err := event.ParseEdgeToken(tok); err == nil && got != "" {
			t.Errorf("token %q accepted as %q", tok, got)
		}
	}
	if _, ok := event.EdgeFromSubject(event.EdgeAuditSubject, "keymesh.edge.audit"); ok {
		t.Error("the bare subject named an edge")
	}
}
