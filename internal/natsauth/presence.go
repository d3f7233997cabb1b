package natsauth

import (
	"crypto/ed25519"
	"encoding/binary"
	"fmt"

	"github.com/nats-io/jwt/v2"
	"github.com/nats-io/nkeys"
)

// An edge's presence is what it says about itself to be relayed by gossip
// peers while its own NATS link is down: its id, the revision it has
// applied and when it said so (unix ms), signed with its NATS user nkey.
// The origin learns the key from the edge's own heartbeats (on the edge's
// own subject, which its credential alone may publish on) and accepts a
// relayed presence only if it verifies, so a relaying edge cannot claim a
// revision for a peer the peer did not sign.

// presenceDomain separates presence signatures from any other use of the key.
const presenceDomain = "keymesh-presence-v1\x00"

// PresenceSigSize is the size of a presence signature.
const PresenceSigSize = ed25519.SignatureSize

// PresenceMessage is the exact bytes a presence signature covers.
func PresenceMessage(id string, rev uint64, unixMS int64) []byte {
	b := make([]byte, 0, len(presenceDomain)+len(id)+1+16)
	b = append(b, presenceDomain...)
	b = append(b, id...)
	b = append(b, 0)
	b = binary.BigEndian.AppendUint64(b, rev)
	return binary.BigEndian.AppendUint64(b, uint64(unixMS))
}

// PresenceKey returns the user nkey of a .creds file (its seed).
func PresenceKey(creds []byte) (nkeys.KeyPair, error) {
	kp, err := jwt.ParseDecoratedNKey(creds)
	if err != nil {
		return nil, fmt.Errorf("%w: no user nkey seed in the .creds file", ErrInvalid)
	}
	if pk, err := kp.PublicKey(); err != nil || !nkeys.IsValidPublicUserKey(pk) {
		return nil, fmt.Errorf("%w: the .creds seed is not a user nkey", ErrInvalid)
	}
	return kp, nil
}

// SignPresence signs (id, rev, unixMS) with kp.
func SignPresence(kp nkeys.KeyPair, id string, rev uint64, unixMS int64) ([]byte, error) {
	return kp.Sign(PresenceMessage(id, rev, unixMS))
}

// VerifyPresence reports whether sig is pub's (a user nkey public key)
// signature over exactly (id, rev, unixMS).
func VerifyPresence(pub, id string, rev uint64, unixMS int64, sig []byte) bool {
	if len(sig) != PresenceSigSize || !nkeys.IsValidPublicUserKey(pub) {
		return false
	}
	kp, err := nkeys.FromPublicKey(pub)
	if err != nil {
		return false
	}
	return kp.Verify(PresenceMessage(id, rev, unixMS), sig) == nil
}
