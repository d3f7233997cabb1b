package e2e

// Attacks of a hostile client on the edge's data plane, spoken in raw bytes
// where an HTTP client library would normalise the request: the upstream is
// only ever one of the matched deployment's servers, and every check sees
// what the upstream will see.

import (
	"bytes"
	"compress/gzip"
	"compress/zlib"
	"encoding/base64"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"net/url"
	"strings"
	"sync"
	"testing"
	"time"
	"unicode/utf16"

	"github.com/keymesh/keymesh/edge"
	"github.com/keymesh/keymesh/internal/testutil"
)

// recorder is an upstream that records every request it gets and answers
// 200 with a small JSON body.
type recorder struct {
	*httptest.Server
	mu   sync.Mutex
	reqs []recorded
}

type recorded struct {
	method, uri, host string
	header            http.Header
	body              []byte
}

func newRecorder(t testing.TB) *recorder {
	r := &recorder{}
	r.Server = httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, req *http.Request) {
		body, _ := io.ReadAll(req.Body)
		r.mu.Lock()
		r.reqs = append(r.reqs, recorded{req.Method, req.RequestURI, req.Host, req.Header.Clone(), body})
		r.mu.Unlock()
		w.Header().Set("Content-Type", "application/json")
		_, _ = w.Write([]byte(`{"ok":true}`))
	}))
	t.Cleanup(r.Close)
	return r
}

func (r *recorder) got() []recorded {
	r.mu.Lock()
	defer r.mu.Unlock()
	return append([]recorded(nil), r.reqs...)
}

func (r *recorder) hostPort() string { u, _ := url.Parse(r.URL); return u.Host }

// injectSecret gives this process's edges the upstream secret name of the
// default project, as EDGE_SECRET_DEFAULT__<NAME> — and as the variable of
// the layout before secrets were per project, so that a test run against
// that code shows what it did with it — and remembers it as a secret that
// may reach upstreams but no log.
func (s *stack) injectSecret(t interface{ Setenv(k, v string) }, name, value string) {
	s.upstreamSecrets = append(s.upstreamSecrets, value)
	t.Setenv("EDGE_SECRET_DEFAULT__"+strings.ToUpper(name), value)
	t.Setenv("EDGE_SECRET_"+strings.ToUpper(name), value)
}

// keyWith creates a key linked to deployments holding only perms.
func (s *stack) keyWith(perms []string, deployments ...string) string {
	s.t.Helper()
	var k struct {
		Key string `json:"key"`
	}
	s.call(http.MethodPost, "/v1/projects/"+project+"/keys",
		map[string]any{"name": "k", "deployments": deployments, "permissions": perms}, &k)
	s.secrets = append(s.secrets, k.Key)
	return k.Key
}

// raw sends req to e byte for byte and returns the status (0 when the edge
// closed the connection without an answer) and body.
func raw(t testing.TB, e *edge.Node, req string) (int, string) {
	t.Helper()
	resp, err := testutil.RawRequest(e.Addr(), []byte(req), 5*time.Second)
	if resp == nil || resp.Status == 0 {
		t.Logf("no answer to %.60q: %v", req, err)
		return 0, ""
	}
	return resp.Status, string(resp.Body)
}

