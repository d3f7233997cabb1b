package cluster

import (
	"bytes"
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"hash/fnv"
	"log/slog"
	"math/rand/v2"
	"sort"
	"sync"
	"sync/atomic"
	"time"

	"github.com/hashicorp/memberlist"
)

// Message kinds on the wire, the first byte of every user message.
const (
	msgEvent     = 'E' // rev(8) sealed-record
	msgHeartbeat = 'H' // sealed origin heartbeat
	msgCatchUp   = 'C' // id(8) from-rev(8) requester-name
	msgBatch     = 'D' // id(8) { rev(8) len(4) sealed-record }...
	msgAsk       = 'Q' // id(8) key-len(1) key requester-name
	msgAnswer    = 'A' // id(8) sealed-record (empty: "I hold none")
	msgLeaving   = 'L' // name: sent just before a graceful leave
	msgLimits    = 'R' // seq(8) origin-len(1) origin limit-report (limits.go)
	msgPacked    = 'P' // { len(2) message }...: one gossip packet of several (gossip.go)
)

// maxGossipBytes is the largest message sent by UDP gossip; memberlist
// drops larger broadcasts silently, so those go to each peer over TCP.
const maxGossipBytes = 1200

// maxBatchBytes bounds one catch-up answer.
const maxBatchBytes = 512 << 10

// maxSenders bounds the TCP sends (answers, large events) in flight; over
// it, a send is dropped and counted.
const maxSenders = 64

// maxFailedPeers bounds the failed peers remembered to join again.
const maxFailedPeers = 1024

// Peer is another node as this one sees it.
type Peer struct {
	Name     string `json:"name"`
	Addr     string `json:"addr"`
	Revision uint64 `json:"applied_revision"`
	Info
}

// Stats are the cluster's counters.
type Stats struct {
	Members int `json:"members"`
	// Queued counts the messages waiting in the gossip queues (events and
	// heartbeats; limit reports).
	Queued int `json:"queued"`
	// GossipPackets counts the packets this node's own gossip rounds sent
	// (gossip.go); memberlist's packets also carry what fits.
	GossipPackets uint64 `json:"gossip_packets"`
	// Broadcast counts events offered to peers, SentTCP those sent over
	// TCP for being too large, Received those delivered from peers.
	Broadcast    uint64 `json:"broadcast"`
	SentTCP      uint64 `json:"sent_tcp"`
	Received     uint64 `json:"received"`
	DroppedInbox uint64 `json:"dropped_inbox"`
	DroppedQueue uint64 `json:"dropped_queue"`
	DroppedSends uint64 `json:"dropped_sends"`
	// CatchUpRequests counts peers' requests this node answered from its
	// log (CatchUpsAnswered: with something); CatchUpsAsked, requests this
	// node sent, CatchUpFailures those that did not help; Fetches, calls of
	// Config.Fetch.
	CatchUpRequests  uint64 `json:"catch_up_requests"`
	CatchUpsAnswered uint64 `json:"catch_ups_answered"`
	CatchUpsAsked    uint64 `json:"catch_ups_asked"`
	CatchUpFailures  uint64 `json:"catch_up_failures"`
	Fetches          uint64 `json:"fetches"`
	// HeartbeatsSent and HeartbeatsReceived count origin heartbeats
	// gossiped on and received from peers.
	HeartbeatsSent     uint64 `json:"heartbeats_sent"`
	HeartbeatsReceived uint64 `json:"heartbeats_received"`
	// Asks counts this node's Asks, AsksAnswered those a peer answered
	// acceptably, AnswersRefused answers the caller did not accept;
	// AsksServed counts peers' Asks this node answered with a record.
	Asks           uint64 `json:"asks"`
	AsksAnswered   uint64 `json:"asks_answered"`
	AnswersRefused uint64 `json:"answers_refused"`
	AsksServed     uint64 `json:"asks_served"`
	// LimitReportsSent counts this node's own limit reports offered to
	// peers; LimitReportsReceived, peers' reports delivered (each once);
	// LimitReportsDuplicate, copies of one already delivered;
	// LimitReportsBad, malformed ones or ones naming this node;
	// LimitReportsDropped, own reports refused as empty or too large.
	LimitReportsSent      uint64 `json:"limit_reports_sent"`
	LimitReportsReceived  uint64 `json:"limit_reports_received"`
	LimitReportsDuplicate uint64 `json:"limit_reports_duplicate"`
	LimitReportsBad       uint64 `json:"limit_reports_bad"`
	LimitReportsDropped   uint64 `json:"limit_reports_dropped"`
	// Joins counts successful join attempts (Rejoins: those made because a
	// known peer had failed); PeersLeft and PeersFailed, peers gone by a
	// graceful leave and by failure; Conflicts, name conflicts seen.
	Joins       uint64 `json:"joins"`
	Rejoins     uint64 `json:"rejoins"`
	PeersLeft   uint64 `json:"peers_left"`
	PeersFailed uint64 `json:"peers_failed"`
	Conflicts   uint64 `json:"name_conflicts"`
}

