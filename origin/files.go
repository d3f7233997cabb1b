package origin

// Files in the data dir (the signing key, jwt.key, the admin password) and
// random ids and tokens.

import (
	"crypto/ed25519"
	"crypto/rand"
	"encoding/base32"
	"encoding/base64"
	"encoding/binary"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/keymesh/keymesh/event"
)

// loadSigningKey reads <dir>/signing.key (base64 Ed25519 private key) or
// creates it, and (re)writes <dir>/signing.pub.
func loadSigningKey(dir string) (ed25519.PrivateKey, error) {
	path := filepath.Join(dir, "signing.key")
	var priv ed25519.PrivateKey
	b, err := os.ReadFile(path)
	switch {
	case err == nil:
		raw, derr := base64.StdEncoding.DecodeString(strings.TrimSpace(string(b)))
		if derr != nil || len(raw) != ed25519.PrivateKeySize {
			return nil, fmt.Errorf("%s: not a base64 Ed25519 private key", path)
		}
		priv = ed25519.PrivateKey(raw)
	case errors.Is(err, os.ErrNotExist):
		if priv, err = event.GenerateKey(); err != nil {
			return nil, err
		}
		if err := writeFileAtomic(path, []byte(base64.StdEncoding.EncodeToString(priv)+"\n"), 0o600); err != nil {
			return nil, fmt.Errorf("writing signing key: %w", err)
		}
	default:
		return nil, fmt.Errorf("reading signing key: %w", err)
	}
	pub := event.EncodePublicKey(priv.Public().(ed25519.PublicKey))
	pubPath := filepath.Join(dir, "signing.pub")
	if cur, err := os.ReadFile(pubPath); err != nil || strings.TrimSpace(string(cur)) != pub {
		if err := writeFileAtomic(pubPath, []byte(pub+"\n"), 0o644); err != nil {
			return nil, fmt.Errorf("writing signing.pub: %w", err)
		}
	}
	return priv, nil
}

// loadSecretFile reads a base64 secret from path, creating n random bytes
// there (0600) if missing.
func loadSecretFile(path string, n int) ([]byte, error) {
	b, err := os.ReadFile(path)
	if err == nil {
		raw, derr := base64.StdEncoding.DecodeString(strings.TrimSpace(string(b)))
		if derr != nil || len(raw) < 16 {
			return nil, fmt.Errorf("%s: not a base64 secret of at least 16 bytes", path)
		}
		return raw, nil
	}
	if !errors.Is(err, os.ErrNotExist) {
		return nil, fmt.Errorf("reading %s: %w", filepath.Base(path), err)
	}
	raw := make([]byte, n)
	if _, err := rand.Read(raw); err != nil {
		return nil, err
	}
	if err := writeFileAtomic(path, []byte(base64.StdEncoding.EncodeToString(raw)+"\n"), 0o600); err != nil {
		return nil, fmt.Errorf("writing %s: %w", filepath.Base(path), err)
	}
	return raw, nil
}

// writeFileAtomic replaces path with data, complete or not at all.
func writeFileAtomic(path string, data []byte, mode os.FileMode) error {
	return writeFileVia(path, data, mode, os.Rename)
}

// writeFileVia writes data to a temporary file beside path, syncs it, and
// puts it in place with place(tmp, path): os.Rename replaces, os.Link
// fails if path exists.
func writeFileVia(path string, data []byte, mode os.FileMode, place func(oldpath, newpath string) error) error {
	tmp, err := os.CreateTemp(filepath.Dir(path), "."+filepath.Base(path)+".tmp*")
	if err != nil {
		return err
	}
	defer os.Remove(tmp.Name())
	if err := tmp.Chmod(mode); err != nil {
		tmp.Close()
		return err
	}
	if _, err := tmp.Write(data); err != nil {
		tmp.Close()
		return err
	}
	if err := tmp.Sync(); err != nil {
		tmp.Close()
		return err
	}
	if err := tmp.Close(); err != nil {
		return err
	}
	return place(tmp.Name(), path)
}

// idEncoding is Crockford's base32 alphabet in ASCII order, so that ids
// sort like their bytes.
var idEncoding = base32.NewEncoding("0123456789abcdefghjkmnpqrstvwxyz").WithPadding(base32.NoPadding)

// newID returns prefix_ followed by 48 bits of milliseconds and 80 random
// bits: ids sort roughly by creation time.
func newID(prefix string) string {
	var b [16]byte
	binary.BigEndian.PutUint64(b[:8], uint64(time.Now().UnixMilli())<<16)
	if _, err := rand.Read(b[6:]); err != nil {
		panic(err)
	}
	return prefix + "_" + idEncoding.EncodeToString(b[:])
}

func randomToken(n int) string {
	b := make([]byte, n)
	if _, err := rand.Read(b); err != nil {
		panic(err)
	}
	return base64.RawURLEncoding.EncodeToString(b)
}
