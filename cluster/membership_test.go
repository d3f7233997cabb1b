package cluster

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"net"
	"reflect"
	"sync/atomic"
	"testing"
	"time"

	"github.com/hashicorp/memberlist"

	"github.com/keymesh/keymesh/internal/netcut"
	"github.com/keymesh/keymesh/internal/testutil"
)

// startCuttable starts a node on a cuttable transport.
func startCuttable(t *testing.T, name string, join ...string) (*node, *netcut.Transport) {
	t.Helper()
	ct, err := netcut.New()
	if err != nil {
		t.Fatal(err)
	}
	n := startWith(t, name, [][]byte{testKey}, join, func(c *Config) {
		c.Transport, c.BindAddr = ct, ct.Addr()
	})
	return n, ct
}

func peerNames(n *node) []string {
	var out []string
	for _, p := range n.c.Peers() {
		out = append(out, p.Name)
	}
	return out
}

func waitPeers(t *testing.T, d time.Duration, want int, nodes ...*node) {
	t.Helper()
	testutil.CheckFor(t, d, 0, func() error {
		for _, n := range nodes {
			if got := len(n.c.Peers()); got != want {
				return fmt.Errorf("%s sees peers %v, want %d", n.c.Name(), peerNames(n), want)
			}
		}
		return nil
	})
}

