package origin

import (
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/keymesh/keymesh/event"
)

// fakeClock is a settable clock for the registry.
type fakeClock struct {
	mu sync.Mutex
	t  time.Time
}

func (c *fakeClock) now() time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.t
}

func (c *fakeClock) add(d time.Duration) {
	c.mu.Lock()
	c.t = c.t.Add(d)
	c.mu.Unlock()
}

func hbJSON(id string, rev uint64) []byte {
	b, _ := json.Marshal(map[string]any{"id": id, "site": "eu", "address": "127.0.0.1:8080", "applied_revision": rev, "time": time.Now()})
	return b
}

func TestEdgeRegistryLivenessAndCap(t *testing.T) {
	clk := &fakeClock{t: time.Unix(1_700_000_000, 0)}
	r := newEdgeRegistry(clk.now, 10*time.Second, 2)
	r.heartbeat(hbJSON("b", 7))
	r.heartbeat(hbJSON("a", 5))
	r.heartbeat([]byte("not json"))
	r.heartbeat([]byte(`{"applied_revision": 3}`)) // no id
	if got := r.rejected.Load(); got != 2 {
		t.Fatalf("rejected %d heartbeats, want 2", got)
	}
	l := r.list()
	if len(l) != 2 || l[0].ID != "a" || l[1].ID != "b" || l[0].AppliedRevision != 5 || l[1].AppliedRevision != 7 ||
		!l[0].Live || l[0].Site != "eu" || l[0].Address != "127.0.0.1:8080" || !l[0].LastSeen.Equal(clk.now()) {
		t.Fatalf("list = %+v", l)
	}

	// Over the cap, a new edge is ignored and counted; known ones update.
	r.heartbeat(hbJSON("c", 1))
	r.heartbeat(hbJSON("a", 6))
	if r.ignored.Load() != 1 {
		t.Fatalf("ignored %d, want 1", r.ignored.Load())
	}
	if l := r.list(); len(l) != 2 || l[0].AppliedRevision != 6 {
		t.Fatalf("list = %+v", l)
	}

	// Silence: not live after the liveness bound, still listed.
	clk.add(5 * time.Second)
	r.heartbeat(hbJSON("a", 6))
	clk.add(6 * time.Second)
	l = r.list()
	if !l[0].Live || l[1].Live {
		t.Fatalf("after 11s silence of b only: %+v", l)
	}
	applied, pending, _, _ := r.check(6)
	if fmt.Sprint(applied, pending) != "[a] []" {
		t.Fatalf("check(6) = %v %v: a silent edge must not be waited for", applied, pending)
	}

	// Dropped after 10x liveness, which frees room under the cap.
	clk.add(95 * time.Second)
	r.heartbeat(hbJSON("c", 1))
	l = r.list()
	if len(l) != 1 || l[0].ID != "c" {
		t.Fatalf("after long silence: %+v", l)
	}
}

