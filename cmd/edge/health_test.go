package main

import (
	"fmt"
	"io"
	"net/http"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/keymesh/keymesh/internal/testutil"
)

// An edge that has no snapshot yet (here: NATS unreachable, nothing
// persisted) is up but not ready: /health, on the proxy listener and on the
// admin one, answers 503 "syncing"; /ping still answers (issue 11.4).
func TestHealthNotReadyBeforeSnapshot(t *testing.T) {
	listen, admin := freeAddr(t), freeAddr(t)
	cmd := edgeCommand(t, "--listen", listen, "--admin-listen", admin, "--nats-url", "nats://"+freeAddr(t),
		"--data-dir", filepath.Join(t.TempDir(), "edge"))
	errb := &testutil.Buffer{}
	cmd.Stderr = errb
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = cmd.Process.Kill(); _ = cmd.Wait() })
	get := func(url string) (int, string, error) {
		resp, err := http.Get(url)
		if err != nil {
			return 0, "", err
		}
		defer resp.Body.Close()
		b, _ := io.ReadAll(resp.Body)
		return resp.StatusCode, string(b), nil
	}
	for _, url := range []string{"http://" + listen + "/health", "http://" + admin + "/health"} {
		testutil.CheckFor(t, 30*time.Second, 20*time.Millisecond, func() error {
			st, body, err := get(url)
			if err != nil {
				return err
			}
			if st != http.StatusServiceUnavailable || !strings.Contains(body, "syncing") {
				return fmt.Errorf("%s: %d %s, want 503 syncing", url, st, body)
			}
			return nil
		})
	}
	if st, _, err := get("http://" + listen + "/ping"); err != nil || st != http.StatusOK {
		t.Fatalf("/ping: %d %v", st, err)
	}
}
