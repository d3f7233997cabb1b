package proxy

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/valyala/fasthttp"

	"github.com/keymesh/keymesh/cache"
	"github.com/keymesh/keymesh/event"
)

func deps(ds ...event.Deployment) *cache.Deployments {
	return cache.NewDeployments(ds, 1)
}

func TestRouterMatch(t *testing.T) {
	up := map[string][]string{"*": {"http://any:1"}, "eu": {"http://eu-a:1", "http://eu-b:1/base/"}}
	r := newRouter(deps(
		event.Deployment{ID: "root", PathPrefix: "/", Upstreams: up},
		event.Deployment{ID: "v1", PathPrefix: "/v1", Upstreams: up},
		event.Deployment{ID: "v1chat", PathPrefix: "/v1/chat/", Upstreams: up},
		event.Deployment{ID: "exact", Hosts: []string{"api.example.com"}, PathPrefix: "/", Upstreams: up},
		event.Deployment{ID: "wild", Hosts: []string{"*.gpu.example.com"}, PathPrefix: "/", Upstreams: up},
	), "eu", &healthTable{}, testMetrics(t).upstream, nil)
	tests := []struct {
		host, path, want string
	}{
		{"other", "/x", "root"},
		{"other", "/v1", "v1"},
		{"other", "/v1/models", "v1"},
		{"other", "/v10", "root"},
		{"other", "/v1/chat/completions", "v1chat"},
		{"API.example.com", "/v1/models", "exact"},
		{"a.gpu.example.com", "/v1/models", "wild"},
		{"gpu.example.com", "/v1/models", "v1"},
	}
	for _, tt := range tests {
		rt := r.match([]byte(tt.host), []byte(tt.path))
		if rt == nil || rt.dep.ID != tt.want {
			got := "<nil>"
			if rt != nil {
				got = rt.dep.ID
			}
			t.Errorf("%s%s: got %s, want %s", tt.host, tt.path, got, tt.want)
		}
	}

	none := newRouter(deps(event.Deployment{ID: "v1", PathPrefix: "/v1", Hosts: []string{"a"}}), "eu", &healthTable{}, testMetrics(t).upstream, nil)
	if none.match([]byte("b"), []byte("/v1")) != nil || none.match([]byte("a"), []byte("/v2")) != nil {
		t.Fatal("matched a request no deployment serves")
	}
}

func TestRouterUpstreamsPerSiteRoundRobin(t *testing.T) {
	up := map[string][]string{"*": {"http://any:1"}, "eu": {"http://eu-a:1", "http://eu-b:1/base/"}}
	d := deps(event.Deployment{ID: "d", Upstreams: up})
	eu := newRouter(d, "eu", &healthTable{}, testMetrics(t).upstream, nil).routes[0]
	now := time.Now()
	got := []string{eu.pick(now, nil).base, eu.pick(now, nil).base, eu.pick(now, nil).base}
	if got[0] != "http://eu-a:1" || got[1] != "http://eu-b:1/base" || got[2] != got[0] {
		t.Fatalf("eu round robin: %v", got)
	}
	if us := newRouter(d, "us", &healthTable{}, testMetrics(t).upstream, nil).routes[0]; us.pick(now, nil).base != "http://any:1" {
		t.Fatal("a site without its own list must use *")
	}

	// A resting upstream is skipped until its rest ends; if all rest, one
	// is tried anyway.
	eu.upstreams[0].health.failed(now)
	for range 4 {
		if u := eu.pick(now, nil); u != eu.upstreams[1] {
			t.Fatalf("resting upstream picked: %s", u.base)
		}
	}
	eu.upstreams[1].health.failed(now)
	if eu.pick(now, nil) == nil {
		t.Fatal("all resting: nothing tried")
	}
	if eu.pick(now.Add(restMin), nil) == nil || !eu.upstreams[0].health.usable(now.Add(restMin)) {
		t.Fatal("rest did not end")
	}
	eu.upstreams[0].health.failed(now) // second failure: twice the rest
	if eu.upstreams[0].health.usable(now.Add(restMin)) {
		t.Fatal("rest did not grow")
	}
	eu.upstreams[0].health.succeeded()
	if !eu.upstreams[0].health.usable(now) {
		t.Fatal("success did not end the rest")
	}
}

