package proxy

import (
	"bufio"
	"bytes"
	"compress/gzip"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/keymesh/keymesh/apikey"
	"github.com/keymesh/keymesh/cache"
	"github.com/keymesh/keymesh/event"
	"github.com/keymesh/keymesh/internal/apierror"
	"github.com/keymesh/keymesh/internal/testutil"
)

// testClock is an injectable clock.
type testClock struct {
	mu sync.Mutex
	t  time.Time
}

func (c *testClock) now() time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.t
}

func (c *testClock) advance(d time.Duration) {
	c.mu.Lock()
	c.t = c.t.Add(d)
	c.mu.Unlock()
}

func (c *testClock) set(t time.Time) {
	c.mu.Lock()
	c.t = t
	c.mu.Unlock()
}

// usageUpstream answers every request with the usage its X-Use header
// names (prompt tokens; 0 without one) and the status X-Status names.
func usageUpstream(w http.ResponseWriter, r *http.Request) {
	n, _ := strconv.Atoi(r.Header.Get("X-Use"))
	w.Header().Set("Content-Type", "application/json")
	if st, _ := strconv.Atoi(r.Header.Get("X-Status")); st != 0 {
		w.WriteHeader(st)
		_, _ = io.WriteString(w, `{"error":{"message":"boom"}}`)
		return
	}
	fmt.Fprintf(w, `{"choices":[],"usage":{"prompt_tokens":%d,"completion_tokens":0}}`, n)
}

// tokenSetup is an edge with two deployments of one project (dep_1 on /,
// dep_2 on /two) and two keys linked to both.
type tokenSetup struct {
	*testProxy
	up      *testUpstream
	secrets [2]string
	clock   *testClock
}

type tokenBoundsSpec struct {
	key, dep, project *event.TokenLimits
	defaultMax        int64
	keyRPM            int
}

func startTokens(t *testing.T, spec tokenBoundsSpec, h http.HandlerFunc) *tokenSetup {
	t.Helper()
	if h == nil {
		h = usageUpstream
	}
	ts := &tokenSetup{up: newUpstream(t, h), clock: &testClock{t: time.Date(2030, 5, 31, 12, 0, 0, 0, time.UTC)}}
	keys := map[apikey.Hash]*cache.Key{}
	for i := range ts.secrets {
		secret, err := apikey.Generate()
		if err != nil {
			t.Fatal(err)
		}
		hash, _ := apikey.ParseString(secret)
		k := &event.Key{ID: fmt.Sprintf("key_%d", i+1), Project: "prj_1", Secrets: []event.Secret{{Hash: hash}},
			Permissions: event.DefaultPermissions, Deployments: []string{"dep_1", "dep_2"}, Tokens: spec.key}
		if spec.keyRPM > 0 {
			k.RateLimit = &event.RateLimit{RequestsPerMinute: spec.keyRPM}
		}
		keys[hash] = cache.NewKey(k, 1)
		ts.secrets[i] = secret
	}
	d1, d2 := deployment("dep_1", ts.up.URL, true), deployment("dep_2", ts.up.URL, true)
	d2.PathPrefix = "/two"
	for _, d := range []*event.Deployment{&d1, &d2} {
		d.ProjectTokens, d.DefaultMaxTokens = spec.project, spec.defaultMax
	}
	d1.Tokens = spec.dep
	st := &fakeState{deps: cache.NewDeployments([]event.Deployment{d1, d2}, 1), keys: keys}
	ts.testProxy = startProxyPrepared(t, st, nil, func(p *Proxy) { p.tokens.now = ts.clock.now })
	return ts
}

// post sends a completion with key i (0 or 1) to path, naming maxTokens
// (none when < 0); the upstream reports use tokens.
func (ts *tokenSetup) post(t *testing.T, key int, path string, maxTokens, use int) (*http.Response, string) {
	t.Helper()
	body := `{"model":"m","prompt":"hi"}`
	if maxTokens >= 0 {
		body = fmt.Sprintf(`{"model":"m","prompt":"hi","max_tokens":%d}`, maxTokens)
	}
	return ts.postBody(t, key, path, body, map[string]string{"X-Use": strconv.Itoa(use)})
}

func (ts *tokenSetup) postBody(t *testing.T, key int, path, body string, hdr map[string]string) (*http.Response, string) {
	t.Helper()
	h := map[string]string{"X-API-Key": ts.secrets[key], "Content-Type": "application/json"}
	for k, v := range hdr {
		h[k] = v
	}
	return do(t, client(t), "POST", ts.url+path, body, h)
}

// heldIs waits until the token table holds n reservations.
func (ts *tokenSetup) heldIs(t *testing.T, n int) {
	t.Helper()
	testutil.CheckFor(t, 5*time.Second, time.Millisecond, func() error {
		if got := ts.tokens.heldTotal(); got != n {
			return fmt.Errorf("%d reservations held, want %d", got, n)
		}
		return nil
	})
}

// heldTotal is every reservation not settled yet, for tests.
func (t *tokenTable) heldTotal() int {
	n := 0
	for i := range t.shards {
		sh := &t.shards[i]
		sh.mu.Lock()
		for _, c := range sh.m {
			n += c.held
		}
		sh.mu.Unlock()
	}
	return n
}

// ok is post, wanting 200.
func (ts *tokenSetup) ok(t *testing.T, key int, path string, maxTokens, use int) {
	t.Helper()
	resp, body := ts.post(t, key, path, maxTokens, use)
	wantOK(t, resp, body)
}

