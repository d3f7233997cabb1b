package proxy

// The request path end to end, without NATS: a Proxy serving on a real
// socket, a fake State holding deployments and keys, an in-memory audit
// sink and a local upstream (net/http/httptest), the way net/http/httputil
// tests its ReverseProxy.

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/keymesh/keymesh/apikey"
	"github.com/keymesh/keymesh/cache"
	"github.com/keymesh/keymesh/event"
	"github.com/keymesh/keymesh/internal/apierror"
	"github.com/keymesh/keymesh/internal/testutil"
)

// fakeState is a State of fixed deployments and keys: a key it does not
// hold is unknown; unavailable makes every lookup fail as a View that
// cannot reach the origin does.
type fakeState struct {
	deps        *cache.Deployments
	keys        map[apikey.Hash]*cache.Key
	untrusted   atomic.Bool
	unsynced    atomic.Bool
	unavailable atomic.Bool
	lookups     atomic.Int64
}

func (f *fakeState) Authorize(_ context.Context, h apikey.Hash) (*cache.Key, error) {
	f.lookups.Add(1)
	if f.unavailable.Load() {
		return nil, cache.ErrUnavailable
	}
	if k, ok := f.keys[h]; ok {
		return k, nil
	}
	return nil, cache.ErrUnknownKey
}

func (f *fakeState) Deployments() *cache.Deployments { return f.deps }
func (f *fakeState) Trusted() bool                   { return !f.untrusted.Load() }
func (f *fakeState) HasSnapshot() bool               { return !f.unsynced.Load() }

// seen is what the upstream received.
type seen struct {
	method, path, rawQuery string
	header                 http.Header
	body                   string
}

// testUpstream is a local inference server that records each request.
type testUpstream struct {
	*httptest.Server
	mu  sync.Mutex
	got []seen
}

func newUpstream(t *testing.T, h http.HandlerFunc) *testUpstream {
	t.Helper()
	u := &testUpstream{}
	u.Server = httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		b, _ := io.ReadAll(r.Body)
		r.Body = io.NopCloser(bytes.NewReader(b)) // for h to read again
		u.mu.Lock()
		u.got = append(u.got, seen{r.Method, r.URL.Path, r.URL.RawQuery, r.Header.Clone(), string(b)})
		u.mu.Unlock()
		if h != nil {
			h(w, r)
			return
		}
		w.Header().Set("Content-Type", "application/json")
		_, _ = io.WriteString(w, `{"ok":true}`)
	}))
	t.Cleanup(u.Close)
	return u
}

func (u *testUpstream) requests() []seen {
	u.mu.Lock()
	defer u.mu.Unlock()
	return append([]seen(nil), u.got...)
}

// testKey makes a key secret and the compiled key it belongs to.
func testKey(t *testing.T, id string, deployments ...string) (string, apikey.Hash, *cache.Key) {
	t.Helper()
	secret, err := apikey.Generate()
	if err != nil {
		t.Fatal(err)
	}
	h, err := apikey.ParseString(secret)
	if err != nil {
		t.Fatal(err)
	}
	k := cache.NewKey(&event.Key{ID: id, Project: "prj_1", Secrets: []event.Secret{{Hash: h}},
		Permissions: event.DefaultPermissions, Deployments: deployments}, 1)
	return secret, h, k
}

type testProxy struct {
	*Proxy
	url   string
	audit *memorySink
	reg   *prometheus.Registry
}

// startProxy serves a Proxy of st on 127.0.0.1 until the test ends.
func startProxy(t *testing.T, st State) *testProxy {
	t.Helper()
	return startProxyConfig(t, st, nil)
}

// startProxyConfig is startProxy with the config changed by mutate first.
func startProxyConfig(t *testing.T, st State, mutate func(*Config)) *testProxy {
	t.Helper()
	return startProxyPrepared(t, st, mutate, nil)
}

