package origin

import (
	"fmt"
	"net/http"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/golang-jwt/jwt/v5"
	"golang.org/x/crypto/bcrypt"

	"github.com/keymesh/keymesh/api"
	"github.com/keymesh/keymesh/event"
)

// countingHasher is bcrypt that records the cost of every comparison.
type countingHasher struct {
	mu    sync.Mutex
	costs []int
}

func (h *countingHasher) hash(pw []byte, cost int) ([]byte, error) {
	return bcrypt.GenerateFromPassword(pw, cost)
}
func (h *countingHasher) compare(hash, pw []byte) error {
	cost, err := bcrypt.Cost(hash)
	if err != nil {
		cost = -1
	}
	h.mu.Lock()
	h.costs = append(h.costs, cost)
	h.mu.Unlock()
	return bcrypt.CompareHashAndPassword(hash, pw)
}

func (h *countingHasher) take() []int {
	h.mu.Lock()
	defer h.mu.Unlock()
	c := h.costs
	h.costs = nil
	return c
}

// A login for a user that does not exist does the same work as one for a
// user that does: one bcrypt comparison at the configured cost, whatever
// the username or password looks like.
func TestLoginCostsTheSameForUnknownUsers(t *testing.T) {
	cfg := testConfig(t.TempDir())
	cfg.PasswordCost = bcrypt.MinCost + 1
	h := &countingHasher{}
	cfg.hasher = h
	s := startServer(t, cfg)
	h.take()
	for i, tc := range []struct{ what, user, pw string }{
		{"known user, wrong password", "admin", "wrong password"},
		{"unknown user", "nobody", "wrong password"},
		{"unknown user, empty password", "nobody", ""},
		{"known user, empty password", "admin", ""},
		{"empty username", "", "x"},
		{"overlong username", strings.Repeat("a", 300), "x"},
		{"overlong password", "admin", strings.Repeat("a", 300)},
	} {
		// Each from an address of its own, under every throttle.
		if st, _ := loginFromAs(t, s, fmt.Sprintf("127.0.4.%d", i+1), tc.user, tc.pw); st != http.StatusUnauthorized {
			t.Fatalf("%s: %d", tc.what, st)
		}
		if costs := h.take(); len(costs) != 1 || costs[0] != cfg.PasswordCost {
			t.Errorf("%s: bcrypt comparisons at costs %v, want one at %d", tc.what, costs, cfg.PasswordCost)
		}
	}
}

// Guesses spread over many addresses are still throttled per username,
// and guesses spread over many usernames too, globally; the admin keeps
// logging in from an address they logged in from before.
func TestLoginThrottledPerUsernameAndGlobally(t *testing.T) {
	s := startServer(t, testConfig(t.TempDir()))
	// The admin logs in once from 127.0.0.1: that address is theirs.
	newClient(t, s)
	got429 := 0
	for i := range 60 { // 60 guesses over 12 addresses: 5 each, under the address limit
		st, h := loginFrom(t, s, fmt.Sprintf("127.0.1.%d", 1+i%12), "guess-"+fmt.Sprint(i))
		if st == http.StatusTooManyRequests {
			if got429 == 0 && (i != userFree || h.Get("Retry-After") == "") {
				t.Fatalf("first 429 at guess %d (Retry-After %q), want at %d", i+1, h.Get("Retry-After"), userFree+1)
			}
			got429++
		} else if st != http.StatusUnauthorized {
			t.Fatalf("guess %d: %d", i+1, st)
		}
	}
	if got429 != 60-userFree {
		t.Fatalf("%d of 60 distributed guesses throttled, want %d", got429, 60-userFree)
	}
	// From a fresh address the admin's right password is throttled too (the
	// username is under attack), but not from their own.
	if st, _ := loginFrom(t, s, "127.0.2.1", testPassword); st != http.StatusTooManyRequests {
		t.Fatalf("right password from a new address during the attack: %d", st)
	}
	if st, _ := loginFrom(t, s, "127.0.0.1", testPassword); st != http.StatusOK {
		t.Fatalf("the admin from their own address: %d", st)
	}

	// Many usernames from many addresses: the global bucket runs dry (on a
	// clock that stands still, so that it does not refill meanwhile).
	cfg2 := testConfig(t.TempDir())
	frozen := time.Now()
	cfg2.now = func() time.Time { return frozen }
	s2 := startServer(t, cfg2)
	newClient(t, s2)
	first := -1
	for i := range globalBurst + 20 {
		st, _ := loginFromAs(t, s2, fmt.Sprintf("127.0.3.%d", 1+i/4), fmt.Sprint("user", i), "guess")
		if st == http.StatusTooManyRequests && first < 0 {
			first = i
		}
	}
	if first != globalBurst {
		t.Fatalf("first global 429 at attempt %d, want about %d", first+1, globalBurst+1)
	}
	if st, _ := loginFrom(t, s2, "127.0.0.1", testPassword); st != http.StatusOK {
		t.Fatalf("the admin from their own address during a global flood: %d", st)
	}
}