func (ts *tokenSetup) okBody(t *testing.T, key int, path, body string, hdr map[string]string) {
	t.Helper()
	resp, got := ts.postBody(t, key, path, body, hdr)
	wantOK(t, resp, got)
}

func wantOK(t *testing.T, resp *http.Response, body string) {
	t.Helper()
	if resp.StatusCode != 200 {
		t.Fatalf("status %d, want 200 (body %s)", resp.StatusCode, body)
	}
}

func wantType(t *testing.T, body, typ string) {
	t.Helper()
	if !strings.Contains(body, `"type":"`+typ+`"`) {
		t.Fatalf("body %s, want type %s", body, typ)
	}
}

// Each bound — tokens_per_minute, tokens_per_day, a token quota, a request
// quota — of a key, a deployment (over both keys) and a project (over both
// its deployments) admits exactly up to it: a request is admitted while
// every bound holds its reservation (at least 1), and refused with the
// bound's code and type once one does not.
func TestTokenBoundsRefuseAtBound(t *testing.T) {
	kinds := []struct {
		name string
		lim  event.TokenLimits
		code string
		typ  string
	}{
		{"tokens_per_minute", event.TokenLimits{TokensPerMinute: 100}, apierror.QuotaExceeded, "rate_limit_error"},
		{"tokens_per_day", event.TokenLimits{TokensPerDay: 100}, apierror.QuotaExceeded, "rate_limit_error"},
		{"quota_tokens", event.TokenLimits{Quota: &event.Quota{Tokens: 100}}, apierror.InsufficientQuota, "insufficient_quota"},
	}
	for _, kind := range kinds {
		for _, scope := range []string{"key", "deployment", "project"} {
			t.Run(kind.name+"/"+scope, func(t *testing.T) {
				lim := kind.lim
				var spec tokenBoundsSpec
				// Which key and path each request takes: a deployment's
				// bound is over its keys, a project's over its deployments.
				key, path := func(int) int { return 0 }, func(int) string { return "/v1/completions" }
				switch scope {
				case "key":
					spec.key = &lim
				case "deployment":
					spec.dep = &lim
					key = func(i int) int { return i % 2 }
				case "project":
					spec.project = &lim
					key = func(i int) int { return i % 2 }
					path = func(i int) string { return []string{"/v1/completions", "/two/v1/completions"}[i%2] }
				}
				ts := startTokens(t, spec, nil)
				ts.ok(t, key(0), path(0), 60, 60) // 40 left
				resp, body := ts.post(t, key(1), path(1), 41, 0)
				wantError(t, resp, body, 429, kind.code)
				wantType(t, body, kind.typ)
				if kind.code == apierror.QuotaExceeded && resp.Header.Get("Retry-After") == "" {
					t.Fatal("no Retry-After on QUOTA_EXCEEDED")
				}
				if kind.code == apierror.InsufficientQuota && resp.Header.Get("Retry-After") != "" {
					t.Fatalf("Retry-After %q on a quota that never refills", resp.Header.Get("Retry-After"))
				}
				ts.ok(t, key(1), path(1), 40, 40)               // exactly what is left
				resp, body = ts.post(t, key(0), path(0), -1, 0) // reserves 0, needs 1
				wantError(t, resp, body, 429, kind.code)
				if scope == "key" { // the other key has a bound of its own
					ts.ok(t, 1, "/v1/completions", 10, 10)
				}
				if scope == "deployment" { // the other deployment is not bounded
					ts.ok(t, 0, "/two/v1/completions", 10, 10)
				}
				if n := ts.counter(t, "keymesh_edge_auth_decisions_total", "reason", map[bool]string{true: "token_limit", false: "quota"}[kind.code == apierror.QuotaExceeded]); n != 2 {
					t.Fatalf("refusals counted %v, want 2", n)
				}
				ts.heldIs(t, 0)
				inFlightIs(t, ts.testProxy, 0) // a refusal holds no concurrency slot
				if n := len(ts.up.requests()); n != 2+map[bool]int{true: 1, false: 0}[scope != "project"] {
					t.Fatalf("the upstream saw %d requests", n)
				}
			})
		}
	}
	for _, scope := range []string{"key", "deployment", "project"} {
		t.Run("quota_requests/"+scope, func(t *testing.T) {
			lim := event.TokenLimits{Quota: &event.Quota{Requests: 3, Refill: event.QuotaRefillMonthly}}
			var spec tokenBoundsSpec
			switch scope {
			case "key":
				spec.key = &lim
			case "deployment":
				spec.dep = &lim
			case "project":
				spec.project = &lim
			}
			ts := startTokens(t, spec, nil)
			for i := range 3 {
				path := "/v1/completions"
				if scope == "project" && i == 1 {
					path = "/two/v1/completions"
				}
				ts.ok(t, 0, path, 1000, 500) // tokens do not count
			}
			resp, body := ts.post(t, 0, "/v1/completions", -1, 0)
			wantError(t, resp, body, 429, apierror.InsufficientQuota)
			wantType(t, body, "insufficient_quota")
			// Until 2030-06-01T00:00:00Z, from 2030-05-31T12:00:00Z.
			if ra := resp.Header.Get("Retry-After"); ra != strconv.Itoa(12*3600) {
				t.Fatalf("Retry-After %q, want until the 1st of next month", ra)
			}
			if resp.Header.Get("X-RateLimit-Limit-Tokens") != "" {
				t.Fatal("token headers without a token bucket")
			}
			ts.heldIs(t, 0)
		})
	}
}

