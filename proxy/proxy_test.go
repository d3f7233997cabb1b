package proxy

import (
	"bytes"
	"log/slog"
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
	), "eu", &healthTable{}, newMetrics().upstream)
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

	none := newRouter(deps(event.Deployment{ID: "v1", PathPrefix: "/v1", Hosts: []string{"a"}}), "eu", &healthTable{}, newMetrics().upstream)
	if none.match([]byte("b"), []byte("/v1")) != nil || none.match([]byte("a"), []byte("/v2")) != nil {
		t.Fatal("matched a request no deployment serves")
	}
}

func TestRouterUpstreamsPerSiteRoundRobin(t *testing.T) {
	up := map[string][]string{"*": {"http://any:1"}, "eu": {"http://eu-a:1", "http://eu-b:1/base/"}}
	d := deps(event.Deployment{ID: "d", Upstreams: up})
	eu := newRouter(d, "eu", &healthTable{}, newMetrics().upstream).routes[0]
	now := time.Now()
	got := []string{eu.pick(now, nil).base, eu.pick(now, nil).base, eu.pick(now, nil).base}
	if got[0] != "http://eu-a:1" || got[1] != "http://eu-b:1/base" || got[2] != got[0] {
		t.Fatalf("eu round robin: %v", got)
	}
	if us := newRouter(d, "us", &healthTable{}, newMetrics().upstream).routes[0]; us.pick(now, nil).base != "http://any:1" {
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
	tests := []struct {
		headers  map[string]string
		want     string
		fromAuth bool
	}{
		{map[string]string{"X-API-Key": "k1"}, "k1", false},
		{map[string]string{"x-api-key": " k1 "}, "k1", false},
		{map[string]string{"Authorization": "Bearer k2"}, "k2", true},
		{map[string]string{"Authorization": "BEARER k2"}, "k2", true},
		{map[string]string{"Authorization": "Bearer unused", "X-API-Key": "k3"}, "k3", false},
		{map[string]string{"Authorization": "Basic abc"}, "", false},
		{map[string]string{"Authorization": "Bearer "}, "", false},
		{map[string]string{}, "", false},
	}
	for _, tt := range tests {
		var h fasthttp.RequestHeader
		for k, v := range tt.headers {
			h.Set(k, v)
		}
		got, fromAuth := credential(&h)
		if string(got) != tt.want || fromAuth != tt.fromAuth {
			t.Errorf("%v: got %q %v, want %q %v", tt.headers, got, fromAuth, tt.want, tt.fromAuth)
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
		{`{"input": [[1, 2, 3]]}`, 0, false, false},
		{`{"messages": [{"role": "user", "content": "Hello!"}, {"role": "assistant", "content": null}]}`, 6, false, false},
		{`{"messages": [{"role": "user", "content": [{"type": "text", "text": "abc"}, {"type": "image_url", "image_url": {"url": "x"}}]}]}`, 3, false, false},
		{`{"content": "\"stream\": true"}`, 0, false, false},
		{`{"stream": "yes"}`, 0, false, true},
		{`not json`, 0, false, true},
		{`{"messages": "oops"}`, 0, false, true},
		// Every spelling an upstream might honour counts.
		{`{"Stream": true}`, 0, true, false},
		{`{"stream": false, "stream": true}`, 0, true, false},
		{`{"prompt": "ab", "PROMPT": "cd", "pr\u006fmpt": "e"}`, 5, false, false},
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
		if got := isJSON([]byte(ct)); got != want {
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
	stripRequestHopByHop(&h)
	for _, gone := range []string{"Connection", "X-Custom-Hop", "Keep-Alive", "Upgrade"} {
		if len(h.Peek(gone)) != 0 {
			t.Errorf("%s forwarded", gone)
		}
	}
	if string(h.Peek("X-Stays")) != "1" {
		t.Error("end-to-end header dropped")
	}
}

func TestFasthttpLogRedactsCredentials(t *testing.T) {
	var buf bytes.Buffer
	l := fasthttpLogger{slog.New(slog.NewTextHandler(&buf, nil))}
	key := "km_" + strings.Repeat("a", 59)
	l.Printf("cannot parse %q", "X-API-Key: "+key+"\r\nAuthorization: Bearer sk-upstream-secret\r\n")
	if strings.Contains(buf.String(), key[3:20]) || strings.Contains(buf.String(), "sk-upstream-secret") {
		t.Fatalf("credential logged: %s", buf.String())
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
// reload; the environment wins over the directory; names cannot escape it.
func TestSecretStore(t *testing.T) {
	dir := t.TempDir()
	write := func(name, v string) {
		if err := os.WriteFile(filepath.Join(dir, name), []byte(v), 0o600); err != nil {
			t.Fatal(err)
		}
	}
	write("openai", "sk-one\n")
	s := &secretStore{dir: dir}
	if v, ok := s.get("openai"); !ok || v != "sk-one" {
		t.Fatalf("get: %q %v", v, ok)
	}
	write("openai", "sk-two")
	if v, _ := s.get("openai"); v != "sk-one" {
		t.Fatalf("re-read without a reload: %q", v)
	}
	s.reload()
	if v, _ := s.get("openai"); v != "sk-two" {
		t.Fatalf("after reload: %q", v)
	}
	t.Setenv("EDGE_SECRET_AZURE_PROD", "from-env")
	write("azure-prod", "from-file")
	if v, _ := s.get("azure-prod"); v != "from-env" {
		t.Fatalf("env should win: %q", v)
	}
	write("empty", "  \n")
	for _, name := range []string{"", "missing", "empty", "../" + filepath.Base(dir) + "/openai", "."} {
		if v, ok := s.get(name); ok {
			t.Errorf("%q resolved to %q", name, v)
		}
	}
}

func TestStripHopByHopAllocatesNothingWhenClean(t *testing.T) {
	var h fasthttp.RequestHeader
	h.Set("Content-Type", "application/json")
	h.Set("X-Request-Id", "abc")
	h.Set("Authorization", "Bearer x")
	if n := testing.AllocsPerRun(100, func() { stripRequestHopByHop(&h) }); n != 0 {
		t.Fatalf("%v allocations", n)
	}
	if string(h.Peek("X-Request-Id")) != "abc" {
		t.Fatal("end-to-end header dropped")
	}
}
