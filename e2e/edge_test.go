package e2e

import (
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/keymesh/keymesh/edge"
	"github.com/keymesh/keymesh/event"
	"github.com/keymesh/keymesh/internal/testutil"
)

// errorCode returns error.code of an API error body.
func errorCode(t *testing.T, body string) string {
	t.Helper()
	var b struct {
		Error struct {
			Code, Message, Type string
			Details             any
		} `json:"error"`
	}
	if err := json.Unmarshal([]byte(body), &b); err != nil {
		t.Fatalf("error body is not JSON: %q", body)
	}
	return b.Error.Code
}

func expect(t *testing.T, e *edge.Node, headers map[string]string, status int, code string) {
	t.Helper()
	got, body := chat(t, e, headers)
	if got != status {
		t.Fatalf("status %d, want %d (%s)", got, status, body)
	}
	if code != "" && errorCode(t, body) != code {
		t.Fatalf("error code %q, want %q", errorCode(t, body), code)
	}
}

func TestCredentialForms(t *testing.T) {
	s := newStack(t)
	d := s.deployment("demo", nil)
	k := s.key(d.ID)
	e := s.startEdge(edgeOpts{})

	for name, h := range map[string]map[string]string{
		"x-api-key":               {"X-API-Key": k.Secret},
		"bearer":                  {"Authorization": "Bearer " + k.Secret},
		"openai sdk with unused":  {"Authorization": "Bearer unused", "X-API-Key": k.Secret},
		"lower-case bearer":       {"Authorization": "bearer " + k.Secret},
		"empty x-api-key, bearer": {"X-API-Key": "", "Authorization": "Bearer " + k.Secret},
	} {
		t.Run(name, func(t *testing.T) {
			status, body := chat(t, e, h)
			if status != http.StatusOK || !strings.Contains(body, "chat.completion") {
				t.Fatalf("status %d: %s", status, body)
			}
		})
	}

	// Refusals, each with the API's status and error body.
	got, body := chat(t, e, nil)
	if got != http.StatusUnauthorized || errorCode(t, body) != "AUTHENTICATION_FAILED" {
		t.Fatalf("no key: %d %s", got, body)
	}
	expect(t, e, map[string]string{"X-API-Key": "sk-not-a-keymesh-key"}, 401, "AUTHENTICATION_FAILED")
	other := s.key() // valid but linked to nothing
	expect(t, e, withKey(other), 401, "AUTHENTICATION_FAILED")

	// /health and /ping are open.
	for _, p := range []string{"/health", "/ping"} {
		if st, _ := send(t, e, http.MethodGet, p, nil, ""); st != http.StatusOK {
			t.Fatalf("%s: %d", p, st)
		}
	}
	// Paths outside /v1 need a key too.
	if st, _ := send(t, e, http.MethodGet, "/metrics", nil, ""); st != http.StatusUnauthorized {
		t.Fatalf("/metrics without key: %d", st)
	}
}

func TestWWWAuthenticateAndForbiddenStatus(t *testing.T) {
	s := newStack(t)
	d := s.deployment("strict", map[string]any{"invalid_key_status": 403})
	k := s.key()
	e := s.startEdge(edgeOpts{})
	_ = d
	req, _ := http.NewRequest(http.MethodPost, "http://"+e.Addr()+"/v1/chat/completions", strings.NewReader(chatBody))
	resp, err := httpClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != 401 || resp.Header.Get("WWW-Authenticate") != "Bearer" || resp.Header.Get("Content-Type") != "application/json" {
		t.Fatalf("no key: %d %v", resp.StatusCode, resp.Header)
	}
	expect(t, e, withKey(k), 403, "AUTHENTICATION_FAILED") // unlinked, deployment says 403
}