// A node cut off long enough that both sides declare each other dead (and
// memberlist stops gossiping to the dead) finds its peers again once the
// link heals, and catches up on what it missed.
func TestPartitionRejoinConverges(t *testing.T) {
	a, _ := startCuttable(t, "a")
	b, _ := startCuttable(t, "b", a.c.Addr())
	c, cut := startCuttable(t, "c", a.c.Addr())
	waitPeers(t, 10*time.Second, 2, a, b, c)
	for rev := uint64(1); rev <= 5; rev++ {
		a.fromStream(rev, []byte(fmt.Sprintf("e%d", rev)))
	}
	testutil.CheckFor(t, 10*time.Second, 0, func() error {
		if got := c.appliedRev(); got != 5 {
			return fmt.Errorf("c applied %d of 5", got)
		}
		return nil
	})

	cut.Cut()
	waitPeers(t, 20*time.Second, 1, a, b)
	waitPeers(t, 20*time.Second, 0, c)
	for rev := uint64(6); rev <= 30; rev++ { // while c is away
		b.fromStream(rev, []byte(fmt.Sprintf("e%d", rev)))
	}
	// Past memberlist's own gossip-to-the-dead window, only a rejoin heals.
	deadline := time.Now().Add(a.c.cfg.Memberlist.GossipToTheDeadTime)
	testutil.CheckFor(t, 20*time.Second, 0, func() error {
		if time.Now().Before(deadline) {
			return errors.New("partition not old enough yet")
		}
		return nil
	})
	if c.appliedRev() != 5 {
		t.Fatalf("c applied %d during the partition", c.appliedRev())
	}

	cut.Heal()
	waitPeers(t, 20*time.Second, 2, a, b, c)
	testutil.CheckFor(t, 20*time.Second, 0, func() error {
		if got := c.appliedRev(); got != 30 {
			return fmt.Errorf("c applied %d of 30 after rejoining", got)
		}
		return nil
	})
	var rejoins uint64
	for _, n := range []*node{a, b, c} {
		rejoins += n.c.Stats().Rejoins
	}
	if st := c.c.Stats(); rejoins == 0 || st.PeersFailed == 0 {
		t.Fatalf("%d rejoins; c's stats: %+v", rejoins, st)
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.dups != 0 {
		t.Fatalf("c had %d duplicate deliveries", c.dups)
	}
}

// A peer advertising a revision it never delivers does not stall catch-up:
// unanswered requests count against it and the honest peer is asked.
func TestCatchUpRotatesPastSilentPeer(t *testing.T) {
	a := start(t, "a", testKey)
	for rev := uint64(1); rev <= 40; rev++ {
		a.fromStream(rev, []byte(fmt.Sprintf("e%d", rev)))
	}
	a.c.queue.Reset()
	// The rogue claims to be a billion revisions ahead and has no log.
	startWith(t, "rogue", [][]byte{testKey}, []string{a.c.Addr()}, func(c *Config) {
		c.Applied = func() uint64 { return 1_000_000_000 }
		c.Deliver = nil
	})
	late := startWith(t, "late", [][]byte{testKey}, []string{a.c.Addr()}, func(c *Config) { c.CatchUpPeers = 1 })
	testutil.CheckFor(t, 20*time.Second, 0, func() error {
		if got := late.appliedRev(); got != 40 {
			return fmt.Errorf("late applied %d of 40 (stats %+v)", got, late.c.Stats())
		}
		return nil
	})
	testutil.CheckFor(t, 20*time.Second, 0, func() error {
		if st := late.c.Stats(); st.CatchUpFailures == 0 {
			return fmt.Errorf("the silent peer was never held to account: %+v", st)
		}
		return nil
	})
}

// Keys rotate node by node: first every node accepts the new key, then
// sends with it, then drops the old one. At each step the ring holds.
func TestKeyringRotation(t *testing.T) {
	k1, k2 := bytes.Repeat([]byte{1}, 32), bytes.Repeat([]byte{2}, 32)
	a := startWith(t, "a", [][]byte{k1}, nil, nil)
	b := startWith(t, "b", [][]byte{k1, k2}, []string{a.c.Addr()}, nil) // sends k1, accepts k2
	waitPeers(t, 10*time.Second, 1, a, b)

	// a restarts sending with k2, still accepting k1: b reads it, a reads b.
	_ = a.c.Leave(time.Second)
	a2 := startWith(t, "a2", [][]byte{k2, k1}, []string{b.c.Addr()}, nil)
	waitPeers(t, 10*time.Second, 1, a2, b)
	a2.fromStream(1, []byte("e1"))
	testutil.CheckFor(t, 10*time.Second, 0, func() error {
		if b.appliedRev() != 1 {
			return errors.New("b did not get a2's event")
		}
		return nil
	})

	// k1 dropped: b restarts with k2 only and still talks to a2.
	_ = b.c.Leave(time.Second)
	b2 := startWith(t, "b2", [][]byte{k2}, []string{a2.c.Addr()}, nil)
	waitPeers(t, 10*time.Second, 1, a2, b2)
	a2.fromStream(2, []byte("e2"))
	testutil.CheckFor(t, 10*time.Second, 0, func() error {
		if b2.appliedRev() != 2 {
			return fmt.Errorf("b2 applied %d of 2", b2.appliedRev())
		}
		return nil
	})

	// Now that nobody sends with k1, a node holding only k1 hears nobody.
	old := startWith(t, "old", [][]byte{k1}, []string{a2.c.Addr()}, func(c *Config) { c.StartJoinTimeout = -1 })
	testutil.CheckFor(t, 10*time.Second, 0, func() error {
		if old.c.joinAttempts.Load() < 2 {
			return errors.New("not tried twice yet")
		}
		return nil
	})
	if n := old.c.Stats().Members; n != 1 {
		t.Fatalf("a node with only the old key joined a ring sending with the new one: %d members", n)
	}
}

// --join takes DNS names.
func TestJoinByDNSName(t *testing.T) {
	a := start(t, "a", testKey)
	_, port, _ := net.SplitHostPort(a.c.Addr())
	b := start(t, "b", testKey, "localhost:"+port)
	waitPeers(t, 10*time.Second, 1, a, b)
}

// A node whose join target is not up yet keeps trying, and joins once it is.
func TestJoinRetriesUntilTargetStarts(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := ln.Addr().String()
	ln.Close()
	b := startWith(t, "b", [][]byte{testKey}, []string{addr}, nil)
	testutil.CheckFor(t, 10*time.Second, 0, func() error {
		if b.c.joinAttempts.Load() < 3 {
			return errors.New("not retried yet")
		}
		return nil
	})
	if b.c.joined.Load() {
		t.Fatal("joined a node that does not exist")
	}
	a := startWith(t, "a", [][]byte{testKey}, nil, func(c *Config) { c.BindAddr = addr })
	waitPeers(t, 10*time.Second, 1, a, b)
	if !b.c.joined.Load() {
		t.Fatal("members, but not marked joined")
	}
}

// A graceful leave is seen as one at once (not as a failure found by
// probes later), and nobody tries to join the node that left.
func TestLeaveIsSeenAsLeave(t *testing.T) {
	a := start(t, "a", testKey)
	b := start(t, "b", testKey, a.c.Addr())
	c := start(t, "c", testKey, a.c.Addr())
	waitPeers(t, 10*time.Second, 2, a, b, c)
	if err := b.c.Leave(2 * time.Second); err != nil {
		t.Fatal(err)
	}
	waitPeers(t, 10*time.Second, 1, a, c)
	for _, n := range []*node{a, c} {
		st := n.c.Stats()
		if st.PeersLeft != 1 || st.PeersFailed != 0 {
			t.Fatalf("%s saw b go as left %d, failed %d", n.c.Name(), st.PeersLeft, st.PeersFailed)
		}
		if targets, _ := n.c.joinTargets(false); len(targets) != 0 {
			t.Fatalf("%s would join %v again", n.c.Name(), targets)
		}
	}
}

// Two nodes cannot share a name: the second refuses to start, the ring
// keeps the first, and the conflict is counted.
func TestDuplicateNameRefused(t *testing.T) {
	a := start(t, "a", testKey)
	dup := start(t, "dup", testKey, a.c.Addr())
	waitPeers(t, 10*time.Second, 1, a, dup)
	_, err := tryStart(t, "dup", [][]byte{testKey}, []string{a.c.Addr()}, nil)
	if !errors.Is(err, ErrNameConflict) {
		t.Fatalf("a second node named dup started: %v", err)
	}
	testutil.CheckFor(t, 10*time.Second, 0, func() error {
		if a.c.Stats().Conflicts == 0 {
			return errors.New("conflict not counted")
		}
		return nil
	})
	if p := a.c.Peers(); len(p) != 1 || p[0].Addr != dup.c.Addr() {
		t.Fatalf("a's peers: %+v", p)
	}
}

// What a node says about itself (node metadata) reaches its peers, and
// changes when it does.
func TestInfoTravelsInMeta(t *testing.T) {
	var nats atomic.Bool
	nats.Store(true)
	a := startWith(t, "a", [][]byte{testKey}, nil, func(c *Config) {
		c.Info = func() Info {
			return Info{ID: "edge-a", Site: "eu", Address: "10.0.0.1:8080", NATS: nats.Load()}
		}
	})
	b := start(t, "b", testKey, a.c.Addr())
	want := Info{ID: "edge-a", Site: "eu", Address: "10.0.0.1:8080", NATS: true}
	testutil.CheckFor(t, 10*time.Second, 0, func() error {
		if p := b.c.Peers(); len(p) != 1 || !reflect.DeepEqual(p[0].Info, want) {
			return fmt.Errorf("b sees %+v", p)
		}
		return nil
	})
	nats.Store(false)
	want.NATS = false
	testutil.CheckFor(t, 10*time.Second, 0, func() error {
		if p := b.c.Peers(); len(p) != 1 || !reflect.DeepEqual(p[0].Info, want) {
			return fmt.Errorf("b sees %+v", p)
		}
		return nil
	})
	// Over the metadata limit, the strings are left out rather than cut.
	rev, in := decodeMeta(encodeMeta(7, Info{ID: string(bytes.Repeat([]byte("x"), 300)), NATS: true}))
	if rev != 7 || !reflect.DeepEqual(in, Info{NATS: true}) {
		t.Fatalf("oversized info: %d %+v", rev, in)
	}
	full := Info{ID: string(bytes.Repeat([]byte("i"), maxInfoID)),
		Site: string(bytes.Repeat([]byte("s"), maxInfoSite)), Address: string(bytes.Repeat([]byte("a"), maxInfoAddr)),
		SignedAt: 1 << 50, Signature: bytes.Repeat([]byte{9}, metaSigSize)}
	if m := encodeMeta(1<<60, full); len(m) > memberlist.MetaMaxSize {
		t.Fatalf("metadata of %d bytes", len(m))
	}
}

// A signed presence travels whole in node metadata, with the strings it
// covers; without them (over their limits) it is not sent either, and
// version 1 metadata still reads, unsigned.
func TestMetaSignedPresence(t *testing.T) {
	sig := bytes.Repeat([]byte{7}, metaSigSize)
	in := Info{ID: "edge-a", Site: "eu", Address: "10.0.0.1:8080", NATS: false, SignedAt: 1700000000123, Signature: sig}
	rev, got := decodeMeta(encodeMeta(42, in))
	if rev != 42 || !reflect.DeepEqual(got, in) {
		t.Fatalf("signed presence: %d %+v", rev, got)
	}
	long := in
	long.Site = string(bytes.Repeat([]byte("s"), maxInfoSite+1))
	if _, got := decodeMeta(encodeMeta(42, long)); !reflect.DeepEqual(got, Info{}) {
		t.Fatalf("oversized info kept %+v", got)
	}
	// Truncated signature: the strings read, the presence does not.
	m := encodeMeta(42, in)
	if _, got := decodeMeta(m[:len(m)-1]); got.Signature != nil || got.SignedAt != 0 || got.ID != "edge-a" {
		t.Fatalf("truncated presence read as %+v", got)
	}
	// What version 1 sent.
	v1 := []byte{0, 0, 0, 0, 0, 0, 0, 5, 1, metaFlagNATS, 1, 'x', 0, 0}
	if rev, got := decodeMeta(v1); rev != 5 || !reflect.DeepEqual(got, Info{ID: "x", NATS: true}) {
		t.Fatalf("version 1 metadata: %d %+v", rev, got)
	}
	// A node with Sign set advertises its presence for the revision it
	// advertises.
	var applied atomic.Uint64
	applied.Store(3)
	a := startWith(t, "a", [][]byte{testKey}, nil, func(c *Config) {
		c.Applied = applied.Load
		c.Info = func() Info { return Info{ID: "edge-a"} }
		c.Sign = func(rev uint64) (int64, []byte) {
			return int64(rev) * 1000, bytes.Repeat([]byte{byte(rev)}, metaSigSize)
		}
	})
	b := start(t, "b", testKey, a.c.Addr())
	testutil.CheckFor(t, 10*time.Second, 0, func() error {
		p := b.c.Peers()
		if len(p) != 1 || p[0].Revision != 3 || p[0].SignedAt != 3000 || !bytes.Equal(p[0].Signature, bytes.Repeat([]byte{3}, metaSigSize)) {
			return fmt.Errorf("b sees %+v", p)
		}
		return nil
	})
}

// Heartbeats travel as far as consumers pass them on.
func TestHeartbeatsTravel(t *testing.T) {
	got := make(chan []byte, 16)
	var b *node
	a := start(t, "a", testKey)
	b = startWith(t, "b", [][]byte{testKey}, []string{a.c.Addr()}, func(c *Config) {
		c.DeliverHeartbeat = func(w []byte) { b.c.RecordHeartbeat(w) } // "verified": pass on
	})
	startWith(t, "c", [][]byte{testKey}, []string{b.c.Addr()}, func(c *Config) {
		c.DeliverHeartbeat = func(w []byte) { got <- append([]byte(nil), w...) }
	})
	waitPeers(t, 10*time.Second, 2, a, b)
	a.c.RecordHeartbeat([]byte("hb-1"))
	select {
	case w := <-got:
		if string(w) != "hb-1" {
			t.Fatalf("got %q", w)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("no heartbeat arrived")
	}
}

// Ask returns the first answer accept approves; refused answers are
// counted; when every peer holds none it says so without waiting out ctx.
func TestAsk(t *testing.T) {
	answer := func(rec string) func(*Config) {
		return func(c *Config) {
			c.Answer = func(key []byte) []byte {
				if string(key) == "k1" {
					return []byte(rec)
				}
				return nil
			}
		}
	}
	a := startWith(t, "a", [][]byte{testKey}, nil, answer("genuine"))
	forger := startWith(t, "forger", [][]byte{testKey}, []string{a.c.Addr()}, answer("forged"))
	q := start(t, "q", testKey, a.c.Addr())
	waitPeers(t, 10*time.Second, 2, a, forger, q)
	accept := func(w []byte) bool { return string(w) == "genuine" }
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	w, err := q.c.Ask(ctx, []byte("k1"), accept)
	if err != nil || string(w) != "genuine" {
		t.Fatalf("ask: %q %v", w, err)
	}
	// Refusing everything: both answers are counted, and the Ask ends with
	// its context.
	short, cancelShort := context.WithTimeout(context.Background(), 2*time.Second)
	defer cancelShort()
	before := q.c.Stats().AnswersRefused
	if _, err := q.c.Ask(short, []byte("k1"), func([]byte) bool { return false }); !errors.Is(err, ErrNoAnswer) {
		t.Fatalf("every answer refused: %v", err)
	}
	if n := q.c.Stats().AnswersRefused - before; n != 2 {
		t.Fatalf("%d answers refused, want 2", n)
	}
	if _, err := q.c.Ask(ctx, []byte("k2"), accept); !errors.Is(err, ErrNoAnswer) || ctx.Err() != nil {
		t.Fatalf("nobody holds k2: %v (ctx %v)", err, ctx.Err())
	}
}

// Behind a peer, a node first fetches from its own source (the edge:
// JetStream); peers are asked only when that fails.
func TestCatchUpFetchesFirst(t *testing.T) {
	a := start(t, "a", testKey)
	for rev := uint64(1); rev <= 10; rev++ {
		a.fromStream(rev, []byte(fmt.Sprintf("e%d", rev)))
	}
	a.c.queue.Reset() // as if those broadcasts went out before the others joined
	late := func(name string, fetchErr error) *node {
		var n *node
		n = startWith(t, name, [][]byte{testKey}, []string{a.c.Addr()}, func(c *Config) {
			c.Fetch = func(from, to uint64) error {
				if fetchErr != nil {
					return fetchErr
				}
				for rev := from; rev <= to; rev++ {
					n.deliver(rev, []byte(fmt.Sprintf("e%d", rev)))
				}
				return nil
			}
		})
		testutil.CheckFor(t, 10*time.Second, 0, func() error {
			if got := n.appliedRev(); got != 10 {
				return fmt.Errorf("%s applied %d of 10", name, got)
			}
			return nil
		})
		return n
	}
	f := late("fetcher", nil)
	if st := f.c.Stats(); st.Fetches == 0 || st.CatchUpsAsked != 0 {
		t.Fatalf("fetched %d times, asked peers %d times", st.Fetches, st.CatchUpsAsked)
	}
	_ = f.c.Shutdown() // it would gossip what it fetched
	if st := late("asker", errors.New("NATS unreachable")).c.Stats(); st.Fetches == 0 || st.CatchUpsAsked == 0 {
		t.Fatalf("fetching failed: fetched %d times, asked peers %d times", st.Fetches, st.CatchUpsAsked)
	}
}