// Item 1: the client's request target never chooses where the edge
// connects. A target that is not origin-form was routed by its decoded path
// but forwarded as upstream base + raw target, so "%2fa%2f@HOST:PORT/p" went
// to HOST:PORT — with the edge-injected upstream secret — and an auth-off
// deployment could serve an auth-on one's upstream.
func TestTargetCannotChooseUpstream(t *testing.T) {
	s := newStack(t)
	upA, upOpen, canary := newRecorder(t), newRecorder(t), newRecorder(t)
	const secret = "sk-provider-secret-for-a-0001"
	s.injectSecret(t, "prov", secret)
	a := s.deployment("a", map[string]any{"path_prefix": "/a", "upstreams": map[string][]string{"*": {upA.URL}},
		"upstream_auth": map[string]any{"mode": "inject", "header": "Authorization", "prefix": "Bearer ", "secret": "prov"}})
	s.deployment("open", map[string]any{"path_prefix": "/open", "auth_enabled": false,
		"upstreams": map[string][]string{"*": {upOpen.URL}}})
	k := s.key(a.ID)
	e := s.startEdge(edgeOpts{})

	for _, tt := range []struct {
		req    string
		status int
	}{
		{"CONNECT %2fa%2f@" + canary.hostPort() + "/p HTTP/1.1\r\nHost: edge\r\nX-API-Key: " + k.Secret + "\r\n\r\n", 405},
		{"GET %2fa%2f@" + canary.hostPort() + "/p HTTP/1.1\r\nHost: edge\r\nX-API-Key: " + k.Secret + "\r\n\r\n", 400},
		{"POST %2fa%2f@" + canary.hostPort() + "/v1/chat/completions HTTP/1.1\r\nHost: edge\r\nX-API-Key: " + k.Secret + "\r\nContent-Length: 2\r\n\r\n{}", 400},
		{"GET %2fopen%2f@" + upA.hostPort() + "/a/v1/models HTTP/1.1\r\nHost: edge\r\n\r\n", 400},
		{"GET %2fopen%2f..%2f@" + canary.hostPort() + "/debug/pprof/cmdline HTTP/1.1\r\nHost: edge\r\n\r\n", 400},
		{"GET open/v1/models HTTP/1.1\r\nHost: edge\r\n\r\n", 400},
		{"TRACE /a/v1/models HTTP/1.1\r\nHost: edge\r\nX-API-Key: " + k.Secret + "\r\n\r\n", 405},
		{"connect /a/v1/models HTTP/1.1\r\nHost: edge\r\nX-API-Key: " + k.Secret + "\r\n\r\n", 405},
		{"GET http://user:pw@" + canary.hostPort() + "/a/v1/models HTTP/1.1\r\nHost: edge\r\nX-API-Key: " + k.Secret + "\r\n\r\n", 400},
		{"GET /a/v1/models#@" + canary.hostPort() + " HTTP/1.1\r\nHost: edge\r\nX-API-Key: " + k.Secret + "\r\n\r\n", 400},
	} {
		if st, body := raw(t, e, tt.req); st != tt.status {
			t.Errorf("%.70q: %d %s, want %d", tt.req, st, body, tt.status)
		}
	}
	if n := len(canary.got()); n != 0 {
		t.Fatalf("a server no deployment names got %d requests", n)
	}
	if n := len(upA.got()) + len(upOpen.got()); n != 0 {
		t.Fatalf("the deployments' upstreams got %d refused requests", n)
	}

	// Absolute-form is routed by its own host (RFC 9112 §3.2.2) and
	// forwarded in origin-form, to the deployment's server, with its
	// normalised path.
	st, body := raw(t, e, "GET http://"+canary.hostPort()+"/a/x/../v1/models?q=1 HTTP/1.1\r\nHost: edge\r\nX-API-Key: "+k.Secret+"\r\n\r\n")
	if st != 200 {
		t.Fatalf("absolute-form: %d %s", st, body)
	}
	got := upA.got()
	if len(canary.got()) != 0 || len(got) != 1 || got[0].uri != "/a/v1/models?q=1" || got[0].host != upA.hostPort() {
		t.Fatalf("absolute-form reached the canary %d times; upstream got %+v", len(canary.got()), got)
	}
	if got[0].header.Get("Authorization") != "Bearer "+secret {
		t.Fatal("the injected credential is missing")
	}
}

// Item 2: the body limit applies to the route served. POST /./lim/... was
// routed at header time on the raw path (no match: the server's 64 MiB
// limit) and served on the normalised one, so the edge read whole bodies
// before refusing them. Now every spelling of the path is refused from the
// declared length, before a byte of the body is read.
func TestBodyLimitUsesTheServedPath(t *testing.T) {
	s := newStack(t)
	up := newRecorder(t)
	d := s.deployment("lim", map[string]any{"path_prefix": "/lim", "max_body_bytes": 1024,
		"upstreams": map[string][]string{"*": {up.URL}}})
	k := s.key(d.ID)
	e := s.startEdge(edgeOpts{})
	for _, target := range []string{"/lim/v1/chat/completions", "/./lim/v1/chat/completions", "//lim/v1/chat/completions",
		"/%6cim/v1/chat/completions", "/x/../lim/v1/chat/completions", "/lim%2fv1/chat/completions"} {
		// Only the header and a little of the declared 60 MiB are sent: an
		// edge waiting for the rest never answers.
		st, body := raw(t, e, "POST "+target+" HTTP/1.1\r\nHost: edge\r\nX-API-Key: "+k.Secret+
			"\r\nContent-Type: application/json\r\nContent-Length: 62914560\r\n\r\n{\"prompt\": \"aaaa")
		if st != http.StatusRequestEntityTooLarge {
			t.Errorf("%s: %d %s, want 413 from the header", target, st, body)
		}
	}
	if n := len(up.got()); n != 0 {
		t.Fatalf("the upstream got %d oversized requests", n)
	}
}