func TestChangesApplyOnNextRequest(t *testing.T) {
	s := newStack(t)
	d := s.deployment("demo", nil)
	k := s.key(d.ID)
	e := s.startEdge(edgeOpts{})
	keyPath := "/v1/projects/" + project + "/keys/" + k.ID
	linkPath := "/v1/projects/" + project + "/deployments/" + d.ID + "/keys/" + k.ID
	depPath := "/v1/projects/" + project + "/deployments/" + d.ID

	expect(t, e, withKey(k), 200, "")

	steps := []struct {
		name   string
		method string
		path   string
		body   any
		status int
	}{
		{"unlink", http.MethodDelete, linkPath, nil, 401},
		{"relink", http.MethodPut, linkPath, nil, 200},
		{"disable", http.MethodPatch, keyPath, map[string]any{"disabled": true}, 401},
		{"enable", http.MethodPatch, keyPath, map[string]any{"disabled": false}, 200},
		{"expire", http.MethodPatch, keyPath, map[string]any{"expires_at": "2001-01-01"}, 401},
		{"unexpire", http.MethodPatch, keyPath, map[string]any{"expires_at": nil}, 200},
		{"auth off", http.MethodPatch, depPath, map[string]any{"auth_enabled": false}, 0},
		{"auth on", http.MethodPatch, depPath, map[string]any{"auth_enabled": true}, 200},
		{"delete", http.MethodDelete, keyPath, nil, 401},
	}
	for _, st := range steps {
		rev := s.call(st.method, st.path, st.body, nil)
		if rev == 0 {
			t.Fatalf("%s: no revision in the response", st.name)
		}
		waitApplied(t, rev, e)
		if st.status == 0 { // auth off: no key needed at all
			expect(t, e, nil, 200, "")
			continue
		}
		got, body := chat(t, e, withKey(k))
		if got != st.status {
			t.Fatalf("after %s (revision %d): status %d, want %d: %s", st.name, rev, got, st.status, body)
		}
	}
}

// Invariant 1 under load: no request that starts after an unlink has been
// applied is let through with the state from before it.
func TestNoResurrectionUnderLoad(t *testing.T) {
	s := newStack(t)
	d := s.deployment("demo", nil)
	k := s.key(d.ID)
	e := s.startEdge(edgeOpts{})

	const cycles = 1000
	var (
		mu     sync.Mutex
		linked = map[uint64]bool{} // revision → link state it set
	)
	// linkedBetween reports whether the key was linked at some revision in
	// [from, to]: the state at from, or any relink after it up to to.
	linkedBetween := func(from, to uint64) bool {
		mu.Lock()
		defer mu.Unlock()
		state, best := true, uint64(0) // linked at creation
		for rev, l := range linked {
			if rev <= from && rev >= best {
				state, best = l, rev
			}
		}
		if state {
			return true
		}
		for rev, l := range linked {
			if rev > from && rev <= to && l {
				return true
			}
		}
		return false
	}

	// Requests record the edge's applied revision before they start, and the
	// newest revision the origin may have committed by the time they end (a
	// cache miss may legitimately read state newer than the edge applied).
	// They are judged once every revision's link state is known.
	type observation struct{ before, after uint64 }
	var upper atomic.Uint64 // the mutator is the only writer: nothing newer exists
	upper.Store(d.Revision)
	if k.Revision > d.Revision {
		upper.Store(k.Revision)
	}
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	var wg sync.WaitGroup
	var requests atomic.Int64
	allowed := make([][]observation, 8)
	client := &http.Client{Timeout: 10 * time.Second, Transport: &http.Transport{MaxIdleConnsPerHost: 16}}
	for i := range allowed {
		wg.Go(func() {
			for ctx.Err() == nil {
				before := e.View().AppliedRevision()
				req, _ := http.NewRequest(http.MethodPost, "http://"+e.Addr()+"/v1/chat/completions", strings.NewReader(chatBody))
				req.Header.Set("X-API-Key", k.Secret)
				resp, err := client.Do(req)
				if err != nil {
					continue
				}
				resp.Body.Close()
				requests.Add(1)
				if resp.StatusCode == http.StatusOK {
					allowed[i] = append(allowed[i], observation{before, upper.Load()})
				}
			}
		})
	}
	last := upper.Load()
	for i := 0; i < cycles; i++ {
		for _, link := range []bool{false, true} {
			upper.Store(last + 1)
			rev, err := s.api.Link(context.Background(), project, d.ID, k.ID, link)
			if err != nil {
				t.Fatal(err)
			}
			mu.Lock()
			linked[rev] = link
			mu.Unlock()
			last = rev
		}
	}
	waitApplied(t, last, e)
	cancel()
	wg.Wait()

	var violations, n int
	for _, obs := range allowed {
		for _, o := range obs {
			n++
			if !linkedBetween(o.before, o.after) {
				violations++
			}
		}
	}
	t.Logf("%d requests, %d allowed, over %d unlink/relink cycles", requests.Load(), n, cycles)
	// Without both allowed and refused requests, nothing raced an unlink.
	if n == 0 || requests.Load() == int64(n) {
		t.Fatalf("%d requests, %d of them allowed: the load never met both link states", requests.Load(), n)
	}
	if violations > 0 {
		t.Fatalf("%d requests were let through with state older than the edge's applied unlink", violations)
	}
	if n == 0 || int64(n) == requests.Load() {
		t.Fatal("the load did not see both outcomes")
	}
}

