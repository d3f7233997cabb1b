package cluster

import (
	"bytes"
	"errors"
	"fmt"
	"log/slog"
	"sync"
	"testing"
	"time"

	"github.com/keymesh/keymesh/internal/testutil"
)

// node is a test node whose consumer "verifies" by accepting everything and
// applies in order, like the edge's Feed does.
type node struct {
	c       *Cluster
	mu      sync.Mutex
	got     map[uint64][]byte
	applied uint64
	dups    int
}

func (n *node) deliver(rev uint64, wire []byte) {
	n.mu.Lock()
	if _, ok := n.got[rev]; ok {
		n.dups++
	}
	n.got[rev] = append([]byte(nil), wire...)
	for {
		if _, ok := n.got[n.applied+1]; !ok {
			break
		}
		n.applied++
	}
	c := n.c
	n.mu.Unlock()
	if c != nil {
		c.Record(rev, wire) // verified: pass it on
	}
}

func (n *node) appliedRev() uint64 {
	n.mu.Lock()
	defer n.mu.Unlock()
	return n.applied
}

var testKey = bytes.Repeat([]byte{7}, 32)

func start(t *testing.T, name string, key []byte, join ...string) *node {
	t.Helper()
	var keys [][]byte
	if key != nil {
		keys = [][]byte{key}
	}
	return startWith(t, name, keys, join, nil)
}

// startWith starts a test node with keys, joining join; configure, if set,
// adjusts the Config last.
func startWith(t *testing.T, name string, keys [][]byte, join []string, configure func(*Config)) *node {
	t.Helper()
	n, err := tryStart(t, name, keys, join, configure)
	if err != nil {
		t.Fatal(err)
	}
	return n
}

func tryStart(t *testing.T, name string, keys [][]byte, join []string, configure func(*Config)) (*node, error) {
	n := &node{got: map[uint64][]byte{}}
	cfg := LocalConfig()
	cfg.Name, cfg.BindAddr, cfg.Join, cfg.Keys = name, "127.0.0.1:0", join, keys
	cfg.Deliver, cfg.Applied = n.deliver, n.appliedRev
	cfg.Logger = slog.New(slog.DiscardHandler)
	if configure != nil {
		configure(&cfg)
	}
	c, err := Create(cfg)
	if err != nil {
		return nil, err
	}
	n.mu.Lock()
	n.c = c
	n.mu.Unlock()
	t.Cleanup(func() { _ = c.Shutdown() })
	return n, nil
}

// origin stands in for events arriving at one node from NATS.
func (n *node) fromStream(rev uint64, wire []byte) {
	n.deliver(rev, wire)
}

func TestEventsReachEveryNodeOnce(t *testing.T) {
	first := start(t, "n0", testKey)
	nodes := []*node{first}
	for i := 1; i < 8; i++ {
		nodes = append(nodes, start(t, fmt.Sprintf("n%d", i), testKey, first.c.Addr()))
	}
	testutil.CheckFor(t, 10*time.Second, 0, func() error {
		for _, n := range nodes {
			if m := n.c.Stats().Members; m != len(nodes) {
				return fmt.Errorf("%s sees %d members", n.c.Name(), m)
			}
		}
		return nil
	})
	big := bytes.Repeat([]byte("x"), 3000) // over one gossip packet: goes by TCP
	for rev := uint64(1); rev <= 20; rev++ {
		wire := []byte(fmt.Sprintf("event-%d", rev))
		if rev == 10 {
			wire = big
		}
		nodes[rev%3].fromStream(rev, wire) // enters at different nodes
	}
	testutil.CheckFor(t, 10*time.Second, 0, func() error {
		for _, n := range nodes {
			if a := n.appliedRev(); a != 20 {
				return fmt.Errorf("%s applied %d of 20", n.c.Name(), a)
			}
		}
		return nil
	})
	for _, n := range nodes {
		n.mu.Lock()
		if n.dups != 0 || !bytes.Equal(n.got[10], big) {
			t.Errorf("%s: %d duplicate deliveries, large event intact: %v", n.c.Name(), n.dups, bytes.Equal(n.got[10], big))
		}
		n.mu.Unlock()
	}
}

// A node that missed the broadcasts catches up from a peer's log.
func TestCatchUpFromPeer(t *testing.T) {
	a := start(t, "a", testKey)
	for rev := uint64(1); rev <= 50; rev++ {
		a.fromStream(rev, []byte(fmt.Sprintf("e%d", rev)))
	}
	a.c.queue.Reset() // as if those broadcasts went out while "late" was away
	late := start(t, "late", testKey, a.c.Addr())
	testutil.CheckFor(t, 10*time.Second, 0, func() error {
		if got := late.appliedRev(); got != 50 {
			return fmt.Errorf("late node applied %d of 50", got)
		}
		return nil
	})
	testutil.CheckFor(t, 10*time.Second, 0, func() error { // counted once the answer is sent
		if a.c.Stats().CatchUpsAnswered == 0 {
			return errors.New("caught up without asking a peer")
		}
		return nil
	})
	if p := late.c.Peers(); len(p) != 1 || p[0].Name != "a" {
		t.Fatalf("peers: %+v", p)
	}
	testutil.CheckFor(t, 10*time.Second, 0, func() error {
		if p := late.c.Peers(); p[0].Revision != 50 {
			return fmt.Errorf("peer revision %d", p[0].Revision)
		}
		return nil
	})
}

func TestWrongKeyCannotJoin(t *testing.T) {
	a := start(t, "a", testKey)
	other := bytes.Repeat([]byte{9}, 32)
	b := start(t, "b", other, a.c.Addr())
	testutil.CheckFor(t, 10*time.Second, 0, func() error {
		if b.c.joinAttempts.Load() < 2 {
			return errors.New("join not tried twice yet")
		}
		return nil
	})
	if b.c.joined.Load() || a.c.Stats().Members != 1 || b.c.Stats().Members != 1 {
		t.Fatalf("a node with the wrong key joined: %d/%d members", a.c.Stats().Members, b.c.Stats().Members)
	}
}

func TestConfigRefusals(t *testing.T) {
	for name, cfg := range map[string]Config{
		"no key":   {Name: "x", BindAddr: "127.0.0.1:0"},
		"bad key":  {Name: "x", BindAddr: "127.0.0.1:0", Keys: [][]byte{[]byte("short")}},
		"no name":  {BindAddr: "127.0.0.1:0", Insecure: true},
		"bad bind": {Name: "x", BindAddr: "nowhere", Insecure: true},
	} {
		if _, err := Create(cfg); err == nil {
			t.Errorf("%s: accepted", name)
		}
	}
	if _, err := ParseKey("c2hvcnQ="); !errors.Is(err, ErrBadKey) {
		t.Errorf("short key: %v", err)
	}
}
