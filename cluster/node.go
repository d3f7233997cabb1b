package cluster

import (
	"encoding/binary"
	"errors"
	"fmt"
	"log/slog"
	"sort"
	"sync"
	"sync/atomic"
	"time"

	"github.com/hashicorp/memberlist"
)

// Message kinds on the wire, the first byte of every user message.
const (
	msgEvent   = 'E' // rev(8) sealed-record
	msgRequest = 'R' // from-rev(8) requester-name
	msgBatch   = 'B' // { rev(8) len(4) sealed-record }...
)

// maxGossipBytes is the largest event sent by UDP gossip; memberlist drops
// larger broadcasts silently, so those go to each peer over TCP instead.
const maxGossipBytes = 1200

// maxBatchBytes bounds one catch-up answer.
const maxBatchBytes = 512 << 10

// Peer is another node as this one sees it.
type Peer struct {
	Name     string `json:"name"`
	Addr     string `json:"addr"`
	Revision uint64 `json:"applied_revision"`
}

// Stats are the cluster's counters.
type Stats struct {
	Members, Queued                   int
	Broadcast, SentTCP, Received      uint64
	DroppedInbox, DroppedQueue        uint64
	CatchUpRequests, CatchUpsAnswered uint64
}

// Cluster is this node's membership in the gossip ring. Its methods are
// safe for concurrent use.
type Cluster struct {
	cfg   Config
	log   *slog.Logger
	ml    *memberlist.Memberlist
	queue *memberlist.TransmitLimitedQueue
	inbox chan []byte

	mu     sync.Mutex
	events map[uint64][]byte // recent events by revision, at most LogSize
	low    uint64            // lowest revision still in events

	peersMu sync.Mutex
	peers   map[string]memberlist.Node // copies: memberlist mutates its own

	metaRev      atomic.Uint64 // the revision in our metadata
	joined       atomic.Bool
	joinAttempts atomic.Uint64
	stop         chan struct{}
	done         sync.WaitGroup
	shutOnce     sync.Once

	broadcast, sentTCP, received, droppedInbox, droppedQueue, requests, answered atomic.Uint64
}

// Create validates cfg, starts memberlist and the background loops, and
// begins joining cfg.Join.
func Create(cfg Config) (*Cluster, error) {
	mlc, err := cfg.fill()
	if err != nil {
		return nil, err
	}
	c := &Cluster{cfg: cfg, log: cfg.Logger, inbox: make(chan []byte, 4096),
		events: map[uint64][]byte{}, stop: make(chan struct{}), peers: map[string]memberlist.Node{}}
	c.queue = &memberlist.TransmitLimitedQueue{RetransmitMult: mlc.RetransmitMult, NumNodes: func() int {
		if c.ml == nil {
			return 1
		}
		return c.ml.NumMembers()
	}}
	mlc.Delegate = &delegate{c}
	mlc.Events = &events{c}
	if c.ml, err = memberlist.Create(mlc); err != nil {
		return nil, fmt.Errorf("starting gossip on %s: %w", cfg.BindAddr, err)
	}
	// Goroutines last.
	c.done.Add(3)
	go c.work()
	go c.syncLoop()
	go c.joinLoop()
	return c, nil
}

// Addr is the address the node gossips on.
func (c *Cluster) Addr() string { return c.ml.LocalNode().Address() }

// Name is this node's name.
func (c *Cluster) Name() string { return c.cfg.Name }

