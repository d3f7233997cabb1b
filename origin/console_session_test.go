package origin

import (
	"io"
	"net/http"
	"strings"
	"testing"

	"github.com/keymesh/keymesh/origin/console"
)

// consoleDo sends one request with the given cookie and headers.
func consoleDo(t *testing.T, s *Server, method, path, body string, cookie *http.Cookie, hdr map[string]string) (*http.Response, string) {
	t.Helper()
	req, err := http.NewRequest(method, "http://"+s.Addr()+path, strings.NewReader(body))
	if err != nil {
		t.Fatal(err)
	}
	if cookie != nil {
		req.AddCookie(cookie)
	}
	for k, v := range hdr {
		req.Header.Set(k, v)
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatalf("%s %s: %v", method, path, err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return resp, string(b)
}

func wantSecurityHeaders(t *testing.T, what string, h http.Header) {
	t.Helper()
	for k, v := range map[string]string{
		"Content-Security-Policy": console.CSP, "X-Frame-Options": "DENY",
		"X-Content-Type-Options": "nosniff", "Referrer-Policy": "no-referrer",
	} {
		if got := h.Get(k); got != v {
			t.Errorf("%s: %s = %q, want %q", what, k, got, v)
		}
	}
}

// The console is served at / and /console/ with its security headers,
// revalidated by ETag; the API's own 404 stays JSON.
func TestConsoleServed(t *testing.T) {
	s := startServer(t, testConfig(t.TempDir()))
	resp, body := consoleDo(t, s, "GET", "/", "", nil, nil)
	if resp.StatusCode != 200 || !strings.HasPrefix(resp.Header.Get("Content-Type"), "text/html") || !strings.Contains(body, "<html") {
		t.Fatalf("GET /: %d %q %.80q", resp.StatusCode, resp.Header.Get("Content-Type"), body)
	}
	wantSecurityHeaders(t, "GET /", resp.Header)
	if !strings.Contains(console.CSP, "default-src 'self'") || !strings.Contains(console.CSP, "frame-ancestors 'none'") || strings.Contains(console.CSP, "unsafe") {
		t.Errorf("CSP %q is not strict", console.CSP)
	}
	etag := resp.Header.Get("ETag")
	if etag == "" || resp.Header.Get("Cache-Control") != "no-cache" {
		t.Errorf("GET /: ETag %q, Cache-Control %q", etag, resp.Header.Get("Cache-Control"))
	}
	resp, _ = consoleDo(t, s, "GET", "/", "", nil, map[string]string{"If-None-Match": etag})
	if resp.StatusCode != http.StatusNotModified {
		t.Errorf("GET / If-None-Match: %d, want 304", resp.StatusCode)
	}
	resp, _ = consoleDo(t, s, "GET", "/console/app.js", "", nil, nil)
	if resp.StatusCode != 200 || resp.Header.Get("Content-Type") != "text/javascript; charset=utf-8" {
		t.Errorf("app.js: %d %q", resp.StatusCode, resp.Header.Get("Content-Type"))
	}
	wantSecurityHeaders(t, "app.js", resp.Header)
	for _, p := range []string{"/console/nope.js", "/console/index.html", "/console/", "/console/../origin.db"} {
		resp, _ = consoleDo(t, s, "GET", p, "", nil, nil)
		if resp.StatusCode != 404 && resp.StatusCode/100 != 3 {
			t.Errorf("GET %s: %d, want 404", p, resp.StatusCode)
		}
	}
	resp, _ = consoleDo(t, s, "POST", "/", "", nil, nil)
	if resp.StatusCode != http.StatusMethodNotAllowed {
		t.Errorf("POST /: %d, want 405", resp.StatusCode)
	}
	resp, body = consoleDo(t, s, "GET", "/v1/nope", "", nil, nil)
	if resp.StatusCode != 404 || resp.Header.Get("Content-Type") != "application/json" || !strings.Contains(body, "NOT_FOUND") {
		t.Errorf("GET /v1/nope: %d %q %s", resp.StatusCode, resp.Header.Get("Content-Type"), body)
	}
}

// consoleLogin logs in as admin through the console and returns the
// session cookie and the CSRF token.
func consoleLogin(t *testing.T, s *Server) (*http.Cookie, string) {
	t.Helper()
	resp, body := consoleDo(t, s, "POST", "/console/session", `{"username":"admin","password":"`+testPassword+`"}`, nil,
		map[string]string{"Content-Type": "application/json"})
	if resp.StatusCode != 200 {
		t.Fatalf("console login: %d %s", resp.StatusCode, body)
	}
	var sess consoleSession
	mustJSON(t, []byte(body), &sess)
	var ck *http.Cookie
	for _, c := range resp.Cookies() {
		if c.Name == consoleCookie {
			ck = c
		}
	}
	if ck == nil || !ck.HttpOnly || ck.SameSite != http.SameSiteStrictMode || ck.Path != "/" || ck.Secure || ck.MaxAge <= 0 {
		t.Fatalf("session cookie %+v: want HttpOnly, SameSite=Strict, Path=/, a Max-Age (not Secure without TLS)", ck)
	}
	if sess.Username != "admin" || sess.CSRFToken == "" || sess.ExpiresAt.IsZero() || strings.Contains(body, ck.Value) {
		t.Fatalf("session answer %s: want username, csrf_token, expires_at and never the JWT", body)
	}
	if resp.Header.Get("Cache-Control") != "no-store" {
		t.Errorf("login Cache-Control %q", resp.Header.Get("Cache-Control"))
	}
	return &http.Cookie{Name: ck.Name, Value: ck.Value}, sess.CSRFToken
}

// The cookie authenticates reads; every change also needs the session's
// CSRF token; another site's request is refused whatever it carries.
func TestConsoleSessionCSRF(t *testing.T) {
	s := startServer(t, testConfig(t.TempDir()))
	admin := newClient(t, s)
	ck, csrf := consoleLogin(t, s)
	const keys = "/v1/projects/default/keys"
	countKeys := func() int {
		var page struct{ Items []any }
		admin.must(200, "GET", keys, nil, &page)
		return len(page.Items)
	}

	if resp, body := consoleDo(t, s, "GET", keys, "", ck, nil); resp.StatusCode != 200 {
		t.Fatalf("GET keys with the cookie: %d %s", resp.StatusCode, body)
	}
	resp, body := consoleDo(t, s, "GET", "/console/session", "", ck, nil)
	if resp.StatusCode != 200 || !strings.Contains(body, `"csrf_token":"`+csrf+`"`) {
		t.Fatalf("GET /console/session: %d %s", resp.StatusCode, body)
	}

	// The token with its first character changed ("x" + csrf[1:] was the
	// token itself when it began with x: one run in 64 failed).
	wrong := "A" + csrf[1:]
	if csrf[0] == 'A' {
		wrong = "B" + csrf[1:]
	}
	json := map[string]string{"Content-Type": "application/json"}
	for name, hdr := range map[string]map[string]string{
		"no CSRF token":             json,
		"a wrong token":             {"Content-Type": "application/json", csrfHeader: wrong},
		"an empty token":            {"Content-Type": "application/json", csrfHeader: ""},
		"another's token":           {"Content-Type": "application/json", csrfHeader: s.csrfToken("another session")},
		"a cross-site form":         {"Content-Type": "application/x-www-form-urlencoded", "Sec-Fetch-Site": "cross-site"},
		"cross-site with the token": {"Content-Type": "application/json", csrfHeader: csrf, "Sec-Fetch-Site": "cross-site"},
		"same-site with the token":  {"Content-Type": "application/json", csrfHeader: csrf, "Sec-Fetch-Site": "same-site"},
	} {
		resp, body := consoleDo(t, s, "POST", keys, `{"name":"csrf"}`, ck, hdr)
		wantError(t, "POST keys with the cookie and "+name, resp.StatusCode, []byte(body), 403, "PERMISSION_DENIED")
		resp, body = consoleDo(t, s, "DELETE", "/console/session", "", ck, hdr)
		wantError(t, "logout with the cookie and "+name, resp.StatusCode, []byte(body), 403, "PERMISSION_DENIED")
	}
	if resp, body := consoleDo(t, s, "GET", keys, "", ck, map[string]string{"Sec-Fetch-Site": "cross-site"}); resp.StatusCode != 403 {
		t.Errorf("a cross-site GET with the cookie: %d %s, want 403", resp.StatusCode, body)
	}
	if n := countKeys(); n != 0 {
		t.Fatalf("%d keys after the refused creations", n)
	}

	// An explicit credential is used as it is, the cookie ignored: a
	// wrong Bearer token is 401 even beside a good cookie.
	resp, body = consoleDo(t, s, "POST", keys, `{"name":"csrf"}`, ck, map[string]string{"Authorization": "Bearer nonsense", csrfHeader: csrf})
	wantError(t, "a wrong Bearer beside the cookie", resp.StatusCode, []byte(body), 401, "AUTHENTICATION_FAILED")

	resp, body = consoleDo(t, s, "POST", keys, `{"name":"console"}`, ck, map[string]string{"Content-Type": "application/json", csrfHeader: csrf})
	if resp.StatusCode != 201 {
		t.Fatalf("POST keys with the cookie and the token: %d %s", resp.StatusCode, body)
	}
	// The admin record names the user as for a Bearer token.
	var created struct{ ID string }
	mustJSON(t, []byte(body), &created)
	for _, m := range []struct{ method, path, body string }{
		{"PATCH", keys + "/" + created.ID, `{"disabled":true}`},
		{"DELETE", keys + "/" + created.ID, ""},
		{"POST", keys + "/" + created.ID + "/rotate", `{}`},
		{"POST", "/v1/auth/logout", ""},
	} {
		resp, body := consoleDo(t, s, m.method, m.path, m.body, ck, json)
		wantError(t, m.method+" "+m.path+" with the cookie and no CSRF token", resp.StatusCode, []byte(body), 403, "PERMISSION_DENIED")
	}
	var k struct{ Disabled bool }
	admin.must(200, "GET", keys+"/"+created.ID, nil, &k)
	if k.Disabled {
		t.Error("a refused PATCH disabled the key")
	}
	waitFor(t, "the audit record of the console's create", func() bool {
		var pg struct {
			Items []struct{ Actor, Action string }
		}
		admin.must(200, "GET", "/v1/audit?source=admin", nil, &pg)
		return len(pg.Items) > 0 && pg.Items[0].Actor == "user:admin"
	})

	resp, body = consoleDo(t, s, "DELETE", "/console/session", "", ck, map[string]string{csrfHeader: csrf})
	if resp.StatusCode != 204 {
		t.Fatalf("logout: %d %s", resp.StatusCode, body)
	}
	cleared := false
	for _, c := range resp.Cookies() {
		cleared = cleared || c.Name == consoleCookie && c.MaxAge < 0 && c.Value == ""
	}
	if !cleared {
		t.Errorf("logout did not clear the cookie: %q", resp.Header.Values("Set-Cookie"))
	}
	for _, p := range []string{keys, "/console/session"} {
		resp, body = consoleDo(t, s, "GET", p, "", ck, nil)
		wantError(t, "GET "+p+" after logout", resp.StatusCode, []byte(body), 401, "AUTHENTICATION_FAILED")
	}
}

// The console's login is the API's (wrong password 401, throttled alike)
// and reads only a same-site JSON body, so no other site's form can log a
// browser in.
func TestConsoleLoginRefusals(t *testing.T) {
	s := startServer(t, testConfig(t.TempDir()))
	good := `{"username":"admin","password":"` + testPassword + `"}`
	for name, c := range map[string]struct {
		body   string
		hdr    map[string]string
		status int
	}{
		"a form":           {good, map[string]string{"Content-Type": "application/x-www-form-urlencoded"}, 415},
		"text/plain":       {good, map[string]string{"Content-Type": "text/plain"}, 415},
		"cross-site":       {good, map[string]string{"Content-Type": "application/json", "Sec-Fetch-Site": "cross-site"}, 403},
		"same-site":        {good, map[string]string{"Content-Type": "application/json", "Sec-Fetch-Site": "same-site"}, 403},
		"a wrong password": {`{"username":"admin","password":"wrong password!"}`, map[string]string{"Content-Type": "application/json"}, 401},
	} {
		resp, body := consoleDo(t, s, "POST", "/console/session", c.body, nil, c.hdr)
		if resp.StatusCode != c.status || len(resp.Cookies()) != 0 {
			t.Errorf("%s: %d %s cookies %v, want %d and no cookie", name, resp.StatusCode, body, resp.Cookies(), c.status)
		}
	}
	if resp, body := consoleDo(t, s, "GET", "/console/session", "", nil, nil); resp.StatusCode != 401 {
		t.Errorf("GET /console/session without a cookie: %d %s", resp.StatusCode, body)
	}
}

// Behind a TLS-terminating proxy the cookie is Secure.
func TestConsoleCookieSecureBehindTLS(t *testing.T) {
	s := startServer(t, testConfig(t.TempDir()))
	resp, body := consoleDo(t, s, "POST", "/console/session", `{"username":"admin","password":"`+testPassword+`"}`, nil,
		map[string]string{"Content-Type": "application/json", "X-Forwarded-Proto": "https"})
	if resp.StatusCode != 200 || len(resp.Cookies()) != 1 || !resp.Cookies()[0].Secure {
		t.Fatalf("login behind TLS: %d %s, cookies %v: want one Secure cookie", resp.StatusCode, body, resp.Header.Values("Set-Cookie"))
	}
}
