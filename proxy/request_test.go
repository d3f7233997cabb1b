package proxy

import (
	"bufio"
	"errors"
	"math/rand/v2"
	"net/url"
	"strings"
	"testing"

	"github.com/valyala/fasthttp"

	"github.com/keymesh/keymesh/event"
)

func TestNormalisePath(t *testing.T) {
	tests := []struct {
		raw, want string
		err       error
	}{
		{"/", "/", nil},
		{"//", "/", nil},
		{"/a//b", "/a/b", nil},
		{"/./a", "/a", nil},
		{"/a/./b/", "/a/b/", nil},
		{"/a/../b", "/b", nil},
		{"/../../a", "/a", nil},
		{"/a/b/..", "/a/", nil},
		{"/a/b/.", "/a/b/", nil},
		{"/a/%2e%2e/b", "/b", nil},
		{"/a/%2E./b", "/b", nil},
		{"/a%2fb", "/a/b", nil},
		{"/a%2F..%2Fb", "/b", nil},
		{"/./lim/v1/chat/completions", "/lim/v1/chat/completions", nil},
		{"/%C3%A9t%C3%A9", "/été", nil},
		{"/été", "/été", nil},
		{"/v1/models/...", "/v1/models/...", nil},
		{"/v1/models/..\\chat/completions", "", errPathChar},
		{"/v1/models/..;/chat/completions", "", errPathChar},
		{"/a%3bb", "", errPathChar},
		{"/a%3Bb", "", errPathChar},
		{"/a%5cb", "", errPathChar},
		{"/a%25", "", errPathChar},
		{"/a%252e%252e/b", "", errPathChar},
		{"/a%00", "", errPathChar},
		{"/a%0d%0aX: y", "", errPathChar},
		{"/a\x7f", "", errPathChar},
		{"/a%zz", "", errPathEscape},
		{"/a%2", "", errPathEscape},
		{"/a%", "", errPathEscape},
		{"a", "", errTargetForm},
		{"", "", errTargetForm},
	}
	for _, tt := range tests {
		got, err := normalisePath([]byte("keep"), []byte(tt.raw))
		if !errors.Is(err, tt.err) || (err == nil && string(got) != "keep"+tt.want) {
			t.Errorf("%q: got %q, %v; want %q, %v", tt.raw, got, err, tt.want, tt.err)
		}
		if err != nil && string(got) != "keep" {
			t.Errorf("%q: refused, but left %q in dst", tt.raw, got)
		}
	}
}

func TestSplitTarget(t *testing.T) {
	tests := []struct {
		target, host, path, query string
		absolute                  bool
		err                       error
	}{
		{"/v1/x?a=1", "", "/v1/x", "a=1", false, nil},
		{"//evil.example/x", "", "//evil.example/x", "", false, nil}, // origin-form: an empty first segment
		{"http://H.example:81/x/../y?q=1", "H.example:81", "/x/../y", "q=1", true, nil},
		{"HTTPS://h.example", "h.example", "/", "", true, nil},
		{"http://h.example?x=1", "h.example", "/", "x=1", true, nil},
		{"http://user:pw@h.example/", "", "", "", false, errTargetUser},
		{"http:///x", "", "", "", false, errTargetHost},
		{"*", "", "", "", false, errTargetForm},
		{"h.example:443", "", "", "", false, errTargetForm},
		{"%2fPREFIX%2f@127.0.0.1:9090/debug/pprof/", "", "", "", false, errTargetForm},
		{"ftp://h/x", "", "", "", false, errTargetForm},
		{"/a#frag", "", "", "", false, errTargetFrag},
		{"/a?x=\x01", "", "", "", false, errQueryChar},
		{"/a?x=\xc3\xa9", "", "", "", false, errQueryChar},
		{"/" + strings.Repeat("a", maxTargetLen), "", "", "", false, errTargetLength},
	}
	for _, tt := range tests {
		host, path, query, abs, err := splitTarget([]byte(tt.target))
		if !errors.Is(err, tt.err) || string(host) != tt.host || string(path) != tt.path || string(query) != tt.query || abs != tt.absolute {
			t.Errorf("%q: got %q %q %q %v %v", tt.target, host, path, query, abs, err)
		}
	}
}

func TestNormaliseHost(t *testing.T) {
	for in, want := range map[string]string{
		"A.Example.COM:8080": "a.example.com", "a.example.": "a.example", "[::1]:80": "[::1]", "[fe80::1]": "[fe80::1]",
		"": "", "127.0.0.1:8080": "127.0.0.1", "under_score": "under_score",
	} {
		if got, err := normaliseHost(nil, []byte(in)); err != nil || string(got) != want {
			t.Errorf("%q: %q %v, want %q", in, got, err, want)
		}
	}
	for _, in := range []string{"a b", "a@b", "a:80x", "a:", "a:123456", "[::1", "[::1]x", "a/b", "a\\b", "[zz]", "a:1:2"} {
		if got, err := normaliseHost(nil, []byte(in)); err == nil {
			t.Errorf("%q accepted as %q", in, got)
		}
	}
}