func TestCredential(t *testing.T) {
	key := "km_" + strings.Repeat("a", 59)
	other := "km_" + strings.Repeat("b", 59)
	tests := []struct {
		headers  [][2]string
		want     string
		fromAuth bool
		conflict bool
	}{
		{[][2]string{{"X-API-Key", "k1"}}, "k1", false, false},
		{[][2]string{{"x-api-key", " k1 "}}, "k1", false, false},
		{[][2]string{{"Authorization", "Bearer k2"}}, "k2", true, false},
		{[][2]string{{"Authorization", "BEARER k2"}}, "k2", true, false},
		{[][2]string{{"Authorization", "Bearer unused"}, {"X-API-Key", "k3"}}, "k3", false, false},
		{[][2]string{{"Authorization", "Basic abc"}}, "", false, false},
		{[][2]string{{"Authorization", "Bearer "}}, "", false, false},
		{[][2]string{}, "", false, false},
		// Every value counts: the same one twice is one credential, two
		// different ones are refused.
		{[][2]string{{"X-API-Key", key}, {"X-API-Key", key}}, key, false, false},
		{[][2]string{{"X-API-Key", key}, {"x-api-key", other}}, "", false, true},
		{[][2]string{{"Authorization", "Bearer " + key}, {"Authorization", "Bearer " + other}}, "", false, true},
		{[][2]string{{"Authorization", "Bearer " + key}, {"Authorization", "Basic eDp5"}}, "", false, true},
		{[][2]string{{"X-API-Key", key}, {"Authorization", "Bearer " + other}}, "", false, true},
		{[][2]string{{"X-API-Key", key}, {"Authorization", "Bearer " + key}}, key, false, false},
		// Look-alikes are no credential here (and never forwarded).
		{[][2]string{{"X_API_Key", key}}, "", false, false},
		{[][2]string{{"X-API-Key", ""}, {"Authorization", "Bearer " + key}}, key, true, false},
	}
	for _, tt := range tests {
		var h fasthttp.RequestHeader
		for _, kv := range tt.headers {
			h.Add(kv[0], kv[1])
		}
		got, fromAuth, ok := credential(&h)
		if string(got) != tt.want || fromAuth != tt.fromAuth || ok == tt.conflict {
			t.Errorf("%v: got %q %v ok=%v, want %q %v conflict=%v", tt.headers, got, fromAuth, ok, tt.want, tt.fromAuth, tt.conflict)
		}
	}
}

func TestParseBody(t *testing.T) {
	tests := []struct {
		body   string
		chars  int
		stream bool
		bad    bool
	}{
		{`{"stream": true}`, 0, true, false},
		{`{"stream": false, "prompt": "héllo"}`, 5, false, false},
		{`{"prompt": ["ab", "cd"]}`, 4, false, false},
		{`{"input": "embed me"}`, 8, false, false},
		{`{"input": [[1, 2, 3]]}`, 3, false, false}, // token ids: one each
		{`{"messages": [{"role": "user", "content": "Hello!"}, {"role": "assistant", "content": null}]}`, 6, false, false},
		{`{"messages": [{"role": "user", "content": [{"type": "text", "text": "abc"}, {"type": "image_url", "image_url": {"url": "x"}}]}]}`, 3, false, false},
		{`{"content": "\"stream\": true"}`, 0, false, false},
		{`{"stream": "yes"}`, 0, false, true},
		{`not json`, 0, false, true},
		{`{"messages": "oops"}`, 4, false, false}, // a string where a list belongs still counts
		// Every spelling an upstream might honour counts.
		{`{"Stream": true}`, 0, true, false},
		{`{"stream": false, "stream": true}`, 0, true, false},
		{`{"prompt": "ab", "PROMPT": "cd", "pr\u006fmpt": "e"}`, 5, false, false},
		// A media source is skipped only when every reading of its type
		// says media: a second "type" (last wins in Python) or another
		// letter case makes it a document whose data counts.
		{`{"messages": [{"content": [{"source": {"type": "base64", "data": "AAAA"}}]}]}`, 0, false, false},
		{`{"messages": [{"content": [{"source": {"type": "base64", "type": "text", "data": "abcd"}}]}]}`, 4, false, false},
		{`{"messages": [{"content": [{"source": {"type": "BAse64", "data": "ab"}}]}]}`, 2, false, false},
		{`{"stream": true, "x": NaN}`, 0, false, true},
		{`[{"stream": true}]`, 0, false, true},
		{`{"stream": true} trailing`, 0, false, true},
	}
	for _, tt := range tests {
		n, stream, err := parseBody([]byte(tt.body))
		if (err != nil) != tt.bad || n != tt.chars || stream != tt.stream {
			t.Errorf("%s: got %d %v %v", tt.body, n, stream, err)
		}
	}
}

func TestIsJSON(t *testing.T) {
	for ct, want := range map[string]bool{
		"": true, "application/json": true, "Application/JSON; charset=utf-8": true,
		"application/vnd.api+json": true, "APPLICATION/LD+JSON": true,
		"text/plain": false, "multipart/form-data; boundary=x": false, "application/jsonp": false,
	} {
		if got := isJSON(parseContentType([]byte(ct)).media); got != want {
			t.Errorf("isJSON(%q) = %v", ct, got)
		}
	}
}

func TestHopByHopStripped(t *testing.T) {
	var h fasthttp.RequestHeader
	h.Set("Connection", "keep-alive, X-Custom-Hop")
	h.Set("X-Custom-Hop", "1")
	h.Set("Keep-Alive", "timeout=5")
	h.Set("Upgrade", "websocket")
	h.Set("X-Stays", "1")
	scrubRequest(&h, false, false)
	for _, gone := range []string{"Connection", "X-Custom-Hop", "Keep-Alive", "Upgrade"} {
		if len(h.Peek(gone)) != 0 {
			t.Errorf("%s forwarded", gone)
		}
	}
	if string(h.Peek("X-Stays")) != "1" {
		t.Error("end-to-end header dropped")
	}
}