// Cluster is this node's membership in the gossip ring. Its methods are
// safe for concurrent use.
type Cluster struct {
	cfg    Config
	log    *slog.Logger
	ml     *memberlist.Memberlist
	addr   string
	queue  *memberlist.TransmitLimitedQueue // events and heartbeats: sent first
	lqueue *memberlist.TransmitLimitedQueue // limit reports: the room events leave

	gossipKick  chan struct{} // a gossip round now (gossip.go)
	gossipEvery time.Duration // memberlist's GossipInterval
	fanout      int           // memberlist's GossipNodes
	packetBytes int           // room for one gossip packet
	inbox       chan []byte
	sends       chan struct{} // semaphore of TCP sends in flight

	mu     sync.Mutex
	events map[uint64][]byte // recent events by revision, at most LogSize
	low    uint64            // lowest revision still in events

	peersMu sync.Mutex
	peers   map[string]memberlist.Node // copies: memberlist mutates its own
	peersV  atomic.Uint64              // raised on every change of peers
	failed  map[string]failedPeer      // peers that failed (not left): joined again
	leaving map[string]time.Time       // peers that said they are leaving

	hbMu   sync.Mutex
	hbSeen [8]uint64 // hashes of the last heartbeats seen
	hbNext int

	limits limits // limit reports seen and queued (limits.go)

	meta      atomic.Pointer[[]byte] // our node metadata
	catchUp   catchUp
	asks      asks
	joined    atomic.Bool
	joining   atomic.Bool
	nameTaken atomic.Bool   // our name was found in use while joining
	gone      atomic.Bool   // memberlist was stopped after a name conflict
	created   atomic.Bool   // Create has returned (or stopped waiting)
	firstJoin chan struct{} // closed after the first join attempt
	stop      chan struct{}
	done      sync.WaitGroup
	shutOnce  sync.Once

	joinAttempts                                                                              atomic.Uint64
	joinFailures                                                                              atomic.Uint64 // failed attempts in a row
	broadcast, sentTCP, received, droppedInbox, droppedQueue, droppedSends                    atomic.Uint64
	requests, answered, asked, askFailures, fetches, hbSent, hbReceived                       atomic.Uint64
	asksN, asksAnswered, answersRefused, asksServed, joins, rejoins, left, failedN, conflicts atomic.Uint64
	limitsSent, limitsReceived, limitsDup, limitsBad, limitsDropped                           atomic.Uint64
	gossipPackets                                                                             atomic.Uint64
}

type failedPeer struct {
	addr string
	at   time.Time
}

