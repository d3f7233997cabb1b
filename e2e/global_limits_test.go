package e2e

import (
	"io"
	"net/http"
	"regexp"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/keymesh/keymesh/edge"
	"github.com/keymesh/keymesh/internal/testutil"
)

// Issue 15: a key's rate_limit holds across every edge, not per edge.
// These tests run 4 edges in one gossip ring (each behind its own NATS
// link), send a key limited to 600 requests a minute well over its limit
// through them for a few seconds — every request inside one window — and
// count what was admitted. Before global limits each edge admitted the
// whole 600 (4 × 600 = 2,400).
const (
	globalLimit = 600 // requests per minute
	globalEdges = 4
	// globalRate is the arrival rate per edge (requests/s) the load is
	// paced to; globalSync the edges' --limits-sync (the default).
	globalRate = 250
	globalSync = 200 * time.Millisecond
)

// globalKey creates a key limited to globalLimit requests a minute.
func (s *stack) globalKey() string {
	s.t.Helper()
	d := s.deployment("global", nil)
	var k struct {
		Key string `json:"key"`
	}
	s.call(http.MethodPost, "/v1/projects/"+project+"/keys", map[string]any{
		"deployments": []string{d.ID}, "rate_limit": map[string]int{"requests_per_minute": globalLimit}}, &k)
	s.secrets = append(s.secrets, k.Key)
	return k.Key
}

// loadResult is what a load run saw at each edge.
type loadResult struct {
	sent, admitted, refused []int
	other                   map[int]int // status -> count, neither 200 nor 429
	elapsed                 time.Duration
}

func (r loadResult) total() int {
	n := 0
	for _, a := range r.admitted {
		n += a
	}
	return n
}

// rate is the measured arrival rate per loaded edge, requests/s.
func (r loadResult) rate() float64 {
	sent, loaded := 0, 0
	for _, s := range r.sent {
		if s > 0 {
			sent += s
			loaded++
		}
	}
	if loaded == 0 || r.elapsed <= 0 {
		return 0
	}
	return float64(sent) / float64(loaded) / r.elapsed.Seconds()
}

// load sends perEdge[i] requests for key through edges[i], all edges at
// once, each paced to globalRate per second by 8 concurrent clients.
func load(t *testing.T, edges []*edge.Node, key string, perEdge []int) loadResult {
	t.Helper()
	r := loadResult{sent: make([]int, len(edges)), admitted: make([]int, len(edges)), refused: make([]int, len(edges)),
		other: map[int]int{}}
	var mu sync.Mutex
	var wg sync.WaitGroup
	start := time.Now()
	for i, e := range edges {
		if perEdge[i] == 0 {
			continue
		}
		tokens := make(chan struct{})
		wg.Go(func() { // the pacer
			defer close(tokens)
			tick := time.NewTicker(time.Second / globalRate)
			defer tick.Stop()
			for range perEdge[i] {
				<-tick.C
				tokens <- struct{}{}
			}
		})
		for range 8 {
			wg.Go(func() {
				for range tokens {
					st := post(t, e, key)
					mu.Lock()
					r.sent[i]++
					switch st {
					case http.StatusOK:
						r.admitted[i]++
					case http.StatusTooManyRequests:
						r.refused[i]++
					default:
						r.other[st]++
					}
					mu.Unlock()
				}
			})
		}
	}
	wg.Wait()
	r.elapsed = time.Since(start)
	return r
}

// post sends one chat request with key and returns its status.
func post(t *testing.T, e *edge.Node, key string) int {
	req, err := http.NewRequest(http.MethodPost, "http://"+e.Addr()+"/v1/chat/completions", strings.NewReader(chatBody))
	if err != nil {
		t.Error(err)
		return 0
	}
	req.Header.Set("X-API-Key", key)
	req.Header.Set("Content-Type", "application/json")
	resp, err := httpClient.Do(req)
	if err != nil {
		t.Error(err)
		return 0
	}
	_, _ = io.Copy(io.Discard, resp.Body)
	resp.Body.Close()
	return resp.StatusCode
}

