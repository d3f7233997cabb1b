package main

import (
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/keymesh/keymesh/internal/testutil"
)

// buildOrigin builds this command into a temporary directory.
func buildOrigin(t *testing.T) string {
	t.Helper()
	bin := filepath.Join(t.TempDir(), "origin")
	if out, err := exec.Command("go", "build", "-o", bin, ".").CombinedOutput(); err != nil {
		t.Fatalf("go build: %v\n%s", err, out)
	}
	return bin
}

// startOriginBinary starts bin on dir and waits for it to serve.
func startOriginBinary(t *testing.T, bin, dir string) (*exec.Cmd, *testutil.Buffer) {
	t.Helper()
	cmd := exec.Command(bin, "--data-dir", dir, "--listen", "127.0.0.1:0", "--nats-listen", "127.0.0.1:-1")
	cmd.Env = append(os.Environ(), "ORIGIN_ADMIN_PASSWORD=pw-for-test")
	errb := &testutil.Buffer{}
	cmd.Stderr = errb
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = cmd.Process.Kill(); _ = cmd.Wait() })
	testutil.CheckFor(t, 60*time.Second, 20*time.Millisecond, func() error {
		if !strings.Contains(errb.String(), "origin started") {
			return fmt.Errorf("not started: %s", errb.String())
		}
		return nil
	})
	return cmd, errb
}

// A second origin on a data dir in use exits non-zero with one line naming
// the holder's pid; once the holder is killed (SIGKILL: its lock file
// stays), the data dir is free again (issue 12.7).
func TestSecondOriginOnOneDataDirRefused(t *testing.T) {
	bin := buildOrigin(t)
	dir := t.TempDir()
	first, _ := startOriginBinary(t, bin, dir)

	second := exec.Command(bin, "--data-dir", dir, "--listen", "127.0.0.1:0", "--nats-listen", "127.0.0.1:-1")
	errb := &testutil.Buffer{}
	second.Stderr = errb
	done := make(chan error, 1)
	if err := second.Start(); err != nil {
		t.Fatal(err)
	}
	go func() { done <- second.Wait() }()
	var err error
	select {
	case err = <-done:
	case <-time.After(60 * time.Second):
		_ = second.Process.Kill()
		<-done
		t.Fatalf("second origin still running: %s", errb.String())
	}
	var exit *exec.ExitError
	if !errors.As(err, &exit) || exit.ExitCode() == 0 {
		t.Fatalf("second origin: %v, stderr %q", err, errb.String())
	}
	want := fmt.Sprintf("origin: data dir %s is in use by pid %d", dir, first.Process.Pid)
	if lines := strings.Split(strings.TrimSpace(errb.String()), "\n"); len(lines) != 1 || !strings.HasPrefix(lines[0], want) {
		t.Fatalf("stderr %q, want one line starting %q", errb.String(), want)
	}

	if err := first.Process.Signal(syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	_ = first.Wait()
	if b, err := os.ReadFile(filepath.Join(dir, "lock")); err != nil || strings.TrimSpace(string(b)) != strconv.Itoa(first.Process.Pid) {
		t.Fatalf("killed origin's lock file: %q %v", b, err)
	}
	startOriginBinary(t, bin, dir) // the stale file blocks nothing
}
