package origin

import (
	"context"
	"crypto/ed25519"
	"crypto/hmac"
	"crypto/sha256"
	"encoding/base64"
	"encoding/hex"
	"fmt"
	"path/filepath"

	"github.com/keymesh/keymesh/event"
)

// Replicas sharing one store must sign with one key: edges trust a single
// origin public key and drop, counted but silently for the operator, every
// record signed with another. Each replica loads signing.key from its own
// data dir, so a replica set up without copying it would sign with a key of
// its own. The store therefore records the signing public key at its first
// start, and an origin whose key differs refuses to start. The same holds
// for jwt.key (a replica with another one refuses the others' admin
// tokens); for it the store keeps only a keyed fingerprint, never the key.
//
// A deliberate change of signing key (which means reconfiguring every edge)
// takes deleting the row named metaSigningKey from the metadata table.

const (
	metaSigningKey = "signing_public_key"  // base64 Ed25519 public key
	metaJWTKey     = "jwt_key_fingerprint" // hex HMAC-SHA256(jwt.key, jwtFingerprintLabel)
)

const jwtFingerprintLabel = "keymesh jwt.key fingerprint v1"

// checkIdentity records this origin's signing public key and JWT key
// fingerprint in the store on its first start, and otherwise refuses to
// start (ErrKeyMismatch) when they differ from the store's. The error names
// both fingerprints, never a key.
func (s *Server) checkIdentity(ctx context.Context) error {
	pub := event.EncodePublicKey(s.signer.Public())
	stored, err := s.store.claimMetadata(ctx, metaSigningKey, pub)
	if err != nil {
		return err
	}
	if stored != pub {
		return fmt.Errorf("%w: the store's events are signed with the key of fingerprint %s, but %s holds the key of fingerprint %s; "+
			"edges trust one origin key, so every origin on one store must use the same signing.key: copy it (and jwt.key) from a running origin",
			ErrKeyMismatch, publicKeyFingerprint(stored), filepath.Join(s.cfg.DataDir, "signing.key"), publicKeyFingerprint(pub))
	}
	fp := jwtKeyFingerprint(s.jwtKey)
	if stored, err = s.store.claimMetadata(ctx, metaJWTKey, fp); err != nil {
		return err
	}
	if stored != fp {
		return fmt.Errorf("%w: the store's origins sign admin tokens with the key of fingerprint %s, but %s is of fingerprint %s; "+
			"each origin would refuse the others' tokens: copy jwt.key from a running origin",
			ErrKeyMismatch, short(stored), filepath.Join(s.cfg.DataDir, "jwt.key"), short(fp))
	}
	return nil
}

// publicKeyFingerprint is SHA256:<base64 of the SHA-256 of the key>, as ssh
// shows keys; b64 is the key in base64 (as stored).
func publicKeyFingerprint(b64 string) string {
	raw, err := base64.StdEncoding.DecodeString(b64)
	if err != nil || len(raw) != ed25519.PublicKeySize {
		raw = []byte(b64)
	}
	sum := sha256.Sum256(raw)
	return "SHA256:" + base64.RawStdEncoding.EncodeToString(sum[:])
}

// jwtKeyFingerprint is a keyed hash of the JWT key: equal keys give equal
// fingerprints, and it reveals nothing of the key.
func jwtKeyFingerprint(key []byte) string {
	m := hmac.New(sha256.New, key)
	m.Write([]byte(jwtFingerprintLabel))
	return hex.EncodeToString(m.Sum(nil))
}

func short(fp string) string {
	if len(fp) > 16 {
		return fp[:16]
	}
	return fp
}