// The path sent upstream decodes, once, to exactly the path the edge routed
// on, whatever bytes it holds.
func TestEscapedPathRoundTrips(t *testing.T) {
	rng := rand.New(rand.NewPCG(1, 2))
	for range 2000 {
		b := make([]byte, 1+rng.IntN(24))
		b[0] = '/'
		for i := 1; i < len(b); i++ {
			b[i] = byte(rng.IntN(256))
		}
		esc := appendEscapedPath(nil, b)
		for _, c := range esc {
			if c <= ' ' || c >= 0x7f || c == '?' || c == '#' || c == ';' || c == '\\' {
				t.Fatalf("%q escaped as %q, which holds %q", b, esc, c)
			}
		}
		dec, err := url.PathUnescape(string(esc))
		if err != nil || dec != string(b) {
			t.Fatalf("%q escaped as %q decodes to %q, %v", b, esc, dec, err)
		}
	}
	if got := string(appendEscapedPath(nil, []byte("/v1/models/gemini:generate a?#%é"))); got != "/v1/models/gemini:generate%20a%3F%23%25%C3%A9" {
		t.Fatalf("got %s", got)
	}
}

// read makes the one reading of a request from its header: what is refused
// outright, the route, and the body limit of the deployment routed to.
func TestRequestRead(t *testing.T) {
	up := map[string][]string{"*": {"http://up:1"}}
	rtr := newRouter(deps(
		event.Deployment{ID: "lim", PathPrefix: "/lim", Upstreams: up, MaxBodyBytes: 1024},
		event.Deployment{ID: "host", Hosts: []string{"h.example"}, PathPrefix: "/", Upstreams: up},
	), "eu", &healthTable{}, testMetrics(t).upstream, nil)
	read := func(raw string) *request {
		var h fasthttp.RequestHeader
		if err := h.Read(bufioReader(raw)); err != nil {
			t.Fatalf("%q: %v", raw, err)
		}
		r := &request{}
		r.read(&h, rtr, 64<<20)
		return r
	}
	for raw, want := range map[string]string{
		"POST /./lim/v1/chat/completions HTTP/1.1\r\nHost: x\r\n\r\n":                   "lim",
		"POST //lim/x HTTP/1.1\r\nHost: x\r\n\r\n":                                      "lim",
		"POST /x/../lim HTTP/1.1\r\nHost: x\r\n\r\n":                                    "lim",
		"POST /%6cim HTTP/1.1\r\nHost: x\r\n\r\n":                                       "lim",
		"GET http://H.Example./lim/x HTTP/1.1\r\nHost: other\r\n\r\n":                   "host",
		"GET /lim/x HTTP/1.1\r\nHost: h.example.\r\n\r\n":                               "host",
		"GET http://other/lim HTTP/1.1\r\nHost: h.example\r\n\r\n":                      "lim",     // absolute-form: the target's host
		"GET /x HTTP/1.1\r\nHost: x\r\n\r\n":                                            "refused", // no deployment: refused from the header
		"POST /lim HTTP/1.1\r\nHost: x\r\nX-API-Key: a\r\nX-API-Key: b\r\n\r\n":         "refused",
		"CONNECT h.example:443 HTTP/1.1\r\nHost: h.example\r\n\r\n":                     "refused",
		"TRACE /lim HTTP/1.1\r\nHost: x\r\n\r\n":                                        "refused",
		"GET /lim/km_" + strings.Repeat("a", 59) + " HTTP/1.1\r\nHost: x\r\n\r\n":       "refused",
		"GET /lim?key=km%5F" + strings.Repeat("a", 59) + " HTTP/1.1\r\nHost: x\r\n\r\n": "refused",
	} {
		r := read(raw)
		got := ""
		switch {
		case r.refusal != nil:
			got = "refused"
		case r.rt != nil:
			got = r.rt.dep.ID
		}
		if got != want {
			t.Errorf("%q: %s, want %s", raw, got, want)
		}
		if want == "lim" && r.bodyLimit != 1024 {
			t.Errorf("%q: body limit %d", raw, r.bodyLimit)
		}
	}
}

