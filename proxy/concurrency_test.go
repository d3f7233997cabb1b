package proxy

import (
	"bufio"
	"fmt"
	"io"
	"net"
	"net/http"
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

// cappedKey is a key on the given deployments with a concurrency cap.
func cappedKey(t *testing.T, id string, limit int, deployments ...string) (string, apikey.Hash, *cache.Key) {
	t.Helper()
	secret, err := apikey.Generate()
	if err != nil {
		t.Fatal(err)
	}
	h, _ := apikey.ParseString(secret)
	return secret, h, cache.NewKey(&event.Key{ID: id, Project: "prj_1", Secrets: []event.Secret{{Hash: h}},
		Permissions: event.DefaultPermissions, Deployments: deployments, MaxConcurrency: limit}, 1)
}

// inFlightIs waits until the proxy counts n requests in flight, over
// keys and over deployments alike.
func inFlightIs(t *testing.T, p *testProxy, n int) {
	t.Helper()
	testutil.CheckFor(t, 5*time.Second, time.Millisecond, func() error {
		if k, d := p.inflight.keys.total(), p.inflight.deps.total(); k != n || d != n {
			return fmt.Errorf("in flight: %d by key, %d by deployment; want %d", k, d, n)
		}
		return nil
	})
}

// blockingUpstream holds every request until release is closed, and says
// how many it holds.
type blockingUpstream struct {
	*testUpstream
	release chan struct{}
	mu      sync.Mutex
	held    int
}

func newBlockingUpstream(t *testing.T) *blockingUpstream {
	b := &blockingUpstream{release: make(chan struct{})}
	b.testUpstream = newUpstream(t, func(w http.ResponseWriter, r *http.Request) {
		b.mu.Lock()
		b.held++
		b.mu.Unlock()
		select {
		case <-b.release:
		case <-r.Context().Done():
		}
		_, _ = io.WriteString(w, `{"ok":true}`)
	})
	return b
}

func (b *blockingUpstream) waitHeld(t *testing.T, n int) {
	t.Helper()
	testutil.CheckFor(t, 5*time.Second, time.Millisecond, func() error {
		b.mu.Lock()
		defer b.mu.Unlock()
		if b.held != n {
			return fmt.Errorf("upstream holds %d, want %d", b.held, n)
		}
		return nil
	})
}

// A key's cap admits exactly that many requests at once: the next gets
// 429 CONCURRENCY_LIMIT with Retry-After: 1, and once they finish the
// slots are free again.
func TestHandlerKeyConcurrencyCap(t *testing.T) {
	up := newBlockingUpstream(t)
	secret, h, key := cappedKey(t, "key_1", 2, "dep_1")
	st := &fakeState{deps: cache.NewDeployments([]event.Deployment{deployment("dep_1", up.URL, true)}, 1),
		keys: map[apikey.Hash]*cache.Key{h: key}}
	p := startProxy(t, st)
	hdr := map[string]string{"X-API-Key": secret}
	var wg sync.WaitGroup
	codes := make(chan int, 2)
	for range 2 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			resp, _ := do(t, client(t), "POST", p.url+"/v1/completions", `{}`, hdr)
			codes <- resp.StatusCode
		}()
	}
	up.waitHeld(t, 2)
	inFlightIs(t, p, 2)
	resp, body := do(t, client(t), "POST", p.url+"/v1/completions", `{}`, hdr)
	wantError(t, resp, body, 429, apierror.ConcurrencyLimit)
	if resp.Header.Get("Retry-After") != "1" || !strings.Contains(body, `"type":"rate_limit_error"`) {
		t.Fatalf("Retry-After %q, body %s", resp.Header.Get("Retry-After"), body)
	}
	close(up.release)
	wg.Wait()
	close(codes)
	for c := range codes {
		if c != 200 {
			t.Fatalf("an admitted request got %d", c)
		}
	}
	inFlightIs(t, p, 0)
	if resp, body := do(t, client(t), "POST", p.url+"/v1/completions", `{}`, hdr); resp.StatusCode != 200 {
		t.Fatalf("after the others finished: %d %s", resp.StatusCode, body)
	}
	inFlightIs(t, p, 0)
}

// A deployment's cap bounds all its keys together, and a key refused by it
// holds no slot of its own afterwards.
func TestHandlerDeploymentConcurrencyCap(t *testing.T) {
	up := newBlockingUpstream(t)
	dep := deployment("dep_1", up.URL, true)
	dep.MaxConcurrency = 1
	s1, h1, k1 := cappedKey(t, "key_1", 0, "dep_1")
	s2, h2, k2 := cappedKey(t, "key_2", 5, "dep_1")
	st := &fakeState{deps: cache.NewDeployments([]event.Deployment{dep}, 1), keys: map[apikey.Hash]*cache.Key{h1: k1, h2: k2}}
	p := startProxy(t, st)
	done := make(chan int)
	go func() {
		resp, _ := do(t, client(t), "POST", p.url+"/v1/completions", `{}`, map[string]string{"X-API-Key": s1})
		done <- resp.StatusCode
	}()
	up.waitHeld(t, 1)
	resp, body := do(t, client(t), "POST", p.url+"/v1/completions", `{}`, map[string]string{"X-API-Key": s2})
	wantError(t, resp, body, 429, apierror.ConcurrencyLimit)
	if n := p.inflight.keys.get("key_2"); n != 0 {
		t.Fatalf("the refused key holds %d slots", n)
	}
	close(up.release)
	if c := <-done; c != 200 {
		t.Fatalf("the admitted request got %d", c)
	}
	inFlightIs(t, p, 0)
}