// Settlement replaces the reservation by what the request used: a request
// reserving 500 that used 30 leaves room for one reserving 960 of 1000.
func TestTokenSettlementReturnsUnused(t *testing.T) {
	ts := startTokens(t, tokenBoundsSpec{key: &event.TokenLimits{TokensPerMinute: 1000, Quota: &event.Quota{Tokens: 1000}}}, nil)
	resp, body := ts.post(t, 0, "/v1/completions", 500, 30)
	wantOK(t, resp, body)
	if got := resp.Header.Get("X-RateLimit-Remaining-Tokens"); got != "500" {
		t.Fatalf("remaining after reserving 500: %q", got)
	}
	resp, body = ts.post(t, 0, "/v1/completions", 960, 10)
	wantOK(t, resp, body)
	if got := resp.Header.Get("X-RateLimit-Remaining-Tokens"); got != "10" {
		t.Fatalf("remaining after 30 used and 960 reserved: %q", got)
	}
	// 960 taken back, 10 used: 960 left of both.
	resp, body = ts.post(t, 0, "/v1/completions", 961, 0)
	wantError(t, resp, body, 429, apierror.QuotaExceeded)
	ts.ok(t, 0, "/v1/completions", 960, 0)
	ts.heldIs(t, 0)
}

// Debt: a request that used more than it reserved leaves the bucket
// negative, and the next waits until it is paid back.
func TestTokenDebt(t *testing.T) {
	ts := startTokens(t, tokenBoundsSpec{key: &event.TokenLimits{TokensPerMinute: 60}}, nil)
	ts.ok(t, 0, "/v1/completions", 10, 90) // -30
	resp, body := ts.post(t, 0, "/v1/completions", 0, 0)
	wantError(t, resp, body, 429, apierror.QuotaExceeded)
	if resp.Header.Get("X-RateLimit-Remaining-Tokens") != "0" || resp.Header.Get("Retry-After") != "31" {
		t.Fatalf("remaining %q, Retry-After %q: want 0 and 31 s (30 of debt and 1 token at 1/s)",
			resp.Header.Get("X-RateLimit-Remaining-Tokens"), resp.Header.Get("Retry-After"))
	}
	ts.clock.advance(31 * time.Second)
	ts.ok(t, 0, "/v1/completions", 1, 0)
}

// A request naming no max_tokens reserves the deployment's
// default_max_tokens; every field a server may read counts, the largest
// wins.
func TestTokenReservationDefault(t *testing.T) {
	ts := startTokens(t, tokenBoundsSpec{key: &event.TokenLimits{TokensPerMinute: 1000}, defaultMax: 300}, nil)
	for _, tt := range []struct {
		body string
		want string
	}{
		{`{"model":"m"}`, "700"},
		{`{"model":"m","max_tokens":null}`, "700"},
		{`{"model":"m","max_tokens":50}`, "950"},
		{`{"model":"m","max_tokens":10,"max_completion_tokens":70}`, "930"},
		{`{"model":"m","Max_Output_Tokens":80}`, "920"},
		{`{"model":"m","max_tokens":0}`, "1000"},
	} {
		resp, body := ts.postBody(t, 0, "/v1/completions", tt.body, nil)
		wantOK(t, resp, body)
		if got := resp.Header.Get("X-RateLimit-Remaining-Tokens"); got != tt.want {
			t.Fatalf("%s: remaining %q, want %s", tt.body, got, tt.want)
		}
	}
	form := "model=m&max_tokens=400"
	resp, body := do(t, client(t), "POST", ts.url+"/v1/completions", form,
		map[string]string{"X-API-Key": ts.secrets[0], "Content-Type": "application/x-www-form-urlencoded"})
	wantOK(t, resp, body)
	if got := resp.Header.Get("X-RateLimit-Remaining-Tokens"); got != "600" {
		t.Fatalf("form: remaining %q", got)
	}
}

// A max_tokens the edge cannot be sure the upstream reads as it does is
// refused 400 before anything is reserved or forwarded — under a token
// bound only: a key without one is not read for it.
func TestTokenAmbiguousMaxTokens(t *testing.T) {
	ts := startTokens(t, tokenBoundsSpec{key: &event.TokenLimits{TokensPerMinute: 1000}}, nil)
	for _, body := range []string{
		`{"max_tokens":1,"max_tokens":2}`,
		`{"max_tokens":1,"MAX_TOKENS":1}`,
		`{"max_completion_tokens":1,"max_completion_tokens":null}`,
		`{"max_tokens":"5"}`,
		`{"max_tokens":-1}`,
		`{"max_tokens":1.5}`,
		`{"max_tokens":1e3}`,
		`{"max_tokens":true}`,
		`{"max_tokens":2000000000}`,
	} {
		resp, got := ts.postBody(t, 0, "/v1/completions", body, nil)
		wantError(t, resp, got, 400, apierror.ValidationError)
	}
	for _, form := range []string{"max_tokens=1&max_tokens=2", "max_tokens=1;max_tokens=2", "max_tokens=x", "max_tokens=-3"} {
		resp, got := do(t, client(t), "POST", ts.url+"/v1/completions", form,
			map[string]string{"X-API-Key": ts.secrets[0], "Content-Type": "application/x-www-form-urlencoded"})
		wantError(t, resp, got, 400, apierror.ValidationError)
	}
	if n := len(ts.up.requests()); n != 0 {
		t.Fatalf("the upstream saw %d refused requests", n)
	}
	ts.heldIs(t, 0)
	inFlightIs(t, ts.testProxy, 0)

	// No token bound: the body is forwarded as it came.
	plain := startTokens(t, tokenBoundsSpec{}, nil)
	plain.okBody(t, 0, "/v1/completions", `{"max_tokens":"5","max_tokens":1}`, nil)
}

