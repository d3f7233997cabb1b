package natsauth

import (
	"errors"
	"testing"
)

// A presence signed with an edge credential's nkey verifies with its public
// key over exactly what was signed, and nothing else.
func TestPresenceSignedWithCredentialKey(t *testing.T) {
	k, err := LoadOrCreate(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	creds, err := k.Creds(RoleEdge, "edge-a")
	if err != nil {
		t.Fatal(err)
	}
	kp, err := PresenceKey(creds)
	if err != nil {
		t.Fatal(err)
	}
	pub, _ := kp.PublicKey()
	sig, err := SignPresence(kp, "edge-a", 7, 1_700_000_000_123)
	if err != nil || len(sig) != PresenceSigSize {
		t.Fatalf("sign: %v (%d bytes)", err, len(sig))
	}
	if !VerifyPresence(pub, "edge-a", 7, 1_700_000_000_123, sig) {
		t.Fatal("a genuine presence does not verify")
	}
	for name, ok := range map[string]bool{
		"revision": VerifyPresence(pub, "edge-a", 8, 1_700_000_000_123, sig),
		"time":     VerifyPresence(pub, "edge-a", 7, 1_700_000_000_124, sig),
		"id":       VerifyPresence(pub, "edge-b", 7, 1_700_000_000_123, sig),
		"short":    VerifyPresence(pub, "edge-a", 7, 1_700_000_000_123, sig[:63]),
		"key":      VerifyPresence(k.AccountPublicKey(), "edge-a", 7, 1_700_000_000_123, sig),
		"no key":   VerifyPresence("", "edge-a", 7, 1_700_000_000_123, sig),
	} {
		if ok {
			t.Errorf("a presence with another %s verified", name)
		}
	}
	if _, err := PresenceKey([]byte("not creds")); !errors.Is(err, ErrInvalid) {
		t.Fatalf("PresenceKey(garbage) = %v", err)
	}
}