func TestMalformedKeyNeedsNoLookup(t *testing.T) {
	s := newStack(t)
	s.deployment("demo", nil)
	e := s.startEdge(edgeOpts{})
	valid := s.key().Secret
	before := e.View().Stats().Lookups
	for _, bad := range []string{
		"km_short",
		typo(valid),
		"sk-proj-" + strings.Repeat("x", 40),
		strings.ToUpper(valid),
	} {
		expect(t, e, map[string]string{"X-API-Key": bad}, 401, "AUTHENTICATION_FAILED")
	}
	if got := e.View().Stats().Lookups; got != before {
		t.Fatalf("malformed keys caused %d lookups", got-before)
	}
	// An unknown but well-formed key does need one.
	expect(t, e, withKey(s.key()), 401, "AUTHENTICATION_FAILED")
	if got := e.View().Stats().Lookups; got != before+1 {
		t.Fatalf("well-formed unknown key: %d lookups, want 1", got-before)
	}
}

func TestNoDeploymentAndUpstreamDown(t *testing.T) {
	s := newStack(t)
	d := s.deployment("api", map[string]any{"path_prefix": "/v1"})
	dead := s.deployment("dead", map[string]any{"path_prefix": "/dead", "auth_enabled": false,
		"upstreams": map[string][]string{"*": {"http://127.0.0.1:1"}}})
	_ = dead
	k := s.key(d.ID)
	e := s.startEdge(edgeOpts{})
	st, body := send(t, e, http.MethodGet, "/nowhere", withKey(k), "")
	if st != http.StatusNotFound || errorCode(t, body) != "NOT_FOUND" {
		t.Fatalf("no deployment: %d %s", st, body)
	}
	st, body = send(t, e, http.MethodPost, "/dead/v1/completions", nil, `{}`)
	if st != http.StatusBadGateway || errorCode(t, body) != "UPSTREAM_ERROR" {
		t.Fatalf("upstream down: %d %s", st, body)
	}
}

func TestLookupImpossibleIs503(t *testing.T) {
	s := newStack(t)
	d := s.deployment("demo", nil)
	k := s.key(d.ID)
	e := s.startEdge(edgeOpts{})
	if err := s.origin.Shutdown(context.Background()); err != nil {
		t.Fatal(err)
	}
	req, _ := http.NewRequest(http.MethodPost, "http://"+e.Addr()+"/v1/chat/completions", strings.NewReader(chatBody))
	req.Header.Set("X-API-Key", k.Secret)
	resp, err := httpClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusServiceUnavailable || resp.Header.Get("Retry-After") == "" {
		t.Fatalf("origin down on a miss: %d", resp.StatusCode)
	}
}