// The table that carries a reading from the header hook to the handler
// gives back what was put for that header, once; a reading left behind is
// replaced by the next one for the same header; the table stays bounded.
func TestPendingRequests(t *testing.T) {
	p := newPendingRequests()
	var h1, h2 fasthttp.RequestHeader
	a, b := &request{}, &request{}
	p.put(&h1, a)
	p.put(&h2, b)
	if p.take(&h1) != a || p.take(&h1) != nil || p.take(&h2) != b {
		t.Fatal("take did not return what was put, once")
	}
	p.put(&h1, a)
	p.put(&h1, b) // a request that never reached its handler, then the next
	if p.take(&h1) != b || p.len() != 0 {
		t.Fatal("a reading left behind was not replaced")
	}
	hs := make([]fasthttp.RequestHeader, 3*maxPendingPerShard*len(p.shards)/2)
	for i := range hs {
		p.put(&hs[i], &request{})
	}
	if n := p.len(); n > maxPendingPerShard*len(p.shards) {
		t.Fatalf("%d readings held", n)
	}
}

// Reading a request's header allocates nothing on the hot path.
func TestRequestReadAllocatesNothing(t *testing.T) {
	rtr, h := typicalRequest(t)
	p := newPendingRequests()
	n := testing.AllocsPerRun(200, func() {
		r := acquireRequest()
		r.read(h, rtr, 64<<20)
		p.put(h, r)
		releaseRequest(p.take(h))
	})
	if n != 0 {
		t.Fatalf("%v allocations per request", n)
	}
}

func BenchmarkRequestRead(b *testing.B) {
	rtr, h := typicalRequest(b)
	p := newPendingRequests()
	b.ReportAllocs()
	b.SetParallelism(1)
	b.RunParallel(func(pb *testing.PB) {
		var h2 fasthttp.RequestHeader
		h.CopyTo(&h2)
		for pb.Next() {
			r := acquireRequest()
			r.read(&h2, rtr, 64<<20)
			p.put(&h2, r)
			releaseRequest(p.take(&h2))
		}
	})
}

func bufioReader(s string) *bufio.Reader { return bufio.NewReader(strings.NewReader(s)) }

// typicalRequest returns a router of one deployment and the header of a
// chat completion to it.
func typicalRequest(tb testing.TB) (*router, *fasthttp.RequestHeader) {
	up := map[string][]string{"*": {"http://up:1"}}
	rtr := newRouter(deps(event.Deployment{ID: "d", PathPrefix: "/", Upstreams: up}), "eu", &healthTable{}, testMetrics(tb).upstream, nil)
	var h fasthttp.RequestHeader
	if err := h.Read(bufioReader("POST /v1/chat/completions HTTP/1.1\r\nHost: api.example\r\nContent-Type: application/json\r\nX-API-Key: km_" + strings.Repeat("a", 59) + "\r\nContent-Length: 10\r\n\r\n")); err != nil {
		tb.Fatal(err)
	}
	return rtr, &h
}

// FuzzNormalisePath: the normalised path starts with '/', holds no empty,
// "." or ".." segment and no refused byte, is its own normal form, and goes
// upstream in a form that decodes back to it.
func FuzzNormalisePath(f *testing.F) {
	for _, s := range []string{"/", "/a//b/./c/../d", "/%2e%2e/%2F/x", "/a;b", "/é/%C3%A9", "/a/b/..", "/v1/models/..%5c"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, raw string) {
		got, err := normalisePath(nil, []byte(raw))
		if err != nil {
			return
		}
		p := string(got)
		if !strings.HasPrefix(p, "/") || strings.Contains(p, "//") || strings.ContainsAny(p, ";\\%") {
			t.Fatalf("%q normalised to %q", raw, p)
		}
		for _, seg := range strings.Split(p, "/") {
			if seg == "." || seg == ".." {
				t.Fatalf("%q normalised to %q", raw, p)
			}
		}
		esc := appendEscapedPath(nil, got)
		again, err := normalisePath(nil, esc)
		if err != nil || string(again) != p {
			t.Fatalf("%q normalised to %q, escaped %q, which normalises to %q, %v", raw, p, esc, again, err)
		}
	})
}

// forwardNames classes every name of its lists in any letter case, and
// nothing else: a name it missed would be forwarded.
func TestForwardNamesClass(t *testing.T) {
	want := map[string]nameClass{"Content-Encoding": nameContentEncoding, "Accept-Encoding": nameAcceptEncoding,
		"X-API-Keys": nameOther, "TEE": nameOther, "T": nameOther, "": nameOther, "Connections": nameOther,
		"X-Forwarded-Host": nameOther, strings.Repeat("X", 200): nameOther}
	for _, n := range forwardDropped {
		want[string(n)] = nameDropped
	}
	for _, n := range hopByHop {
		want[n] = nameHopByHop // Proxy-Authorization is in both: hop-by-hop
	}
	for name, class := range want {
		for _, k := range []string{name, strings.ToLower(name), strings.ToUpper(name)} {
			if got := forwardNames.class([]byte(k)); got != class {
				t.Errorf("class(%q) = %d, want %d", k, got, class)
			}
		}
	}
}