// bound is the documented worst case (docs/design.md): the limit with 5%
// slack, plus E·r·Δ — what E loaded edges arriving at r each can admit in
// one sync interval before they hear of each other.
func bound(loaded int, rate float64) float64 {
	return globalLimit*1.05 + float64(loaded)*rate*globalSync.Seconds()
}

// globalEdgesUp starts the 4 edges and sends one request through each, so
// that each has the key cached (a lookup) and knows the others (a report):
// those 4 requests count as admitted.
func (s *stack) globalEdgesUp(t *testing.T, key string) ([]*edge.Node, []*relay) {
	edges, links := s.gossipEdgesWith(globalEdges, gossipOpts{configure: func(_ int, c *edge.Config) {
		c.LimitsSync = globalSync
	}})
	for _, e := range edges {
		if st := post(t, e, key); st != 200 {
			t.Fatalf("warm-up request through %s: %d", e.ID(), st)
		}
	}
	// Each edge has merged a report of every other: they know the key's
	// global count before the load starts.
	testutil.CheckFor(t, 10*time.Second, 0, func() error {
		for _, e := range edges {
			if n := metricSum(t, e, reportsReceived, map[string]string{"result": "merged"}); n < globalEdges-1 {
				return errorf("edge %s merged %v reports", e.ID(), n)
			}
		}
		return nil
	})
	return edges, links
}

// metricSum adds the values of the series of e's metric name that carry
// every label in want.
func metricSum(t testing.TB, e *edge.Node, name string, want map[string]string) float64 {
	t.Helper()
	re := regexp.MustCompile(`^` + regexp.QuoteMeta(name) + `\{([^}]*)\} (\S+)$`)
	var sum float64
	for _, line := range strings.Split(scrape(t, e, "/metrics"), "\n") {
		m := re.FindStringSubmatch(line)
		if m == nil {
			continue
		}
		labels := map[string]string{}
		for _, l := range strings.Split(m[1], ",") {
			k, v, _ := strings.Cut(l, "=")
			labels[k] = strings.Trim(v, `"`)
		}
		ok := true
		for k, v := range want {
			ok = ok && labels[k] == v
		}
		if v, err := strconv.ParseFloat(m[2], 64); err == nil && ok {
			sum += v
		}
	}
	return sum
}

const reportsReceived = "keymesh_edge_limit_reports_received_total"

func (r loadResult) report(t *testing.T, what string, warm int, loaded int) {
	t.Helper()
	total := r.total() + warm
	b := bound(loaded, r.rate())
	t.Logf("%s: admitted %d of %d (limit %d; per edge %v, refused %v, other %v) in %v at %.0f req/s per edge; "+
		"overshoot %d (%.1f%%), bound %.0f", what, total, sum(r.sent)+warm, globalLimit, r.admitted, r.refused, r.other,
		r.elapsed.Round(time.Millisecond), r.rate(), total-globalLimit, 100*float64(total-globalLimit)/globalLimit, b)
	if float64(total) > b {
		t.Errorf("%s: %d admitted, over the bound %.0f (limit %d)", what, total, b, globalLimit)
	}
	if total < globalLimit*90/100 { // strict mode may leave a little unspent, not much
		t.Errorf("%s: only %d admitted of a limit of %d", what, total, globalLimit)
	}
	if len(r.other) != 0 {
		t.Errorf("%s: answers neither 200 nor 429: %v", what, r.other)
	}
}

func sum(xs []int) int {
	n := 0
	for _, x := range xs {
		n += x
	}
	return n
}