// However long an upstream stays dead, its rest is bounded and counting its
// failures never overflows.
func TestHealthRestBounded(t *testing.T) {
	var h health
	now := time.Unix(1000, 0)
	h.failures.Store(1<<31 - 2)
	for range 4 {
		h.failed(now)
	}
	if got := time.Duration(h.until.Load() - now.UnixNano()); got != restMax || h.failures.Load() != 16 {
		t.Fatalf("rest %v after %d failures", got, h.failures.Load())
	}
	h.succeeded()
	h.failed(now)
	if got := time.Duration(h.until.Load() - now.UnixNano()); got != restMin {
		t.Fatalf("first rest after a success: %v", got)
	}
}

// Upstream credentials are read once, not per request, and again after a
// reload; the environment wins over the directory; each is its project's
// alone: one project's name never resolves another's secret, by file or by
// variable, and names cannot escape the directory.
func TestSecretStore(t *testing.T) {
	dir := t.TempDir()
	write := func(project, name, v string) {
		if err := os.MkdirAll(filepath.Join(dir, project), 0o700); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(filepath.Join(dir, project, name), []byte(v), 0o600); err != nil {
			t.Fatal(err)
		}
	}
	write("default", "openai", "sk-one\n")
	s := &secretStore{dir: dir}
	if v, ok := s.get("default", "openai"); !ok || v != "sk-one" {
		t.Fatalf("get: %q %v", v, ok)
	}
	write("default", "openai", "sk-two")
	if v, _ := s.get("default", "openai"); v != "sk-one" {
		t.Fatalf("re-read without a reload: %q", v)
	}
	s.reload()
	if v, _ := s.get("default", "openai"); v != "sk-two" {
		t.Fatalf("after reload: %q", v)
	}
	t.Setenv("EDGE_SECRET_TEAM_A__AZURE_PROD", "from-env")
	write("team-a", "azure-prod", "from-file")
	if v, _ := s.get("team-a", "azure-prod"); v != "from-env" {
		t.Fatalf("env should win: %q", v)
	}
	// Another project's secrets are out of reach, whatever the names.
	write("team-b", "key", "team-b-secret")
	t.Setenv("EDGE_SECRET_TEAM_B__KEY", "team-b-env")
	t.Setenv("EDGE_SECRET_KEY", "unscoped")
	write("default", "empty", "  \n")
	if err := os.WriteFile(filepath.Join(dir, "flat"), []byte("unscoped"), 0o600); err != nil {
		t.Fatal(err)
	}
	for _, ref := range [][2]string{{"default", ""}, {"default", "missing"}, {"default", "empty"},
		{"team-a", "key"}, {"team_b", "key"}, {"TEAM-B", "key"}, {"team-b-x", "key"}, {"default", "../team-b/key"},
		{"..", "team-b/key"}, {"", "key"}, {"default", "."}, {"", "flat"}, {".", "flat"}, {"default", "KEY"}} {
		if v, ok := s.get(ref[0], ref[1]); ok {
			t.Errorf("%q/%q resolved to %q", ref[0], ref[1], v)
		}
	}
	if v, _ := s.get("team-b", "key"); v != "team-b-env" {
		t.Fatalf("team-b's own secret: %q", v)
	}
}

// The environment names of project secrets never collide across projects:
// a project name maps to at most one variable prefix, and no two project
// names to the same one.
func TestSecretEnvNamesInjective(t *testing.T) {
	projects := []string{"a", "a-b", "a_b", "A-B", "a.b", "a--b", "a-", "ab", "a-b-c", "a-bc", "ab-c", "default", "team-a", "team_a", "Team-A"}
	names := []string{"key", "b-key", "b__key", "_key", "b", "x.y", "X-Y"}
	seen := map[string][2]string{}
	for _, p := range projects {
		for _, n := range names {
			env := secretEnv(p, n)
			if env == "" {
				continue
			}
			if prev, ok := seen[env]; ok && prev[0] != p {
				t.Errorf("%s is the variable of %v and of %v", env, prev, [2]string{p, n})
			}
			seen[env] = [2]string{p, n}
		}
	}
	if secretEnv("team-a", "openai-prod") != "EDGE_SECRET_TEAM_A__OPENAI_PROD" {
		t.Fatalf("got %s", secretEnv("team-a", "openai-prod"))
	}
	for _, p := range []string{"a_b", "A-B", "a.b", "a--b", "a-"} {
		if secretEnv(p, "k") != "" {
			t.Errorf("project %q has an environment form", p)
		}
	}
}

func TestScrubRequestAllocatesNothingWhenClean(t *testing.T) {
	var h fasthttp.RequestHeader
	h.Set("Content-Type", "application/json")
	h.Set("X-Stays", "abc")
	h.Set("User-Agent", "test")
	if n := testing.AllocsPerRun(100, func() { scrubRequest(&h, true, true) }); n != 0 {
		t.Fatalf("%v allocations", n)
	}
	if string(h.Peek("X-Stays")) != "abc" {
		t.Fatal("end-to-end header dropped")
	}
}
