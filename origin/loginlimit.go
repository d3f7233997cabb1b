package origin

import (
	"container/list"
	"net"
	"net/http"
	"strconv"
	"sync"
	"time"
)

// loginGuard slows password guessing three ways, so that neither many
// addresses nor many usernames buy an attacker more guesses:
//
//   - per source address: after addrFree consecutive failures from one
//     address, it must wait before its next attempt, the wait doubling with
//     each further failure up to addrMaxWait;
//   - per username, whoever sends it: the same after userFree failures, up
//     to userMaxWait. Unknown usernames are throttled exactly like real ones
//     (a 429 must not tell them apart);
//   - globally: failed logins over all addresses and usernames draw on one
//     token bucket (globalBurst, refilled at globalRate), which also bounds
//     the CPU that password hashing can be made to burn.
//
// A per-username or global throttle lets an attacker slow the real admin
// too. To keep that from locking the admin out, an address from which a
// username has logged in successfully within trustFor is trusted for that
// username: it is held to its own address limit only. An attacker gains
// that only by knowing the password.
//
// Memory is bounded however many addresses and usernames a flood sends:
// each table keeps at most maxLoginEntries entries and forgets the one
// whose last failure is oldest (least recently failed, in O(1)); an entry
// quiet for twice its longest wait starts over.
type loginGuard struct {
	mu     sync.Mutex
	now    func() time.Time
	addrs  *backoffTable
	users  *backoffTable
	global struct {
		tokens float64
		at     time.Time
	}
	globalBurst float64
	globalRate  float64 // tokens a second
	trusted     map[string][]trustedAddr
}

type trustedAddr struct {
	addr  string
	until time.Time
}

const (
	addrFree        = 5
	addrMaxWait     = 5 * time.Minute
	userFree        = 10
	userMaxWait     = time.Minute
	firstWait       = time.Second
	globalBurst     = 100
	globalRate      = 1.0 // failed logins a second, sustained
	trustFor        = 7 * 24 * time.Hour
	maxTrustedAddrs = 4 // per username
	maxLoginEntries = 10_000
)

func newLoginGuard(now func() time.Time) *loginGuard {
	g := &loginGuard{now: now, addrs: newBackoffTable(addrFree, addrMaxWait, maxLoginEntries),
		users: newBackoffTable(userFree, userMaxWait, maxLoginEntries), globalBurst: globalBurst, globalRate: globalRate,
		trusted: map[string][]trustedAddr{}}
	g.global.tokens, g.global.at = globalBurst, now()
	return g
}

// throttle reasons, as the 429 says them.
const (
	throttledAddr   = "too many failed logins from this address"
	throttledUser   = "too many failed logins for this username"
	throttledGlobal = "too many failed logins"
)

// allow reports whether user may try to log in from addr now; if not, why
// and for how long.
func (g *loginGuard) allow(user, addr string) (ok bool, wait time.Duration, reason string) {
	g.mu.Lock()
	defer g.mu.Unlock()
	now := g.now()
	if w := g.addrs.wait(addr, now); w > 0 {
		return false, w, throttledAddr
	}
	if g.isTrusted(user, addr, now) {
		return true, 0, ""
	}
	if w := g.users.wait(userKey(user), now); w > 0 {
		return false, w, throttledUser
	}
	if g.refill(now); g.global.tokens < 1 {
		return false, time.Duration((1 - g.global.tokens) / g.globalRate * float64(time.Second)), throttledGlobal
	}
	return true, 0, ""
}

// failed records a failed attempt of user from addr.
func (g *loginGuard) failed(user, addr string) {
	g.mu.Lock()
	defer g.mu.Unlock()
	now := g.now()
	g.addrs.failed(addr, now)
	if g.isTrusted(user, addr, now) {
		return
	}
	g.users.failed(userKey(user), now)
	g.refill(now)
	g.global.tokens--
}

// succeeded clears addr and trusts it for user. The username's own count
// stays: an attacker elsewhere gains nothing from the admin's success.
func (g *loginGuard) succeeded(user, addr string) {
	g.mu.Lock()
	defer g.mu.Unlock()
	now := g.now()
	g.addrs.clear(addr)
	list := g.trusted[user][:0:0]
	for _, t := range g.trusted[user] {
		if t.addr != addr && now.Before(t.until) {
			list = append(list, t)
		}
	}
	if len(list) >= maxTrustedAddrs {
		list = list[1:]
	}
	if _, known := g.trusted[user]; !known && len(g.trusted) >= maxLoginEntries {
		for u := range g.trusted { // full: forget one (only real users ever get here)
			delete(g.trusted, u)
			break
		}
	}
	g.trusted[user] = append(list, trustedAddr{addr: addr, until: now.Add(trustFor)})
}

func (g *loginGuard) isTrusted(user, addr string, now time.Time) bool {
	for _, t := range g.trusted[user] {
		if t.addr == addr && now.Before(t.until) {
			return true
		}
	}
	return false
}

func (g *loginGuard) refill(now time.Time) {
	if d := now.Sub(g.global.at); d > 0 {
		g.global.tokens = min(g.globalBurst, g.global.tokens+d.Seconds()*g.globalRate)
	}
	g.global.at = now
}

// userKey bounds a username used as a table key.
func userKey(user string) string {
	if len(user) > maxRefLen {
		return user[:maxRefLen]
	}
	return user
}

// backoffTable counts consecutive failures per key, with an exponential
// wait past free failures, in at most max entries (LRU by last failure).
type backoffTable struct {
	free    int
	maxWait time.Duration
	max     int
	entries map[string]*list.Element // of *backoffEntry
	order   *list.List               // front: least recent failure
}

type backoffEntry struct {
	key      string
	failures int
	last     time.Time // last failure
	until    time.Time // no attempt before this
}

func newBackoffTable(free int, maxWait time.Duration, max int) *backoffTable {
	return &backoffTable{free: free, maxWait: maxWait, max: max, entries: map[string]*list.Element{}, order: list.New()}
}

// wait is how long key must still wait (0: it may try).
func (t *backoffTable) wait(key string, now time.Time) time.Duration {
	el := t.entries[key]
	if el == nil {
		return 0
	}
	return max(0, el.Value.(*backoffEntry).until.Sub(now))
}

func (t *backoffTable) failed(key string, now time.Time) {
	el := t.entries[key]
	var e *backoffEntry
	if el == nil {
		if len(t.entries) >= t.max {
			oldest := t.order.Front()
			t.order.Remove(oldest)
			delete(t.entries, oldest.Value.(*backoffEntry).key)
		}
		e = &backoffEntry{key: key}
		t.entries[key] = t.order.PushBack(e)
	} else {
		e = el.Value.(*backoffEntry)
		t.order.MoveToBack(el)
		if now.Sub(e.last) > 2*t.maxWait {
			e.failures = 0 // a long quiet spell starts over
		}
	}
	e.failures++
	e.last = now
	if over := e.failures - t.free; over >= 0 {
		wait := t.maxWait
		if over < 20 {
			wait = min(firstWait<<over, t.maxWait)
		}
		e.until = now.Add(wait)
	}
}

func (t *backoffTable) clear(key string) {
	if el := t.entries[key]; el != nil {
		t.order.Remove(el)
		delete(t.entries, key)
	}
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