// (a) Load spread over 4 edges, twice the limit each: the total admitted
// stays within the limit plus the documented bound.
func TestGlobalRateLimitSpreadOverEdges(t *testing.T) {
	s := newStack(t)
	key := s.globalKey()
	edges, _ := s.globalEdgesUp(t, key)
	per := globalLimit // each edge alone would admit them all: 2,400 in all
	r := load(t, edges, key, []int{per, per, per, per})
	r.report(t, "spread over 4 edges", globalEdges, globalEdges)
}

// (b) All the load on one edge until it refuses, then on another: the
// edge moved to refuses what the first spent.
func TestGlobalRateLimitMovedToAnotherEdge(t *testing.T) {
	s := newStack(t)
	key := s.globalKey()
	edges, _ := s.globalEdgesUp(t, key)
	first := load(t, edges, key, []int{globalLimit + 200, 0, 0, 0})
	if first.refused[0] == 0 {
		t.Fatalf("the first edge refused nothing of %d requests: %+v", first.sent[0], first)
	}
	moved := load(t, edges, key, []int{0, 300, 0, 0})
	t.Logf("moved: the second edge admitted %d of %d after the first admitted %d", moved.admitted[1], moved.sent[1], first.admitted[0])
	all := loadResult{sent: []int{first.sent[0], moved.sent[1], 0, 0}, admitted: []int{first.admitted[0], moved.admitted[1], 0, 0},
		refused: []int{first.refused[0], moved.refused[1], 0, 0}, other: first.other, elapsed: first.elapsed + moved.elapsed}
	for st, n := range moved.other {
		all.other[st] += n
	}
	all.report(t, "one edge, then another", globalEdges, 1)
	// What the first edge spent is known to the second: it admits at most
	// the slack, not a fresh limit.
	if slack := float64(globalLimit)*0.05 + moved.rate()*globalSync.Seconds(); float64(moved.admitted[1]) > slack {
		t.Errorf("the edge moved to admitted %d, over the slack %.0f", moved.admitted[1], slack)
	}
}

// (c) NATS cut to 2 of the 4 edges: their reports, and the others', travel
// by gossip alone, and the total still stays within the bound; the cut
// edges' share is bounded like everyone's.
func TestGlobalRateLimitConvergesOverGossip(t *testing.T) {
	s := newStack(t)
	key := s.globalKey()
	edges, links := s.globalEdgesUp(t, key)
	for _, l := range links[2:] {
		l.Cut()
	}
	testutil.CheckFor(t, 10*time.Second, 0, func() error {
		for _, e := range edges[2:] {
			if statusOf(t, e).NATSConnected {
				return errorf("edge %s still reaches NATS", e.ID())
			}
		}
		// The edges with NATS know who lacks it (gossiped metadata), so
		// they gossip every report.
		for _, e := range edges[:2] {
			for _, p := range e.Peers() {
				if (p.Name == "edge-02" || p.Name == "edge-03") && p.NATS {
					return errorf("edge %s still sees %s with NATS", e.ID(), p.Name)
				}
			}
		}
		return nil
	})
	gossiped := make([]float64, len(edges))
	for i, e := range edges {
		gossiped[i] = metricSum(t, e, reportsReceived, map[string]string{"via": "gossip", "result": "merged"})
	}
	per := globalLimit * 2 / 3 // 1,600 in all: well over, and short under -race
	r := load(t, edges, key, []int{per, per, per, per})
	r.report(t, "NATS cut to 2 of 4 edges", globalEdges, globalEdges)
	for i, e := range edges[2:] {
		if n := metricSum(t, e, reportsReceived, map[string]string{"via": "gossip", "result": "merged"}); n <= gossiped[i+2] {
			t.Errorf("cut edge %s merged no report by gossip during the load", e.ID())
		}
	}
	// The cut edges hold no more than their part of the bound.
	cut := r.admitted[2] + r.admitted[3]
	if share := bound(globalEdges, r.rate()) / 2; float64(cut) > share {
		t.Errorf("the cut edges admitted %d, over their share %.0f of the bound", cut, share)
	}
	t.Logf("the cut edges admitted %d of %d", cut, r.total())
}
