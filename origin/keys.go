package origin

import (
	"crypto/ed25519"
	"crypto/rand"
	"encoding/base64"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"

	"github.com/keymesh/keymesh/event"
)

// jwtKeySize is the length of the jwt.key secret an origin creates.
const jwtKeySize = 32

// keyFiles are the files GenerateKeys writes, in the order it writes them.
var keyFiles = []string{"signing.key", "jwt.key", "signing.pub"}

// GenerateKeys writes a new signing.key (Ed25519), jwt.key (the admin token
// secret) and signing.pub into dir, creating dir with mode 0700 if missing,
// in the formats New reads from its DataDir. Origin replicas started with
// copies of these files sign alike (edges trust one key) and accept each
// other's admin tokens. It never replaces a file: if any of them exists it
// writes nothing and returns an error wrapping fs.ErrExist. It returns the
// public key.
func GenerateKeys(dir string) (ed25519.PublicKey, error) {
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return nil, fmt.Errorf("creating %s: %w", dir, err)
	}
	for _, name := range keyFiles {
		if _, err := os.Lstat(filepath.Join(dir, name)); err == nil {
			return nil, fmt.Errorf("%s: %w (keys are never replaced; remove it, or use another directory)", filepath.Join(dir, name), fs.ErrExist)
		} else if !errors.Is(err, fs.ErrNotExist) {
			return nil, fmt.Errorf("checking %s: %w", name, err)
		}
	}
	priv, err := event.GenerateKey()
	if err != nil {
		return nil, err
	}
	secret := make([]byte, jwtKeySize)
	if _, err := rand.Read(secret); err != nil {
		return nil, fmt.Errorf("generating jwt key: %w", err)
	}
	pub := priv.Public().(ed25519.PublicKey)
	contents := map[string]struct {
		data []byte
		mode os.FileMode
	}{
		"signing.key": {[]byte(base64.StdEncoding.EncodeToString(priv) + "\n"), 0o600},
		"jwt.key":     {[]byte(base64.StdEncoding.EncodeToString(secret) + "\n"), 0o600},
		"signing.pub": {[]byte(event.EncodePublicKey(pub) + "\n"), 0o644},
	}
	var written []string
	for _, name := range keyFiles {
		path := filepath.Join(dir, name)
		c := contents[name]
		if err := writeFileExclusive(path, c.data, c.mode); err != nil {
			for _, w := range written {
				_ = os.Remove(w)
			}
			return nil, fmt.Errorf("writing %s: %w", name, err)
		}
		written = append(written, path)
	}
	return pub, nil
}

// writeFileExclusive writes data to path, complete or not at all, and fails
// with fs.ErrExist if path exists (also when it appears meanwhile): the
// file is written aside and hard-linked into place.
func writeFileExclusive(path string, data []byte, mode os.FileMode) error {
	return writeFileVia(path, data, mode, os.Link)
}