// The X-RateLimit-*-Tokens headers report the tightest bucket after the
// request's reservation, on admitted answers and on the 429; a key without
// token buckets gets none.
func TestTokenHeaders(t *testing.T) {
	ts := startTokens(t, tokenBoundsSpec{key: &event.TokenLimits{TokensPerMinute: 600, TokensPerDay: 100_000},
		dep: &event.TokenLimits{TokensPerMinute: 60_000}}, nil)
	resp, body := ts.post(t, 0, "/v1/completions", 100, 0)
	wantOK(t, resp, body)
	// The key's minute bucket: 500 left, 100 tokens at 10/s to full.
	if resp.Header.Get("X-RateLimit-Limit-Tokens") != "600" || resp.Header.Get("X-RateLimit-Remaining-Tokens") != "500" ||
		resp.Header.Get("X-RateLimit-Reset-Tokens") != "10s" {
		t.Fatalf("headers: %v", resp.Header)
	}
	// 600 reserved: the key's bucket is empty, reset 1m0s.
	resp, body = ts.post(t, 0, "/v1/completions", 600, 600)
	wantOK(t, resp, body)
	if resp.Header.Get("X-RateLimit-Remaining-Tokens") != "0" || resp.Header.Get("X-RateLimit-Reset-Tokens") != "1m0s" {
		t.Fatalf("remaining %q reset %q", resp.Header.Get("X-RateLimit-Remaining-Tokens"), resp.Header.Get("X-RateLimit-Reset-Tokens"))
	}
	resp, body = ts.post(t, 0, "/v1/completions", 1, 0)
	wantError(t, resp, body, 429, apierror.QuotaExceeded)
	if resp.Header.Get("X-RateLimit-Limit-Tokens") != "600" || resp.Header.Get("X-RateLimit-Remaining-Tokens") != "0" ||
		resp.Header.Get("X-RateLimit-Reset-Tokens") != "1m0s" || resp.Header.Get("Retry-After") != "1" {
		t.Fatalf("429 headers: %v", resp.Header)
	}
	// A key without bounds of its own meets the deployment's bucket:
	// 60000/min = 1000/s, 20 reserved → 20ms to full.
	dep := startTokens(t, tokenBoundsSpec{dep: &event.TokenLimits{TokensPerMinute: 60_000}}, nil)
	resp, body = dep.post(t, 1, "/v1/completions", 20, 0)
	wantOK(t, resp, body)
	if resp.Header.Get("X-RateLimit-Limit-Tokens") != "60000" || resp.Header.Get("X-RateLimit-Remaining-Tokens") != "59980" ||
		resp.Header.Get("X-RateLimit-Reset-Tokens") != "20ms" {
		t.Fatalf("headers: %v", resp.Header)
	}
	// No token bucket, no token headers.
	plain := startTokens(t, tokenBoundsSpec{}, nil)
	resp, body = plain.post(t, 0, "/v1/completions", 10, 0)
	wantOK(t, resp, body)
	for h := range resp.Header {
		if strings.HasSuffix(strings.ToLower(h), "-tokens") {
			t.Fatalf("a key without token bounds got %s", h)
		}
	}
}

