package main

import (
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/keymesh/keymesh/internal/testutil"
)

// A second origin on a data dir in use exits non-zero with one line naming
// the holder's pid; once the holder is killed (SIGKILL: its lock file
// stays), the data dir is free again (issue 12.7).
func TestSecondOriginOnOneDataDirRefused(t *testing.T) {
	dir := t.TempDir()
	first := startOriginProcess(t, dir)

	exe, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	second := exec.Command(exe, "--data-dir", dir, "--listen", "127.0.0.1:0", "--nats-listen", "127.0.0.1:-1")
	second.Env = append(os.Environ(), "ORIGIN_TEST_MAIN=1", "ORIGIN_ADMIN_PASSWORD="+processPassword)
	errb := &testutil.Buffer{}
	second.Stderr = errb
	done := make(chan error, 1)
	if err := second.Start(); err != nil {
		t.Fatal(err)
	}
	go func() { done <- second.Wait() }()
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
	want := fmt.Sprintf("origin: data dir %s is in use by pid %d", dir, first.cmd.Process.Pid)
	if lines := strings.Split(strings.TrimSpace(errb.String()), "\n"); len(lines) != 1 || !strings.HasPrefix(lines[0], want) {
		t.Fatalf("stderr %q, want one line starting %q", errb.String(), want)
	}

	first.kill(t)
	if b, err := os.ReadFile(filepath.Join(dir, "lock")); err != nil || strings.TrimSpace(string(b)) != strconv.Itoa(first.cmd.Process.Pid) {
		t.Fatalf("killed origin's lock file: %q %v", b, err)
	}
	startOriginProcess(t, dir) // the stale file blocks nothing
}
