package main

import (
	"errors"
	"fmt"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/keymesh/keymesh/internal/testutil"
)

// A second edge on a data dir in use exits non-zero with one line naming
// the first's pid (issue 12.7); after the first is killed the dir is free.
func TestSecondEdgeOnOneDataDirRefused(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "edge")
	nats := "nats://" + freeAddr(t)
	// edge starts one; wait says whether cleanup waits for it (else the
	// test does).
	edge := func(wait bool) (*exec.Cmd, *testutil.Buffer) {
		cmd := edgeCommand(t, "--listen", freeAddr(t), "--admin-listen", "", "--nats-url", nats,
			"--data-dir", dir)
		errb := &testutil.Buffer{}
		cmd.Stderr = errb
		if err := cmd.Start(); err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() {
			_ = cmd.Process.Kill()
			if wait {
				_ = cmd.Wait()
			}
		})
		return cmd, errb
	}
	started := func(errb *testutil.Buffer) {
		testutil.CheckFor(t, 30*time.Second, 10*time.Millisecond, func() error {
			if !strings.Contains(errb.String(), "edge started") {
				return fmt.Errorf("edge did not start: %s", errb.String())
			}
			return nil
		})
	}
	first, ferr := edge(false)
	started(ferr)

	second, serr := edge(false)
	done := make(chan error, 1)
	var err error
	go func() { done <- second.Wait() }()
	select {
	case err = <-done:
	case <-time.After(30 * time.Second):
		_ = second.Process.Kill()
		<-done
		_ = first.Process.Kill()
		_ = first.Wait()
		t.Fatalf("second edge still running: %s", serr.String())
	}
	var exit *exec.ExitError
	if !errors.As(err, &exit) || exit.ExitCode() == 0 {
		t.Fatalf("second edge: %v, stderr %q", err, serr.String())
	}
	want := fmt.Sprintf("edge: data dir %s is in use by pid %d", dir, first.Process.Pid)
	if lines := strings.Split(strings.TrimSpace(serr.String()), "\n"); len(lines) != 1 || !strings.HasPrefix(lines[0], want) {
		t.Fatalf("stderr %q, want one line starting %q", serr.String(), want)
	}

	_ = first.Process.Kill()
	_ = first.Wait()
	_, terr := edge(true)
	started(terr)
}