// Buckets refill evenly over their window; quotas refill to full at the
// next 00:00 UTC or 1st of the month, or never.
func TestTokenRefill(t *testing.T) {
	t.Run("minute", func(t *testing.T) {
		ts := startTokens(t, tokenBoundsSpec{key: &event.TokenLimits{TokensPerMinute: 60}}, nil)
		ts.ok(t, 0, "/v1/completions", 60, 60)
		resp, body := ts.post(t, 0, "/v1/completions", 10, 0)
		wantError(t, resp, body, 429, apierror.QuotaExceeded)
		if resp.Header.Get("Retry-After") != "10" {
			t.Fatalf("Retry-After %q, want 10 (10 tokens at 1/s)", resp.Header.Get("Retry-After"))
		}
		ts.clock.advance(9 * time.Second)
		resp, body = ts.post(t, 0, "/v1/completions", 10, 0)
		wantError(t, resp, body, 429, apierror.QuotaExceeded)
		ts.clock.advance(time.Second)
		ts.ok(t, 0, "/v1/completions", 10, 10)
	})
	t.Run("day", func(t *testing.T) {
		ts := startTokens(t, tokenBoundsSpec{key: &event.TokenLimits{TokensPerDay: 86_400}}, nil)
		ts.ok(t, 0, "/v1/completions", 86_400, 86_400)
		ts.clock.advance(99 * time.Second)
		resp, body := ts.post(t, 0, "/v1/completions", 100, 0)
		wantError(t, resp, body, 429, apierror.QuotaExceeded)
		ts.clock.advance(time.Second)
		ts.ok(t, 0, "/v1/completions", 100, 0)
	})
	t.Run("quota", func(t *testing.T) {
		for _, tt := range []struct {
			refill string
			retry  int           // seconds from 2030-05-31T12:00:00Z; 0: no Retry-After
			next   time.Duration // from then, when it is full again (0: never)
		}{
			{event.QuotaRefillDaily, 12 * 3600, 12 * time.Hour},
			{event.QuotaRefillMonthly, 12 * 3600, 12 * time.Hour},
			{"", 0, 0},
		} {
			ts := startTokens(t, tokenBoundsSpec{key: &event.TokenLimits{Quota: &event.Quota{Tokens: 100, Refill: tt.refill}}}, nil)
			ts.ok(t, 0, "/v1/completions", 10, 100)
			resp, body := ts.post(t, 0, "/v1/completions", 0, 0)
			wantError(t, resp, body, 429, apierror.InsufficientQuota)
			if ra := resp.Header.Get("Retry-After"); (tt.retry == 0 && ra != "") || (tt.retry > 0 && ra != strconv.Itoa(tt.retry)) {
				t.Fatalf("%q: Retry-After %q", tt.refill, ra)
			}
			ts.clock.advance(12*time.Hour - time.Second)
			resp, body = ts.post(t, 0, "/v1/completions", 0, 0)
			wantError(t, resp, body, 429, apierror.InsufficientQuota)
			ts.clock.advance(time.Second)
			resp, body = ts.post(t, 0, "/v1/completions", 100, 0)
			if tt.next == 0 {
				wantError(t, resp, body, 429, apierror.InsufficientQuota)
				continue
			}
			wantOK(t, resp, body)
		}
		// Monthly: a day later it is still used up until 1 July.
		ts := startTokens(t, tokenBoundsSpec{key: &event.TokenLimits{Quota: &event.Quota{Tokens: 100, Refill: event.QuotaRefillMonthly}}}, nil)
		ts.clock.set(time.Date(2030, 6, 1, 0, 0, 0, 0, time.UTC))
		ts.ok(t, 0, "/v1/completions", 100, 100)
		ts.clock.advance(24 * time.Hour)
		resp, body := ts.post(t, 0, "/v1/completions", 0, 0)
		wantError(t, resp, body, 429, apierror.InsufficientQuota)
		if ra := resp.Header.Get("Retry-After"); ra != strconv.Itoa(29*24*3600) {
			t.Fatalf("Retry-After %q, want until 1 July", ra)
		}
		ts.clock.set(time.Date(2030, 7, 1, 0, 0, 0, 0, time.UTC))
		ts.ok(t, 0, "/v1/completions", 100, 0)
	})
}

// Every admitted request is settled exactly once, whatever ends it: an
// upstream error (nothing generated: 0), an upstream that cannot be reached
// (no answer: 0), a refusal by the request rate limit after the
// reservation (all given back) and clients hanging up mid-stream (what was
// relayed, estimated).
func TestTokenSettlementAbortAndUpstreamError(t *testing.T) {
	stream := func(w http.ResponseWriter, r *http.Request) {
		if r.Header.Get("X-Stream") == "" {
			usageUpstream(w, r)
			return
		}
		w.Header().Set("Content-Type", "text/event-stream")
		for {
			if _, err := io.WriteString(w, `data: {"choices":[{"index":0,"delta":{"content":"abcdefgh"}}]}`+"\n\n"); err != nil {
				return
			}
			w.(http.Flusher).Flush()
			select {
			case <-r.Context().Done():
				return
			case <-time.After(5 * time.Millisecond):
			}
		}
	}
	ts := startTokens(t, tokenBoundsSpec{key: &event.TokenLimits{TokensPerMinute: 1000}}, stream)

	// An upstream error: nothing used, the full reservation back.
	resp, body := ts.postBody(t, 0, "/v1/completions", `{"max_tokens":1000}`, map[string]string{"X-Status": "500", "X-Use": "0"})
	if resp.StatusCode != 500 {
		t.Fatalf("status %d %s", resp.StatusCode, body)
	}
	ts.heldIs(t, 0)
	if n := ts.tokens.remaining(tokenID{"key_1", scopeKey, tokMinute}, 1000, ""); n != 1000 {
		t.Fatalf("after an upstream error %d left, want 1000", n)
	}

	// An upstream that cannot be reached: the edge answers 502, settles 0.
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	deadURL := "http://" + ln.Addr().String()
	ln.Close()
	dead := deployment("dep_dead", deadURL, true)
	dead.PathPrefix = "/dead"
	secret, h, key := testKey(t, "key_dead", "dep_dead")
	key.Tokens = &event.TokenLimits{TokensPerMinute: 100}
	dp := startProxyPrepared(t, &fakeState{deps: cache.NewDeployments([]event.Deployment{dead}, 1),
		keys: map[apikey.Hash]*cache.Key{h: key}}, nil, func(p *Proxy) { p.tokens.now = ts.clock.now })
	for range 3 {
		resp, body = do(t, client(t), "POST", dp.url+"/dead/v1/completions", `{"max_tokens":100}`, map[string]string{"X-API-Key": secret})
		wantError(t, resp, body, 502, apierror.UpstreamError)
	}
	if n := dp.tokens.heldTotal(); n != 0 {
		t.Fatalf("%d held after 502s", n)
	}
	if n := dp.tokens.remaining(tokenID{"key_dead", scopeKey, tokMinute}, 100, ""); n != 100 {
		t.Fatalf("after requests the upstream never answered %d left, want 100", n)
	}

	// Clients that read a little of a stream and hang up: each settles
	// once, with what was relayed (estimated: a few tokens, never 0 and
	// never the whole reservation).
	addr := strings.TrimPrefix(ts.url, "http://")
	for i := range 10 {
		conn, err := net.Dial("tcp", addr)
		if err != nil {
			t.Fatal(err)
		}
		body := `{"stream":true,"max_tokens":100}`
		fmt.Fprintf(conn, "POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nX-API-Key: %s\r\nX-Stream: 1\r\nContent-Type: application/json\r\nContent-Length: %d\r\n\r\n%s", ts.secrets[0], len(body), body)
		br := bufio.NewReader(conn)
		line, err := br.ReadString('\n')
		if err != nil || !strings.HasPrefix(line, "HTTP/1.1 200") {
			conn.Close()
			t.Fatalf("stream %d: %q %v", i, line, err)
		}
		for { // read up to the first chunk
			l, err := br.ReadString('\n')
			if err != nil {
				t.Fatal(err)
			}
			if strings.Contains(l, "abcdefgh") {
				break
			}
		}
		if i == 0 {
			ts.heldIs(t, 1)
		}
		conn.Close()
		ts.heldIs(t, 0)
	}
	left := ts.tokens.remaining(tokenID{"key_1", scopeKey, tokMinute}, 1000, "")
	if left >= 1000 || left <= 1000-10*100 {
		t.Fatalf("after 10 aborted streams %d left: want some used, less than reserved", left)
	}
	inFlightIs(t, ts.testProxy, 0)
}

