package e2e

import (
	"bufio"
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/keymesh/keymesh/edge"
	"github.com/keymesh/keymesh/internal/testutil"
)

// lastSeen returns the headers of the last request the upstream received.
func (s *stack) lastSeen(t *testing.T) http.Header {
	t.Helper()
	s.mu.Lock()
	defer s.mu.Unlock()
	if len(s.seen) == 0 {
		t.Fatal("the upstream received nothing")
	}
	return s.seen[len(s.seen)-1]
}

// The gateway pattern: the edge replaces the client's keymesh key with the
// upstream provider's own credential, in the shape each provider expects.
func TestUpstreamCredentialShapes(t *testing.T) {
	s := newStack(t)
	dir := t.TempDir()
	const openai, anthropic, azure = "sk-upstream-openai-0001", "sk-ant-upstream-0002", "azure-upstream-0003"
	s.upstreamSecrets = append(s.upstreamSecrets, openai, anthropic, azure)
	// Secrets are the project's: EDGE_SECRET_<PROJECT>__<NAME>, or
	// <secrets-dir>/<project>/<name>.
	t.Setenv("EDGE_SECRET_DEFAULT__OPENAI_PROD", openai)
	if err := os.Mkdir(filepath.Join(dir, project), 0o700); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(dir, project, "anthropic"), []byte(anthropic+"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(dir, project, "azure"), []byte(azure), 0o600); err != nil {
		t.Fatal(err)
	}
	mk := func(name, host string, ua map[string]any) string {
		return s.deployment(name, map[string]any{"hosts": []string{host}, "upstream_auth": ua}).ID
	}
	deps := []string{
		mk("openai", "openai.test", map[string]any{"mode": "inject", "header": "Authorization", "prefix": "Bearer ", "secret": "openai-prod"}),
		mk("anthropic", "anthropic.test", map[string]any{"mode": "inject", "header": "x-api-key", "secret": "anthropic"}),
		mk("azure", "azure.test", map[string]any{"mode": "inject", "header": "api-key", "secret": "azure"}),
		mk("passthrough", "pass.test", map[string]any{"mode": "passthrough", "header": "Authorization"}),
		mk("none", "none.test", map[string]any{"mode": "none"}),
		mk("missing", "missing.test", map[string]any{"mode": "inject", "header": "api-key", "secret": "nowhere"}),
	}
	k := s.key(deps...)
	e := s.startEdge(edgeOpts{secretsDir: dir})

	tests := []struct {
		host    string
		headers map[string]string
		want    map[string]string // header → value the upstream must see ("" = absent)
	}{
		{"openai.test", map[string]string{"X-API-Key": k.Secret}, map[string]string{"Authorization": "Bearer " + openai, "X-Api-Key": ""}},
		{"openai.test", map[string]string{"Authorization": "Bearer " + k.Secret}, map[string]string{"Authorization": "Bearer " + openai}},
		{"anthropic.test", map[string]string{"Authorization": "Bearer " + k.Secret}, map[string]string{"X-Api-Key": anthropic, "Authorization": ""}},
		{"azure.test", map[string]string{"X-API-Key": k.Secret}, map[string]string{"Api-Key": azure, "X-Api-Key": "", "Authorization": ""}},
		{"pass.test", map[string]string{"X-API-Key": k.Secret, "Authorization": "Bearer client-own-upstream-token"},
			map[string]string{"Authorization": "Bearer client-own-upstream-token", "X-Api-Key": ""}},
		{"pass.test", map[string]string{"Authorization": "Bearer " + k.Secret}, map[string]string{"Authorization": "", "X-Api-Key": ""}},
		{"none.test", map[string]string{"X-API-Key": k.Secret, "Authorization": "Bearer unused"}, map[string]string{"Authorization": "", "X-Api-Key": ""}},
	}
	for _, tt := range tests {
		h := map[string]string{"Host": tt.host}
		for k, v := range tt.headers {
			h[k] = v
		}
		st, body := send(t, e, http.MethodPost, "/v1/chat/completions", h, chatBody)
		if st != http.StatusOK {
			t.Fatalf("%s: %d %s", tt.host, st, body)
		}
		got := s.lastSeen(t)
		for h, want := range tt.want {
			if got.Get(h) != want {
				t.Errorf("%s with %v: upstream got %s=%q, want %q", tt.host, keys(tt.headers), h, redact(got.Get(h)), redact(want))
			}
		}
	}
	st, body := send(t, e, http.MethodPost, "/v1/chat/completions", map[string]string{"Host": "missing.test", "X-API-Key": k.Secret}, chatBody)
	if st != http.StatusBadGateway || errorCode(t, body) != "UPSTREAM_ERROR" {
		t.Fatalf("inject without the secret on this edge: %d %s", st, body)
	}
}