func gz(b []byte) []byte {
	var buf bytes.Buffer
	w := gzip.NewWriter(&buf)
	w.Write(b)
	w.Close()
	return buf.Bytes()
}

func zl(b []byte) []byte {
	var buf bytes.Buffer
	w := zlib.NewWriter(&buf)
	w.Write(b)
	w.Close()
	return buf.Bytes()
}

func utf16le(s string) []byte {
	var b []byte
	for _, u := range utf16.Encode([]rune(s)) {
		b = append(b, byte(u), byte(u>>8))
	}
	return b
}

// Item 3: a body the edge skipped but an upstream's parser reads could
// stream without use_streaming or carry a prompt past the limit. Now a body
// is read as the upstream will read it, or refused when the reading
// matters; and what is forwarded is what was read.
func TestBodyInspectionFailsClosed(t *testing.T) {
	s := newStack(t)
	d := s.deployment("demo", map[string]any{"max_prompt_chars": 50})
	noStream := s.keyWith([]string{"run_inference"}, d.ID)
	e := s.startEdge(edgeOpts{})
	streams := []byte(`{"model": "m", "stream": true, "messages": [{"role": "user", "content": "hi"}]}`)
	long := []byte(`{"model": "m", "messages": [{"role": "user", "content": "` + strings.Repeat("x", 500) + `"}]}`)
	multipart := func(name, value string, extra string) []byte {
		return []byte("--b\r\nContent-Disposition: form-data; name=\"model\"\r\n\r\nm\r\n--b\r\nContent-Disposition: form-data; name=\"" +
			name + "\"\r\n" + extra + "\r\n" + value + "\r\n--b--\r\n")
	}
	for _, tt := range []struct {
		name         string
		ctype, coder string
		body         []byte
	}{
		{"BOM, octet-stream", "application/octet-stream", "", append([]byte{0xef, 0xbb, 0xbf}, streams...)},
		{"BOM, text/plain", "text/plain", "", append([]byte{0xef, 0xbb, 0xbf}, streams...)},
		{"BOM, long prompt", "text/plain", "", append([]byte{0xef, 0xbb, 0xbf}, long...)},
		{"UTF-16", "application/json", "", utf16le(string(streams))},
		{"UTF-16 with BOM, text/plain", "text/plain", "", append([]byte{0xff, 0xfe}, utf16le(string(streams))...)},
		{"charset utf-16 label", "application/json; charset=utf-16", "", streams},
		{"gzip, text/plain", "text/plain", "gzip", gz(streams)},
		{"gzip, long prompt", "application/json", "gzip", gz(long)},
		{"deflate", "application/octet-stream", "deflate", zl(streams)},
		{"br", "text/plain", "br", streams},
		{"two codings", "application/json", "gzip, gzip", gz(gz(streams))},
		{"multipart stream", "multipart/form-data; boundary=b", "", multipart("stream", "true", "")},
		{"multipart prompt", "multipart/form-data; boundary=b", "", multipart("prompt", strings.Repeat("p", 500), "")},
		{"multipart quoted-printable", "multipart/form-data; boundary=b", "", multipart("stream", "tr=\r\nue", "Content-Transfer-Encoding: quoted-printable\r\n")},
		{"multipart RFC 2231 name", "multipart/form-data; boundary=b", "", []byte("--b\r\nContent-Disposition: form-data; name*=utf-8''stream\r\n\r\ntrue\r\n--b--\r\n")},
		{"urlencoded stream", "application/x-www-form-urlencoded", "", []byte("model=m&stream=on")},
		{"urlencoded JSON", "application/x-www-form-urlencoded", "", streams},
		{"text/plain, not JSON", "text/plain", "", []byte("stream: true")},
		{"duplicate keys", "application/json", "", []byte(`{"model": "m", "stream": false, "messages": [], "stream": true}`)},
	} {
		before := len(s.seenHeaders())
		req := "POST /v1/chat/completions HTTP/1.1\r\nHost: edge\r\nX-API-Key: " + noStream + "\r\nContent-Type: " + tt.ctype +
			"\r\nContent-Length: " + fmt.Sprint(len(tt.body)) + "\r\n"
		if tt.coder != "" {
			req += "Content-Encoding: " + tt.coder + "\r\n"
		}
		st, body := raw(t, e, req+"\r\n"+string(tt.body))
		if st != 400 && st != 403 && st != 415 {
			t.Errorf("%s: %d %s, want it refused", tt.name, st, body)
		}
		if after := len(s.seenHeaders()); after != before {
			t.Errorf("%s: forwarded to the upstream", tt.name)
		}
	}

	// A compressed body within the limits is read, and forwarded decoded.
	ok := []byte(`{"model": "m", "messages": [{"role": "user", "content": "hi"}]}`)
	for coding, b := range map[string][]byte{"gzip": gz(ok), "deflate": zl(ok)} {
		st, body := raw(t, e, "POST /v1/chat/completions HTTP/1.1\r\nHost: edge\r\nX-API-Key: "+noStream+
			"\r\nContent-Type: application/json\r\nContent-Encoding: "+coding+"\r\nContent-Length: "+fmt.Sprint(len(b))+"\r\n\r\n"+string(b))
		if st != 200 {
			t.Fatalf("%s body: %d %s", coding, st, body)
		}
		if h := s.lastSeen(t); h.Get("Content-Encoding") != "" {
			t.Fatalf("%s: forwarded with Content-Encoding %q", coding, h.Get("Content-Encoding"))
		}
	}
	// A decompression bomb is refused at the body limit, not inflated.
	bomb := gz(bytes.Repeat([]byte(" "), 64<<20))
	st, body := raw(t, e, "POST /v1/chat/completions HTTP/1.1\r\nHost: edge\r\nX-API-Key: "+noStream+
		"\r\nContent-Type: application/json\r\nContent-Encoding: gzip\r\nContent-Length: "+fmt.Sprint(len(bomb))+"\r\n\r\n"+string(bomb))
	if st != http.StatusRequestEntityTooLarge {
		t.Fatalf("gzip bomb: %d %s", st, body)
	}
}