// A request refused by the request rate limit after its tokens were
// reserved gives them all back, its request-quota unit included.
func TestTokenRateLimitRefusalGivesBack(t *testing.T) {
	ts := startTokens(t, tokenBoundsSpec{key: &event.TokenLimits{TokensPerMinute: 1000, Quota: &event.Quota{Requests: 5}}, keyRPM: 1}, nil)
	ts.ok(t, 0, "/v1/completions", 400, 0)
	for range 3 {
		resp, body := ts.post(t, 0, "/v1/completions", 400, 0)
		wantError(t, resp, body, 429, apierror.RateLimited)
	}
	ts.heldIs(t, 0)
	if n := ts.tokens.remaining(tokenID{"key_1", scopeKey, tokMinute}, 1000, ""); n != 1000 {
		t.Fatalf("%d tokens left, want 1000", n)
	}
	if n := ts.tokens.remaining(tokenID{"key_1", scopeKey, tokRequests}, 5, ""); n != 4 {
		t.Fatalf("%d requests left, want 4", n)
	}
}

// GET /v1/key reports the key's token bounds and what is left of them at
// this edge.
func TestTokenKeyInfo(t *testing.T) {
	ts := startTokens(t, tokenBoundsSpec{key: &event.TokenLimits{TokensPerMinute: 1000, TokensPerDay: 5000,
		Quota: &event.Quota{Tokens: 300, Refill: event.QuotaRefillDaily}}}, nil)
	ts.ok(t, 0, "/v1/completions", 100, 120)
	resp, body := do(t, client(t), "GET", ts.url+"/v1/key", "", map[string]string{"X-API-Key": ts.secrets[0]})
	wantOK(t, resp, body)
	var got struct {
		TokensPerMinute *int64          `json:"tokens_per_minute"`
		TokensPerDay    *int64          `json:"tokens_per_day"`
		Quota           json.RawMessage `json:"quota"`
		Remaining       json.RawMessage `json:"remaining"`
	}
	if err := json.Unmarshal([]byte(body), &got); err != nil {
		t.Fatal(err)
	}
	if got.TokensPerMinute == nil || *got.TokensPerMinute != 1000 || got.TokensPerDay == nil || *got.TokensPerDay != 5000 ||
		string(got.Quota) != `{"tokens":300,"refill":"daily"}` ||
		string(got.Remaining) != `{"tokens_per_minute":880,"tokens_per_day":4880,"quota":180}` {
		t.Fatalf("answer %s", body)
	}
	// A request quota's remaining counts requests.
	rq := startTokens(t, tokenBoundsSpec{key: &event.TokenLimits{Quota: &event.Quota{Requests: 10}}}, nil)
	rq.ok(t, 0, "/v1/completions", 100, 120)
	_, body = do(t, client(t), "GET", rq.url+"/v1/key", "", map[string]string{"X-API-Key": rq.secrets[0]})
	if !strings.Contains(body, `"tokens_per_minute":null,"tokens_per_day":null,"quota":{"requests":10},"remaining":{"quota":9}`) {
		t.Fatalf("answer %s", body)
	}
}

