package origin

import (
	"encoding/json"
	"io"
	"net/http"
	"strings"
	"testing"
)

// BenchmarkConsoleRequest measures a console request against the same
// REST call with a bearer token, in the same run (issue 16: a console
// request costs at most its REST call plus 50 ms; the cookie adds one HMAC
// and no store access, so the two should be within noise of each other):
//
//	go test -run '^$' -bench ConsoleRequest ./origin
func BenchmarkConsoleRequest(b *testing.B) {
	s := startServer(b, testConfig(b.TempDir()))
	base := "http://" + s.Addr()
	do := func(b *testing.B, req *http.Request) (*http.Response, []byte) {
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			b.Fatal(err)
		}
		body, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		return resp, body
	}
	post := func(path, body string) (*http.Response, []byte) {
		req, _ := http.NewRequest("POST", base+path, strings.NewReader(body))
		req.Header.Set("Content-Type", "application/json")
		return do(b, req)
	}
	creds := `{"username":"admin","password":"` + testPassword + `"}`
	resp, body := post("/v1/auth/login", creds)
	var login struct{ Token string }
	if err := json.Unmarshal(body, &login); resp.StatusCode != 200 || err != nil {
		b.Fatalf("login: %d %s", resp.StatusCode, body)
	}
	resp, body = post("/console/session", creds)
	var cookie *http.Cookie
	for _, c := range resp.Cookies() {
		if c.Name == consoleCookie {
			cookie = c
		}
	}
	if resp.StatusCode != 200 || cookie == nil {
		b.Fatalf("console login: %d %s", resp.StatusCode, body)
	}

	const path = "/v1/projects/default/keys"
	run := func(b *testing.B, auth func(*http.Request)) {
		req, _ := http.NewRequest("GET", base+path, nil)
		auth(req)
		for b.Loop() {
			if resp, body := do(b, req); resp.StatusCode != 200 {
				b.Fatalf("GET %s: %d %s", path, resp.StatusCode, body)
			}
		}
	}
	b.Run("rest", func(b *testing.B) {
		run(b, func(r *http.Request) { r.Header.Set("Authorization", "Bearer "+login.Token) })
	})
	b.Run("console", func(b *testing.B) {
		run(b, func(r *http.Request) { r.AddCookie(cookie) })
	})
}