func keys(m map[string]string) []string {
	var out []string
	for k := range m {
		out = append(out, k)
	}
	return out
}

func redact(v string) string {
	if len(v) > 12 {
		return v[:12] + "…"
	}
	return v
}

// A dead upstream is skipped: the request goes to a live one.
func TestDeadUpstreamSkipped(t *testing.T) {
	s := newStack(t)
	d := s.deployment("demo", map[string]any{"upstreams": map[string][]string{"*": {"http://127.0.0.1:1", s.upstream.URL()}}})
	k := s.key(d.ID)
	e := s.startEdge(edgeOpts{})
	for i := 0; i < 6; i++ {
		expect(t, e, withKey(k), 200, "")
	}
}

// A site's own upstream list wins over "*".
func TestSiteUpstreams(t *testing.T) {
	s := newStack(t)
	d := s.deployment("demo", map[string]any{"upstreams": map[string][]string{"eu": {s.upstream.URL()}, "*": {"http://127.0.0.1:1"}}})
	k := s.key(d.ID)
	eu := s.startEdge(edgeOpts{site: "eu"})
	us := s.startEdge(edgeOpts{site: "us"})
	expect(t, eu, withKey(k), 200, "")
	expect(t, us, withKey(k), 502, "UPSTREAM_ERROR")
}

// streamLines sends a streamed chat request and returns the data lines read
// before the stream ended, and whether it ended with [DONE].
func streamLines(t *testing.T, url, key, interval string, stopAfter int) (int, bool) {
	t.Helper()
	body := `{"model": "m", "stream": true, "messages": [{"role": "user", "content": "hi"}]}`
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	req, _ := http.NewRequestWithContext(ctx, http.MethodPost, url+"/v1/chat/completions", strings.NewReader(body))
	req.Header.Set("X-API-Key", key)
	req.Header.Set("Content-Type", "application/json")
	req.Header.Set("X-Mock-Chunk-Interval", interval)
	resp, err := httpClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	if resp.StatusCode != 200 {
		t.Fatalf("status %d", resp.StatusCode)
	}
	n := 0
	sc := bufio.NewScanner(resp.Body)
	for sc.Scan() {
		line := sc.Text()
		if line == "data: [DONE]" {
			return n, true
		}
		if strings.HasPrefix(line, "data: ") {
			n++
			if n == stopAfter {
				cancel() // the client walks away
				return n, false
			}
		}
	}
	return n, false
}

// An upstream that goes silent is cut after the idle timeout; one that keeps
// producing is never cut, however long the whole answer takes.
func TestUpstreamIdleTimeout(t *testing.T) {
	s := newStack(t)
	d := s.deployment("demo", nil)
	k := s.key(d.ID)
	e := s.startEdge(edgeOpts{idle: 400 * time.Millisecond})
	url := "http://" + e.Addr()

	// 8 chunks 150ms apart: 1.2s in all, three times the idle timeout.
	if n, done := streamLines(t, url, k.Secret, "150ms", 0); !done {
		t.Fatalf("a healthy generation was cut after %d chunks", n)
	}
	// 3s between chunks: silent for longer than the idle timeout.
	n, done := streamLines(t, url, k.Secret, "3s", 0)
	if done || n > 1 {
		t.Fatalf("a silent upstream was not cut: %d chunks, done=%v", n, done)
	}
}

