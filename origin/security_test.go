package origin

import (
	"fmt"
	"net"
	"net/http"
	"strings"
	"testing"
	"time"
)

func TestLoginGuardBackoffAndBounds(t *testing.T) {
	now := time.Unix(1000, 0)
	g := newLoginGuard(func() time.Time { return now })
	for i := 0; i < addrFree; i++ {
		if ok, _, _ := g.allow("u", "a"); !ok {
			t.Fatalf("attempt %d refused", i+1)
		}
		g.failed("u", "a")
	}
	ok, wait, why := g.allow("u", "a")
	if ok || wait != firstWait || why != throttledAddr {
		t.Fatalf("after %d failures: ok=%v wait=%v %s", addrFree, ok, wait, why)
	}
	if ok, _, _ := g.allow("u", "b"); !ok {
		t.Fatal("another address was slowed")
	}
	now = now.Add(wait)
	if ok, _, _ := g.allow("u", "a"); !ok {
		t.Fatal("still refused after the wait")
	}
	g.failed("u", "a")
	if _, wait, _ := g.allow("u", "a"); wait != 2*firstWait {
		t.Fatalf("wait does not double: %v", wait)
	}
	for range 40 {
		g.failed("v", "a")
	}
	if _, wait, _ := g.allow("v", "a"); wait != addrMaxWait {
		t.Fatalf("wait not capped: %v", wait)
	}
	g.succeeded("u", "a")
	if ok, _, _ := g.allow("w", "a"); !ok {
		t.Fatal("success did not clear the address")
	}

	// A flood of distinct addresses and usernames stays in bounded tables.
	g = newLoginGuard(func() time.Time { return now })
	g.globalBurst, g.global.tokens = 1e9, 1e9
	for i := range 3 * maxLoginEntries {
		now = now.Add(time.Millisecond)
		g.failed(fmt.Sprint("user", i), fmt.Sprint("10.0.", i/256, ".", i%256))
	}
	if len(g.addrs.entries) != maxLoginEntries || g.addrs.order.Len() != maxLoginEntries ||
		len(g.users.entries) != maxLoginEntries || len(g.trusted) != 0 {
		t.Fatalf("tables not bounded: %d addresses, %d usernames", len(g.addrs.entries), len(g.users.entries))
	}
}

// loginFrom logs in as admin from a given loopback address.
func loginFrom(t *testing.T, s *Server, local, password string) (int, http.Header) {
	t.Helper()
	return loginFromAs(t, s, local, "admin", password)
}

// loginFromAs logs in as user from a given loopback address.
func loginFromAs(t *testing.T, s *Server, local, user, password string) (int, http.Header) {
	t.Helper()
	d := &net.Dialer{LocalAddr: &net.TCPAddr{IP: net.ParseIP(local)}}
	hc := &http.Client{Timeout: 10 * time.Second, Transport: &http.Transport{DialContext: d.DialContext}}
	body := `{"username":"` + user + `","password":"` + password + `"}`
	resp, err := hc.Post("http://"+s.Addr()+"/v1/auth/login", "application/json", strings.NewReader(body))
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	return resp.StatusCode, resp.Header
}

func TestRepeatedFailedLoginsAreSlowedPerAddress(t *testing.T) {
	s := startServer(t, testConfig(t.TempDir()))
	for i := 0; i < addrFree; i++ {
		if st, _ := loginFrom(t, s, "127.0.0.2", "wrong"); st != http.StatusUnauthorized {
			t.Fatalf("failure %d: %d", i+1, st)
		}
	}
	st, h := loginFrom(t, s, "127.0.0.2", testPassword)
	if st != http.StatusTooManyRequests || h.Get("Retry-After") == "" {
		t.Fatalf("guessing address not slowed: %d %v", st, h)
	}
	if st, _ := loginFrom(t, s, "127.0.0.3", testPassword); st != http.StatusOK {
		t.Fatalf("admin locked out from another address: %d", st)
	}
}

func TestLargeBodiesAndCrossProjectLinksRefused(t *testing.T) {
	s := startServer(t, testConfig(t.TempDir()))
	c := newClient(t, s)
	c.must(201, "POST", "/v1/projects", map[string]any{"name": "other"}, nil)
	var theirs depResp
	c.must(201, "POST", "/v1/projects/other/deployments", chatDep, &theirs)
	var k keyResp
	c.must(201, "POST", "/v1/projects/default/keys", map[string]any{}, &k)
	rev := s.Revision()

	st, b := c.do("PUT", "/v1/projects/default/deployments/"+theirs.ID+"/keys/"+k.ID, nil)
	if st != http.StatusNotFound {
		t.Fatalf("link to another project's deployment: %d %s", st, b)
	}
	st, b = c.do("PATCH", "/v1/projects/default/keys/"+k.ID, map[string]any{"deployments": []string{theirs.ID}})
	if st != http.StatusBadRequest {
		t.Fatalf("patch deployments to another project's: %d %s", st, b)
	}
	st, _ = c.do("POST", "/v1/projects/default/keys", `{"name":"`+strings.Repeat("a", 20<<20)+`"}`)
	if st != http.StatusRequestEntityTooLarge {
		t.Fatalf("20 MB body: %d", st)
	}
	if s.Revision() != rev {
		t.Fatalf("a refused request changed the store (revision %d → %d)", rev, s.Revision())
	}
}

// A known path asked with a method it does not serve answers 405 in the API's
// error shape with Allow; every 401 names the Bearer scheme.
func TestWrongMethodAndAuthChallenge(t *testing.T) {
	s := startServer(t, testConfig(t.TempDir()))
	anon := &client{t: t, base: "http://" + s.Addr()}
	for _, tc := range []struct{ method, path, allow string }{
		{"DELETE", "/v1/projects", "GET, HEAD, POST"},
		{"GET", "/v1/auth/login", "POST"},
		{"PUT", "/v1/projects/default/keys/key_x", "DELETE, GET, HEAD, PATCH"},
		{"GET", "/v1/projects/default/keys/key_x/rotate", "POST"},
		{"POST", "/health", "GET, HEAD"},
	} {
		st, b, h := anon.doH(tc.method, tc.path, nil, nil)
		wantError(t, tc.method+" "+tc.path, st, b, http.StatusMethodNotAllowed, "METHOD_NOT_ALLOWED")
		if h.Get("Allow") != tc.allow {
			t.Errorf("%s %s: Allow %q, want %q", tc.method, tc.path, h.Get("Allow"), tc.allow)
		}
	}
	st, b := anon.do("GET", "/v1/nothing", nil)
	wantError(t, "unknown path", st, b, http.StatusNotFound, "NOT_FOUND")

	for _, tc := range []struct {
		what, method, path string
		body               any
		hdr                map[string]string
	}{
		{"no credential", "GET", "/v1/projects", nil, nil},
		{"bad token", "GET", "/v1/projects", nil, map[string]string{"Authorization": "Bearer not-a-jwt"}},
		{"bad key", "GET", "/v1/projects", nil, map[string]string{"X-API-Key": "km_nope"}},
		{"wrong password", "POST", "/v1/auth/login", map[string]string{"username": "admin", "password": "wrong"}, nil},
	} {
		st, b, h := anon.doH(tc.method, tc.path, tc.body, tc.hdr)
		wantError(t, tc.what, st, b, http.StatusUnauthorized, "AUTHENTICATION_FAILED")
		if h.Get("WWW-Authenticate") != "Bearer" {
			t.Errorf("%s: WWW-Authenticate %q", tc.what, h.Get("WWW-Authenticate"))
		}
	}
}
