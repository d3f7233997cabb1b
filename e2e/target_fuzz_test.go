package e2e

import (
	"net/http"
	"net/url"
	"strings"
	"testing"
	"time"

	"github.com/keymesh/keymesh/internal/testutil"
)

// fuzzDeployment is one deployment of FuzzRequestTarget, with the test's
// own model of how the edge routes to it.
type fuzzDeployment struct {
	name, host, prefix string
	auth               bool
	up                 *recorder
}

// refRoute is the routing of docs/api.md, written again: the best host
// match (exact, then none), and among those the longest path prefix.
func refRoute(deps []*fuzzDeployment, host, path string) *fuzzDeployment {
	var best *fuzzDeployment
	bestScore, bestLen := 0, -1
	for _, d := range deps {
		if !(path == d.prefix || strings.HasPrefix(path, strings.TrimSuffix(d.prefix, "/")+"/")) {
			continue
		}
		score := 1
		if d.host != "" {
			if host != d.host {
				continue
			}
			score = 3
		}
		if score > bestScore || (score == bestScore && len(d.prefix) > bestLen) {
			best, bestScore, bestLen = d, score, len(d.prefix)
		}
	}
	return best
}

// refHost is the host the edge routes a request by: an absolute-form
// target's, else the Host header's; lower case, without port or a trailing
// dot.
func refHost(target, hostHeader string) string {
	h := hostHeader
	if l := strings.ToLower(target); strings.HasPrefix(l, "http://") || strings.HasPrefix(l, "https://") {
		rest := target[strings.Index(target, "//")+2:]
		if i := strings.IndexAny(rest, "/?"); i >= 0 {
			rest = rest[:i]
		}
		h = rest
	}
	if i := strings.LastIndexByte(h, ':'); i >= 0 && !strings.Contains(h[i:], "]") {
		h = h[:i]
	}
	return strings.TrimSuffix(strings.ToLower(h), ".")
}

