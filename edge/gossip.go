package edge

import (
	"context"
	"errors"
	"fmt"
	"hash/fnv"
	"os"
	"sync/atomic"
	"time"

	"github.com/nats-io/nats.go"

	"github.com/keymesh/keymesh/apikey"
	"github.com/keymesh/keymesh/cache"
	"github.com/keymesh/keymesh/cluster"
	"github.com/keymesh/keymesh/edge/feed"
	"github.com/keymesh/keymesh/event"
)

// GossipConfig joins the edge to its peers (package cluster). Gossip is off
// when Keys is empty and Insecure is false.
type GossipConfig struct {
	// Listen is the memberlist bind address. Default 127.0.0.1:7946.
	Listen string
	// Join lists peers to join (host:port, DNS names allowed).
	Join []string
	// Keys encrypt gossip: the first is used to send, all are accepted.
	Keys [][]byte
	// Insecure allows plaintext gossip (tests and labs only).
	Insecure bool
	// Name is this edge's node name. Default hostname-listen-address.
	Name string
	// Local selects short intervals for many edges on one machine (tests);
	// LAN, LAN timings for the edges of one site. Default: WAN timings.
	Local, LAN bool
	// Configure, if set, adjusts the cluster configuration last (tests use
	// it to put a transport that can cut links under memberlist).
	Configure func(*cluster.Config)
}

func (g GossipConfig) enabled() bool { return len(g.Keys) > 0 || g.Insecure }

// errNATSDown is why a miss went to the peers without asking the origin.
var errNATSDown = errors.New("not connected to NATS")

// gossipHook connects the cache to the cluster: records and heartbeats the
// feed verifies go to the peers, and the View's misses may be answered by
// them. The View is built first and set in v before anything can ask it
// (its lookup runs for requests, served only after New returns). The
// cluster is created from the View and the Feed, once the Feed has
// started: until it exists, c is nil and nothing is passed on. c stays
// atomic because the Feed's goroutines, and the cluster's own (a peer's
// record, offered to the Feed, is passed on), may run before Create has
// returned it.
type gossipHook struct {
	c atomic.Pointer[cluster.Cluster]
	v *cache.View

	// hbEvery is the least time between two heartbeats passed on to peers
	// (a quarter of --max-staleness: a heartbeat every interval is more
	// than a View needs); hbLast, when the last one was.
	hbEvery time.Duration
	hbLast  atomic.Int64

	peerLookups, peerAnswers, hbRejected atomic.Uint64
}

func (h *gossipHook) record(rev uint64, wire []byte) {
	if c := h.c.Load(); c != nil {
		c.Record(rev, wire)
	}
}

// heartbeat passes a new origin heartbeat from NATS on to the peers.
func (h *gossipHook) heartbeat(wire []byte) {
	if c := h.c.Load(); c != nil && h.due() {
		c.RecordHeartbeat(wire)
	}
}

// due reports whether a heartbeat should be passed on now, and if so
// notes that one was.
func (h *gossipHook) due() bool {
	now := time.Now().UnixNano()
	last := h.hbLast.Load()
	return now-last >= int64(h.hbEvery) && h.hbLast.CompareAndSwap(last, now)
}

// peerHeartbeat takes an origin heartbeat a peer relayed: verified by the
// View, and passed on only if it was new.
func (h *gossipHook) peerHeartbeat(wire []byte) {
	c := h.c.Load()
	if c == nil {
		return
	}
	fresh, err := h.v.PeerHeartbeat(wire)
	if err != nil {
		h.hbRejected.Add(1)
		return
	}
	if fresh && h.due() {
		c.RecordHeartbeat(wire)
	}
}

// lookup returns the View's miss path: the origin over NATS and, when that
// fails (NATS down, no origin answering) and gossip is on, the peers, which
// answer with the sealed record they hold. A peer's answer is accepted only
// if it verifies as an origin lookup reply for this key; the View then
// applies the same revision checks as to any lookup, so no peer can undo a
// revocation this edge has applied, nor vouch for more than the origin
// signed: two equally stale edges cannot keep each other current.
func (h *gossipHook) lookup(nc *nats.Conn) cache.Lookup {
	origin := feed.NATSLookup(nc)
	return func(ctx context.Context, k apikey.Hash) ([]byte, error) {
		c, v := h.c.Load(), h.v
		if c == nil {
			// No peers to ask: while NATS is down, a lookup could only
			// wait out its timeout (the request sits in the reconnect
			// buffer), which every request for a stale key would pay.
			if !nc.IsConnected() {
				return nil, errNATSDown
			}
			return origin(ctx, k)
		}
		originErr := errNATSDown
		if nc.IsConnected() {
			octx := ctx
			if dl, ok := ctx.Deadline(); ok { // leave the peers a quarter
				var cancel context.CancelFunc
				octx, cancel = context.WithDeadline(ctx, time.Now().Add(time.Until(dl)*3/4))
				defer cancel()
			}
			wire, err := origin(octx, k)
			if err == nil {
				return wire, nil
			}
			originErr = err
		}
		h.peerLookups.Add(1)
		// A peer's record is only as fresh as the origin's signature on it:
		// while this edge cannot prove it is current, an old one is passed
		// over for a fresher peer's (closed mode; see cache.View.Fresh).
		wire, err := c.Ask(ctx, k[:], func(w []byte) bool {
			rec, err := v.CheckLookupReply(k, w)
			return err == nil && rec.Kind == event.KindKey && v.Fresh(rec)
		})
		if err != nil {
			return nil, fmt.Errorf("origin: %v; gossip peers: %w", originErr, err)
		}
		h.peerAnswers.Add(1)
		return wire, nil
	}
}