// The table is bounded: counters of many keys beyond it are checked
// untracked (and counted), and idle counters that are full again are swept
// to make room; a counter with a reservation or a spent quota is kept.
func TestTokenTableBounded(t *testing.T) {
	clock := &testClock{t: time.Date(2030, 1, 1, 0, 0, 0, 0, time.UTC)}
	tt := newTokenTable(clock.now, 64*16)
	lim := &event.TokenLimits{TokensPerMinute: 100}
	var holds []*tokenHold
	for i := range 5000 {
		h, res := tt.reserve([]tokenBound{{fmt.Sprintf("key_%d", i), scopeKey, lim}}, 50)
		if h == nil {
			t.Fatalf("key %d refused: %+v", i, res)
		}
		holds = append(holds, h)
	}
	size := func() int {
		n := 0
		for i := range tt.shards {
			n += len(tt.shards[i].m)
		}
		return n
	}
	if n := size(); n > 64*16 {
		t.Fatalf("%d counters kept, bound %d", n, 64*16)
	}
	if tt.untracked.Load() == 0 {
		t.Fatal("nothing counted untracked past the bound")
	}
	// Held counters are not swept, even when full again: the shards are
	// all full of them.
	clock.advance(time.Hour)
	before := tt.untracked.Load()
	fresh, _ := tt.reserve([]tokenBound{{"fresh", scopeKey, lim}}, 1)
	if tt.untracked.Load() != before+1 || size() > 64*16 {
		t.Fatalf("a held counter was swept: %d kept", size())
	}
	tt.settle(fresh, 0)
	for _, h := range holds {
		tt.settle(h, 0)
	}
	if n := tt.heldTotal(); n != 0 {
		t.Fatalf("%d held after settling", n)
	}
	// Settled and full: swept to make room, nothing untracked.
	before = tt.untracked.Load()
	for i := range 5000 {
		h, _ := tt.reserve([]tokenBound{{fmt.Sprintf("other_%d", i), scopeKey, lim}}, 0)
		tt.settle(h, 0)
		clock.advance(time.Minute)
	}
	if tt.untracked.Load() != before {
		t.Fatalf("%d untracked though every counter was full again", tt.untracked.Load()-before)
	}
	// A spent quota that never refills is never swept: forgetting it
	// would give its credit back.
	q := &event.TokenLimits{Quota: &event.Quota{Tokens: 10}}
	h, _ := tt.reserve([]tokenBound{{"spent", scopeKey, q}}, 10)
	tt.settle(h, 10)
	for i := range 5000 {
		h, _ := tt.reserve([]tokenBound{{fmt.Sprintf("more_%d", i), scopeKey, lim}}, 0)
		tt.settle(h, 0)
		clock.advance(time.Minute)
	}
	if h, res := tt.reserve([]tokenBound{{"spent", scopeKey, q}}, 0); h != nil || res.refusal != errQuota {
		t.Fatal("a spent quota was forgotten")
	}
}

func TestAppendReset(t *testing.T) {
	for d, want := range map[time.Duration]string{0: "0s", -time.Second: "0s", 20 * time.Millisecond: "20ms",
		19*time.Millisecond + 1: "20ms", 999 * time.Millisecond: "999ms", time.Second: "1s", 1500 * time.Millisecond: "2s",
		59 * time.Second: "59s", time.Minute: "1m0s", 6 * time.Minute: "6m0s", 61 * time.Minute: "1h1m0s",
		25 * time.Hour: "25h0m0s"} {
		if got := string(appendReset(nil, d)); got != want {
			t.Errorf("appendReset(%v) = %q, want %q", d, got, want)
		}
		if d >= time.Second && d%time.Second == 0 && d.String() != want {
			t.Errorf("%v: %q is not how Go writes it", d, want)
		}
	}
}

// FuzzMaxTokens checks the reading of a body's maximum against
// encoding/json's: when the edge finds it unambiguous, every member a
// server could take for one (any letter case) is null or an integer the
// edge read, and the reservation is the largest of them.
func FuzzMaxTokens(f *testing.F) {
	for _, s := range []string{`{"max_tokens":5}`, `{"max_tokens":5,"MAX_TOKENS":6}`, `{"max_completion_tokens":null,"max_output_tokens":3}`,
		`{"max_tokens":1e2}`, `{"max_tokens":"7"}`, `{"max_tok\u0065ns":9}`, `{"max_tokens":-0}`, `[1]`, `null`} {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, body []byte) {
		var mt maxTokens
		if _, _, err := parseBodyTokens(body, &mt); err != nil || mt.bad {
			return
		}
		var members map[string]json.RawMessage
		if err := json.Unmarshal(body, &members); err != nil {
			return // fastjson and encoding/json differ on some inputs; prompt_test covers those
		}
		var want int64
		named := false
		for k, v := range members {
			if maxTokensField([]byte(k)) < 0 {
				continue
			}
			if string(v) == "null" {
				continue
			}
			n, err := strconv.ParseInt(string(v), 10, 64)
			if err != nil || n < 0 || n > maxReservation {
				t.Fatalf("%s: %s=%s read as unambiguous", body, k, v)
			}
			want, named = max(want, n), true
		}
		if named != mt.named || want != mt.n {
			t.Fatalf("%s: reservation %d (named %v), want %d (%v)", body, mt.n, mt.named, want, named)
		}
	})
}

