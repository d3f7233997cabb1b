package cluster

import (
	"encoding/binary"
	"hash/fnv"
	"sync"
	"time"

	"github.com/hashicorp/memberlist"
)

// Limit reports: each edge's opaque report of what it has admitted against
// global limits (event.LimitReport, encoded by the edge; the cluster never
// opens it). Unlike events they are not signed by the origin, so the
// cluster cannot ask its consumer to vouch for them before they travel on:
// it relays each small report itself, once, and the consumer must treat
// what it is given as a claim that can only raise counts (the edge's merge
// is max-only), never lower them.
//
// Wire: msgLimits, seq (8 bytes BE: the sender's clock in unix ns, strictly
// increasing per sending node), origin-name length (1), origin name, report.

// MaxLimitsBytes bounds one limit report: RecordLimits drops (and counts)
// a larger one, and receivers drop it too. The edge keeps its reports far
// under it (deltas every sync interval, a full refresh every few seconds).
const MaxLimitsBytes = 256 << 10

// limitsSeen is how many recent reports' hashes a node remembers so that
// it delivers and relays each at most once: with 16 edges reporting every
// 200 ms, about 50 s of them, far longer than a broadcast lives.
const limitsSeen = 4096

// maxLimitsOrigins bounds the per-origin newest-queued table.
const maxLimitsOrigins = 4096

// limits is the node's state for limit reports.
type limits struct {
	mu      sync.Mutex
	lastSeq uint64              // last seq this node sent
	seen    map[uint64]struct{} // hashes of recent reports
	ring    [limitsSeen]uint64
	next    int
	queued  map[string]uint64 // origin -> seq of its report in our queue
}

func (l *limits) init() {
	l.seen = make(map[uint64]struct{}, limitsSeen)
	l.queued = map[string]uint64{}
}

// firstSight reports whether msg has not been seen before, and remembers it.
func (l *limits) firstSight(msg []byte) bool {
	h := fnv.New64a()
	h.Write(msg)
	sum := h.Sum64()
	l.mu.Lock()
	defer l.mu.Unlock()
	if _, ok := l.seen[sum]; ok {
		return false
	}
	if old := l.ring[l.next]; old != 0 {
		delete(l.seen, old)
	}
	l.ring[l.next] = sum
	l.next = (l.next + 1) % limitsSeen
	l.seen[sum] = struct{}{}
	return true
}

// claim reports whether a report of origin at seq should be queued: not
// when a newer one of the same origin is queued already (the queue keeps
// one per origin, and a late older report must not replace a newer one).
// A forged seq from the future blocks an origin's relays at this node only
// while that forgery sits in the queue (Finished releases it).
func (l *limits) claim(origin string, seq uint64) bool {
	l.mu.Lock()
	defer l.mu.Unlock()
	if q, ok := l.queued[origin]; ok && q >= seq {
		return false
	}
	if len(l.queued) >= maxLimitsOrigins {
		clear(l.queued)
	}
	l.queued[origin] = seq
	return true
}

func (l *limits) release(origin string, seq uint64) {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.queued[origin] == seq {
		delete(l.queued, origin)
	}
}

func (l *limits) nextSeq() uint64 {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.lastSeq = max(l.lastSeq+1, uint64(time.Now().UnixNano()))
	return l.lastSeq
}

// limitsBroadcast is one origin's limit report in the gossip queue, named
// by the origin so that a newer report of it replaces the older.
type limitsBroadcast struct {
	l      *limits
	origin string
	seq    uint64
	msg    []byte
}

var _ memberlist.NamedBroadcast = (*limitsBroadcast)(nil)

func (b *limitsBroadcast) Invalidates(o memberlist.Broadcast) bool {
	ob, ok := o.(*limitsBroadcast)
	return ok && ob.origin == b.origin
}
func (b *limitsBroadcast) Message() []byte { return b.msg }
func (b *limitsBroadcast) Finished()       { b.l.release(b.origin, b.seq) }
func (b *limitsBroadcast) Name() string    { return "l" + b.origin }

// RecordLimits offers this node's own limit report (opaque bytes, at most
// MaxLimitsBytes) to every peer. One that fits a gossip packet is sent to
// every live peer at once (UDP, best effort: memberlist's gossip fan-out
// alone, RetransmitMult sends per node, misses a peer too often for a
// report that is current for one sync interval) and queued for gossip
// too; each receiver relays it once, so it also crosses a link that is
// missing between two members, and in every queue it replaces this node's
// previous report. A larger one is sent to each live peer over TCP and not
// relayed (each receiver would send it to every peer again: n² streams per
// report), so across a missing link only small reports travel.
func (c *Cluster) RecordLimits(wire []byte) {
	name := c.cfg.Name
	if len(wire) == 0 || len(wire) > MaxLimitsBytes || len(name) > 255 {
		c.limitsDropped.Add(1)
		return
	}
	seq := c.limits.nextSeq()
	msg := make([]byte, 0, 10+len(name)+len(wire))
	msg = append(msg, msgLimits)
	msg = binary.BigEndian.AppendUint64(msg, seq)
	msg = append(msg, byte(len(name)))
	msg = append(msg, name...)
	msg = append(msg, wire...)
	c.limits.firstSight(msg) // our own, coming back from a peer, is not delivered
	c.limitsSent.Add(1)
	if len(msg) > maxGossipBytes {
		for _, n := range c.peerNodes() {
			c.sendAsync(n, msg, func() { c.sentTCP.Add(1) })
		}
		return
	}
	for _, n := range c.peerNodes() {
		if err := c.ml.SendBestEffort(n, msg); err != nil {
			c.log.Debug("gossip: sending limit report", "peer", n.Name, "err", err)
		}
	}
	c.queueLimits(name, seq, msg)
}

// queueLimits queues a small report for gossip, unless a newer one of its
// origin is queued already.
func (c *Cluster) queueLimits(origin string, seq uint64, msg []byte) {
	if c.limits.claim(origin, seq) {
		c.enqueue(c.lqueue, &limitsBroadcast{l: &c.limits, origin: origin, seq: seq, msg: msg})
	}
}

// receiveLimits delivers a peer's limit report once, and relays it once
// when it is small enough to gossip (a large one came over TCP from its
// origin, which sends it to every peer itself).
func (c *Cluster) receiveLimits(msg []byte) {
	if len(msg) < 10 || len(msg) <= 10+int(msg[9]) || len(msg)-10-int(msg[9]) > MaxLimitsBytes { // a report follows the origin's name
		c.limitsBad.Add(1)
		return
	}
	if !c.limits.firstSight(msg) {
		c.limitsDup.Add(1)
		return
	}
	seq := binary.BigEndian.Uint64(msg[1:9])
	n := int(msg[9])
	origin := string(msg[10 : 10+n])
	if origin == c.cfg.Name { // our own name from a peer: not ours, or a replay
		c.limitsBad.Add(1)
		return
	}
	c.limitsReceived.Add(1)
	c.cfg.DeliverLimits(msg[10+n:])
	if len(msg) <= maxGossipBytes {
		c.queueLimits(origin, seq, msg)
	}
}