// A client that disconnects mid-stream ends the upstream request too.
func TestClientDisconnectCancelsUpstream(t *testing.T) {
	s := newStack(t)
	d := s.deployment("demo", nil)
	k := s.key(d.ID)
	e := s.startEdge(edgeOpts{})
	before := s.upstream.Stats().StreamsAborted
	if _, done := streamLines(t, "http://"+e.Addr(), k.Secret, "200ms", 2); done {
		t.Fatal("stream finished before the client left")
	}
	testutil.CheckFor(t, 10*time.Second, 0, func() error {
		if got := s.upstream.Stats().StreamsAborted; got == before {
			return fmt.Errorf("upstream still streaming to a client that left")
		}
		return nil
	})
}

// What the upstream and the client see of a forwarded request: the client's
// address appended to X-Forwarded-For, the scheme in X-Forwarded-Proto,
// hop-by-hop headers gone, and one X-Request-Id — the client's if it sent
// one, else a fresh one per request — on both sides.
func TestForwardedHeadersAndRequestID(t *testing.T) {
	s := newStack(t)
	d := s.deployment("demo", nil)
	k := s.key(d.ID)
	e := s.startEdge(edgeOpts{})

	st, _ := send(t, e, http.MethodPost, "/v1/chat/completions", map[string]string{"X-API-Key": k.Secret,
		"X-Forwarded-For": "203.0.113.7", "X-Request-Id": "client-chosen-42", "Connection": "X-Hop", "X-Hop": "1", "X-Stays": "1"},
		`{"model": "m", "messages": [{"role": "user", "content": "hi"}]}`)
	if st != http.StatusOK {
		t.Fatalf("status %d", st)
	}
	h := s.lastSeen(t)
	for name, want := range map[string]string{"X-Forwarded-For": "203.0.113.7, 127.0.0.1", "X-Forwarded-Proto": "http",
		"X-Request-Id": "client-chosen-42", "X-Hop": "", "X-Stays": "1"} {
		if got := h.Get(name); got != want {
			t.Errorf("upstream saw %s %q, want %q", name, got, want)
		}
	}

	ids := map[string]bool{}
	for range 3 {
		req, _ := http.NewRequest(http.MethodGet, "http://"+e.Addr()+"/v1/models", nil)
		req.Header.Set("X-API-Key", k.Secret)
		resp, err := httpClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		id := resp.Header.Get("X-Request-Id")
		if len(id) != 32 || id != s.lastSeen(t).Get("X-Request-Id") || s.lastSeen(t).Get("X-Forwarded-For") != "127.0.0.1" {
			t.Fatalf("request id %q (upstream saw %q), forwarded for %q", id, s.lastSeen(t).Get("X-Request-Id"), s.lastSeen(t).Get("X-Forwarded-For"))
		}
		ids[id] = true
	}
	if len(ids) != 3 {
		t.Fatalf("request ids repeat: %v", ids)
	}
	// Refusals carry one too, and the error body of docs/api.md.
	req, _ := http.NewRequest(http.MethodHead, "http://"+e.Addr()+"/health", nil)
	if resp, err := httpClient.Do(req); err != nil || resp.StatusCode != http.StatusOK {
		t.Fatalf("HEAD /health: %v %v", resp, err)
	}
	resp, err := httpClient.Get("http://" + e.Addr() + "/v1/models")
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	var body struct {
		Error map[string]any `json:"error"`
	}
	if err := json.NewDecoder(resp.Body).Decode(&body); err != nil {
		t.Fatal(err)
	}
	if resp.StatusCode != http.StatusUnauthorized || resp.Header.Get("X-Request-Id") == "" || resp.Header.Get("Content-Type") != "application/json" ||
		body.Error["code"] != "AUTHENTICATION_FAILED" || body.Error["type"] == "" || body.Error["message"] == "" {
		t.Fatalf("refusal: %d %v %+v", resp.StatusCode, resp.Header, body)
	}
	if d, ok := body.Error["details"]; !ok || d != nil {
		t.Fatalf("details %v (present %v), want null", d, ok)
	}
}

