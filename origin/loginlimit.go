package origin

import (
	"net"
	"net/http"
	"strconv"
	"sync"
	"time"
)

// loginLimiter slows password guessing per client address: after
// freeAttempts consecutive failures from one address, that address must wait
// before its next attempt, the wait doubling with each further failure up to
// maxWait. A success clears the address. Other addresses are unaffected, so
// an attacker cannot lock the admin out from elsewhere. The table is bounded:
// when full, the entry that has waited longest is forgotten.
type loginLimiter struct {
	mu      sync.Mutex
	now     func() time.Time
	entries map[string]*loginEntry
	max     int
}

type loginEntry struct {
	failures int
	last     time.Time // last failure
	until    time.Time // no attempt before this
}

const (
	freeAttempts  = 5
	firstWait     = time.Second
	maxWait       = 5 * time.Minute
	maxLoginAddrs = 10_000
)

func newLoginLimiter(now func() time.Time) *loginLimiter {
	return &loginLimiter{now: now, entries: map[string]*loginEntry{}, max: maxLoginAddrs}
}

// allow reports whether addr may try now, and if not, how long it must wait.
func (l *loginLimiter) allow(addr string) (bool, time.Duration) {
	l.mu.Lock()
	defer l.mu.Unlock()
	e := l.entries[addr]
	if e == nil {
		return true, 0
	}
	if wait := e.until.Sub(l.now()); wait > 0 {
		return false, wait
	}
	return true, 0
}

// failed records a failed attempt from addr.
func (l *loginLimiter) failed(addr string) {
	l.mu.Lock()
	defer l.mu.Unlock()
	now := l.now()
	e := l.entries[addr]
	if e == nil {
		if len(l.entries) >= l.max {
			l.evictOldest()
		}
		e = &loginEntry{}
		l.entries[addr] = e
	} else if now.Sub(e.last) > maxWait*2 {
		e.failures = 0 // a long quiet spell starts over
	}
	e.failures++
	e.last = now
	if over := e.failures - freeAttempts; over >= 0 {
		wait := maxWait
		if over < 20 {
			wait = min(firstWait<<over, maxWait)
		}
		e.until = now.Add(wait)
	}
}

// succeeded clears addr.
func (l *loginLimiter) succeeded(addr string) {
	l.mu.Lock()
	defer l.mu.Unlock()
	delete(l.entries, addr)
}

func (l *loginLimiter) evictOldest() {
	var oldest string
	var at time.Time
	for a, e := range l.entries {
		if oldest == "" || e.last.Before(at) {
			oldest, at = a, e.last
		}
	}
	delete(l.entries, oldest)
}

// clientAddr is the address a request came from (no proxy headers are
// trusted: the admin API is not meant to sit behind one).
func clientAddr(r *http.Request) string {
	host, _, err := net.SplitHostPort(r.RemoteAddr)
	if err != nil {
		return r.RemoteAddr
	}
	return host
}

func retryAfter(wait time.Duration) string {
	return strconv.Itoa(int((wait + time.Second - 1) / time.Second))
}