// seenHeaders returns the headers of every request the mock upstream got.
func (s *stack) seenHeaders() []http.Header {
	s.mu.Lock()
	defer s.mu.Unlock()
	return append([]http.Header(nil), s.seen...)
}

// Item 4: the prompt limit counts every field a server turns into prompt
// tokens, on every route: 5,000 characters in any of them never pass a
// 50-character limit.
func TestPromptLimitCountsEveryField(t *testing.T) {
	s := newStack(t)
	up := newRecorder(t)
	d := s.deployment("demo", map[string]any{"max_prompt_chars": 50, "upstreams": map[string][]string{"*": {up.URL}}})
	k := s.key(d.ID)
	e := s.startEdge(edgeOpts{})
	x := strings.Repeat("x", 5000)
	ids := strings.TrimSuffix(strings.Repeat("17,", 100), ",")
	for _, tt := range []struct{ path, body string }{
		{"/generate", `{"inputs": "` + x + `", "parameters": {"max_new_tokens": 4}}`},
		{"/generate_stream", `{"inputs": "` + x + `"}`},
		{"/", `{"inputs": "` + x + `", "stream": false}`},
		{"/v1/responses", `{"model": "m", "input": [{"type": "message", "role": "user", "content": [{"type": "input_text", "text": "` + x + `"}]}]}`},
		{"/v1/responses", `{"model": "m", "input": "hi", "instructions": "` + x + `"}`},
		{"/v1/responses", `{"model": "m", "input": [{"type": "function_call_output", "call_id": "c1", "output": "` + x + `"}]}`},
		{"/v1/messages", `{"model": "m", "max_tokens": 5, "system": "` + x + `", "messages": [{"role": "user", "content": "hi"}]}`},
		{"/v1/messages", `{"model": "m", "max_tokens": 5, "system": [{"type": "text", "text": "` + x + `"}], "messages": []}`},
		{"/v1/messages", `{"model": "m", "messages": [{"role": "user", "content": [{"type": "tool_result", "tool_use_id": "t", "content": "` + x + `"}]}]}`},
		{"/v1/completions", `{"model": "m", "prompt": "hi", "suffix": "` + x + `"}`},
		{"/v1/completions", `{"model": "m", "prompt": [` + ids + `]}`},
		{"/v1/embeddings", `{"model": "m", "input": [[` + ids + `]]}`},
		{"/v1/chat/completions", `{"model": "m", "messages": [], "tools": [{"type": "function", "function": {"name": "f", "description": "` + x + `"}}]}`},
		{"/v1/chat/completions", `{"model": "m", "messages": [], "tools": [{"type": "function", "function": {"name": "f", "parameters": {"type": "object", "properties": {"` + x + `": {"type": "string"}}}}}]}`},
		{"/v1/chat/completions", `{"model": "m", "messages": [{"role": "assistant", "tool_calls": [{"id": "1", "type": "function", "function": {"name": "f", "arguments": "` + x + `"}}]}]}`},
		{"/v1/chat/completions", `{"model": "m", "messages": [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": "data:,"}}, {"type": "text", "text": "` + x + `"}]}]}`},
		{"/v1/chat/completions", `{"model": "m", "functions": [{"name": "f", "description": "` + x + `"}], "messages": []}`},
		{"/v1/rerank", `{"model": "m", "query": "` + x + `", "documents": ["a"]}`},
		{"/v1/score", `{"model": "m", "text_1": "a", "text_2": ["` + x + `"]}`},
	} {
		st, body := send(t, e, http.MethodPost, tt.path, withKey(k), tt.body)
		if st != http.StatusBadRequest || errorCode(t, body) != "VALIDATION_ERROR" {
			t.Errorf("%s %.90s: %d %s", tt.path, tt.body, st, body)
		}
	}
	if n := len(up.got()); n != 0 {
		t.Fatalf("the upstream got %d over-long prompts", n)
	}
}