func TestEdgeRegistryWaitWakesOnHeartbeat(t *testing.T) {
	r := newEdgeRegistry(time.Now, 10*time.Second, 100)
	r.heartbeat(hbJSON("a", 1))
	r.heartbeat(hbJSON("b", 3))
	done := make(chan *propagation, 1)
	go func() { done <- r.wait(context.Background(), 3, 20*time.Second) }()
	select {
	case p := <-done:
		t.Fatalf("returned before edge a applied: %+v", p)
	case <-time.After(50 * time.Millisecond):
	}
	r.heartbeat(hbJSON("a", 2)) // still behind
	r.heartbeat(hbJSON("a", 3))
	select {
	case p := <-done:
		if fmt.Sprint(p.Applied, p.Pending) != "[a b] []" {
			t.Fatalf("propagation %+v", p)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("wait was not woken by the heartbeat")
	}
}

func TestEdgeRegistryWaitEndsWhenPendingEdgeDies(t *testing.T) {
	r := newEdgeRegistry(time.Now, 300*time.Millisecond, 100)
	r.heartbeat(hbJSON("silent", 1))
	start := time.Now()
	p := r.wait(context.Background(), 2, 20*time.Second)
	if el := time.Since(start); el > 5*time.Second {
		t.Fatalf("wait took %v; should end when the pending edge stops being live", el)
	}
	if len(p.Applied) != 0 || len(p.Pending) != 0 {
		t.Fatalf("propagation %+v", p)
	}

	// With a deadline shorter than liveness, a behind edge is pending.
	r.heartbeat(hbJSON("behind", 1))
	p = r.wait(context.Background(), 2, 50*time.Millisecond)
	if fmt.Sprint(p.Applied, p.Pending) != "[] [behind]" {
		t.Fatalf("propagation %+v", p)
	}
}

func TestEdgesEndpointAndWait(t *testing.T) {
	cfg := testConfig(t.TempDir())
	cfg.EdgeLiveness = 5 * time.Second
	s := startServer(t, cfg)
	c := newClient(t, s)
	nc := connect(t, s)

	publish := func(id string, rev uint64) {
		t.Helper()
		if err := nc.Publish(event.EdgeHeartbeatSubject, hbJSON(id, rev)); err != nil {
			t.Fatal(err)
		}
		if err := nc.Flush(); err != nil {
			t.Fatal(err)
		}
	}
	publish("edge-ahead", 1<<40)
	type edge struct {
		ID              string    `json:"id"`
		Site            string    `json:"site"`
		Address         string    `json:"address"`
		AppliedRevision uint64    `json:"applied_revision"`
		LastSeen        time.Time `json:"last_seen"`
		Live            bool      `json:"live"`
	}
	var edges []edge
	waitFor(t, "edge listed", func() bool {
		c.must(200, "GET", "/v1/edges", nil, &edges)
		return len(edges) == 1
	})
	if e := edges[0]; e.ID != "edge-ahead" || e.AppliedRevision != 1<<40 || !e.Live || e.Site != "eu" || e.LastSeen.IsZero() {
		t.Fatalf("edges = %+v", edges)
	}

	// Without ?wait there is no propagation report.
	var d map[string]any
	c.must(201, "POST", "/v1/projects/default/deployments", map[string]any{"name": "d1", "upstreams": map[string][]string{"*": {"http://127.0.0.1:1"}}}, &d)
	if _, ok := d["propagation"]; ok {
		t.Fatalf("propagation without ?wait: %v", d)
	}

	// Every live edge ahead: the answer is immediate.
	var k struct {
		ID          string
		Revision    uint64
		Propagation *propagation
	}
	c.must(201, "POST", "/v1/projects/default/keys?wait=5s", map[string]any{"name": "k"}, &k)
	if k.Propagation == nil || fmt.Sprint(k.Propagation.Applied, k.Propagation.Pending) != "[edge-ahead] []" || k.Propagation.LiveEdges != 1 {
		t.Fatalf("propagation %+v", k.Propagation)
	}

	// An edge behind that catches up while the request waits.
	publish("edge-behind", 0)
	waitFor(t, "second edge", func() bool { return len(s.Edges()) == 2 })
	type result struct {
		st   int
		body []byte
		took time.Duration
	}
	res := make(chan result, 1)
	go func() {
		start := time.Now()
		st, b := c.do("PATCH", "/v1/projects/default/keys/"+k.ID+"?wait=20s", map[string]any{"name": "k2"})
		res <- result{st, b, time.Since(start)}
	}()
	// The PATCH commits revision k.Revision+1; catch up once it has.
	waitFor(t, "patch committed", func() bool { return s.Revision() > k.Revision })
	publish("edge-behind", s.Revision())
	r := <-res
	if r.st != 200 || r.took > 10*time.Second {
		t.Fatalf("PATCH ?wait: %d after %v: %s", r.st, r.took, r.body)
	}
	var pk struct{ Propagation *propagation }
	mustJSON(t, r.body, &pk)
	if fmt.Sprint(pk.Propagation.Applied, pk.Propagation.Pending) != "[edge-ahead edge-behind] []" {
		t.Fatalf("propagation %+v", pk.Propagation)
	}

	// An edge that never catches up is pending when the wait ends.
	publish("edge-stuck", 0)
	waitFor(t, "third edge", func() bool { return len(s.Edges()) == 3 })
	start := time.Now()
	st, b := c.do("PATCH", "/v1/projects/default/keys/"+k.ID+"?wait=300ms", map[string]any{"name": "k3"})
	if st != 200 || time.Since(start) < 300*time.Millisecond {
		t.Fatalf("PATCH: %d after %v: %s", st, time.Since(start), b)
	}
	mustJSON(t, b, &pk)
	if !strings.Contains(fmt.Sprint(pk.Propagation.Pending), "edge-stuck") || pk.Propagation.LiveEdges != 3 {
		t.Fatalf("propagation %+v", pk.Propagation)
	}

	// A delete waits too: a 204 has no body, so with ?wait it answers 200
	// with the revision and the report; without, 204 and X-Revision.
	type deletedResp struct {
		Revision    *uint64
		Propagation *propagation
	}
	for _, path := range []string{"/v1/projects/default/keys/" + k.ID, "/v1/projects/default/deployments/d1"} {
		st, b, h := c.doH("DELETE", path+"?wait=100ms", nil, nil)
		var del deletedResp
		if st != http.StatusOK {
			t.Fatalf("DELETE %s?wait: %d %s", path, st, b)
		}
		mustJSON(t, b, &del)
		if del.Revision == nil || *del.Revision != s.Revision() || h.Get("X-Revision") != fmt.Sprint(*del.Revision) ||
			del.Propagation == nil || del.Propagation.Applied == nil || !strings.Contains(fmt.Sprint(del.Propagation.Pending), "edge-stuck") {
			t.Fatalf("DELETE %s?wait: %s X-Revision %q", path, b, h.Get("X-Revision"))
		}
	}
	var k2 struct{ ID string }
	c.must(201, "POST", "/v1/projects/default/keys", map[string]any{"name": "k2"}, &k2)
	st, b, h := c.doH("DELETE", "/v1/projects/default/keys/"+k2.ID, nil, nil)
	if st != http.StatusNoContent || len(b) != 0 || h.Get("X-Revision") != fmt.Sprint(s.Revision()) {
		t.Fatalf("DELETE without ?wait: %d %q X-Revision %q", st, b, h.Get("X-Revision"))
	}

	// A bad duration is refused before anything changes.
	rev := s.Revision()
	st, b = c.do("POST", "/v1/projects/default/keys?wait=soon", map[string]any{"name": "x"})
	var e apiErr
	mustJSON(t, b, &e)
	if st != 400 || e.Error.Code != "VALIDATION_ERROR" || e.Error.Details["field"] != "wait" || s.Revision() != rev {
		t.Fatalf("bad wait: %d %s", st, b)
	}
}

// An edge cut off from NATS is kept live by peers relaying its heartbeat;
// relayed revisions only move forward, and the edge's own heartbeat wins.
func TestEdgeRegistryRelayedHeartbeats(t *testing.T) {
	clk := &fakeClock{t: time.Unix(1_700_000_000, 0)}
	r := newEdgeRegistry(clk.now, 10*time.Second, 10)
	relayed := func(id string, rev uint64, by string) []byte {
		b, _ := json.Marshal(map[string]any{"id": id, "site": "eu", "address": "127.0.0.1:8080",
			"applied_revision": rev, "relayed_by": by})
		return b
	}
	r.heartbeat(hbJSON("cut", 5))
	clk.add(8 * time.Second) // its own heartbeats stopped
	r.heartbeat(relayed("cut", 7, "a"))
	r.heartbeat(relayed("cut", 6, "b")) // an older revision, by another relay
	clk.add(8 * time.Second)            // 16s after its last own heartbeat
	l := r.list()
	if len(l) != 1 || !l[0].Live || l[0].AppliedRevision != 7 || l[0].RelayedBy != "b" {
		t.Fatalf("relayed edge: %+v", l)
	}
	if applied, pending, _, _ := r.check(7); fmt.Sprint(applied, pending) != "[cut] []" {
		t.Fatalf("check(7) = %v %v", applied, pending)
	}
	r.heartbeat(hbJSON("cut", 3)) // back on NATS, restarted without state
	if l := r.list(); l[0].AppliedRevision != 3 || l[0].RelayedBy != "" {
		t.Fatalf("after its own heartbeat: %+v", l)
	}
	if r.heartbeat(relayed("x", 1, strings.Repeat("r", 300))); r.rejected.Load() != 1 {
		t.Fatal("an oversized relayed_by was accepted")
	}
	// Over HTTP the field is there.
	b, _ := json.Marshal(r.list())
	if !strings.Contains(string(b), `"id":"cut"`) || strings.Contains(string(b), `"relayed_by":""`) {
		t.Fatalf("json: %s", b)
	}
}