// Record offers an event this node has verified (from NATS or a peer) to
// the cluster: it joins the catch-up log and is gossiped on, once per
// revision.
func (c *Cluster) Record(rev uint64, wire []byte) {
	c.mu.Lock()
	if _, ok := c.events[rev]; ok || (rev < c.low && len(c.events) >= c.cfg.LogSize) {
		c.mu.Unlock()
		return
	}
	c.events[rev] = wire
	if c.low == 0 || rev < c.low {
		c.low = rev
	}
	for len(c.events) > c.cfg.LogSize {
		delete(c.events, c.low)
		c.low++
		for _, ok := c.events[c.low]; !ok && c.low < rev; _, ok = c.events[c.low] {
			c.low++
		}
	}
	c.mu.Unlock()

	msg := make([]byte, 9+len(wire))
	msg[0] = msgEvent
	binary.BigEndian.PutUint64(msg[1:], rev)
	copy(msg[9:], wire)
	c.broadcast.Add(1)
	if len(msg) <= maxGossipBytes {
		if c.queue.NumQueued() >= c.cfg.MaxQueued {
			c.droppedQueue.Add(1)
			c.queue.Prune(c.cfg.MaxQueued - 1)
		}
		c.queue.QueueBroadcast(&eventBroadcast{rev: rev, msg: msg})
		return
	}
	// Too big for a gossip packet: straight to every peer, reliably.
	for _, n := range c.peerNodes() {
		go func(n *memberlist.Node) {
			if err := c.ml.SendReliable(n, msg); err != nil {
				c.log.Debug("sending large event", "peer", n.Name, "err", err)
				return
			}
			c.sentTCP.Add(1)
		}(n)
	}
}

// known reports whether rev has been Recorded (and so needs no delivery).
func (c *Cluster) known(rev uint64) bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	_, ok := c.events[rev]
	return ok || (len(c.events) >= c.cfg.LogSize && rev < c.low)
}

// Peers lists the other live members with the revision each advertises.
func (c *Cluster) Peers() []Peer {
	var out []Peer
	for _, n := range c.peerNodes() {
		out = append(out, Peer{Name: n.Name, Addr: n.Address(), Revision: metaRevision(n.Meta)})
	}
	sort.Slice(out, func(i, j int) bool { return out[i].Name < out[j].Name })
	return out
}

// Stats returns a copy of the counters.
func (c *Cluster) Stats() Stats {
	return Stats{Members: c.ml.NumMembers(), Queued: c.queue.NumQueued(),
		Broadcast: c.broadcast.Load(), SentTCP: c.sentTCP.Load(), Received: c.received.Load(),
		DroppedInbox: c.droppedInbox.Load(), DroppedQueue: c.droppedQueue.Load(),
		CatchUpRequests: c.requests.Load(), CatchUpsAnswered: c.answered.Load()}
}

// Leave tells the cluster this node is going, then stops it.
func (c *Cluster) Leave(timeout time.Duration) error {
	err := c.ml.Leave(timeout)
	return errors.Join(err, c.Shutdown())
}

// Shutdown stops the node without saying goodbye. Safe to call twice.
func (c *Cluster) Shutdown() error {
	var err error
	c.shutOnce.Do(func() {
		close(c.stop)
		err = c.ml.Shutdown()
		c.done.Wait()
	})
	return err
}

// receive queues a message for the worker; NotifyMsg must never block.
func (c *Cluster) receive(buf []byte) {
	msg := append([]byte(nil), buf...) // memberlist reuses buf
	select {
	case c.inbox <- msg:
	default:
		c.droppedInbox.Add(1)
	}
}

func (c *Cluster) work() {
	defer c.done.Done()
	for {
		select {
		case <-c.stop:
			return
		case msg := <-c.inbox:
			c.handle(msg)
		}
	}
}

func (c *Cluster) handle(msg []byte) {
	if len(msg) < 9 {
		return
	}
	switch msg[0] {
	case msgEvent:
		c.deliver(binary.BigEndian.Uint64(msg[1:9]), msg[9:])
	case msgBatch:
		for b := msg[1:]; len(b) >= 12; {
			rev, n := binary.BigEndian.Uint64(b), int(binary.BigEndian.Uint32(b[8:]))
			if n > len(b)-12 {
				return
			}
			c.deliver(rev, b[12:12+n])
			b = b[12+n:]
		}
	case msgRequest:
		c.answer(binary.BigEndian.Uint64(msg[1:9]), string(msg[9:]))
	}
}