// FuzzRequestTarget sends random request lines — methods, targets in every
// form, hosts, with and without keys — through a real edge to recording
// upstreams. Whatever reaches an upstream went to a server of the
// deployment its path and the client's host route to (so the path the
// upstream read is the one routing and the permission checks used), passed
// the permission that path needs, came with a key if the deployment needs
// one, and carried no client credential; a server no deployment names is
// never reached.
func FuzzRequestTarget(f *testing.F) {
	s := newStack(f)
	s.injectSecret(f, "fuzz", "sk-fuzz-injected-0006")
	deps := []*fuzzDeployment{
		{name: "a", prefix: "/a", auth: true},
		{name: "b", host: "b.test", prefix: "/", auth: true},
		{name: "bchat", host: "b.test", prefix: "/v1/chat", auth: false},
		{name: "open", prefix: "/open", auth: false},
		{name: "root", prefix: "/", auth: true},
	}
	var ids []string
	for _, d := range deps {
		d.up = newRecorder(f)
		extra := map[string]any{"path_prefix": d.prefix, "auth_enabled": d.auth, "upstreams": map[string][]string{"*": {d.up.URL}},
			"upstream_auth": map[string]any{"mode": "inject", "header": "Authorization", "prefix": "Bearer ", "secret": "fuzz"}}
		if d.host != "" {
			extra["hosts"] = []string{d.host}
		}
		ids = append(ids, s.deployment(d.name, extra).ID)
	}
	canary := newRecorder(f)
	full := s.key(ids...).Secret
	readOnly := s.keyWith([]string{"read_models"}, ids...)
	e := s.startEdge(edgeOpts{})
	hosts := []string{"edge", "b.test", "B.Test.", "b.test:8080", "other.test", "[::1]:80"}
	place := strings.NewReplacer("CANARY", canary.hostPort(), "UPSTREAM", deps[0].up.hostPort(), "EDGE", e.Addr())

	for _, seed := range []struct{ method, target string }{
		{"GET", "/a/v1/models"}, {"POST", "/v1/chat/completions"}, {"GET", "/v1/models"},
		{"CONNECT", "%2fa%2f@CANARY/p"}, {"GET", "%2fa%2f@CANARY/p"}, {"GET", "%2fopen%2f@UPSTREAM/a/v1/models"},
		{"GET", "http://CANARY/a/v1/models"}, {"GET", "http://b.test/v1/chat/x"}, {"GET", "HTTP://b.test"},
		{"POST", "/./a/v1/chat/completions"}, {"GET", "//CANARY/v1/models"}, {"GET", "/open/../a/v1/models"},
		{"GET", "/v1/models/..%2f..%2fa/x"}, {"GET", "/v1/models/..;/chat/completions"}, {"GET", `/v1/models/..\chat`},
		{"POST", "/generate_stream"}, {"POST", "/x/generate_stream"}, {"GET", "/v1/models%2F..%2Fchat/completions"},
		{"OPTIONS", "*"}, {"GET", "CANARY"}, {"GET", "/%2e%2e/open"}, {"HEAD", "/v1/models/m?x=km_"},
		{"GET", "http://user@CANARY/"}, {"TRACE", "/a"}, {"GET", "/a?next=http://CANARY/"}, {"PUT", "/open%00/x"},
		{"GET", "/b.test/../v1/models"}, {"GET", "/EDGE/v1/models"}, {"GET", "http://EDGE/open/x"},
	} {
		for keySel := range uint8(3) {
			f.Add(seed.method, seed.target, uint8(0), keySel, "")
		}
		f.Add(seed.method, seed.target, uint8(1), uint8(1), "")
	}
	f.Fuzz(func(t *testing.T, method, target string, hostSel, keySel uint8, extra string) {
		target = place.Replace(target)
		host := hosts[int(hostSel)%len(hosts)]
		var key string
		switch keySel % 3 {
		case 1:
			key = full
		case 2:
			key = readOnly
		}
		req := method + " " + target + " HTTP/1.1\r\nHost: " + host + "\r\n"
		if key != "" {
			req += "X-API-Key: " + key + "\r\n"
		}
		if extra = strings.NewReplacer("\r", "", "\n", "").Replace(extra); extra != "" {
			req += "X-Extra: " + extra + "\r\n"
		}
		req += "Content-Length: 2\r\nConnection: close\r\n\r\n{}"
		before := make([]int, len(deps))
		for i, d := range deps {
			before[i] = len(d.up.got())
		}
		if _, err := testutil.RawRequest(e.Addr(), []byte(req), 10*time.Second); err != nil && strings.Contains(err.Error(), "timeout") {
			t.Fatalf("%q: %v", req, err)
		}
		if n := len(canary.got()); n != 0 {
			t.Fatalf("%q reached a server no deployment names", req)
		}
		reached := 0
		for i, d := range deps {
			for _, r := range d.up.got()[before[i]:] {
				reached++
				checkForwarded(t, req, target, host, key, readOnly, []string{full, readOnly}, deps, d, r)
			}
		}
		if reached > 1 {
			t.Fatalf("%q reached %d upstream requests", req, reached)
		}
	})
}

// checkForwarded checks one request an upstream of d got for the client
// request req.
func checkForwarded(t *testing.T, req, target, host, key, readOnly string, secrets []string, deps []*fuzzDeployment, d *fuzzDeployment, r recorded) {
	t.Helper()
	u, err := url.ParseRequestURI(r.uri)
	if err != nil || !strings.HasPrefix(r.uri, "/") {
		t.Fatalf("%q: the upstream got request target %q", req, r.uri)
	}
	path := u.Path // decoded once, as the upstream reads it
	if want := refRoute(deps, refHost(target, host), path); want != d {
		name := "none"
		if want != nil {
			name = want.name
		}
		t.Fatalf("%q: deployment %s's upstream got %q, which routes to %s", req, d.name, r.uri, name)
	}
	if d.auth && key == "" {
		t.Fatalf("%q: deployment %s needs a key, and its upstream got %q without one", req, d.name, r.uri)
	}
	if d.auth && key == readOnly {
		models := path == "/v1/models" || strings.HasPrefix(path, "/v1/models/")
		if (r.method != http.MethodGet && r.method != http.MethodHead) || !models {
			t.Fatalf("%q: a read_models key reached %s %q", req, r.method, r.uri)
		}
	}
	for name, vals := range r.header {
		for _, v := range vals {
			for _, sec := range secrets {
				if strings.Contains(v, sec) || strings.Contains(r.uri, sec) {
					t.Fatalf("%q: a client key reached the upstream in %s", req, name)
				}
			}
		}
	}
	if got := r.header.Values("Authorization"); len(got) != 1 {
		t.Fatalf("%q: the upstream got %d Authorization headers", req, len(got))
	}
}
