package main

import (
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/keymesh/keymesh/event"
	"github.com/keymesh/keymesh/internal/testutil"
)

// TestMain lets a test run this binary's main by re-executing the test
// binary with EDGE_TEST_MAIN=1.
func TestMain(m *testing.M) {
	if os.Getenv("EDGE_TEST_MAIN") == "1" {
		main()
		return
	}
	os.Exit(m.Run())
}

// freeAddr returns a loopback address nobody listens on.
func freeAddr(t *testing.T) string {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	return ln.Addr().String()
}

// edgeCommand is this package's main, re-executed as a child process with
// args, trusting a fresh origin key nothing signs with (these tests need no
// origin: the edge must start and behave without one).
func edgeCommand(t *testing.T, args ...string) *exec.Cmd {
	t.Helper()
	exe, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	priv, err := event.GenerateKey()
	if err != nil {
		t.Fatal(err)
	}
	signer, _ := event.NewSigner(priv)
	cmd := exec.Command(exe, append(args, "--origin-public-key", event.EncodePublicKey(signer.Public()))...)
	cmd.Env = append(os.Environ(), "EDGE_TEST_MAIN=1")
	return cmd
}

// SIGTERM (and SIGINT) drain and exit 0; the edge starts even before NATS
// is reachable, as it must when a site comes up before its control link.
func TestSignalsExitZero(t *testing.T) {
	for _, sig := range []syscall.Signal{syscall.SIGTERM, syscall.SIGINT} {
		t.Run(sig.String(), func(t *testing.T) {
			listen := freeAddr(t)
			cmd := edgeCommand(t, "--listen", listen, "--admin-listen", "", "--nats-url", "nats://"+freeAddr(t),
				"--data-dir", filepath.Join(t.TempDir(), "edge"))
			var stderr testutil.Buffer
			cmd.Stderr = &stderr
			if err := cmd.Start(); err != nil {
				t.Fatal(err)
			}
			defer func() { _ = cmd.Process.Kill() }()
			deadline := time.Now().Add(20 * time.Second)
			for !strings.Contains(stderr.String(), "edge started") {
				if time.Now().After(deadline) {
					t.Fatalf("edge did not start:\n%s", stderr.String())
				}
				time.Sleep(10 * time.Millisecond)
			}
			if err := cmd.Process.Signal(sig); err != nil {
				t.Fatal(err)
			}
			if err := cmd.Wait(); err != nil {
				t.Fatalf("exit after %v: %v\n%s", sig, err, stderr.String())
			}
		})
	}
}
