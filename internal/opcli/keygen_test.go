package opcli

import (
	"bytes"
	"context"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/keymesh/keymesh/event"
	"github.com/keymesh/keymesh/internal/stack"
)

// Two replicas started on copies of one keygen output sign with the key
// keygen printed, the one in signing.pub.
func TestKeygenFilesAreWhatOriginUses(t *testing.T) {
	keys := filepath.Join(t.TempDir(), "keys")
	var out, errb bytes.Buffer
	if code := run([]string{"keygen", "--out", keys}, noenv, &out, &errb); code != 0 {
		t.Fatalf("keygen exit %d: %s", code, errb.String())
	}
	pubFile, err := os.ReadFile(filepath.Join(keys, "signing.pub"))
	if err != nil {
		t.Fatal(err)
	}
	printed := strings.TrimSpace(out.String()[strings.LastIndex(out.String(), ":")+1:])
	if printed != strings.TrimSpace(string(pubFile)) {
		t.Fatalf("printed public key %q, signing.pub holds %q", printed, pubFile)
	}
	want, err := event.ParsePublicKey(printed)
	if err != nil {
		t.Fatal(err)
	}
	for i := range 2 {
		dir := t.TempDir()
		for _, f := range []string{"signing.key", "jwt.key"} {
			b, err := os.ReadFile(filepath.Join(keys, f))
			if err != nil {
				t.Fatal(err)
			}
			if err := os.WriteFile(filepath.Join(dir, f), b, 0o600); err != nil {
				t.Fatal(err)
			}
		}
		st, err := stack.Start(context.Background(), stack.Config{Dir: t.TempDir(), OriginDir: dir, AdminPassword: cliPassword})
		if err != nil {
			t.Fatalf("replica %d: %v", i, err)
		}
		s := st.Origin
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		err = st.Shutdown(ctx)
		cancel()
		if !s.PublicKey().Equal(want) {
			t.Fatalf("replica %d signs with another key", i)
		}
		if err != nil {
			t.Fatal(err)
		}
		if b, _ := os.ReadFile(filepath.Join(dir, "signing.pub")); string(b) != string(pubFile) {
			t.Fatalf("replica %d wrote signing.pub %q, keygen %q", i, b, pubFile)
		}
	}
}

func TestKeygenRefusesAndRejects(t *testing.T) {
	keys := t.TempDir()
	var out, errb bytes.Buffer
	if code := run([]string{"keygen", "--out", keys}, noenv, &out, &errb); code != 0 {
		t.Fatalf("keygen exit %d: %s", code, errb.String())
	}
	before, _ := os.ReadFile(filepath.Join(keys, "signing.key"))
	for _, c := range []struct {
		args []string
		code int
	}{
		{[]string{"keygen", "--out", keys}, 1}, // never over existing keys
		{[]string{"keygen"}, 2},
		{[]string{"keygen", "--out", keys, "extra"}, 2},
		{[]string{"keygen", "--bogus"}, 2},
	} {
		out.Reset()
		errb.Reset()
		code := run(c.args, noenv, &out, &errb)
		if code != c.code || strings.Count(strings.TrimSpace(errb.String()), "\n") != 0 || !strings.HasPrefix(errb.String(), "origin: keygen: ") {
			t.Errorf("%v: exit %d (want %d), stderr %q", c.args, code, c.code, errb.String())
		}
	}
	if after, _ := os.ReadFile(filepath.Join(keys, "signing.key")); !bytes.Equal(before, after) {
		t.Fatal("signing.key replaced")
	}
	out.Reset()
	if code := run([]string{"keygen", "--help"}, noenv, &out, &errb); code != 0 || !strings.Contains(out.String(), "--out") {
		t.Fatalf("keygen --help: %d %q", code, out.String())
	}
	out.Reset()
	if code := run([]string{"help"}, noenv, &out, &errb); code != 0 || !strings.Contains(out.String(), "  keygen --out DIR") {
		t.Fatalf("help lacks keygen: %s", out.String())
	}
}
