package cluster

import (
	"bytes"
	"encoding/binary"
	"math/rand/v2"
	"time"

	"github.com/hashicorp/memberlist"
)

// The cluster's own gossip rounds.
//
// Memberlist fills each gossip packet with its own broadcasts first (alive,
// suspect, dead: every metadata update of every node is one, relayed and
// retransmitted by each) and gives the delegate only the room left over;
// and a TransmitLimitedQueue hands out the least-sent message first, so a
// limit report queued a moment ago goes before an event sent once. With
// 16 nodes re-advertising their metadata on every event (the applied
// revision) and limit reports refreshed every 200 ms, an event sat in its
// queue for rounds while packets left without it: measured with 16
// in-process nodes, the WAN profile's fan-out and compression, a limit
// report every 2.5 rounds, of the packets sent while an event was queued,
// a quarter had no room left by memberlist's alive messages and over half
// had room but carried fresher limit reports first; the last node had the
// event after 5–48 rounds (TestEventsSpreadWithinRounds, lighter: 3.6–9.9
// before, at most 1.1 after).
//
// So the cluster gossips its own queues itself, at memberlist's interval
// and fan-out, while events or heartbeats are queued: every
// GossipInterval, and at once when a new event is recorded (a hop then
// costs the link's delay, not that plus the wait for the next round), each
// of GossipNodes random live peers gets one packet with the events and
// heartbeats queued (fewest sends first), then as many limit reports as
// the room left holds. Limit reports alone ride in memberlist's packets,
// as before, so a quiet cluster sends no more packets than memberlist
// does. Memberlist's packets carry what fits in their room too
// (delegate.GetBroadcasts), from the same queues in the same order; every
// send of a message, on either path, counts against its RetransmitMult
// budget, so the sends per message are what memberlist alone made.

// packetOverhead is what memberlist adds to a user message sent by packet:
// the message-type byte, a CRC header (5) and, at worst, encryption
// version 0 (45); the label is added separately.
const packetOverhead = 1 + 5 + 45

// packedEntryOverhead is the length prefix of each message in a packed
// packet.
const packedEntryOverhead = 2

// takeBroadcasts returns queued messages that fit in limit bytes, each
// costing overhead more: events and heartbeats first, then limit reports.
func (c *Cluster) takeBroadcasts(overhead, limit int) [][]byte {
	msgs := c.queue.GetBroadcasts(overhead, limit)
	used := 0
	for _, m := range msgs {
		used += overhead + len(m)
	}
	if limit-used > overhead {
		msgs = append(msgs, c.lqueue.GetBroadcasts(overhead, limit-used)...)
	}
	return msgs
}

// gossipSoon asks gossipLoop for a round now, without blocking.
func (c *Cluster) gossipSoon() {
	select {
	case c.gossipKick <- struct{}{}:
	default:
	}
}

// gossipLoop runs the cluster's own gossip rounds: every gossip interval,
// and when a new event is queued (so that an event crosses a hop in the
// link's delay, not in that plus the wait for the next round).
func (c *Cluster) gossipLoop() {
	defer c.done.Done()
	var tick <-chan time.Time // memberlist's gossip turned off: rounds on new events only
	if c.gossipEvery > 0 {
		t := time.NewTicker(c.gossipEvery)
		defer t.Stop()
		tick = t.C
	}
	for {
		select {
		case <-c.stop:
			return
		case <-tick:
		case <-c.gossipKick:
		}
		if !c.gone.Load() {
			c.gossipRound()
		}
	}
}

// gossipRound sends one packet of queued messages to each of up to fanout
// random live peers, while events or heartbeats are queued: limit reports
// alone ride in memberlist's packets, as they always did, so that a quiet
// cluster sends no more packets than memberlist does.
func (c *Cluster) gossipRound() {
	if c.queue.NumQueued() == 0 {
		return
	}
	peers := c.peerNodes()
	rand.Shuffle(len(peers), func(i, j int) { peers[i], peers[j] = peers[j], peers[i] })
	for _, n := range peers[:min(c.fanout, len(peers))] {
		if c.queue.NumQueued() == 0 {
			return
		}
		msgs := c.takeBroadcasts(packedEntryOverhead, c.packetBytes-1)
		if len(msgs) == 0 {
			return
		}
		if err := c.ml.SendBestEffort(n, pack(msgs)); err != nil {
			c.log.Debug("gossip: sending gossip packet", "peer", n.Name, "err", err)
			continue
		}
		c.gossipPackets.Add(1)
	}
}

// pack frames msgs as one packet: a single message as it is (any node
// reads it), several as msgPacked { len(2) message }...
func pack(msgs [][]byte) []byte {
	if len(msgs) == 1 {
		return msgs[0]
	}
	size := 1
	for _, m := range msgs {
		size += packedEntryOverhead + len(m)
	}
	b := make([]byte, 1, size)
	b[0] = msgPacked
	for _, m := range msgs {
		b = binary.BigEndian.AppendUint16(b, uint16(len(m)))
		b = append(b, m...)
	}
	return b
}

// unpack handles each message of a packed packet in order; a nested
// packed message, or a cut one, ends it.
func (c *Cluster) unpack(b []byte) {
	for len(b) >= packedEntryOverhead {
		n := int(binary.BigEndian.Uint16(b))
		if n > len(b)-packedEntryOverhead {
			return
		}
		m := b[packedEntryOverhead : packedEntryOverhead+n]
		b = b[packedEntryOverhead+n:]
		if len(m) == 0 || m[0] == msgPacked {
			return
		}
		// A copy each: an event's bytes stay in the log (Record), and
		// should not keep the whole packet alive.
		c.handle(bytes.Clone(m))
	}
}

// packetBudget is the room for one packed packet under memberlist's UDP
// buffer size.
func packetBudget(mlc *memberlist.Config) int {
	label := 0
	if mlc.Label != "" {
		label = 2 + len(mlc.Label)
	}
	return max(mlc.UDPBufferSize-packetOverhead-label, maxGossipBytes+1+packedEntryOverhead)
}
