package event

import (
	"bytes"
	"crypto/ed25519"
	"crypto/rand"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"strings"
)

// Errors returned when opening a sealed record.
var (
	ErrMalformed    = errors.New("event: malformed record")
	ErrBadSignature = errors.New("event: bad signature")
)

// context separates keymesh signatures from any other use of the key.
const context = "keymesh.record.v1\n"

// Wire format: the 64-byte Ed25519 signature over context||payload, then the
// payload, which is the record's JSON. The payload bytes are signed exactly
// as sent, so no canonicalisation is needed.

// Signer seals records with the origin's private key. It is safe for
// concurrent use.
type Signer struct{ priv ed25519.PrivateKey }

// NewSigner returns a Signer for priv.
func NewSigner(priv ed25519.PrivateKey) (*Signer, error) {
	if len(priv) != ed25519.PrivateKeySize {
		return nil, fmt.Errorf("%w: want %d-byte ed25519 private key", ErrMalformed, ed25519.PrivateKeySize)
	}
	return &Signer{priv: priv}, nil
}

// Public returns the key verifiers need.
func (s *Signer) Public() ed25519.PublicKey { return s.priv.Public().(ed25519.PublicKey) }

// Seal encodes and signs r.
func (s *Signer) Seal(r *Record) ([]byte, error) {
	payload, err := Marshal(r)
	if err != nil {
		return nil, fmt.Errorf("encoding record: %w", err)
	}
	out := make([]byte, ed25519.SignatureSize, ed25519.SignatureSize+len(payload))
	copy(out, ed25519.Sign(s.priv, signed(payload)))
	return append(out, payload...), nil
}

// Marshal is json.Marshal without HTML escaping: encoding/json writes each
// '<', '>' and '&' as a six-byte \u escape, so a record's size would
// depend on which characters a tenant typed (six times over for a string of
// '<'). Records are never embedded in HTML; their size must be what the
// origin's bounds say.
func Marshal(v any) ([]byte, error) {
	var buf bytes.Buffer
	enc := json.NewEncoder(&buf)
	enc.SetEscapeHTML(false)
	if err := enc.Encode(v); err != nil {
		return nil, err
	}
	return bytes.TrimSuffix(buf.Bytes(), []byte("\n")), nil
}

// Verifier opens records sealed by one origin key. It is safe for concurrent
// use.
type Verifier struct{ pub ed25519.PublicKey }

// NewVerifier returns a Verifier for pub.
func NewVerifier(pub ed25519.PublicKey) (*Verifier, error) {
	if len(pub) != ed25519.PublicKeySize {
		return nil, fmt.Errorf("%w: want %d-byte ed25519 public key", ErrMalformed, ed25519.PublicKeySize)
	}
	return &Verifier{pub: pub}, nil
}

// Open verifies wire's signature and decodes the record.
func (v *Verifier) Open(wire []byte) (*Record, error) {
	if len(wire) <= ed25519.SignatureSize {
		return nil, ErrMalformed
	}
	sig, payload := wire[:ed25519.SignatureSize], wire[ed25519.SignatureSize:]
	if !ed25519.Verify(v.pub, signed(payload), sig) {
		return nil, ErrBadSignature
	}
	var r Record
	if err := json.Unmarshal(payload, &r); err != nil {
		return nil, fmt.Errorf("%w: %v", ErrMalformed, err)
	}
	return &r, nil
}

func signed(payload []byte) []byte {
	b := make([]byte, 0, len(context)+len(payload))
	return append(append(b, context...), payload...)
}

// GenerateKey returns a new origin signing key.
func GenerateKey() (ed25519.PrivateKey, error) {
	_, priv, err := ed25519.GenerateKey(rand.Reader)
	if err != nil {
		return nil, fmt.Errorf("generating signing key: %w", err)
	}
	return priv, nil
}

// EncodePublicKey returns pub as standard base64, the form operators pass to
// edges.
func EncodePublicKey(pub ed25519.PublicKey) string { return base64.StdEncoding.EncodeToString(pub) }

// ParsePublicKey reads a public key given as base64, or as "@path" naming a
// file that holds the base64 text.
func ParsePublicKey(s string) (ed25519.PublicKey, error) {
	if path, ok := strings.CutPrefix(s, "@"); ok {
		b, err := os.ReadFile(path)
		if err != nil {
			return nil, fmt.Errorf("reading origin public key: %w", err)
		}
		s = string(b)
	}
	raw, err := base64.StdEncoding.DecodeString(strings.TrimSpace(s))
	if err != nil || len(raw) != ed25519.PublicKeySize {
		return nil, fmt.Errorf("%w: origin public key must be %d bytes of base64", ErrMalformed, ed25519.PublicKeySize)
	}
	return ed25519.PublicKey(raw), nil
}