// Item 5: fasthttp's parse errors quote the request's bytes. No credential,
// cookie or prompt of a malformed request may reach a log line.
func TestMalformedRequestsLogNothingSecret(t *testing.T) {
	s := newStack(t)
	d := s.deployment("demo", nil)
	k := s.key(d.ID)
	e := s.startEdge(edgeOpts{})
	const (
		basicPass = "basic-password-0001"
		apiKey    = "sk-upstream-api-key-0002"
		cookie    = "session-cookie-value-0003"
		email     = "alice.prompt.0004@example.com"
	)
	basic := base64.StdEncoding.EncodeToString([]byte("alice:" + basicPass))
	s.secrets = append(s.secrets, basic, basicPass, apiKey, cookie, email)
	secretHeaders := "Authorization: Basic " + basic + "\r\nApi-Key: " + apiKey + "\r\nCookie: sid=" + cookie +
		"\r\nX-API-Key: " + k.Secret + "\r\n"
	prompt := `{"messages": [{"role": "user", "content": "mail ` + email + `"}]}`
	for _, req := range []string{
		// a header line without a colon
		"POST /v1/chat/completions HTTP/1.1\r\nHost: edge\r\n" + secretHeaders + "Bad Header " + email + "\r\n\r\n",
		// a space before the colon
		"POST /v1/chat/completions HTTP/1.1\r\nHost: edge\r\n" + secretHeaders + "X-Note " + email + ": 1\r\n\r\n",
		// a header too large for the read buffer
		"POST /v1/chat/completions HTTP/1.1\r\nHost: edge\r\n" + secretHeaders + "X-Pad: " + strings.Repeat(email, 200) + "\r\n\r\n",
		// a bad Host
		"POST /v1/chat/completions HTTP/1.1\r\nHost: " + email + " " + apiKey + "\r\n" + secretHeaders + "\r\n",
		// two Content-Lengths, and a body holding the prompt
		"POST /v1/chat/completions HTTP/1.1\r\nHost: edge\r\n" + secretHeaders + "Content-Length: 5\r\nContent-Length: " +
			fmt.Sprint(len(prompt)) + "\r\n\r\n" + prompt,
		// a broken chunked body holding the prompt
		"POST /v1/chat/completions HTTP/1.1\r\nHost: edge\r\n" + secretHeaders + "Transfer-Encoding: chunked\r\n\r\nzz\r\n" + prompt + "\r\n0\r\n\r\n",
		// a bad method and request line
		"P\x01ST /" + email + " HTTP/1.1\r\nHost: edge\r\n" + secretHeaders + "\r\n",
		"POST /v1/chat/completions?" + email + " HTTP/9.9\r\nHost: edge\r\n" + secretHeaders + "\r\n",
	} {
		if st, _ := raw(t, e, req); st != 0 && st < 400 {
			t.Errorf("%.50q: %d, want a refusal", req, st)
		}
	}
	// checkNoSecretLogged (at cleanup) scans every log line, metric and
	// audit record for the secrets above.
}