// Create validates cfg, starts memberlist and the background loops, and
// begins joining cfg.Join. It waits up to cfg.StartJoinTimeout for the
// first join attempt and fails with ErrNameConflict if that found another
// live node using cfg.Name.
func Create(cfg Config) (*Cluster, error) {
	mlc, err := cfg.fill()
	if err != nil {
		return nil, err
	}
	c := &Cluster{cfg: cfg, log: cfg.Logger, inbox: make(chan []byte, 4096), sends: make(chan struct{}, maxSenders),
		events: map[uint64][]byte{}, stop: make(chan struct{}), peers: map[string]memberlist.Node{},
		failed: map[string]failedPeer{}, leaving: map[string]time.Time{},
		firstJoin: make(chan struct{})}
	c.catchUp.init()
	c.asks.init()
	c.limits.init()
	numNodes := func() int {
		if c.ml == nil {
			return 1
		}
		return c.ml.NumMembers()
	}
	c.queue = &memberlist.TransmitLimitedQueue{RetransmitMult: mlc.RetransmitMult, NumNodes: numNodes}
	c.lqueue = &memberlist.TransmitLimitedQueue{RetransmitMult: mlc.RetransmitMult, NumNodes: numNodes}
	c.gossipKick = make(chan struct{}, 1)
	c.gossipEvery, c.fanout, c.packetBytes = mlc.GossipInterval, max(mlc.GossipNodes, 1), packetBudget(mlc)
	if in := cfg.Info(); !infoFits(in) {
		c.log.Warn("gossip: edge id, site or address too long for node metadata; peers will not relay this edge's heartbeats",
			"id_bytes", len(in.ID), "site_bytes", len(in.Site), "address_bytes", len(in.Address))
	}
	meta := c.currentMeta()
	c.meta.Store(&meta)
	mlc.Delegate = &delegate{c}
	mlc.Events = &events{c}
	mlc.Conflict = &conflicts{c}
	if c.ml, err = memberlist.Create(mlc); err != nil {
		return nil, fmt.Errorf("starting gossip on %s: %w", cfg.BindAddr, err)
	}
	c.addr = c.ml.LocalNode().Address() // read once: memberlist updates that Node in place
	// Goroutines last.
	c.done.Add(5)
	go c.work()
	go c.gossipLoop()
	go c.syncLoop()
	go c.catchUpLoop()
	go c.joinLoop()
	if len(cfg.Join) > 0 && cfg.StartJoinTimeout > 0 {
		select {
		case <-c.firstJoin:
		case <-time.After(cfg.StartJoinTimeout):
		}
	}
	c.created.Store(true)
	if c.nameTaken.Load() {
		_ = c.Shutdown()
		return nil, fmt.Errorf("%w: %q", ErrNameConflict, cfg.Name)
	}
	return c, nil
}

// Addr is the address the node gossips on.
func (c *Cluster) Addr() string { return c.addr }

// Name is this node's name.
func (c *Cluster) Name() string { return c.cfg.Name }

// Err reports why the node stopped gossiping on its own (ErrNameConflict),
// or nil.
func (c *Cluster) Err() error {
	if c.gone.Load() {
		return ErrNameConflict
	}
	return nil
}

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
	// Our new revision is advertised at the next SyncInterval, not now:
	// every node re-advertising on every event floods memberlist with alive
	// messages, which its packet handler takes before any user message,
	// just while the event spreads (gossip.go); catch-up acts only after a
	// whole SyncInterval behind anyway.

	msg := make([]byte, 9+len(wire))
	msg[0] = msgEvent
	binary.BigEndian.PutUint64(msg[1:], rev)
	copy(msg[9:], wire)
	c.broadcast.Add(1)
	if len(msg) <= maxGossipBytes {
		c.enqueue(c.queue, &eventBroadcast{rev: rev, msg: msg})
		c.gossipSoon()
		return
	}
	// Too big for a gossip packet: straight to every peer, reliably.
	for _, n := range c.peerNodes() {
		c.sendAsync(n, msg, func() { c.sentTCP.Add(1) })
	}
}

// RecordHeartbeat offers a sealed origin heartbeat this node has verified
// (and found newer than any before) to its peers. Only the newest queued
// heartbeat is kept, and none is sent while every peer says it reaches
// NATS itself (Info.NATS): then nobody needs it.
func (c *Cluster) RecordHeartbeat(wire []byte) {
	c.seenHeartbeat(wire)
	needed := false
	for _, p := range c.Peers() {
		needed = needed || !p.NATS
	}
	if !needed {
		return
	}
	msg := append([]byte{msgHeartbeat}, wire...)
	c.hbSent.Add(1)
	if len(msg) <= maxGossipBytes {
		c.enqueue(c.queue, &heartbeatBroadcast{msg: msg})
		return
	}
	for _, n := range c.peerNodes() {
		c.sendAsync(n, msg, nil)
	}
}

// enqueue queues b in q, pruning the most-sent messages past MaxQueued.
func (c *Cluster) enqueue(q *memberlist.TransmitLimitedQueue, b memberlist.Broadcast) {
	if q.NumQueued() >= c.cfg.MaxQueued {
		c.droppedQueue.Add(1)
		q.Prune(c.cfg.MaxQueued - 1)
	}
	q.QueueBroadcast(b)
}