func TestRestartResumesAfterPersistedRevision(t *testing.T) {
	s := newStack(t)
	d := s.deployment("demo", nil)
	k := s.key(d.ID)
	dir := t.TempDir()
	e := s.startEdge(edgeOpts{dataDir: dir})
	expect(t, e, withKey(k), 200, "")
	if err := e.Shutdown(context.Background()); err != nil {
		t.Fatal(err)
	}
	before := e.View().AppliedRevision()

	// While the edge is down: auth is turned off for the deployment and the
	// key is unlinked.
	depPath := "/v1/projects/" + project + "/deployments/" + d.ID
	s.call(http.MethodDelete, depPath+"/keys/"+k.ID, nil, nil)
	rev := s.call(http.MethodPatch, depPath, map[string]any{"auth_enabled": false}, nil)

	e2 := s.startEdge(edgeOpts{dataDir: dir})
	waitApplied(t, rev, e2)
	st := e2.View().Stats()
	if st.Resyncs != 0 {
		t.Fatalf("restart took a snapshot instead of resuming (resyncs %d)", st.Resyncs)
	}
	if st.Applied != rev-before {
		t.Fatalf("restart applied %d events, want the %d after revision %d", st.Applied, rev-before, before)
	}
	expect(t, e2, nil, 200, "") // the auth toggle made while down is in effect
}

func TestGapDropsCachedState(t *testing.T) {
	s := newStack(t)
	d := s.deployment("demo", nil)
	k := s.key(d.ID)
	link := newRelay(t, s.nats.Addr().String())
	e := s.startEdge(edgeOpts{natsURL: link.URL(), dataDir: t.TempDir()})
	expect(t, e, withKey(k), 200, "") // cached now

	link.Cut()
	rev := s.call(http.MethodDelete, "/v1/projects/"+project+"/deployments/"+d.ID+"/keys/"+k.ID, nil, nil)
	testutil.CheckFor(t, 10*time.Second, 0, func() error { return streamHas(s, rev) })
	purgeStream(t, s)
	rev = s.call(http.MethodPatch, "/v1/projects/"+project+"/keys/"+s.key().ID, map[string]any{"name": "later"}, nil)
	testutil.CheckFor(t, 10*time.Second, 0, func() error { return streamHas(s, rev) })

	link.Heal()
	waitApplied(t, rev, e)
	if e.View().Stats().Resyncs < 2 {
		t.Fatal("the gap was not detected")
	}
	expect(t, e, withKey(k), 401, "AUTHENTICATION_FAILED") // the purged unlink still holds
}

func streamHas(s *stack, rev uint64) error {
	nc, err := s.natsConn()
	if err != nil {
		return err
	}
	defer nc.Close()
	js, _ := jetstream.New(nc)
	st, err := js.Stream(context.Background(), event.StreamName)
	if err != nil {
		return err
	}
	if last := st.CachedInfo().State.LastSeq; last < rev {
		return fmt.Errorf("stream at %d, want %d", last, rev)
	}
	return nil
}

func purgeStream(t *testing.T, s *stack) {
	t.Helper()
	nc, err := s.natsConn()
	if err != nil {
		t.Fatal(err)
	}
	defer nc.Close()
	js, _ := jetstream.New(nc)
	st, err := js.Stream(context.Background(), event.StreamName)
	if err != nil {
		t.Fatal(err)
	}
	if err := st.Purge(context.Background()); err != nil {
		t.Fatal(err)
	}
}

// typo changes one character of a key's random part, as a user might.
func typo(key string) string {
	c := byte('a')
	if key[20] == 'a' {
		c = 'b'
	}
	return key[:20] + string(c) + key[21:]
}