// The upstream pool is bounded: with every connection held by a stream, the
// next request waits UpstreamPoolWait for one, then is told to retry (503,
// not 502: the upstream is not down) and counted.
func TestUpstreamPoolBound(t *testing.T) {
	s := newStack(t)
	d := s.deployment("demo", nil)
	k := s.key(d.ID)
	e := s.startEdge(edgeOpts{configure: func(c *edge.Config) {
		c.MaxUpstreamConns = 1
		c.UpstreamPoolWait = 100 * time.Millisecond
	}})
	body := `{"model": "m", "stream": true, "messages": [{"role": "user", "content": "hi"}]}`
	req, _ := http.NewRequest(http.MethodPost, "http://"+e.Addr()+"/v1/chat/completions", strings.NewReader(body))
	req.Header.Set("Content-Type", "application/json")
	req.Header.Set("X-API-Key", k.Secret)
	req.Header.Set("X-Mock-Chunk-Interval", "1s") // holds the only connection
	resp, err := httpClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	st, got := send(t, e, http.MethodPost, "/v1/chat/completions", withKey(k), `{"model": "m", "messages": []}`)
	if st != http.StatusServiceUnavailable || errorCode(t, got) != "UNAVAILABLE" {
		t.Fatalf("with the pool full: %d %s", st, got)
	}
	rec := httptest.NewRecorder()
	e.AdminHandler().ServeHTTP(rec, httptest.NewRequest(http.MethodGet, "/metrics", nil))
	if !strings.Contains(rec.Body.String(), "keymesh_edge_upstream_pool_full_total 1") {
		t.Fatal("the refusal is not counted")
	}
}

// Edge-local upstream secrets are their project's: a deployment resolves a
// secret name only among its own project's secrets (by variable or by
// file), so a tenant cannot name another project's provider key — with
// records from every path the origin builds them on (create, update,
// snapshot).
func TestUpstreamSecretsArePerProject(t *testing.T) {
	s := newStack(t)
	const teamB = "sk-team-b-provider-0007"
	s.upstreamSecrets = append(s.upstreamSecrets, teamB)
	s.call(http.MethodPost, "/v1/projects", map[string]any{"name": "team-b"}, nil)
	dir := t.TempDir()
	if err := os.Mkdir(filepath.Join(dir, "team-b"), 0o700); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(dir, "team-b", "file-prov"), []byte(teamB), 0o600); err != nil {
		t.Fatal(err)
	}
	t.Setenv("EDGE_SECRET_TEAM_B__ENV_PROV", teamB)
	// The flat layout of before: read by no project.
	t.Setenv("EDGE_SECRET_ENV_PROV", teamB)
	if err := os.WriteFile(filepath.Join(dir, "file-prov"), []byte(teamB), 0o600); err != nil {
		t.Fatal(err)
	}
	inject := func(secret string) map[string]any {
		return map[string]any{"mode": "inject", "header": "Authorization", "prefix": "Bearer ", "secret": secret}
	}
	mk := func(proj, name, host, secret string) string {
		var d struct {
			ID string `json:"id"`
		}
		s.call(http.MethodPost, "/v1/projects/"+proj+"/deployments", map[string]any{"name": name, "hosts": []string{host},
			"auth_enabled": false, "upstream_auth": inject(secret), "upstreams": map[string][]string{"*": {s.upstream.URL()}}}, &d)
		return d.ID
	}
	// Before the edge starts: these come in its snapshot.
	mk(project, "steal-env", "steal-env.test", "env-prov")
	mk(project, "steal-file", "steal-file.test", "file-prov")
	ownEnv := mk("team-b", "own-env", "own-env.test", "env-prov")
	e := s.startEdge(edgeOpts{secretsDir: dir})
	// After: these come as events.
	mk("team-b", "own-file", "own-file.test", "file-prov")
	rev := s.call(http.MethodPatch, "/v1/projects/team-b/deployments/"+ownEnv, map[string]any{"max_prompt_chars": 5000}, nil)
	waitApplied(t, rev, e)

	for host, want := range map[string]int{"steal-env.test": 502, "steal-file.test": 502, "own-env.test": 200, "own-file.test": 200} {
		st, body := send(t, e, http.MethodPost, "/v1/chat/completions", map[string]string{"Host": host}, chatBody)
		if st != want {
			t.Errorf("%s: %d %s, want %d", host, st, body, want)
			continue
		}
		if want == 200 && s.lastSeen(t).Get("Authorization") != "Bearer "+teamB {
			t.Errorf("%s: the upstream did not get team-b's own secret", host)
		}
	}
}