// sendAsync sends msg to n over TCP in the background, bounded by
// maxSenders; ok runs after a successful send.
func (c *Cluster) sendAsync(n *memberlist.Node, msg []byte, ok func()) {
	select {
	case c.sends <- struct{}{}:
	default:
		c.droppedSends.Add(1)
		return
	}
	go func() {
		defer func() { <-c.sends }()
		if err := c.ml.SendReliable(n, msg); err != nil {
			c.log.Debug("gossip: sending to peer", "peer", n.Name, "kind", string(msg[0]), "err", err)
			return
		}
		if ok != nil {
			ok()
		}
	}()
}

// seenHeartbeat reports whether wire is one of the last few heartbeats
// seen, and remembers it: every peer with NATS may gossip the same one, and
// verifying a signature costs more than comparing a hash.
func (c *Cluster) seenHeartbeat(wire []byte) bool {
	h := fnv.New64a()
	h.Write(wire)
	sum := h.Sum64()
	c.hbMu.Lock()
	defer c.hbMu.Unlock()
	for _, s := range c.hbSeen {
		if s == sum {
			return true
		}
	}
	c.hbSeen[c.hbNext%len(c.hbSeen)] = sum
	c.hbNext++
	return false
}

// known reports whether rev has been Recorded (and so needs no delivery).
func (c *Cluster) known(rev uint64) bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	_, ok := c.events[rev]
	return ok || (len(c.events) >= c.cfg.LogSize && rev < c.low)
}

// Peers lists the other live members with the revision and Info each
// advertises, sorted by name.
func (c *Cluster) Peers() []Peer {
	var out []Peer
	for _, n := range c.peerNodes() {
		rev, in := decodeMeta(n.Meta)
		out = append(out, Peer{Name: n.Name, Addr: n.Address(), Revision: rev, Info: in})
	}
	sort.Slice(out, func(i, j int) bool { return out[i].Name < out[j].Name })
	return out
}

// PeersVersion changes whenever a peer joins, leaves or updates what it
// advertises: callers can skip re-reading Peers while it stays the same.
func (c *Cluster) PeersVersion() uint64 { return c.peersV.Load() }

// Stats returns a copy of the counters.
func (c *Cluster) Stats() Stats {
	return Stats{Members: c.ml.NumMembers(), Queued: c.queue.NumQueued() + c.lqueue.NumQueued(),
		GossipPackets: c.gossipPackets.Load(),
		Broadcast:     c.broadcast.Load(), SentTCP: c.sentTCP.Load(), Received: c.received.Load(),
		DroppedInbox: c.droppedInbox.Load(), DroppedQueue: c.droppedQueue.Load(), DroppedSends: c.droppedSends.Load(),
		CatchUpRequests: c.requests.Load(), CatchUpsAnswered: c.answered.Load(),
		CatchUpsAsked: c.asked.Load(), CatchUpFailures: c.askFailures.Load(), Fetches: c.fetches.Load(),
		HeartbeatsSent: c.hbSent.Load(), HeartbeatsReceived: c.hbReceived.Load(),
		Asks: c.asksN.Load(), AsksAnswered: c.asksAnswered.Load(), AnswersRefused: c.answersRefused.Load(),
		AsksServed: c.asksServed.Load(), Joins: c.joins.Load(), Rejoins: c.rejoins.Load(),
		PeersLeft: c.left.Load(), PeersFailed: c.failedN.Load(), Conflicts: c.conflicts.Load(),
		LimitReportsSent: c.limitsSent.Load(), LimitReportsReceived: c.limitsReceived.Load(),
		LimitReportsDuplicate: c.limitsDup.Load(), LimitReportsBad: c.limitsBad.Load(),
		LimitReportsDropped: c.limitsDropped.Load()}
}

// Leave tells the cluster this node is going, then stops it. Peers see a
// graceful leave at once, and do not try to join this node again.
func (c *Cluster) Leave(timeout time.Duration) error {
	if c.gone.Load() {
		return c.Shutdown()
	}
	// Say so first, reliably: memberlist's own leave message does not tell
	// peers' event delegates a leave from a failure.
	msg := append([]byte{msgLeaving}, c.cfg.Name...)
	var wg sync.WaitGroup
	for _, n := range c.peerNodes() {
		wg.Go(func() { _ = c.ml.SendReliable(n, msg) })
	}
	waited := make(chan struct{})
	go func() { wg.Wait(); close(waited) }()
	select {
	case <-waited:
	case <-time.After(timeout / 2):
	}
	err := c.ml.Leave(timeout / 2)
	return errors.Join(err, c.Shutdown())
}

