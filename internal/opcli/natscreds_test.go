package opcli

import (
	"bytes"
	"context"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/nats-io/nats-server/v2/server"
	"github.com/nats-io/nats.go"

	"github.com/keymesh/keymesh/internal/stack"
	"github.com/keymesh/keymesh/origin"
)

// Credentials written before the origin's first start are the ones its
// embedded NATS admits; the file is 0600 and never replaced.
func TestNATSCredsBeforeFirstStart(t *testing.T) {
	dataDir := t.TempDir()
	out := filepath.Join(t.TempDir(), "edge.creds")
	var stdout, stderr bytes.Buffer
	if code := run([]string{"nats-creds", "--role", "edge", "--id", "edge-1", "--data-dir", dataDir, "--out", out}, noenv, &stdout, &stderr); code != 0 {
		t.Fatalf("exit %d: %s", code, stderr.String())
	}
	if st, err := os.Stat(out); err != nil || st.Mode().Perm() != 0o600 {
		t.Fatalf("creds file %v %v", st, err)
	}
	if strings.Contains(stdout.String(), "SEED") || strings.Contains(stderr.String(), "SEED") {
		t.Fatal("the seed was printed although --out was given")
	}
	if code := run([]string{"nats-creds", "--role", "edge", "--id", "edge-1", "--data-dir", dataDir, "--out", out}, noenv, &stdout, &stderr); code != 1 {
		t.Fatalf("an existing creds file was replaced (exit %d)", code)
	}
	for _, args := range [][]string{{"--role", "edge"}, {"--role", "admin", "--id", "x"}, {"--role", "edge", "--id", "a b"}, {"extra"}} {
		if code := run(append([]string{"nats-creds", "--data-dir", dataDir}, args...), noenv, &stdout, &stderr); code != 2 {
			t.Errorf("nats-creds %v: exit %d, want 2", args, code)
		}
	}

	o := stack.ForTest(t, stack.Config{Dir: t.TempDir(), OriginDir: dataDir, AdminPassword: "nats-creds-test-password"}).Origin
	nc, err := nats.Connect(o.NATSURL(), nats.UserCredentials(out))
	if err != nil {
		t.Fatalf("the origin's NATS refused the credential issued before its first start: %v", err)
	}
	nc.Close()
	if nc, err := nats.Connect(o.NATSURL()); err == nil {
		nc.Close()
		t.Fatal("the origin's NATS admitted a client without credentials")
	}
}

// nats-config is a configuration a stock nats-server loads and then
// admits keymesh's credentials with, and only those, with JetStream.
func TestNATSConfigForExternalCluster(t *testing.T) {
	dataDir := t.TempDir()
	var conf, stderr bytes.Buffer
	if code := run([]string{"nats-config", "--data-dir", dataDir}, noenv, &conf, &stderr); code != 0 {
		t.Fatalf("exit %d: %s", code, stderr.String())
	}
	for _, f := range []string{"nats-operator.nk", "nats-account.nk", "nats-system.nk"} {
		seed, err := os.ReadFile(filepath.Join(dataDir, f))
		if err != nil || strings.Contains(conf.String(), strings.TrimSpace(string(seed))) {
			t.Fatalf("nats-config printed %s (or did not create it: %v)", f, err)
		}
	}
	dir := t.TempDir()
	path := filepath.Join(dir, "nats.conf")
	full := "listen: 127.0.0.1:-1\njetstream: {store_dir: \"" + filepath.Join(dir, "js") + "\"}\n" + conf.String()
	if err := os.WriteFile(path, []byte(full), 0o600); err != nil {
		t.Fatal(err)
	}
	opts, err := server.ProcessConfigFile(path)
	if err != nil {
		t.Fatalf("nats-server rejects the config: %v", err)
	}
	opts.NoLog, opts.NoSigs, opts.Port = true, true, -1
	ns, err := server.NewServer(opts)
	if err != nil {
		t.Fatal(err)
	}
	go ns.Start()
	t.Cleanup(ns.Shutdown)
	if !ns.ReadyForConnections(10 * time.Second) {
		t.Fatal("nats-server did not start")
	}
	creds := filepath.Join(dir, "origin.creds")
	var stdout bytes.Buffer
	if code := run([]string{"nats-creds", "--role", "origin", "--data-dir", dataDir, "--out", creds}, noenv, &stdout, &stderr); code != 0 {
		t.Fatalf("exit %d: %s", code, stderr.String())
	}
	// The origin connects with the credential nats-creds wrote (not one the
	// stack would issue), and creates the event stream: JetStream works for
	// the account.
	st, err := stack.Start(context.Background(), stack.Config{Dir: t.TempDir(), NATSURL: ns.ClientURL(),
		AdminPassword: "nats-config-test-password", Origin: func(c *origin.Config) { c.NATSCreds = creds }})
	if err != nil {
		t.Fatal(err)
	}
	_ = st.Shutdown(context.Background())
	if nc, err := nats.Connect(ns.ClientURL()); err == nil {
		nc.Close()
		t.Fatal("the configured server admitted a client without credentials")
	}
}
