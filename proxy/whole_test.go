package proxy

import (
	"net/http"
	"strconv"
	"strings"
	"sync"
	"testing"

	"github.com/keymesh/keymesh/apikey"
	"github.com/keymesh/keymesh/cache"
	"github.com/keymesh/keymesh/event"
)

// An answer of known length up to maxWholeAnswer is read whole before any
// of it is relayed (forward.go, wholeLength): one that the upstream ends
// short of its Content-Length is a 502 with the error body, not a 200
// whose body the client finds cut. (Relayed as a stream, as a larger one
// still is, the client would get the upstream's status and a short body.)
func TestShortAnswerIsBadGateway(t *testing.T) {
	up := newUpstream(t, func(w http.ResponseWriter, r *http.Request) {
		conn, buf, err := http.NewResponseController(w).Hijack()
		if err != nil {
			t.Error(err)
			return
		}
		defer conn.Close()
		_, _ = buf.WriteString("HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 100\r\n\r\n{\"id\":\"cut")
		_ = buf.Flush()
	})
	secret, h, key := testKey(t, "key_1", "dep_1")
	st := &fakeState{deps: cache.NewDeployments([]event.Deployment{deployment("dep_1", up.URL, true)}, 1),
		keys: map[apikey.Hash]*cache.Key{h: key}}
	p := startProxy(t, st)
	resp, body := do(t, client(t), "POST", p.url+"/v1/chat/completions", `{"model":"m","messages":[]}`,
		map[string]string{"X-API-Key": secret, "Content-Type": "application/json"})
	wantError(t, resp, body, http.StatusBadGateway, "UPSTREAM_ERROR")
	if resp.Header.Get("X-Request-Id") == "" {
		t.Fatal("the 502 has no request id")
	}
	if n := p.counter(t, "keymesh_edge_requests_total", "code", "502"); n != 1 {
		t.Fatalf("%v requests answered 502 counted", n)
	}
}

// Answers on either side of maxWholeAnswer, and event streams of known
// length, reach the client byte for byte with the upstream's status,
// headers and length, whether read whole or relayed as they arrive.
func TestAnswersRelayedAsSent(t *testing.T) {
	for _, tc := range []struct {
		name, ctype string
		size        int
	}{
		{"empty", "application/json", 0},
		{"small", "application/json", 300},
		{"bound", "application/json", maxWholeAnswer},
		{"over", "application/json", maxWholeAnswer + 1},
		{"large", "application/octet-stream", 4 * maxWholeAnswer},
		{"events", "text/event-stream", 2000},
	} {
		t.Run(tc.name, func(t *testing.T) {
			payload := strings.Repeat("x", tc.size)
			if tc.ctype == "text/event-stream" {
				payload = strings.Repeat("data: {\"a\":1}\n\n", tc.size/16)
			}
			var mu sync.Mutex
			conns := map[string]bool{}
			up := newUpstream(t, func(w http.ResponseWriter, r *http.Request) {
				mu.Lock()
				conns[r.RemoteAddr] = true
				mu.Unlock()
				w.Header().Set("Content-Type", tc.ctype)
				w.Header().Set("Content-Length", strconv.Itoa(len(payload)))
				w.Header().Set("X-Upstream", "kept")
				w.WriteHeader(http.StatusTeapot)
				_, _ = w.Write([]byte(payload))
			})
			secret, h, key := testKey(t, "key_1", "dep_1")
			st := &fakeState{deps: cache.NewDeployments([]event.Deployment{deployment("dep_1", up.URL, true)}, 1),
				keys: map[apikey.Hash]*cache.Key{h: key}}
			p := startProxy(t, st)
			for i := range 3 { // the pooled buffers and connections, reused
				resp, body := do(t, client(t), "POST", p.url+"/v1/chat/completions", `{"model":"m","messages":[]}`,
					map[string]string{"X-API-Key": secret, "Content-Type": "application/json"})
				if resp.StatusCode != http.StatusTeapot || body != payload || resp.Header.Get("X-Upstream") != "kept" ||
					resp.ContentLength != int64(len(payload)) {
					t.Fatalf("request %d: status %d, length %d, %d bytes (want %d), X-Upstream %q", i, resp.StatusCode,
						resp.ContentLength, len(body), len(payload), resp.Header.Get("X-Upstream"))
				}
			}
			// Read whole or relayed to its end, an answer gives its
			// connection back: the three went over one.
			mu.Lock()
			defer mu.Unlock()
			if len(conns) != 1 {
				t.Fatalf("3 answers over %d upstream connections, want 1 (a connection not given back to the pool)", len(conns))
			}
		})
	}
}