// Shutdown stops the node without saying goodbye. Safe to call twice.
func (c *Cluster) Shutdown() error {
	var err error
	c.shutOnce.Do(func() {
		close(c.stop)
		if !c.gone.Load() {
			err = c.ml.Shutdown()
		}
		c.done.Wait()
		c.asks.closeAll()
	})
	return err
}

// receive queues a message for the worker; NotifyMsg must never block.
func (c *Cluster) receive(buf []byte) {
	if len(buf) > 0 && buf[0] == msgLeaving {
		// Handled at once: memberlist's leave notice may follow right away.
		c.peerLeaving(string(buf[1:]))
		return
	}
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
	if len(msg) < 2 {
		return
	}
	switch msg[0] {
	case msgEvent:
		if len(msg) >= 9 {
			c.deliver(binary.BigEndian.Uint64(msg[1:9]), msg[9:])
		}
	case msgHeartbeat:
		c.hbReceived.Add(1)
		if c.seenHeartbeat(msg[1:]) {
			return // the same heartbeat again, from another peer
		}
		c.cfg.DeliverHeartbeat(msg[1:])
	case msgCatchUp:
		if len(msg) >= 17 {
			c.answerCatchUp(binary.BigEndian.Uint64(msg[1:9]), binary.BigEndian.Uint64(msg[9:17]), string(msg[17:]))
		}
	case msgBatch:
		if len(msg) >= 9 {
			c.batch(binary.BigEndian.Uint64(msg[1:9]), msg[9:])
		}
	case msgAsk:
		if len(msg) >= 10 && len(msg) >= 10+int(msg[9]) {
			n := int(msg[9])
			c.answerAsk(binary.BigEndian.Uint64(msg[1:9]), msg[10:10+n], string(msg[10+n:]))
		}
	case msgAnswer:
		if len(msg) >= 9 {
			c.asks.answer(binary.BigEndian.Uint64(msg[1:9]), msg[9:])
		}
	case msgLimits:
		c.receiveLimits(msg)
	case msgPacked:
		c.unpack(msg[1:])
	}
}

func (c *Cluster) deliver(rev uint64, wire []byte) {
	if c.known(rev) {
		return
	}
	c.received.Add(1)
	c.cfg.Deliver(rev, wire)
}

// peer returns the live member called name, or nil.
func (c *Cluster) peer(name string) *memberlist.Node {
	c.peersMu.Lock()
	defer c.peersMu.Unlock()
	n, ok := c.peers[name]
	if !ok {
		return nil
	}
	return &n
}

// syncLoop keeps our metadata (revision, Info) current: every
// SyncInterval (not at each event recorded: see Record).
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
		meta := c.currentMeta()
		if bytes.Equal(meta, *c.meta.Load()) || c.gone.Load() {
			continue
		}
		c.meta.Store(&meta)
		if err := c.ml.UpdateNode(c.cfg.SyncInterval); err != nil {
			c.log.Debug("gossip: advertising revision", "err", err)
		}
	}
}

// currentMeta encodes this node's metadata now: revision, Info and, when
// Config.Sign is set and Info fits, the presence signed for that revision.
func (c *Cluster) currentMeta() []byte {
	rev, in := c.cfg.Applied(), c.cfg.Info()
	in.SignedAt, in.Signature = 0, nil
	if c.cfg.Sign != nil && infoFits(in) {
		in.SignedAt, in.Signature = c.cfg.Sign(rev)
	}
	return encodeMeta(rev, in)
}

// joinLoop joins cfg.Join at start, retrying until one peer answers, and
// then again whenever it matters: while a peer this node knew has failed
// (a partition, say), or it is alone although it has peers to join. It
// tries cfg.Join and the failed peers' last addresses, so that both sides
// of a healed partition find each other.
func (c *Cluster) joinLoop() {
	defer c.done.Done()
	first := true
	for {
		if targets, rejoin := c.joinTargets(first); len(targets) > 0 {
			c.join(targets, rejoin)
		}
		if first {
			first = false
			close(c.firstJoin)
		}
		if c.gone.Load() {
			return
		}
		select {
		case <-c.stop:
			return
		case <-time.After(c.cfg.RetryJoinInterval):
		}
	}
}