// A bound that refuses gives back what the bounds checked before it took:
// the key's bucket, then the deployment's refusing, leaves the key's full.
func TestTokenRefusalGivesBackEarlierBounds(t *testing.T) {
	ts := startTokens(t, tokenBoundsSpec{key: &event.TokenLimits{TokensPerMinute: 1000, Quota: &event.Quota{Requests: 10}},
		dep: &event.TokenLimits{TokensPerMinute: 100}}, nil)
	for range 3 {
		resp, body := ts.post(t, 0, "/v1/completions", 200, 0)
		wantError(t, resp, body, 429, apierror.QuotaExceeded)
	}
	ts.heldIs(t, 0)
	if n := ts.tokens.remaining(tokenID{"key_1", scopeKey, tokMinute}, 1000, ""); n != 1000 {
		t.Fatalf("the key's bucket has %d left after refusals by the deployment's, want 1000", n)
	}
	if n := ts.tokens.remaining(tokenID{"key_1", scopeKey, tokRequests}, 10, ""); n != 10 {
		t.Fatalf("the key's request quota has %d left, want 10", n)
	}
	// And a quota refusing after a bucket took.
	q := startTokens(t, tokenBoundsSpec{key: &event.TokenLimits{TokensPerMinute: 1000},
		dep: &event.TokenLimits{Quota: &event.Quota{Requests: 1}}}, nil)
	q.ok(t, 0, "/v1/completions", 100, 0)
	resp, body := q.post(t, 0, "/v1/completions", 300, 0)
	wantError(t, resp, body, 429, apierror.InsufficientQuota)
	q.heldIs(t, 0)
	if n := q.tokens.remaining(tokenID{"key_1", scopeKey, tokMinute}, 1000, ""); n != 1000 {
		t.Fatalf("the key's bucket has %d left after a refusal by the deployment's quota, want 1000", n)
	}
}

// Under a token bound the body must be read as the upstream reads it: an
// encoded body is decoded for its max_tokens, and one the edge cannot read
// is refused rather than forwarded with a guess.
func TestTokenBodyMustBeRead(t *testing.T) {
	ts := startTokens(t, tokenBoundsSpec{key: &event.TokenLimits{TokensPerMinute: 1000}}, nil)
	var gz bytes.Buffer
	zw := gzip.NewWriter(&gz)
	_, _ = zw.Write([]byte(`{"model":"m","max_tokens":400}`))
	_ = zw.Close()
	resp, body := ts.postBody(t, 0, "/v1/completions", gz.String(), map[string]string{"Content-Encoding": "gzip"})
	wantOK(t, resp, body)
	if got := resp.Header.Get("X-RateLimit-Remaining-Tokens"); got != "600" {
		t.Fatalf("a gzipped body's max_tokens: remaining %q, want 600", got)
	}
	resp, body = ts.postBody(t, 0, "/v1/completions", `{"model":"m","max_tokens":400}`,
		map[string]string{"Content-Type": "application/json; charset=utf-16"})
	wantError(t, resp, body, 415, apierror.ValidationError)
	// Without a bound the same body passes unread.
	plain := startTokens(t, tokenBoundsSpec{}, nil)
	resp, body = plain.postBody(t, 0, "/v1/completions", `{"model":"m","max_tokens":400}`,
		map[string]string{"Content-Type": "application/json; charset=utf-16"})
	wantOK(t, resp, body)
}

// A reservation larger than a bound could ever hold, and a quota that
// never refills, are refused without Retry-After and with
// X-Should-Retry: false: no wait helps, and the OpenAI clients would
// otherwise retry the 429.
func TestTokenRefusalsThatNoWaitFixes(t *testing.T) {
	ts := startTokens(t, tokenBoundsSpec{key: &event.TokenLimits{TokensPerMinute: 100}}, nil)
	resp, body := ts.post(t, 0, "/v1/completions", 101, 0)
	wantError(t, resp, body, 429, apierror.QuotaExceeded)
	if resp.Header.Get("Retry-After") != "" || resp.Header.Get("X-Should-Retry") != "false" ||
		!strings.Contains(string(body), "lower max_tokens") {
		t.Fatalf("max_tokens over tokens_per_minute: Retry-After %q, X-Should-Retry %q, body %s",
			resp.Header.Get("Retry-After"), resp.Header.Get("X-Should-Retry"), body)
	}
	// At the bound itself it is admitted, and a refusal for want of
	// tokens is one a wait fixes.
	ts.ok(t, 0, "/v1/completions", 100, 100)
	resp, body = ts.post(t, 0, "/v1/completions", 100, 0)
	wantError(t, resp, body, 429, apierror.QuotaExceeded)
	if resp.Header.Get("Retry-After") == "" || resp.Header.Get("X-Should-Retry") != "" {
		t.Fatalf("a refilling bucket: Retry-After %q, X-Should-Retry %q", resp.Header.Get("Retry-After"), resp.Header.Get("X-Should-Retry"))
	}

	q := startTokens(t, tokenBoundsSpec{key: &event.TokenLimits{Quota: &event.Quota{Tokens: 50}}}, nil)
	resp, body = q.post(t, 0, "/v1/completions", 51, 0)
	wantError(t, resp, body, 429, apierror.QuotaExceeded)
	if resp.Header.Get("X-Should-Retry") != "false" {
		t.Fatalf("max_tokens over the quota: X-Should-Retry %q", resp.Header.Get("X-Should-Retry"))
	}
	q.ok(t, 0, "/v1/completions", 50, 50)
	resp, body = q.post(t, 0, "/v1/completions", 1, 0)
	wantError(t, resp, body, 429, apierror.InsufficientQuota)
	if resp.Header.Get("Retry-After") != "" || resp.Header.Get("X-Should-Retry") != "false" {
		t.Fatalf("spent quota that never refills: Retry-After %q, X-Should-Retry %q", resp.Header.Get("Retry-After"), resp.Header.Get("X-Should-Retry"))
	}
}