// A token is good only for a user that exists, at the token version it was
// issued with: logout, a password change and deletion end it — on every
// replica, by the time the change answers.
func TestTokensBoundToTheUserAndRevocable(t *testing.T) {
	eachStore(t, func(t *testing.T, cfg Config) {
		s := startServer(t, cfg)
		admin := newClient(t, s)

		// Signed with jwt.key but for nobody: refused.
		forge := func(claims jwt.MapClaims) string {
			tok, err := jwt.NewWithClaims(jwt.SigningMethodHS256, claims).SignedString(s.jwtKey)
			if err != nil {
				t.Fatal(err)
			}
			return tok
		}
		exp := time.Now().Add(time.Hour).Unix()
		for what, claims := range map[string]jwt.MapClaims{
			"no such user":     {"iss": jwtIssuer, "sub": "usr_nobody", "name": "ghost", "ver": 0, "exp": exp},
			"no version":       {"iss": jwtIssuer, "sub": s.mustUserID(t, "admin"), "name": "admin", "exp": exp},
			"an older version": {"iss": jwtIssuer, "sub": s.mustUserID(t, "admin"), "name": "admin", "ver": -1, "exp": exp},
			"name only":        {"iss": jwtIssuer, "name": "admin", "exp": exp},
		} {
			c := &client{t: t, base: admin.base, token: forge(claims)}
			st, b := c.do("GET", "/v1/projects", nil)
			wantError(t, what, st, b, http.StatusUnauthorized, "AUTHENTICATION_FAILED")
		}

		// Logout ends every session of the user.
		other := newClient(t, s)
		admin.must(204, "POST", "/v1/auth/logout", nil, nil)
		for _, c := range []*client{admin, other} {
			st, b := c.do("GET", "/v1/projects", nil)
			wantError(t, "after logout", st, b, http.StatusUnauthorized, "AUTHENTICATION_FAILED")
		}
		admin = newClient(t, s)

		// A second admin: changing their password or deleting them ends
		// their sessions.
		admin.must(201, "POST", "/v1/users", map[string]any{"username": "ops", "password": "ops password 1"}, nil)
		ops := loginClient(t, s, "ops", "ops password 1")
		ops.must(200, "GET", "/v1/projects", nil, nil)
		admin.must(204, "PUT", "/v1/users/ops/password", map[string]any{"password": "ops password 2"}, nil)
		st, b := ops.do("GET", "/v1/projects", nil)
		wantError(t, "after a password change", st, b, http.StatusUnauthorized, "AUTHENTICATION_FAILED")
		ops = loginClient(t, s, "ops", "ops password 2")
		admin.must(204, "DELETE", "/v1/users/ops", nil, nil)
		st, b = ops.do("GET", "/v1/projects", nil)
		wantError(t, "after deletion", st, b, http.StatusUnauthorized, "AUTHENTICATION_FAILED")
		// Recreated under the same name, the old tokens stay dead.
		admin.must(201, "POST", "/v1/users", map[string]any{"username": "ops", "password": "ops password 2"}, nil)
		st, b = ops.do("GET", "/v1/projects", nil)
		wantError(t, "after re-creation", st, b, http.StatusUnauthorized, "AUTHENTICATION_FAILED")
	})
}

// The user cache does not delay revocation on another replica: a token in
// use on replica 2 is refused there as soon as logout on replica 1 answers.
func TestRevocationIsImmediateOnEveryReplica(t *testing.T) {
	cfg := testConfig(t.TempDir())
	cfg.Store = postgresDSN(t)
	s1 := startServer(t, cfg)
	s2 := startReplica(t, s1)
	for _, change := range []string{"logout", "password", "delete"} {
		admin := newClient(t, s1)
		admin.must(201, "POST", "/v1/users", map[string]any{"username": "ops-" + change, "password": "ops password 1"}, nil)
		ops := loginClient(t, s1, "ops-"+change, "ops password 1")
		on2 := &client{t: t, base: "http://" + s2.Addr(), token: ops.token}
		on2.must(200, "GET", "/v1/projects", nil, nil) // replica 2 now caches the user
		switch change {
		case "logout":
			ops.must(204, "POST", "/v1/auth/logout", nil, nil)
		case "password":
			ops.must(204, "PUT", "/v1/users/ops-password/password", map[string]any{"password": "ops password 2", "old_password": "ops password 1"}, nil)
		case "delete":
			admin.must(204, "DELETE", "/v1/users/ops-delete", nil, nil)
		}
		st, b := on2.do("GET", "/v1/projects", nil)
		wantError(t, change+" on replica 1, token on replica 2", st, b, http.StatusUnauthorized, "AUTHENTICATION_FAILED")
	}
}

