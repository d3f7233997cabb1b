package cluster

import (
	"bytes"
	"encoding/binary"
	"fmt"
	"slices"
	"sync"
	"testing"
	"time"

	"github.com/keymesh/keymesh/internal/testutil"
)

// reports collects what DeliverLimits hands a node.
type reports struct {
	mu  sync.Mutex
	got map[string]int // report -> deliveries
}

func (r *reports) deliver(wire []byte) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.got[string(wire)]++
}

func (r *reports) count(wire string) int {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.got[wire]
}

// Every node's limit reports reach every other node exactly once, small
// ones by gossip and large ones over TCP; a node never gets its own back.
func TestLimitReportsReachEveryNodeOnce(t *testing.T) {
	var nodes []*node
	var got []*reports
	for i := range 6 {
		r := &reports{got: map[string]int{}}
		var join []string
		if i > 0 {
			join = []string{nodes[0].c.Addr()}
		}
		nodes = append(nodes, startWith(t, fmt.Sprintf("n%d", i), [][]byte{testKey}, join, func(c *Config) {
			c.DeliverLimits = r.deliver
		}))
		got = append(got, r)
	}
	testutil.CheckFor(t, 10*time.Second, 0, func() error {
		for _, n := range nodes {
			if m := n.c.Stats().Members; m != len(nodes) {
				return fmt.Errorf("%s sees %d members", n.c.Name(), m)
			}
		}
		return nil
	})
	report := func(i, j int) string {
		if j == 2 { // over one gossip packet
			return fmt.Sprintf("report-%d-%d-", i, j) + string(bytes.Repeat([]byte("x"), 3000))
		}
		return fmt.Sprintf("report-%d-%d", i, j)
	}
	for j := range 4 {
		for i, n := range nodes {
			n.c.RecordLimits([]byte(report(i, j)))
		}
	}
	testutil.CheckFor(t, 10*time.Second, 0, func() error {
		for to := range nodes {
			for from := range nodes {
				if from == to {
					continue
				}
				for j := range 4 { // each is sent to every peer directly
					if got[to].count(report(from, j)) == 0 {
						return fmt.Errorf("n%d has not received report %d of n%d", to, j, from)
					}
				}
			}
		}
		return nil
	})
	// Let the relays run out, then count.
	testutil.CheckFor(t, 10*time.Second, 0, func() error {
		for _, n := range nodes {
			if q := n.c.Stats().Queued; q != 0 {
				return fmt.Errorf("%s still has %d broadcasts queued", n.c.Name(), q)
			}
		}
		return nil
	})
	for to := range nodes {
		got[to].mu.Lock()
		for w, c := range got[to].got {
			if c != 1 {
				t.Errorf("n%d got %.12q %d times", to, w, c)
			}
			if bytes.HasPrefix([]byte(w), []byte(fmt.Sprintf("report-%d-", to))) {
				t.Errorf("n%d got its own report %.12q back", to, w)
			}
		}
		got[to].mu.Unlock()
		st := nodes[to].c.Stats()
		if st.LimitReportsSent != 4 || st.LimitReportsReceived == 0 {
			t.Errorf("n%d stats %+v", to, st)
		}
	}
}

// limitsMsg builds the wire message of a report of origin at seq.
func limitsMsg(origin string, seq uint64, report string) []byte {
	msg := binary.BigEndian.AppendUint64([]byte{msgLimits}, seq)
	msg = append(msg, byte(len(origin)))
	return append(append(msg, origin...), report...)
}

// A peer's report is relayed once, only the newest of each origin stays
// queued (a late older one replaces nothing), and malformed ones, ones
// naming this node and copies are neither delivered nor relayed.
func TestLimitReportsRelayedOnceNewestPerOrigin(t *testing.T) {
	r := &reports{got: map[string]int{}}
	n := startWith(t, "self", [][]byte{testKey}, nil, func(c *Config) { c.DeliverLimits = r.deliver })
	c := n.c
	queued := func() []string {
		var out []string
		for _, b := range c.lqueue.GetBroadcasts(0, 1<<20) {
			out = append(out, string(b))
		}
		c.lqueue.Reset()
		return out
	}

	c.handle(limitsMsg("peer-a", 10, "a10"))
	c.handle(limitsMsg("peer-a", 10, "a10")) // the same again, from another peer
	c.handle(limitsMsg("peer-a", 20, "a20")) // newer: replaces a10 in the queue
	c.handle(limitsMsg("peer-a", 15, "a15")) // late and older: delivered, not queued
	c.handle(limitsMsg("peer-b", 1, "b1"))
	if q := queued(); len(q) != 2 || !slices.Contains(q, string(limitsMsg("peer-a", 20, "a20"))) ||
		!slices.Contains(q, string(limitsMsg("peer-b", 1, "b1"))) {
		t.Fatalf("queued %q, want peer-a's seq 20 and peer-b's", q)
	}
	for _, w := range []string{"a10", "a20", "a15", "b1"} {
		if r.count(w) != 1 {
			t.Errorf("%s delivered %d times", w, r.count(w))
		}
	}

	// Once the queue let it go, an older report may be queued again
	// (a forged seq blocks relays only while queued).
	c.handle(limitsMsg("peer-a", 12, "a12"))
	if q := queued(); len(q) != 1 {
		t.Fatalf("queued %q after the queue emptied", q)
	}

	before := c.Stats()
	for _, bad := range [][]byte{
		{msgLimits, 1},
		limitsMsg("peer-c", 1, "")[:12],      // origin cut short
		limitsMsg("peer-c", 1, ""),           // no report
		limitsMsg("self", 99, "forged-self"), // this node's own name
		limitsMsg("peer-c", 1, string(make([]byte, MaxLimitsBytes+1))),
	} {
		c.handle(bad)
	}
	if q := queued(); len(q) != 0 || r.count("forged-self") != 0 {
		t.Fatalf("bad reports queued %d, delivered %d", len(q), r.count("forged-self"))
	}
	if st := c.Stats(); st.LimitReportsBad-before.LimitReportsBad != 5 || st.LimitReportsDuplicate != 1 {
		t.Fatalf("stats %+v", st)
	}

	// Own reports: empty or too large are dropped and counted.
	c.RecordLimits(nil)
	c.RecordLimits(make([]byte, MaxLimitsBytes+1))
	if st := c.Stats(); st.LimitReportsDropped != 2 || st.LimitReportsSent != 0 {
		t.Fatalf("stats %+v", st)
	}
}
