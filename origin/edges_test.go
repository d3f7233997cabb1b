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

	"github.com/keymesh/keymesh/api"
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
	r.heartbeat("b", hbJSON("b", 7))
	r.heartbeat("a", hbJSON("a", 5))
	r.heartbeat("a", []byte("not json"))
	r.heartbeat("a", []byte(`{"applied_revision": 3}`)) // no id
	if got := r.rejected.Load(); got != 2 {
		t.Fatalf("rejected %d heartbeats, want 2", got)
	}
	l := r.list()
	if len(l) != 2 || l[0].ID != "a" || l[1].ID != "b" || l[0].AppliedRevision != 5 || l[1].AppliedRevision != 7 ||
		!l[0].Live || l[0].Site != "eu" || l[0].Address != "127.0.0.1:8080" || !l[0].LastSeen.Equal(clk.now()) {
		t.Fatalf("list = %+v", l)
	}

	// Over the cap, a new edge is ignored and counted; known ones update.
	r.heartbeat("c", hbJSON("c", 1))
	r.heartbeat("a", hbJSON("a", 6))
	if r.ignored.Load() != 1 {
		t.Fatalf("ignored %d, want 1", r.ignored.Load())
	}
	if l := r.list(); len(l) != 2 || l[0].AppliedRevision != 6 {
		t.Fatalf("list = %+v", l)
	}

	// Silence: not live after the liveness bound, still listed.
	clk.add(5 * time.Second)
	r.heartbeat("a", hbJSON("a", 6))
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
	r.heartbeat("c", hbJSON("c", 1))
	l = r.list()
	if len(l) != 1 || l[0].ID != "c" {
		t.Fatalf("after long silence: %+v", l)
	}
}

