package e2e

import (
	"context"
	"fmt"
	"testing"
	"time"

	"github.com/keymesh/keymesh/bench"
	"github.com/keymesh/keymesh/edge"
	"github.com/keymesh/keymesh/internal/testutil"
)

// leanMaxKeys keeps the many edges of one process small: the default
// (a million keys) sizes tables no test needs.
const leanMaxKeys = 10_000

// BenchmarkPropagation16Edges unlinks and relinks a key b.N times over 16
// edges and reports, for every edge on its own, the time from the unlink's
// API response (the change is committed) to that edge refusing the key,
// polled every millisecond: p50-ms and p99-ms, plus last-edge-p99-ms (the
// slowest edge of each unlink). "nats": every edge on NATS, no gossip.
// "gossip-only": 16 gossiping edges, 12 of them cut off from NATS after
// warm-up; the figures are those 12 edges', reached by gossip alone.
// Targets on a 2-core machine: p99 <= 50 ms via NATS, <= 2 s gossip-only.
func BenchmarkPropagation16Edges(b *testing.B) {
	b.Run("nats", func(b *testing.B) { benchPropagation(b, 0) })
	b.Run("gossip-only", func(b *testing.B) { benchPropagation(b, 12) })
}

func benchPropagation(b *testing.B, cut int) {
	const n = 16
	s := newStack(b)
	d := s.deployment("demo", nil)
	k := s.key(d.ID)
	var edges []*edge.Node
	var links []*relay
	if cut == 0 {
		for range n {
			edges = append(edges, s.startEdge(edgeOpts{configure: func(c *edge.Config) { c.MaxKeys = leanMaxKeys }}))
		}
	} else {
		edges, links = s.gossipEdges(n)
	}
	everyEdge(b, edges, k.Secret, 200, time.Now())
	var gossipOnly []int
	for i := n - cut; i < n; i++ {
		links[i].Cut()
		gossipOnly = append(gossipOnly, i)
	}
	testutil.CheckFor(b, 20*time.Second, 0, func() error {
		for _, i := range gossipOnly {
			if statusOf(b, edges[i]).NATSConnected {
				return fmt.Errorf("edge %d still on NATS", i)
			}
		}
		return nil
	})
	urls := make([]string, n)
	for i, e := range edges {
		urls[i] = "http://" + e.Addr()
	}
	b.ResetTimer()
	res, err := bench.RunPropagation(context.Background(), bench.PropagationConfig{Client: s.api, Project: project,
		Deployment: d.ID, KeyID: k.ID, Secret: k.Secret, Edges: urls, Iterations: b.N, Poll: time.Millisecond,
		GossipOnly: gossipOnly})
	b.StopTimer()
	if err != nil {
		b.Fatal(err)
	}
	if res.Timeouts > 0 {
		b.Fatalf("%d changes never reached every edge", res.Timeouts)
	}
	p := res.UnlinkPerEdge
	if res.GossipOnlyUnlinkPerEdge != nil {
		p = *res.GossipOnlyUnlinkPerEdge
	}
	b.ReportMetric(p.P50, "p50-ms")
	b.ReportMetric(p.P99, "p99-ms")
	b.ReportMetric(res.Unlink.P99, "last-edge-p99-ms")
}