// Item 6: every value of every credential header, and look-alikes, is
// removed before forwarding; two different credentials are refused; the
// headers the edge sets survive whatever Connection names.
func TestCredentialHeadersNeverForwarded(t *testing.T) {
	s := newStack(t)
	const injected = "sk-injected-upstream-0005"
	s.injectSecret(t, "up", injected)
	pass := s.deployment("pass", map[string]any{"hosts": []string{"pass.test"},
		"upstream_auth": map[string]any{"mode": "passthrough", "header": "Authorization"}})
	inj := s.deployment("inj", map[string]any{"hosts": []string{"inj.test"},
		"upstream_auth": map[string]any{"mode": "inject", "header": "Authorization", "prefix": "Bearer ", "secret": "up"}})
	injKey := s.deployment("injkey", map[string]any{"hosts": []string{"injkey.test"},
		"upstream_auth": map[string]any{"mode": "inject", "header": "api-key", "secret": "up"}})
	k := s.key(pass.ID, inj.ID, injKey.ID)
	other := s.key(pass.ID)
	e := s.startEdge(edgeOpts{})
	req := func(host, headers string) (int, string) {
		return raw(t, e, "POST /v1/chat/completions HTTP/1.1\r\nHost: "+host+"\r\nContent-Type: application/json\r\n"+headers+
			"Content-Length: "+fmt.Sprint(len(chatBody))+"\r\n\r\n"+chatBody)
	}

	// Two different credentials: refused, never forwarded.
	for _, tt := range []struct{ host, headers string }{
		{"pass.test", "X-API-Key: " + k.Secret + "\r\nAuthorization: Bearer client-upstream-token\r\nAuthorization: Bearer " + other.Secret + "\r\n"},
		{"pass.test", "X-API-Key: " + k.Secret + "\r\nX-API-Key: " + other.Secret + "\r\n"},
		{"inj.test", "X-API-Key: " + k.Secret + "\r\nAuthorization: Bearer " + other.Secret + "\r\n"},
		{"inj.test", "Authorization: Bearer " + k.Secret + "\r\nAuthorization: Bearer " + other.Secret + "\r\n"},
	} {
		before := len(s.seenHeaders())
		if st, body := req(tt.host, tt.headers); st != http.StatusBadRequest {
			t.Errorf("%s %q: %d %s, want 400", tt.host, tt.headers, st, body)
		}
		if len(s.seenHeaders()) != before {
			t.Errorf("%s %q: forwarded", tt.host, tt.headers)
		}
	}

	// What the upstream sees: exactly one Authorization, the right one; no
	// look-alike; the edge's own request id and forwarding headers.
	for _, tt := range []struct {
		host, headers string
		auth, apiKey  string // the one value the upstream must see ("" = none)
	}{
		{"pass.test", "X-API-Key: " + k.Secret + "\r\nAuthorization: Bearer client-upstream-token\r\nAuthorization: Bearer client-upstream-token\r\n", "Bearer client-upstream-token", ""},
		{"pass.test", "X-API-Key: " + k.Secret + "\r\nX_API_Key: " + k.Secret + "\r\nx-api_key: " + other.Secret + "\r\nAuthorization_: Bearer " + other.Secret + "\r\n", "", ""},
		{"inj.test", "X-API-Key: " + k.Secret + "\r\nAuthorization: Bearer junk\r\nAuthorization: Bearer junk\r\nConnection: Authorization, X-Request-Id, X-Forwarded-For\r\n", "Bearer " + injected, ""},
		{"inj.test", "Authorization: Bearer " + k.Secret + "\r\nConnection: authorization\r\nX-Request-Id: client-req-1\r\n", "Bearer " + injected, ""},
		{"injkey.test", "X-API-Key: " + k.Secret + "\r\nApi-Key: client-value\r\nApi_Key: client-value-2\r\nAPI-KEY: client-value\r\nConnection: api-key\r\n", "", injected},
	} {
		if st, body := req(tt.host, tt.headers); st != 200 {
			t.Fatalf("%s %q: %d %s", tt.host, tt.headers, st, body)
		}
		h := s.lastSeen(t)
		if got := h.Values("Authorization"); (tt.auth == "" && len(got) != 0) || (tt.auth != "" && (len(got) != 1 || got[0] != tt.auth)) {
			t.Errorf("%s %q: upstream Authorization %q, want %q", tt.host, tt.headers, redactAll(got), redact(tt.auth))
		}
		if got := h.Values("Api-Key"); (tt.apiKey == "" && len(got) != 0) || (tt.apiKey != "" && (len(got) != 1 || got[0] != tt.apiKey)) {
			t.Errorf("%s %q: upstream Api-Key %q", tt.host, tt.headers, redactAll(got))
		}
		for name := range h {
			if strings.Contains(name, "_") || strings.EqualFold(name, "X-Api-Key") {
				t.Errorf("%s %q: upstream got header %s", tt.host, tt.headers, name)
			}
		}
		if len(h.Values("X-Request-Id")) != 1 || h.Get("X-Request-Id") == "" || h.Get("X-Forwarded-For") == "" {
			t.Errorf("%s %q: the edge's own headers were removed: %v", tt.host, tt.headers, h)
		}
	}
	// Trailers of a chunked body arrive after the decision on the header
	// was made, and fasthttp would read them as header fields: refused.
	before := len(s.seenHeaders())
	st, body := raw(t, e, "POST /v1/chat/completions HTTP/1.1\r\nHost: injkey.test\r\nContent-Type: application/json\r\nX-API-Key: "+
		k.Secret+"\r\nTransfer-Encoding: chunked\r\n\r\n"+fmt.Sprintf("%x", len(chatBody))+"\r\n"+chatBody+"\r\n0\r\nApi-Key: client-trailer\r\nX-API-Key: "+other.Secret+"\r\n\r\n")
	if st != http.StatusBadRequest || len(s.seenHeaders()) != before {
		t.Errorf("a request with trailers: %d %s", st, body)
	}
	// (checkNoSecretLogged also checks that no client key reached the
	// upstream in any header.)
}

