// Package dirlock keeps two processes off one data directory.
//
// Acquire takes an exclusive flock(2) on <dir>/lock and writes the holder's
// pid into it. The lock belongs to the open file, so the kernel releases it
// when the process exits however it exits: a lock file left by a killed
// process blocks nobody, and the pid in it is only read to name the holder
// in the error of a process that is refused.
package dirlock

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"

	"golang.org/x/sys/unix"
)

// ErrInUse is returned (wrapped, naming the holder's pid) by Acquire when
// another process holds the directory.
var ErrInUse = errors.New("dirlock: data dir in use")

// FileName is the lock file's name inside the directory.
const FileName = "lock"

// Lock is a held directory lock.
type Lock struct {
	f *os.File
}

// Acquire locks dir, which must exist, for this process. It never waits:
// a directory held elsewhere is an error naming the holder,
// "data dir X is in use by pid N".
func Acquire(dir string) (*Lock, error) {
	path := filepath.Join(dir, FileName)
	f, err := os.OpenFile(path, os.O_RDWR|os.O_CREATE, 0o600)
	if err != nil {
		return nil, fmt.Errorf("locking data dir %s: %w", dir, err)
	}
	if err := unix.Flock(int(f.Fd()), unix.LOCK_EX|unix.LOCK_NB); err != nil {
		defer f.Close()
		if errors.Is(err, unix.EWOULDBLOCK) {
			holder := "another process"
			b := make([]byte, 32)
			n, _ := f.ReadAt(b, 0)
			if pid, err := strconv.Atoi(strings.TrimSpace(string(b[:n]))); err == nil && pid > 0 {
				holder = "pid " + strconv.Itoa(pid)
			}
			return nil, fmt.Errorf("data dir %s is in use by %s: %w", dir, holder, ErrInUse)
		}
		return nil, fmt.Errorf("locking data dir %s: %w", dir, err)
	}
	if err := f.Truncate(0); err == nil {
		_, err = f.WriteAt([]byte(strconv.Itoa(os.Getpid())+"\n"), 0)
	}
	if err != nil {
		_ = f.Close()
		return nil, fmt.Errorf("locking data dir %s: %w", dir, err)
	}
	return &Lock{f: f}, nil
}

// Release gives the directory up. The file stays (removing it would race a
// process about to lock it); its pid is cleared. Release on nil or twice is
// a no-op.
func (l *Lock) Release() {
	if l == nil || l.f == nil {
		return
	}
	_ = l.f.Truncate(0)
	_ = l.f.Close() // closing the last descriptor drops the flock
	l.f = nil
}