// startProxyPrepared is startProxyConfig with prepare run on the Proxy
// before it serves (to inject a clock, say).
func startProxyPrepared(t *testing.T, st State, mutate func(*Config), prepare func(*Proxy)) *testProxy {
	t.Helper()
	tp := &testProxy{audit: &memorySink{}, reg: prometheus.NewRegistry()}
	cfg := Config{State: st, Audit: tp.audit, Metrics: tp.reg, Logger: slog.New(slog.DiscardHandler),
		EdgeID: "edge-1", Site: "eu", MaxRequestBodyBytes: 1 << 20, MaxUpstreamConns: 16,
		UpstreamIdleTimeout: 5 * time.Second, UpstreamConnectTimeout: time.Second, UpstreamPoolWait: time.Second}
	if mutate != nil {
		mutate(&cfg)
	}
	p, err := New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	if prepare != nil {
		prepare(p)
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	done := make(chan error, 1)
	go func() { done <- p.Serve(ln) }()
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		if err := p.Shutdown(ctx); err != nil {
			t.Errorf("shutdown: %v", err)
		}
		if err := <-done; err != ErrServerClosed {
			t.Errorf("Serve returned %v, want ErrServerClosed", err)
		}
	})
	tp.Proxy, tp.url = p, "http://"+ln.Addr().String()
	return tp
}

// counter reads the counter name{label="value"} from the proxy's registry.
func (p *testProxy) counter(t *testing.T, name, label, value string) float64 {
	t.Helper()
	families, err := p.reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	for _, f := range families {
		if f.GetName() != name {
			continue
		}
		for _, m := range f.GetMetric() {
			for _, l := range m.GetLabel() {
				if l.GetName() == label && l.GetValue() == value {
					return m.GetCounter().GetValue()
				}
			}
		}
	}
	return 0
}

// client has no connection pooling surprises: each test's own transport.
func client(t *testing.T) *http.Client {
	tr := &http.Transport{}
	t.Cleanup(tr.CloseIdleConnections)
	return &http.Client{Transport: tr, Timeout: 5 * time.Second}
}

func do(t *testing.T, c *http.Client, method, url, body string, header map[string]string) (*http.Response, string) {
	t.Helper()
	req, err := http.NewRequest(method, url, strings.NewReader(body))
	if err != nil {
		t.Fatal(err)
	}
	for k, v := range header {
		req.Header.Set(k, v)
	}
	resp, err := c.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatal(err)
	}
	return resp, string(b)
}

// wantError checks a refusal: its status and the external API's error body
// (docs/api.md): {"error": {"code", "message", "type", "details"}}.
func wantError(t *testing.T, resp *http.Response, body string, status int, code string) {
	t.Helper()
	if resp.StatusCode != status {
		t.Fatalf("status %d, want %d (body %s)", resp.StatusCode, status, body)
	}
	if ct := resp.Header.Get("Content-Type"); ct != "application/json" {
		t.Fatalf("Content-Type %q", ct)
	}
	var e struct {
		Error *struct {
			Code, Message, Type string
			Details             any
		} `json:"error"`
	}
	if err := json.Unmarshal([]byte(body), &e); err != nil || e.Error == nil {
		t.Fatalf("body %s is not the error body: %v", body, err)
	}
	if e.Error.Code != code || e.Error.Message == "" || e.Error.Type == "" || e.Error.Details != nil {
		t.Fatalf("error %+v, want code %s", *e.Error, code)
	}
}

func deployment(id, upstreamURL string, auth bool) event.Deployment {
	return event.Deployment{ID: id, Name: id, Project: "prj_1", PathPrefix: "/", AuthEnabled: auth,
		Upstreams: map[string][]string{"*": {upstreamURL}}}
}