// startGossip joins the cluster: records and heartbeats from peers go to
// the feed and the View, which verify them; what they verify goes back to
// the peers.
func (n *Node) startGossip() error {
	g := n.cfg.Gossip
	if !g.enabled() {
		return nil
	}
	cfg := cluster.DefaultConfig()
	switch {
	case g.Local:
		cfg = cluster.LocalConfig()
	case g.LAN:
		cfg = cluster.LANConfig()
	}
	cfg.Name = g.Name
	if cfg.Name == "" {
		host, _ := os.Hostname()
		cfg.Name = host + "-" + n.cfg.Listen
	}
	cfg.BindAddr = g.Listen
	cfg.Join, cfg.Keys, cfg.Insecure = g.Join, g.Keys, g.Insecure
	view, feed := n.view, n.feed
	cfg.Deliver = feed.Offer
	cfg.DeliverHeartbeat = n.gossipHook.peerHeartbeat
	cfg.DeliverLimits = n.limits.fromGossip
	cfg.Applied = view.AppliedRevision
	cfg.Info = n.gossipInfo
	cfg.Sign = func(rev uint64) (int64, []byte) { return n.pres.sign(rev, n.nc.IsConnected()) }
	cfg.Fetch = feed.Fetch
	cfg.Answer = view.SealedRecord
	cfg.Logger = n.log
	if g.Configure != nil {
		g.Configure(&cfg)
	}
	c, err := cluster.Create(cfg)
	if err != nil {
		return err
	}
	n.gossip = c
	n.gossipHook.c.Store(c)
	n.watchGossip()
	return nil
}

// gossipInfo is what peers learn about this edge: enough to publish its
// heartbeat for it when its NATS link is down.
func (n *Node) gossipInfo() cluster.Info {
	addr := n.Addr()
	if addr == "" {
		addr = n.cfg.Listen
	}
	return cluster.Info{ID: n.id, Site: n.cfg.Site, Address: addr, NATS: n.nc.IsConnected()}
}

// limitGossip is where limit reports go to the peers (nil without gossip).
func (n *Node) limitGossip() limitGossip {
	if c := n.gossipHook.c.Load(); c != nil {
		return c
	}
	return nil
}

// gossipPeerIDs returns the edge ids of the live gossip peers (a peer whose
// id did not fit its metadata counts by its node name).
func (n *Node) gossipPeerIDs() []string {
	if n.gossip == nil {
		return nil
	}
	var ids []string
	for _, p := range n.gossip.Peers() {
		id := p.ID
		if id == "" {
			id = "node:" + p.Name
		}
		ids = append(ids, id)
	}
	return ids
}

// someoneWithoutNATS reports whether this edge or a gossip peer has no
// NATS link: then only gossip reaches it.
func (n *Node) someoneWithoutNATS() bool {
	if !n.nc.IsConnected() {
		return true
	}
	if n.gossip == nil {
		return false
	}
	for _, p := range n.gossip.Peers() {
		if !p.NATS {
			return true
		}
	}
	return false
}

func (n *Node) stopGossip() error {
	if n.gossip == nil {
		return nil
	}
	return n.gossip.Leave(2 * time.Second)
}

// Peers lists the gossip peers with their applied revisions (none without
// gossip).
func (n *Node) Peers() []cluster.Peer {
	if n.gossip == nil {
		return nil
	}
	return n.gossip.Peers()
}

// GossipAddr is the address this edge gossips on ("" without gossip).
func (n *Node) GossipAddr() string {
	if n.gossip == nil {
		return ""
	}
	return n.gossip.Addr()
}

// GossipStats reports records and heartbeats peers offered that failed
// verification, and verified records dropped while waiting for an earlier
// revision.
func (n *Node) GossipStats() (rejected, dropped uint64) {
	rejected, dropped = n.feed.GossipStats()
	return rejected + n.gossipHook.hbRejected.Load(), dropped
}

// peersVersion changes whenever what the gossip peers advertise does (0
// without gossip).
func (n *Node) peersVersion() uint64 {
	if n.gossip == nil {
		return 0
	}
	return n.gossip.PeersVersion()
}

// relayed returns the peers whose heartbeats this edge publishes: peers
// without NATS for which it is the chosen relay among the members that
// have NATS (rendezvous hashing: one relay per cut-off edge, spread out).
// None while this edge has no NATS itself.
func (n *Node) relayed() []cluster.Peer {
	if n.gossip == nil || !n.nc.IsConnected() {
		return nil
	}
	peers := n.gossip.Peers()
	self := n.gossip.Name()
	relays := []string{self}
	for _, p := range peers {
		if p.NATS {
			relays = append(relays, p.Name)
		}
	}
	var out []cluster.Peer
	for _, p := range peers {
		if !p.NATS && p.ID != "" && chooseRelay(p.Name, relays) == self {
			out = append(out, p)
		}
	}
	return out
}

func chooseRelay(peer string, relays []string) string {
	var best string
	var bestScore uint64
	for _, r := range relays {
		h := fnv.New64a()
		h.Write([]byte(r))
		h.Write([]byte{0})
		h.Write([]byte(peer))
		if score := h.Sum64(); best == "" || score > bestScore {
			best, bestScore = r, score
		}
	}
	return best
}
