package edge

import (
	"errors"
	"fmt"
	"log/slog"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/prometheus/client_golang/prometheus"
	dto "github.com/prometheus/client_model/go"

	"github.com/keymesh/keymesh/event"
	kmtest "github.com/keymesh/keymesh/internal/testutil"
)

// fakeEngine stands in for the data plane's limit engine (limitEngine, an
// interface of this package): it reports what the test scripts and keeps
// what is merged.
type fakeEngine struct {
	id string

	mu     sync.Mutex
	used   int64 // this edge's one counter; reported when it changed
	said   int64
	fulls  int
	merged []*event.LimitReport
	live   int
}

func (f *fakeEngine) spend(n int64) {
	f.mu.Lock()
	f.used += n
	f.mu.Unlock()
}

func (f *fakeEngine) LimitReport(full bool) *event.LimitReport {
	f.mu.Lock()
	defer f.mu.Unlock()
	if full {
		f.fulls++
	}
	if !full && f.used == f.said {
		return nil
	}
	f.said = f.used
	r := &event.LimitReport{Edge: f.id, Boot: "boot-" + f.id, TimeMS: time.Now().UnixMilli(), Full: full}
	if f.used > 0 {
		r.Entries = []event.LimitEntry{{Scope: event.LimitScopeKey, ID: "key_1", Kind: event.LimitRPM, Window: 1, Used: f.used}}
	}
	return r
}

func (f *fakeEngine) MergeLimitReport(r *event.LimitReport) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.merged = append(f.merged, r)
	return nil
}

func (f *fakeEngine) SetLimitPeers(live int) {
	f.mu.Lock()
	f.live = live
	f.mu.Unlock()
}

func (f *fakeEngine) LimitBoot() string { return "boot-" + f.id }

// maxUsed returns the largest value merged from edge.
func (f *fakeEngine) maxUsed(edge string) int64 {
	f.mu.Lock()
	defer f.mu.Unlock()
	var m int64
	for _, r := range f.merged {
		for _, e := range r.Entries {
			if r.Edge == edge {
				m = max(m, e.Used)
			}
		}
	}
	return m
}

func (f *fakeEngine) mergedFrom(edge string) int {
	f.mu.Lock()
	defer f.mu.Unlock()
	n := 0
	for _, r := range f.merged {
		if r.Edge == edge {
			n++
		}
	}
	return n
}

func (f *fakeEngine) livePeers() int {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.live
}

// fakeGossip records what would go to the ring.
type fakeGossip struct {
	mu  sync.Mutex
	got []*event.LimitReport
}

func (g *fakeGossip) RecordLimits(wire []byte) {
	r, err := event.UnmarshalLimitReport(wire)
	if err != nil {
		panic(err)
	}
	g.mu.Lock()
	g.got = append(g.got, r)
	g.mu.Unlock()
}

func (g *fakeGossip) reports() []*event.LimitReport {
	g.mu.Lock()
	defer g.mu.Unlock()
	return append([]*event.LimitReport(nil), g.got...)
}

func startLimitSync(t *testing.T, url, id string, interval time.Duration) (*limitSync, *fakeEngine, *prometheus.Registry) {
	t.Helper()
	nc, err := nats.Connect(url, nats.MaxReconnects(-1), nats.ReconnectWait(50*time.Millisecond))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(nc.Close)
	eng := &fakeEngine{id: id}
	reg := prometheus.NewRegistry()
	l := newLimitSync(id, nc, eng, interval, reg, slog.New(slog.DiscardHandler))
	if err := l.start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(l.shutdown)
	return l, eng, reg
}

func received(l *limitSync, via, result string) float64 {
	return value(l.received.WithLabelValues(via, result))
}

// value reads a counter.
func value(c prometheus.Counter) float64 {
	var m dto.Metric
	if err := c.Write(&m); err != nil {
		panic(err)
	}
	return m.GetCounter().GetValue()
}

// series counts the series of the named metric families reg exports.
func series(t *testing.T, reg *prometheus.Registry, names ...string) int {
	t.Helper()
	fams, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	n := 0
	for _, f := range fams {
		for _, name := range names {
			if f.GetName() == name {
				n += len(f.GetMetric())
			}
		}
	}
	return n
}