// A valid key is forwarded: to the deployment's upstream, with the
// normalised path and the query, the body, the request id — and no client
// credential.
func TestHandlerForwardsValidKey(t *testing.T) {
	up := newUpstream(t, nil)
	secret, h, key := testKey(t, "key_1", "dep_1")
	st := &fakeState{deps: cache.NewDeployments([]event.Deployment{deployment("dep_1", up.URL, true)}, 1),
		keys: map[apikey.Hash]*cache.Key{h: key}}
	p := startProxy(t, st)
	resp, body := do(t, client(t), "POST", p.url+"/v1//chat/./completions?n=1", `{"model":"m","prompt":"hi"}`,
		map[string]string{"X-API-Key": secret, "Authorization": "Bearer unused", "Content-Type": "application/json"})
	if resp.StatusCode != 200 || body != `{"ok":true}` {
		t.Fatalf("status %d body %s", resp.StatusCode, body)
	}
	got := up.requests()
	if len(got) != 1 {
		t.Fatalf("upstream saw %d requests", len(got))
	}
	r := got[0]
	if r.method != "POST" || r.path != "/v1/chat/completions" || r.rawQuery != "n=1" || r.body != `{"model":"m","prompt":"hi"}` {
		t.Fatalf("upstream saw %+v", r)
	}
	for name, vs := range r.header {
		for _, v := range vs {
			if strings.Contains(v, secret) {
				t.Fatalf("the client's key went upstream in %s", name)
			}
		}
	}
	if r.header.Get("X-API-Key") != "" || r.header.Get("Authorization") != "" {
		t.Fatalf("a client credential header went upstream: %v", r.header)
	}
	if id := resp.Header.Get("X-Request-Id"); id == "" || r.header.Get("X-Request-Id") != id {
		t.Fatalf("request id %q answered, %q upstream", id, r.header.Get("X-Request-Id"))
	}
	if n := p.counter(t, "keymesh_edge_auth_decisions_total", "reason", "allowed"); n != 1 {
		t.Fatalf("%v allowed decisions counted", n)
	}
	if n := p.counter(t, "keymesh_edge_requests_total", "code", "200"); n != 1 {
		t.Fatalf("%v requests answered 200 counted", n)
	}
}

// Refusals carry the documented status and error body, and reach no
// upstream; a malformed key is refused without any lookup.
func TestHandlerRefusesKeys(t *testing.T) {
	up := newUpstream(t, nil)
	_, h, key := testKey(t, "key_1", "dep_1")
	unlinkedSecret, uh, unlinked := testKey(t, "key_2", "other")
	unknownSecret, _, _ := testKey(t, "key_3", "dep_1")
	strict := deployment("dep_strict", up.URL, true)
	strict.PathPrefix, strict.InvalidKeyStatus = "/strict", http.StatusForbidden
	st := &fakeState{deps: cache.NewDeployments([]event.Deployment{deployment("dep_1", up.URL, true), strict}, 1),
		keys: map[apikey.Hash]*cache.Key{h: key, uh: unlinked}}
	p := startProxy(t, st)
	c := client(t)
	for _, tt := range []struct {
		name, path, key string
		status          int
		code            string
	}{
		{"missing", "/v1/models", "", 401, apierror.AuthenticationFailed},
		{"unknown", "/v1/models", unknownSecret, 401, apierror.AuthenticationFailed},
		{"unlinked", "/v1/models", unlinkedSecret, 401, apierror.AuthenticationFailed},
		{"unlinked, deployment's invalid_key_status", "/strict/v1/models", unlinkedSecret, 403, apierror.AuthenticationFailed},
		{"malformed", "/v1/models", "km_not-a-key", 401, apierror.AuthenticationFailed},
	} {
		t.Run(tt.name, func(t *testing.T) {
			hdr := map[string]string{}
			if tt.key != "" {
				hdr["Authorization"] = "Bearer " + tt.key
			}
			before := st.lookups.Load()
			resp, body := do(t, c, "GET", p.url+tt.path, "", hdr)
			wantError(t, resp, body, tt.status, tt.code)
			if tt.key == "" && resp.Header.Get("WWW-Authenticate") != "Bearer" {
				t.Fatalf("WWW-Authenticate %q", resp.Header.Get("WWW-Authenticate"))
			}
			if tt.name == "malformed" && st.lookups.Load() != before {
				t.Fatal("a malformed key was looked up")
			}
		})
	}
	if n := len(up.requests()); n != 0 {
		t.Fatalf("the upstream saw %d refused requests", n)
	}
	// A View that cannot prove anything answers 503, to be retried.
	st.unavailable.Store(true)
	resp, body := do(t, c, "GET", p.url+"/v1/models", "", map[string]string{"X-API-Key": unlinkedSecret})
	wantError(t, resp, body, 503, apierror.Unavailable)
	if resp.Header.Get("Retry-After") != "1" {
		t.Fatalf("Retry-After %q", resp.Header.Get("Retry-After"))
	}
}

