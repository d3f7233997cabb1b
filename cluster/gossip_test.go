package cluster

import (
	"bytes"
	"crypto/sha512"
	"encoding/binary"
	"fmt"
	"sync"
	"testing"
	"time"

	"github.com/keymesh/keymesh/internal/testutil"
)

// Gossip alone carries a change to every node within a few gossip rounds
// (issue 17), while every node does what an edge does: re-advertises its
// metadata (revision, Info, a signed presence that changes with the
// revision) every SyncInterval, and sends limit reports. Before the
// cluster ran its own gossip rounds (gossip.go), memberlist's alive
// messages and fresher limit reports kept events in their queues for many
// rounds.
//
// 16 nodes with the WAN profile's fan-out (4) and retransmits (4), rounds
// of 100 ms, a 700-byte event (a sealed key record's size). Catch-up is
// out of reach (SyncInterval 10 rounds, and the test fails if any node
// asked for one), so only gossip delivers. Limit reports every 5 rounds,
// not the edge's 2.5: each goes to every peer at once, n² packets that
// under -race in one process measure the machine rather than gossip.
//
// Compression stays off (LocalConfig's): compressing every packet of 16
// nodes in one process under -race is what a loaded machine cannot afford.
//
// The bound: 3 rounds plus a margin of 2 for a loaded two-core machine
// under -race. Observed here: with the fix, the last node within 0.0–1.1
// rounds, also with four copies of the test running at once; without it,
// within 3.6–9.9 rounds per event, and over 5 for at least three of the
// six events in every run, -race or not.
func TestEventsSpreadWithinRounds(t *testing.T) {
	const (
		nodes       = 16
		round       = 100 * time.Millisecond
		measured    = 5
		limitsEvery = 5 * round
		bound       = 5 * round
	)
	ns := make([]*node, 0, nodes)
	stop := make(chan struct{})
	var wg sync.WaitGroup
	for i := range nodes {
		var join []string
		if i > 0 {
			join = []string{ns[0].c.Addr()}
		}
		var n *node
		n = startWith(t, fmt.Sprintf("edge-%02d", i), [][]byte{testKey}, join, func(c *Config) {
			ml := c.Memberlist
			ml.GossipInterval, ml.GossipNodes, ml.RetransmitMult = round, 4, 4
			ml.ProbeInterval, ml.ProbeTimeout = 10*round, 6*round // the WAN profile's, scaled
			c.SyncInterval = 10 * round
			c.Info = func() Info {
				return Info{ID: fmt.Sprintf("6f1c0b4e-2a44-4c1b-9d55-%012d", i), Site: "site-a",
					Address: fmt.Sprintf("10.0.0.%d:8080", i)}
			}
			c.Sign = func(rev uint64) (int64, []byte) { // a new signature per revision, as the edge's
				s := sha512.Sum512(binary.BigEndian.AppendUint64(nil, rev))
				return int64(rev), s[:]
			}
		})
		ns = append(ns, n)
	}
	testutil.CheckFor(t, 20*time.Second, 0, func() error {
		for _, n := range ns {
			if m := n.c.Stats().Members; m != nodes {
				return fmt.Errorf("%s sees %d members", n.c.Name(), m)
			}
		}
		return nil
	})
	// Every node's empty limit report, as an edge sends one while a peer
	// lacks NATS; started once the ring has formed.
	t.Cleanup(func() { close(stop); wg.Wait() }) // registered last: runs before the nodes stop
	for i, n := range ns {
		wg.Go(func() {
			tick := time.NewTicker(limitsEvery)
			defer tick.Stop()
			for {
				select {
				case <-stop:
					return
				case now := <-tick.C:
					n.c.RecordLimits(fmt.Appendf(nil, `{"edge":"6f1c0b4e-2a44-4c1b-9d55-%012d","boot":1733150000000,"time_ms":%d}`,
						i, now.UnixMilli()))
				}
			}
		})
	}
	wire := bytes.Repeat([]byte("k"), 700) // a sealed key record's size
	spread := func(rev uint64, within time.Duration) {
		t.Helper()
		start := time.Now()
		ns[0].fromStream(rev, wire)
		testutil.CheckFor(t, within, time.Millisecond, func() error {
			for _, n := range ns {
				if n.appliedRev() < rev {
					return fmt.Errorf("revision %d: %s does not have it after %.1f rounds", rev, n.c.Name(),
						float64(time.Since(start))/float64(round))
				}
			}
			return nil
		})
		t.Logf("revision %d: every node within %.1f rounds", rev, float64(time.Since(start))/float64(round))
	}
	spread(1, 20*time.Second) // warm-up: joins' own gossip has settled by then
	for rev := uint64(2); rev < 2+measured; rev++ {
		spread(rev, bound)
	}
	for _, n := range ns {
		if st := n.c.Stats(); st.CatchUpsAsked != 0 {
			t.Fatalf("%s caught up (%+v): not gossip alone", n.c.Name(), st)
		}
	}
}

// A packed gossip packet delivers each message in it, in order; one cut
// short, or a packed message inside, ends it without a panic, and what came
// before still counts.
func TestPackedPacket(t *testing.T) {
	r := &reports{got: map[string]int{}}
	n := startWith(t, "self", [][]byte{testKey}, nil, func(c *Config) { c.DeliverLimits = r.deliver })
	a, b, c := limitsMsg("peer-a", 1, "a1"), limitsMsg("peer-b", 1, "b1"), limitsMsg("peer-c", 1, "c1")
	if single := pack([][]byte{a}); !bytes.Equal(single, a) {
		t.Fatalf("a single message is packed as %q, want itself", single)
	}
	n.c.handle(pack([][]byte{a, b}))
	if r.count("a1") != 1 || r.count("b1") != 1 {
		t.Fatalf("delivered a1 %d, b1 %d times", r.count("a1"), r.count("b1"))
	}
	cut := pack([][]byte{c, limitsMsg("peer-d", 1, "d1")})
	n.c.handle(cut[:len(cut)-3])
	nested := pack([][]byte{pack([][]byte{limitsMsg("peer-e", 1, "e1"), limitsMsg("peer-f", 1, "f1")}), limitsMsg("peer-g", 1, "g1")})
	n.c.handle(nested)
	n.c.handle([]byte{msgPacked, 0xff, 0xff, 1})
	n.c.handle([]byte{msgPacked, 0, 0, 0, 1, msgLimits})
	if r.count("c1") != 1 || r.count("d1") != 0 || r.count("e1") != 0 || r.count("g1") != 0 {
		t.Fatalf("malformed packets: delivered c1 %d, d1 %d, e1 %d, g1 %d times", r.count("c1"), r.count("d1"), r.count("e1"), r.count("g1"))
	}
}