// Users are managed by users only; one's own password change needs the old
// one; the last user stays.
func TestUserManagement(t *testing.T) {
	s := startServer(t, testConfig(t.TempDir()))
	admin := newClient(t, s)
	var u api.User
	admin.must(201, "POST", "/v1/users", map[string]any{"username": "ops", "password": "a good long one"}, &u)
	if u.ID == "" || u.Username != "ops" {
		t.Fatalf("created %+v", u)
	}
	st, b := admin.do("POST", "/v1/users", map[string]any{"username": "ops", "password": "a good long one"})
	wantError(t, "a taken name", st, b, http.StatusConflict, "CONFLICT")
	for what, body := range map[string]any{
		"short password":   map[string]any{"username": "x1", "password": "short"},
		"long password":    map[string]any{"username": "x1", "password": string(make([]byte, 73))},
		"control password": map[string]any{"username": "x1", "password": "a good long one\n"},
		"bad name":         map[string]any{"username": "a b", "password": "a good long one"},
		"no password":      map[string]any{"username": "x1"},
		"unknown field":    map[string]any{"username": "x1", "password": "a good long one", "admin": true},
	} {
		st, b := admin.do("POST", "/v1/users", body)
		wantError(t, what, st, b, http.StatusBadRequest, "VALIDATION_ERROR")
	}
	var page struct{ Items []api.User }
	admin.must(200, "GET", "/v1/users", nil, &page)
	if len(page.Items) != 2 || page.Items[0].Username != "admin" || page.Items[1].Username != "ops" {
		t.Fatalf("users %+v", page.Items)
	}
	_, raw := admin.do("GET", "/v1/users", nil)
	if strings.Contains(string(raw), "$2a$") || strings.Contains(string(raw), "password") {
		t.Fatalf("listing shows a hash: %s", raw)
	}

	// A project key, even holding manage_users, manages no admin.
	var k keyResp
	admin.must(201, "POST", "/v1/projects/default/keys", map[string]any{"permissions": event.Permissions}, &k)
	kc := keyClient(t, s, *k.Key)
	for _, tc := range []struct{ method, path string }{
		{"GET", "/v1/users"}, {"POST", "/v1/users"}, {"DELETE", "/v1/users/ops"}, {"PUT", "/v1/users/ops/password"},
	} {
		st, b := kc.do(tc.method, tc.path, map[string]any{"username": "mine", "password": "a good long one"})
		wantError(t, "key: "+tc.method+" "+tc.path, st, b, http.StatusForbidden, "PERMISSION_DENIED")
	}
	st, b = kc.do("POST", "/v1/auth/logout", nil)
	wantError(t, "key logout", st, b, http.StatusBadRequest, "VALIDATION_ERROR")

	// One's own password: the old one is needed, and guesses count.
	ops := loginClient(t, s, "ops", "a good long one")
	st, b = ops.do("PUT", "/v1/users/ops/password", map[string]any{"password": "another long one"})
	wantError(t, "own change without the old password", st, b, http.StatusBadRequest, "VALIDATION_ERROR")
	for i := 0; i < addrFree; i++ {
		st, b = ops.do("PUT", "/v1/users/ops/password", map[string]any{"password": "another long one", "old_password": "wrong"})
		wantError(t, "wrong old password", st, b, http.StatusForbidden, "PERMISSION_DENIED")
	}
	st, b = ops.do("PUT", "/v1/users/ops/password", map[string]any{"password": "another long one", "old_password": "wrong"})
	wantError(t, "old-password guessing", st, b, http.StatusTooManyRequests, "RATE_LIMITED")
	// (the address is throttled now; the admin changes it for ops instead)
	admin.must(204, "PUT", "/v1/users/ops/password", map[string]any{"password": "another long one"}, nil)
	st, b = admin.do("PUT", "/v1/users/nobody/password", map[string]any{"password": "another long one"})
	wantError(t, "unknown user", st, b, http.StatusNotFound, "NOT_FOUND")

	admin.must(204, "DELETE", "/v1/users/ops", nil, nil)
	st, b = admin.do("DELETE", "/v1/users/admin", nil)
	wantError(t, "the last user", st, b, http.StatusConflict, "CONFLICT")
	st, b = admin.do("DELETE", "/v1/users/nobody", nil)
	wantError(t, "unknown user", st, b, http.StatusNotFound, "NOT_FOUND")
}

// loginClient logs in as user with password.
func loginClient(t *testing.T, s *Server, user, password string) *client {
	t.Helper()
	c := &client{t: t, base: "http://" + s.Addr()}
	var r struct{ Token string }
	c.must(200, "POST", "/v1/auth/login", map[string]string{"username": user, "password": password}, &r)
	c.token = r.Token
	return c
}

func (s *Server) mustUserID(t *testing.T, name string) string {
	t.Helper()
	u, _, err := s.store.userLogin(t.Context(), name)
	if err != nil {
		t.Fatal(err)
	}
	return u.ID
}

// BenchmarkLoginUnknownUser and BenchmarkLoginWrongPassword compare, in one
// run, what a login costs for a username that does not exist and for one
// that does (at the default bcrypt cost): the two must be about equal.
func BenchmarkLoginUnknownUser(b *testing.B)   { benchLogin(b, "nobody") }
func BenchmarkLoginWrongPassword(b *testing.B) { benchLogin(b, "admin") }

func benchLogin(b *testing.B, user string) {
	cfg := testConfig(b.TempDir())
	cfg.PasswordCost = bcrypt.DefaultCost
	s := startServer(b, cfg)
	b.ResetTimer()
	for b.Loop() {
		if _, _, err := s.login(b.Context(), user, "wrong"); err == nil {
			b.Fatal("logged in")
		}
	}
}