// A deployment without auth is served on the edge's word alone: not while
// the state cannot be trusted (closed mode, stale).
func TestHandlerAuthOffNeedsTrustedState(t *testing.T) {
	up := newUpstream(t, nil)
	st := &fakeState{deps: cache.NewDeployments([]event.Deployment{deployment("open", up.URL, false)}, 1)}
	p := startProxy(t, st)
	c := client(t)
	if resp, body := do(t, c, "GET", p.url+"/v1/models", "", nil); resp.StatusCode != 200 {
		t.Fatalf("trusted: status %d body %s", resp.StatusCode, body)
	}
	st.untrusted.Store(true)
	resp, body := do(t, c, "GET", p.url+"/v1/models", "", nil)
	wantError(t, resp, body, 503, apierror.Unavailable)
	if resp.Header.Get("Retry-After") != "1" {
		t.Fatalf("Retry-After %q", resp.Header.Get("Retry-After"))
	}
	if n := len(up.requests()); n != 1 {
		t.Fatalf("the upstream saw %d requests, want 1", n)
	}
}

// Past the deployment's rate limit a request gets 429 with Retry-After and
// the X-RateLimit headers, and goes nowhere.
func TestHandlerRateLimit(t *testing.T) {
	up := newUpstream(t, nil)
	secret, h, key := testKey(t, "key_1", "dep_1")
	dep := deployment("dep_1", up.URL, true)
	dep.RateLimit = &event.RateLimit{RequestsPerMinute: 2}
	st := &fakeState{deps: cache.NewDeployments([]event.Deployment{dep}, 1), keys: map[apikey.Hash]*cache.Key{h: key}}
	p := startProxy(t, st)
	c := client(t)
	hdr := map[string]string{"X-API-Key": secret}
	for i := range 2 {
		resp, body := do(t, c, "GET", p.url+"/v1/models", "", hdr)
		if resp.StatusCode != 200 || resp.Header.Get("X-RateLimit-Limit") != "2" {
			t.Fatalf("request %d: status %d, X-RateLimit-Limit %q, body %s", i, resp.StatusCode, resp.Header.Get("X-RateLimit-Limit"), body)
		}
	}
	resp, body := do(t, c, "GET", p.url+"/v1/models", "", hdr)
	wantError(t, resp, body, 429, apierror.RateLimited)
	if resp.Header.Get("Retry-After") == "" || resp.Header.Get("X-RateLimit-Remaining") != "0" {
		t.Fatalf("headers %v", resp.Header)
	}
	if n := len(up.requests()); n != 2 {
		t.Fatalf("the upstream saw %d requests, want 2", n)
	}
}

// Every answered request, refused or forwarded, gives the sink one record
// naming its outcome; none holds the key.
func TestHandlerAuditsEveryRequest(t *testing.T) {
	up := newUpstream(t, nil)
	secret, h, key := testKey(t, "key_1", "dep_1")
	st := &fakeState{deps: cache.NewDeployments([]event.Deployment{deployment("dep_1", up.URL, true)}, 1),
		keys: map[apikey.Hash]*cache.Key{h: key}}
	p := startProxy(t, st)
	c := client(t)
	ok, _ := do(t, c, "POST", p.url+"/v1/chat/completions", `{}`, map[string]string{"X-API-Key": secret})
	do(t, c, "GET", p.url+"/v1/models", "", nil)
	do(t, c, "GET", p.url+"/health", "", nil) // open: not audited
	// The record is handed over once the answer is written: wait for both.
	testutil.CheckFor(t, 2*time.Second, time.Millisecond, func() error {
		if n := len(p.audit.records(t)); n < 2 {
			return fmt.Errorf("%d audit records", n)
		}
		return nil
	})
	recs := p.audit.records(t)
	if len(recs) != 2 {
		t.Fatalf("%d audit records, want 2: %+v", len(recs), recs)
	}
	r := recs[0]
	if r.Edge != "edge-1" || r.Site != "eu" || r.KeyID != "key_1" || r.Deployment != "dep_1" || r.Status != 200 ||
		r.Path != "/v1/chat/completions" || r.RequestID != ok.Header.Get("X-Request-Id") || r.ClientIP != "127.0.0.1" {
		t.Fatalf("record %+v", r)
	}
	if recs[1].KeyID != "" || recs[1].Status != 401 || recs[1].Deployment != "dep_1" {
		t.Fatalf("record %+v", recs[1])
	}
	for _, raw := range p.audit.recs {
		if strings.Contains(string(raw), secret) {
			t.Fatal("the key is in an audit record")
		}
	}
}