func (c *Cluster) deliver(rev uint64, wire []byte) {
	if c.known(rev) {
		return
	}
	c.received.Add(1)
	c.cfg.Deliver(rev, wire)
}

// answer sends the requester what this node's log holds from rev on.
func (c *Cluster) answer(from uint64, name string) {
	c.requests.Add(1)
	var to *memberlist.Node
	for _, n := range c.peerNodes() {
		if n.Name == name {
			to = n
		}
	}
	if to == nil {
		return
	}
	batch := []byte{msgBatch}
	c.mu.Lock()
	for rev := max(from, c.low); len(batch) < maxBatchBytes; rev++ {
		wire, ok := c.events[rev]
		if !ok {
			break
		}
		batch = binary.BigEndian.AppendUint64(batch, rev)
		batch = binary.BigEndian.AppendUint32(batch, uint32(len(wire)))
		batch = append(batch, wire...)
	}
	c.mu.Unlock()
	if len(batch) == 1 {
		return
	}
	if err := c.ml.SendReliable(to, batch); err != nil {
		c.log.Debug("answering catch-up", "peer", name, "err", err)
		return
	}
	c.answered.Add(1)
}

// syncLoop keeps our advertised revision current and, when a peer is
// ahead, asks the most advanced one for what we lack.
func (c *Cluster) syncLoop() {
	defer c.done.Done()
	t := time.NewTicker(c.cfg.SyncInterval)
	defer t.Stop()
	for {
		select {
		case <-c.stop:
			return
		case <-t.C:
		}
		applied := c.cfg.Applied()
		if c.metaRev.Load() != applied {
			c.metaRev.Store(applied)
			if err := c.ml.UpdateNode(c.cfg.SyncInterval); err != nil {
				c.log.Debug("advertising revision", "err", err)
			}
		}
		var best *memberlist.Node
		var bestRev uint64
		for _, n := range c.peerNodes() {
			if r := metaRevision(n.Meta); r > applied && r > bestRev {
				best, bestRev = n, r
			}
		}
		if best == nil {
			continue
		}
		req := binary.BigEndian.AppendUint64([]byte{msgRequest}, applied+1)
		req = append(req, c.cfg.Name...)
		if err := c.ml.SendReliable(best, req); err != nil {
			c.log.Debug("asking to catch up", "peer", best.Name, "err", err)
		}
	}
}

// joinLoop joins cfg.Join, retrying until one peer answers.
func (c *Cluster) joinLoop() {
	defer c.done.Done()
	if len(c.cfg.Join) == 0 {
		c.joined.Store(true)
		return
	}
	for {
		n, err := c.ml.Join(c.cfg.Join)
		c.joinAttempts.Add(1)
		if n > 0 {
			c.joined.Store(true)
			c.log.Info("joined gossip cluster", "peers", n)
			return
		}
		c.log.Warn("joining gossip cluster; retrying", "join", c.cfg.Join, "err", err)
		select {
		case <-c.stop:
			return
		case <-time.After(c.cfg.RetryJoinInterval):
		}
	}
}

func metaRevision(meta []byte) uint64 {
	if len(meta) < 8 {
		return 0
	}
	return binary.BigEndian.Uint64(meta)
}

// peerNodes returns copies of the other members as last announced: reading
// memberlist's own Node values races with its updates.
func (c *Cluster) peerNodes() []*memberlist.Node {
	c.peersMu.Lock()
	defer c.peersMu.Unlock()
	out := make([]*memberlist.Node, 0, len(c.peers))
	for _, n := range c.peers {
		n := n
		out = append(out, &n)
	}
	return out
}

func (c *Cluster) setPeer(n *memberlist.Node, alive bool) {
	if n.Name == c.cfg.Name {
		return
	}
	c.peersMu.Lock()
	defer c.peersMu.Unlock()
	if !alive {
		delete(c.peers, n.Name)
		return
	}
	cp := *n
	cp.Meta = append([]byte(nil), n.Meta...)
	c.peers[n.Name] = cp
}
