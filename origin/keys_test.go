package origin

import (
	"bytes"
	"errors"
	"io/fs"
	"os"
	"path/filepath"
	"testing"
)

// New takes the generated files as they are (rewriting none) and signs with
// the generated key.
func TestGenerateKeysAcceptedByNew(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "keys")
	pub, err := GenerateKeys(dir)
	if err != nil {
		t.Fatal(err)
	}
	before := map[string][]byte{}
	for _, name := range keyFiles {
		b, err := os.ReadFile(filepath.Join(dir, name))
		if err != nil {
			t.Fatal(err)
		}
		before[name] = b
	}
	for name, want := range map[string]os.FileMode{"signing.key": 0o600, "jwt.key": 0o600, "signing.pub": 0o644} {
		if st, err := os.Stat(filepath.Join(dir, name)); err != nil || st.Mode().Perm() != want {
			t.Errorf("%s: mode %v (%v), want %v", name, st.Mode().Perm(), err, want)
		}
	}
	s := startServer(t, testConfig(dir))
	if !bytes.Equal(s.PublicKey(), pub) {
		t.Fatal("the origin signs with another key than the generated one")
	}
	for name, b := range before {
		after, err := os.ReadFile(filepath.Join(dir, name))
		if err != nil || !bytes.Equal(after, b) {
			t.Errorf("%s changed when the origin started (%v)", name, err)
		}
	}
}

func TestGenerateKeysNeverReplaces(t *testing.T) {
	dir := t.TempDir()
	old := []byte("keep me\n")
	if err := os.WriteFile(filepath.Join(dir, "jwt.key"), old, 0o600); err != nil {
		t.Fatal(err)
	}
	if _, err := GenerateKeys(dir); !errors.Is(err, fs.ErrExist) {
		t.Fatalf("GenerateKeys over an existing jwt.key: %v, want fs.ErrExist", err)
	}
	if b, _ := os.ReadFile(filepath.Join(dir, "jwt.key")); !bytes.Equal(b, old) {
		t.Fatal("jwt.key was replaced")
	}
	ents, _ := os.ReadDir(dir)
	if len(ents) != 1 {
		t.Fatalf("%d files in the directory, want only the old jwt.key", len(ents))
	}
	// A file that appears between the check and the write is not replaced
	// either.
	path := filepath.Join(dir, "x")
	if err := os.WriteFile(path, old, 0o600); err != nil {
		t.Fatal(err)
	}
	if err := writeFileExclusive(path, []byte("new"), 0o600); !errors.Is(err, fs.ErrExist) {
		t.Fatalf("writeFileExclusive over a file: %v", err)
	}
	if b, _ := os.ReadFile(path); !bytes.Equal(b, old) {
		t.Fatal("writeFileExclusive replaced a file")
	}
}