func redactAll(vs []string) []string {
	out := make([]string, len(vs))
	for i, v := range vs {
		out[i] = redact(v)
	}
	return out
}

// Item 7: ';' and '\' — raw or encoded — are path separators to some
// servers, so "/v1/models/..;/chat/completions" is not a model listing:
// refused.
func TestPathSeparatorsRefused(t *testing.T) {
	s := newStack(t)
	up := newRecorder(t)
	d := s.deployment("demo", map[string]any{"upstreams": map[string][]string{"*": {up.URL}}})
	readOnly := s.keyWith([]string{"read_models"}, d.ID)
	e := s.startEdge(edgeOpts{})
	for _, path := range []string{`/v1/models/..\chat/completions`, "/v1/models/..;/chat/completions",
		"/v1/models/..%5cchat/completions", "/v1/models/..%3b/chat/completions", "/v1/models;x=1",
		"/v1/models/%252e%252e/chat/completions"} {
		st, body := raw(t, e, "GET "+path+" HTTP/1.1\r\nHost: edge\r\nX-API-Key: "+readOnly+"\r\n\r\n")
		if st != http.StatusBadRequest || errorCode(t, body) != "VALIDATION_ERROR" {
			t.Errorf("%s: %d %s", path, st, body)
		}
	}
	if st, body := raw(t, e, "GET /v1/models HTTP/1.1\r\nHost: edge\r\nX-API-Key: "+readOnly+"\r\n\r\n"); st != 200 {
		t.Fatalf("/v1/models: %d %s", st, body)
	}
	// Dot segments are resolved before the permission check: a read-only
	// key cannot reach inference through the models route.
	st, body := raw(t, e, "GET /v1/models/../chat/completions HTTP/1.1\r\nHost: edge\r\nX-API-Key: "+readOnly+"\r\n\r\n")
	if st != http.StatusForbidden {
		t.Fatalf("/v1/models/../chat/completions: %d %s", st, body)
	}
	if got := up.got(); len(got) != 1 || got[0].uri != "/v1/models" {
		t.Fatalf("upstream got %+v", got)
	}
}