// joinTargets returns whom to join now (nil: nobody need be), and whether
// that is a rejoin of failed peers.
func (c *Cluster) joinTargets(first bool) (targets []string, rejoin bool) {
	self := c.Addr()
	c.peersMu.Lock()
	now := time.Now()
	var failed []string
	for name, f := range c.failed {
		if now.Sub(f.at) > c.cfg.ReconnectTimeout {
			delete(c.failed, name)
			continue
		}
		failed = append(failed, f.addr)
	}
	alone := len(c.peers) == 0
	c.peersMu.Unlock()
	if !first && !alone && len(failed) == 0 {
		return nil, false
	}
	if len(c.cfg.Join) == 0 && len(failed) == 0 {
		c.joined.Store(true) // a first node: nothing to join
		return nil, false
	}
	rand.Shuffle(len(failed), func(i, j int) { failed[i], failed[j] = failed[j], failed[i] })
	if len(failed) > 8 { // each unreachable one may cost a TCP timeout
		failed = failed[:8]
	}
	seen := map[string]bool{self: true}
	for _, a := range append(append([]string(nil), c.cfg.Join...), failed...) {
		if !seen[a] {
			seen[a] = true
			targets = append(targets, a)
		}
	}
	return targets, len(failed) > 0
}

func (c *Cluster) join(targets []string, rejoin bool) {
	c.joining.Store(true)
	n, err := c.ml.Join(targets)
	c.joining.Store(false)
	c.joinAttempts.Add(1)
	if c.nameTaken.Load() {
		// Create refuses to start if it is still waiting; otherwise this
		// node must not stay in a ring where its name means another node.
		if c.created.Load() && !c.gone.Swap(true) {
			c.log.Error("gossip: another node already uses this node's name; leaving the gossip ring", "name", c.cfg.Name)
			_ = c.ml.Shutdown()
		}
		return
	}
	if n == 0 {
		// Loud once per streak: a failed peer may stay away for hours.
		level := slog.LevelDebug
		if c.joinFailures.Add(1) == 1 {
			level = slog.LevelWarn
		}
		c.log.Log(context.Background(), level, "gossip: joining cluster; retrying", "join", targets, "err", err)
		return
	}
	c.joinFailures.Store(0)
	c.joins.Add(1)
	if rejoin {
		c.rejoins.Add(1)
	}
	if !c.joined.Swap(true) || rejoin {
		c.log.Info("gossip: joined cluster", "contacted", n, "rejoin", rejoin)
	}
}

// peerNodes returns copies of the other members as last announced: reading
// memberlist's own Node values races with its updates.
func (c *Cluster) peerNodes() []*memberlist.Node {
	c.peersMu.Lock()
	defer c.peersMu.Unlock()
	out := make([]*memberlist.Node, 0, len(c.peers))
	for _, n := range c.peers {
		out = append(out, &n)
	}
	return out
}

func (c *Cluster) setPeer(n *memberlist.Node) {
	if n.Name == c.cfg.Name {
		return
	}
	cp := *n
	cp.Meta = append([]byte(nil), n.Meta...)
	c.peersMu.Lock()
	c.peers[n.Name] = cp
	c.peersV.Add(1)
	delete(c.failed, n.Name)
	delete(c.leaving, n.Name)
	c.peersMu.Unlock()
}

// dropPeer forgets a member that is gone, and reports whether it left
// gracefully; a failed one is remembered to be joined again.
func (c *Cluster) dropPeer(n *memberlist.Node) (left bool) {
	if n.Name == c.cfg.Name {
		return true
	}
	c.peersMu.Lock()
	defer c.peersMu.Unlock()
	delete(c.peers, n.Name)
	c.peersV.Add(1)
	if _, ok := c.leaving[n.Name]; ok {
		delete(c.leaving, n.Name)
		delete(c.failed, n.Name)
		c.left.Add(1)
		return true
	}
	c.failedN.Add(1)
	if len(c.failed) < maxFailedPeers {
		c.failed[n.Name] = failedPeer{addr: n.Address(), at: time.Now()}
	}
	return false
}

func (c *Cluster) peerLeaving(name string) {
	c.peersMu.Lock()
	defer c.peersMu.Unlock()
	if _, ok := c.peers[name]; !ok {
		return
	}
	if len(c.leaving) > maxFailedPeers { // only ever entries of live peers
		clear(c.leaving)
	}
	c.leaving[name] = time.Now()
}