func TestEdgeRegistryWaitWakesOnHeartbeat(t *testing.T) {
	r := newEdgeRegistry(time.Now, 10*time.Second, 100)
	r.heartbeat("a", hbJSON("a", 1))
	r.heartbeat("b", hbJSON("b", 3))
	done := make(chan *api.Propagation, 1)
	go func() { done <- r.wait(context.Background(), 3, 20*time.Second) }()
	select {
	case p := <-done:
		t.Fatalf("returned before edge a applied: %+v", p)
	case <-time.After(50 * time.Millisecond):
	}
	r.heartbeat("a", hbJSON("a", 2)) // still behind
	r.heartbeat("a", hbJSON("a", 3))
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
	r.heartbeat("silent", hbJSON("silent", 1))
	start := time.Now()
	p := r.wait(context.Background(), 2, 20*time.Second)
	if el := time.Since(start); el > 5*time.Second {
		t.Fatalf("wait took %v; should end when the pending edge stops being live", el)
	}
	if len(p.Applied) != 0 || len(p.Pending) != 0 {
		t.Fatalf("propagation %+v", p)
	}

	// With a deadline shorter than liveness, a behind edge is pending.
	r.heartbeat("behind", hbJSON("behind", 1))
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
		if err := nc.Publish(event.EdgeSubject(event.EdgeHeartbeatSubject, id), hbJSON(id, rev)); err != nil {
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
		Propagation *api.Propagation
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
	var pk struct{ Propagation *api.Propagation }
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
		Propagation *api.Propagation
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

// Issue 12.2: the registry is stored (SQLite and PostgreSQL) and restored on
// start. An edge that was live before the restart and has not reported
// since counts as pending for ?wait until liveness passes from the restart;
// one that reports is applied.
func TestEdgeRegistrySurvivesRestart(t *testing.T) {
	eachStore(t, func(t *testing.T, cfg Config) {
		cfg.EdgeLiveness = 3 * time.Second
		s := startServer(t, cfg)
		nc := connect(t, s)
		for _, id := range []string{"edge-a", "edge-b"} {
			if err := nc.Publish(event.EdgeSubject(event.EdgeHeartbeatSubject, id), hbJSON(id, s.Revision())); err != nil {
				t.Fatal(err)
			}
		}
		nc.Flush()
		waitFor(t, "edges registered", func() bool { return len(s.Edges()) == 2 })
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		if err := s.Shutdown(ctx); err != nil {
			t.Fatal(err)
		}

		restarted := time.Now()
		s2 := startServer(t, cfg)
		if got := s2.Edges(); len(got) != 2 || !got[0].Live || !got[1].Live || got[0].AppliedRevision != s.Revision() {
			t.Fatalf("restored edges = %+v", got)
		}
		c := newClient(t, s2)
		nc2 := connect(t, s2)
		rev0 := s2.Revision()
		res := make(chan *api.Propagation, 1)
		go func() {
			var k struct{ Propagation *api.Propagation }
			c.must(201, "POST", "/v1/projects/default/keys?wait=30s", map[string]any{"name": "k"}, &k)
			res <- k.Propagation
		}()
		waitFor(t, "key committed", func() bool { return s2.Revision() > rev0 })
		if err := nc2.Publish(event.EdgeSubject(event.EdgeHeartbeatSubject, "edge-a"), hbJSON("edge-a", s2.Revision())); err != nil {
			t.Fatal(err)
		}
		nc2.Flush()
		p := <-res
		// edge-b never reports: pending until its warm-up (liveness from
		// the restart) ends, then no longer live.
		if fmt.Sprint(p.Applied, p.Pending) != "[edge-a] []" {
			t.Fatalf("propagation %+v", p)
		}
		if time.Since(restarted) < cfg.EdgeLiveness {
			t.Fatalf("answered %v after the restart, before edge-b's warm-up ended", time.Since(restarted))
		}
		seen := false
		for _, e := range s2.Edges() {
			if e.ID != "edge-b" {
				continue
			}
			seen = true
			if e.Live {
				t.Fatalf("edge-b still live after its warm-up: %+v", e)
			}
		}
		if !seen {
			t.Fatal("edge-b missing from the registry: it was restored and must stay listed, no longer live")
		}
	})
}

// The registry's store writes are cheap: heartbeats that repeat what an edge
// said are not written again until saveEvery passes; a change is. And
// restore makes only edges live before the restart pending, for liveness
// from the restart.
func TestEdgeRegistryStoreWritesAndRestore(t *testing.T) {
	clk := &fakeClock{t: time.Unix(1_700_000_000, 0)}
	r := newEdgeRegistry(clk.now, 8*time.Second, 10)
	r.heartbeat("a", hbJSON("a", 5))
	if d := r.takeDirty(); len(d) != 1 || d[0].ID != "a" || d[0].AppliedRevision != 5 {
		t.Fatalf("first flush %+v", d)
	}
	for range 50 {
		clk.add(10 * time.Millisecond)
		r.heartbeat("a", hbJSON("a", 5))
	}
	if d := r.takeDirty(); len(d) != 0 {
		t.Fatalf("unchanged heartbeats written again: %+v", d)
	}
	r.heartbeat("a", hbJSON("a", 6))
	if d := r.takeDirty(); len(d) != 1 || d[0].AppliedRevision != 6 {
		t.Fatalf("a new revision not written: %+v", d)
	}
	clk.add(r.saveEvery())
	r.heartbeat("a", hbJSON("a", 6))
	if d := r.takeDirty(); len(d) != 1 {
		t.Fatalf("last_seen not refreshed after saveEvery: %+v", d)
	}

	// Restore: "live" was seen with the newest, "old" a minute before
	// (not live then), "known" is already in the new registry.
	seen := clk.now()
	r2 := newEdgeRegistry(clk.now, 8*time.Second, 10)
	r2.heartbeat("known", hbJSON("known", 9))
	clk.add(30 * time.Second) // the origin was down 30 s
	warm := r2.restore([]Edge{
		{ID: "live", AppliedRevision: 7, LastSeen: seen},
		{ID: "known", AppliedRevision: 1, LastSeen: seen},
		{ID: "old", AppliedRevision: 7, LastSeen: seen.Add(-time.Minute)},
	})
	if warm != 1 {
		t.Fatalf("warming %d, want 1", warm)
	}
	applied, pending, _, _ := r2.check(8)
	if fmt.Sprint(applied, pending) != "[] [live]" {
		t.Fatalf("check after restore: applied %v pending %v", applied, pending)
	}
	if applied, _, _, _ := r2.check(7); fmt.Sprint(applied) != "[live]" {
		t.Fatalf("a restored edge's revision not counted: %v", applied)
	}
	for _, e := range r2.list() {
		if e.ID == "known" && e.AppliedRevision != 9 {
			t.Fatalf("restore overwrote a fresher edge: %+v", e)
		}
		if e.ID == "old" && e.Live {
			t.Fatalf("an edge dead before the restart is live: %+v", e)
		}
	}
	clk.add(8*time.Second + time.Millisecond)
	if _, pending, _, _ := r2.check(8); len(pending) != 0 {
		t.Fatalf("still pending after the warm-up: %v", pending)
	}
	// Reporting ends the warm-up at once.
	r3 := newEdgeRegistry(clk.now, 8*time.Second, 10)
	r3.restore([]Edge{{ID: "live", AppliedRevision: 7, LastSeen: clk.now().Add(-time.Second)}})
	r3.heartbeat("live", hbJSON("live", 8))
	if applied, pending, _, _ := r3.check(8); fmt.Sprint(applied, pending) != "[live] []" {
		t.Fatalf("after reporting: %v %v", applied, pending)
	}
}

// An edge's own leaving heartbeat takes it out of the live set at once and
// wakes a ?wait pending on it; its own next heartbeat brings it back;
// another edge cannot make it leave.
func TestEdgeRegistryLeaving(t *testing.T) {
	r := newEdgeRegistry(time.Now, time.Hour, 100)
	leave := func(id string) []byte {
		b, _ := json.Marshal(map[string]any{"id": id, "site": "eu", "applied_revision": 1, "leaving": true})
		return b
	}
	r.heartbeat("a", hbJSON("a", 1))
	r.heartbeat("b", hbJSON("b", 2))
	done := make(chan *api.Propagation, 1)
	go func() { done <- r.wait(context.Background(), 2, time.Minute) }()

	r.heartbeat("b", leave("a")) // b cannot speak for a
	if l := r.list(); !l[0].Live {
		t.Fatal("another edge's leaving heartbeat removed a")
	}
	r.heartbeat("a", leave("a"))
	select {
	case p := <-done:
		if fmt.Sprint(p.Applied, p.Pending) != "[b] []" {
			t.Fatalf("propagation %+v", p)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("wait still waits for an edge that left")
	}
	if l := r.list(); len(l) != 2 || l[0].ID != "a" || l[0].Live || !l[1].Live {
		t.Fatalf("list after a left: %+v", l)
	}
	r.heartbeat("a", hbJSON("a", 3))
	if l := r.list(); !l[0].Live {
		t.Fatal("a reported again but is not live")
	}
}