// A streamed answer is relayed as the upstream produces it: the client
// reads the first event before the upstream has sent the second.
func TestHandlerRelaysStream(t *testing.T) {
	next := make(chan struct{})
	up := newUpstream(t, func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "text/event-stream")
		_, _ = io.WriteString(w, "data: one\n\n")
		w.(http.Flusher).Flush()
		select {
		case <-next:
		case <-r.Context().Done():
			return
		}
		_, _ = io.WriteString(w, "data: two\n\n")
	})
	secret, h, key := testKey(t, "key_1", "dep_1")
	st := &fakeState{deps: cache.NewDeployments([]event.Deployment{deployment("dep_1", up.URL, true)}, 1),
		keys: map[apikey.Hash]*cache.Key{h: key}}
	p := startProxy(t, st)
	req, _ := http.NewRequest("POST", p.url+"/v1/chat/completions", strings.NewReader(`{"stream":true}`))
	req.Header.Set("X-API-Key", secret)
	req.Header.Set("Content-Type", "application/json")
	resp, err := client(t).Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	if resp.StatusCode != 200 || resp.Header.Get("Content-Type") != "text/event-stream" {
		t.Fatalf("status %d, Content-Type %q", resp.StatusCode, resp.Header.Get("Content-Type"))
	}
	rd := bufio.NewReader(resp.Body)
	line, err := rd.ReadString('\n')
	if err != nil || line != "data: one\n" {
		t.Fatalf("first event %q: %v", line, err)
	}
	close(next) // only now does the upstream send the rest
	rest, err := io.ReadAll(rd)
	if err != nil || string(rest) != "\ndata: two\n\n" {
		t.Fatalf("rest %q: %v", rest, err)
	}
}

// /health answers 503 until the state holds the deployments.
func TestHandlerHealthWaitsForSnapshot(t *testing.T) {
	st := &fakeState{deps: cache.NewDeployments(nil, 0)}
	st.unsynced.Store(true)
	p := startProxy(t, st)
	c := client(t)
	if resp, body := do(t, c, "GET", p.url+"/health", "", nil); resp.StatusCode != 503 || body != `{"status":"syncing"}` {
		t.Fatalf("unsynced: %d %s", resp.StatusCode, body)
	}
	st.unsynced.Store(false)
	if resp, body := do(t, c, "GET", p.url+"/health", "", nil); resp.StatusCode != 200 || body != `{"status":"ok"}` {
		t.Fatalf("synced: %d %s", resp.StatusCode, body)
	}
}

// New refuses a config it cannot run with rather than guess a default.
func TestNewRefusesIncompleteConfig(t *testing.T) {
	good := Config{State: &fakeState{}, Logger: slog.New(slog.DiscardHandler), Site: "eu", MaxRequestBodyBytes: 1,
		MaxUpstreamConns: 1, UpstreamIdleTimeout: time.Second, UpstreamConnectTimeout: time.Second, UpstreamPoolWait: time.Second}
	if _, err := New(good); err != nil {
		t.Fatal(err)
	}
	for name, mutate := range map[string]func(*Config){
		"no state":    func(c *Config) { c.State = nil },
		"no logger":   func(c *Config) { c.Logger = nil },
		"no site":     func(c *Config) { c.Site = "" },
		"no body cap": func(c *Config) { c.MaxRequestBodyBytes = 0 },
		"no idle":     func(c *Config) { c.UpstreamIdleTimeout = 0 },
		"own listener": func(c *Config) {
			c.UpstreamAllow = []string{"127.0.0.1:9090"}
			c.OwnListeners = map[string]string{"--admin-listen": "127.0.0.1:9090"}
		},
	} {
		c := good
		mutate(&c)
		if _, err := New(c); err == nil {
			t.Errorf("%s: accepted", name)
		}
	}
}
