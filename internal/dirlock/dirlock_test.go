package dirlock

import (
	"errors"
	"os"
	"strconv"
	"strings"
	"testing"
)

// A second holder is refused with the first's pid; after Release the
// directory can be taken again.
func TestAcquireExclusive(t *testing.T) {
	dir := t.TempDir()
	l, err := Acquire(dir)
	if err != nil {
		t.Fatal(err)
	}
	_, err = Acquire(dir) // another open file: flock conflicts within a process too
	if !errors.Is(err, ErrInUse) || !strings.Contains(err.Error(), "in use by pid "+strconv.Itoa(os.Getpid())) {
		t.Fatalf("second acquire: %v", err)
	}
	l.Release()
	l.Release()
	l2, err := Acquire(dir)
	if err != nil {
		t.Fatalf("after release: %v", err)
	}
	l2.Release()
}

// A lock file left behind (a killed holder's, with its pid) blocks nobody.
func TestStaleLockFile(t *testing.T) {
	dir := t.TempDir()
	if err := os.WriteFile(dir+"/"+FileName, []byte("999999\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	l, err := Acquire(dir)
	if err != nil {
		t.Fatalf("stale lock file blocked: %v", err)
	}
	l.Release()
}