// Two edges exchange their reports over NATS: each merges the other's (and
// an empty one while the other has nothing to say, so it counts as live),
// never its own; a report naming another edge than its subject, or
// malformed, is dropped and counted.
func TestLimitReportsOverNATS(t *testing.T) {
	js := startJS(t)
	a, engA, _ := startLimitSync(t, js.url(), "edge-a", 20*time.Millisecond)
	b, engB, regB := startLimitSync(t, js.url(), "edge-b", 20*time.Millisecond)

	engA.spend(7)
	kmtest.CheckFor(t, 10*time.Second, 5*time.Millisecond, func() error {
		if got := engB.maxUsed("edge-a"); got != 7 {
			return fmt.Errorf("edge-b merged %d of edge-a's 7", got)
		}
		if engA.mergedFrom("edge-b") == 0 { // edge-b says nothing but still speaks
			return errors.New("edge-a heard nothing from a quiet edge-b")
		}
		if engA.livePeers() != 2 || engB.livePeers() != 2 {
			return fmt.Errorf("live edges %d and %d, want 2", engA.livePeers(), engB.livePeers())
		}
		return nil
	})
	if engA.mergedFrom("edge-a") != 0 || engB.mergedFrom("edge-b") != 0 {
		t.Fatal("an edge merged its own report")
	}

	// Forged and malformed reports, published with edge-a's connection on
	// its own subject (the NATS credentials allow no other).
	forged, _ := (&event.LimitReport{Edge: "edge-c", Boot: "x", TimeMS: 1,
		Entries: []event.LimitEntry{{Scope: event.LimitScopeKey, ID: "key_1", Kind: event.LimitRPM, Window: 1, Used: 1 << 40}}}).Marshal()
	for _, data := range [][]byte{forged, []byte("{not json"), []byte(`{"edge":"edge-a","boot":"b","t":1,"e":[],"extra":1}`)} {
		if err := a.nc.Publish(a.subject, data); err != nil {
			t.Fatal(err)
		}
	}
	if err := a.nc.Publish(event.EdgeLimitsSubject+".bad%zz", forged); err != nil {
		t.Fatal(err)
	}
	kmtest.CheckFor(t, 10*time.Second, 5*time.Millisecond, func() error {
		if w, bad := received(b, viaNATS, limitWrongEdge), received(b, viaNATS, limitBad); w != 1 || bad != 3 {
			return fmt.Errorf("wrong_edge %v, bad %v; want 1 and 3", w, bad)
		}
		return nil
	})
	if engB.mergedFrom("edge-c") != 0 {
		t.Fatal("a report naming another edge than its subject was merged")
	}
	// The metrics are exported, the subscriber's drops among them.
	if n := series(t, regB, "keymesh_edge_limit_reports_received_total", "keymesh_edge_limit_reports_sent_total",
		"keymesh_edge_limit_reports_dropped_total"); n != 8+2+2 {
		t.Fatalf("%d series", n)
	}
	if value(a.sent.WithLabelValues(viaNATS)) == 0 || received(b, viaNATS, limitMerged) == 0 {
		t.Fatal("sent or merged not counted")
	}

}

// While NATS is down a report is dropped and counted, never queued or
// waited for; gossip gets every report while someone lacks NATS, and only
// the full ones otherwise; Shutdown sends a last full report.
func TestLimitReportsNATSDownAndGossip(t *testing.T) {
	js := startJS(t)
	a, engA, _ := startLimitSync(t, js.url(), "edge-a", time.Hour) // sent by hand below
	g := &fakeGossip{}
	var lacking bool
	var mu sync.Mutex
	a.gossip = func() limitGossip { return g }
	a.needAll = func() bool { mu.Lock(); defer mu.Unlock(); return lacking }

	engA.spend(1)
	a.send(false) // NATS reaches everyone: not gossiped
	a.send(true)  // full: gossiped
	if r := g.reports(); len(r) != 1 || !r[0].Full || r[0].Entries[0].Used != 1 {
		t.Fatalf("gossiped %+v, want the full report only", r)
	}
	mu.Lock()
	lacking = true
	mu.Unlock()
	engA.spend(1)
	a.send(false)
	a.send(false) // nothing new: an empty report, gossiped too
	if r := g.reports(); len(r) != 3 || r[1].Entries[0].Used != 2 || len(r[2].Entries) != 0 || r[2].Boot != "boot-edge-a" {
		t.Fatalf("gossiped %+v", r)
	}

	js.stop()
	kmtest.CheckFor(t, 10*time.Second, 5*time.Millisecond, func() error {
		if a.nc.IsConnected() {
			return errors.New("still connected")
		}
		return nil
	})
	sent := value(a.sent.WithLabelValues(viaNATS))
	// A send that waited for NATS would hang here (the test's timeout);
	// that none went into the reconnect buffer is the counts below.
	for range 100 {
		engA.spend(1)
		a.send(false)
	}
	if dropped := value(a.dropped.WithLabelValues(viaNATS)); dropped != 100 ||
		value(a.sent.WithLabelValues(viaNATS)) != sent {
		t.Fatalf("dropped %v, sent %v -> %v", dropped, sent, value(a.sent.WithLabelValues(viaNATS)))
	}
	if r := g.reports(); len(r) != 103 {
		t.Fatalf("gossip got %d reports while NATS was down, want all", len(r))
	}

	// Shutdown sends one last full report: what was spent after the last
	// tick reaches the others.
	engA.spend(1)
	a.shutdown()
	if r := g.reports(); len(r) != 104 || !r[103].Full || r[103].Entries[0].Used != 103 {
		t.Fatalf("last report %+v", r[len(r)-1])
	}
}

// A peer's gossiped report is merged unless it names this edge or is
// malformed; merging never needs NATS.
func TestLimitReportsFromGossip(t *testing.T) {
	js := startJS(t)
	a, engA, _ := startLimitSync(t, js.url(), "edge-a", time.Hour)
	own, _ := (&event.LimitReport{Edge: "edge-a", Boot: "other-boot", TimeMS: 1}).Marshal()
	peer, _ := (&event.LimitReport{Edge: "edge-b", Boot: "b", TimeMS: 1,
		Entries: []event.LimitEntry{{Scope: event.LimitScopeKey, ID: "key_1", Kind: event.LimitRPM, Window: 1, Used: 3}}}).Marshal()
	for _, w := range [][]byte{own, peer, []byte("garbage"), []byte(strings.Repeat("x", 10))} {
		a.fromGossip(w)
	}
	if engA.maxUsed("edge-b") != 3 || engA.mergedFrom("edge-a") != 0 {
		t.Fatalf("merged %+v", engA.merged)
	}
	if received(a, viaGossip, limitOwn) != 1 || received(a, viaGossip, limitBad) != 2 || received(a, viaGossip, limitMerged) != 1 {
		t.Fatal("gossip results not counted")
	}
}