// Every way an admitted request can end gives its slots back, once: an
// upstream that cannot be reached, a refusal after admission (rate limit,
// no upstream credential), and — many times over — a client that hangs up
// in the middle of a stream.
func TestHandlerConcurrencyNeverLeaks(t *testing.T) {
	stream := newUpstream(t, func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "text/event-stream")
		for i := 0; ; i++ {
			if _, err := fmt.Fprintf(w, "data: %d\n\n", i); err != nil {
				return
			}
			w.(http.Flusher).Flush()
			select {
			case <-r.Context().Done():
				return
			case <-time.After(5 * time.Millisecond):
			}
		}
	})
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	deadURL := "http://" + ln.Addr().String()
	ln.Close() // nothing listens there now
	streamDep := deployment("dep_1", stream.URL, true)
	streamDep.MaxConcurrency = 100
	dead := deployment("dep_dead", deadURL, true)
	dead.PathPrefix = "/dead"
	plain := newUpstream(t, nil)
	limited := deployment("dep_rl", plain.URL, true)
	limited.PathPrefix, limited.RateLimit = "/rl", &event.RateLimit{RequestsPerMinute: 1}
	noSecret := deployment("dep_inject", plain.URL, true)
	noSecret.PathPrefix = "/inject"
	noSecret.UpstreamAuth = &event.UpstreamAuth{Mode: event.UpstreamAuthInject, Secret: "missing"}
	secret, h, key := cappedKey(t, "key_1", 3, "dep_1", "dep_dead", "dep_rl", "dep_inject")
	st := &fakeState{deps: cache.NewDeployments([]event.Deployment{streamDep, dead, limited, noSecret}, 1),
		keys: map[apikey.Hash]*cache.Key{h: key}}
	p := startProxy(t, st)
	hdr := map[string]string{"X-API-Key": secret}

	resp, body := do(t, client(t), "POST", p.url+"/dead/v1/completions", `{}`, hdr)
	wantError(t, resp, body, 502, apierror.UpstreamError)
	inFlightIs(t, p, 0)
	if resp, body := do(t, client(t), "POST", p.url+"/rl/v1/completions", `{}`, hdr); resp.StatusCode != 200 {
		t.Fatalf("first under the rate limit: %d %s", resp.StatusCode, body)
	}
	resp, body = do(t, client(t), "POST", p.url+"/rl/v1/completions", `{}`, hdr)
	wantError(t, resp, body, 429, apierror.RateLimited)
	inFlightIs(t, p, 0)
	resp, body = do(t, client(t), "POST", p.url+"/inject/v1/completions", `{}`, hdr)
	wantError(t, resp, body, 502, apierror.UpstreamError)
	inFlightIs(t, p, 0)

	// Clients that read a little of a stream and hang up.
	addr := strings.TrimPrefix(p.url, "http://")
	for i := range 30 {
		conn, err := net.Dial("tcp", addr)
		if err != nil {
			t.Fatal(err)
		}
		fmt.Fprintf(conn, "POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nX-API-Key: %s\r\nContent-Type: application/json\r\nContent-Length: 15\r\n\r\n{\"stream\":true}", secret)
		line, err := bufio.NewReader(conn).ReadString('\n')
		if err != nil || !strings.HasPrefix(line, "HTTP/1.1 200") {
			conn.Close()
			t.Fatalf("stream %d: %q %v", i, line, err)
		}
		conn.Close()
		if i%3 == 2 {
			inFlightIs(t, p, 0) // under the key's cap of 3, every third
		}
	}
	inFlightIs(t, p, 0)
	// And the cap still admits exactly 3.
	var conns []net.Conn
	for range 3 {
		conn, err := net.Dial("tcp", addr)
		if err != nil {
			t.Fatal(err)
		}
		conns = append(conns, conn)
		fmt.Fprintf(conn, "POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nX-API-Key: %s\r\nContent-Length: 15\r\n\r\n{\"stream\":true}", secret)
		if line, err := bufio.NewReader(conn).ReadString('\n'); err != nil || !strings.HasPrefix(line, "HTTP/1.1 200") {
			t.Fatalf("%q %v", line, err)
		}
	}
	inFlightIs(t, p, 3)
	resp, body = do(t, client(t), "POST", p.url+"/v1/chat/completions", `{"stream":true}`, hdr)
	wantError(t, resp, body, 429, apierror.ConcurrencyLimit)
	for _, c := range conns {
		c.Close()
	}
	inFlightIs(t, p, 0)
}
