package cluster

import (
	"encoding/binary"
	"math/rand/v2"
	"sort"
	"sync"
	"time"

	"github.com/hashicorp/memberlist"
)

// catchUp is the anti-entropy state: catch-up requests in flight, and how
// well each peer has answered them.
type catchUp struct {
	mu       sync.Mutex
	nextID   uint64
	inflight map[uint64]catchUpAsk
	health   map[string]*peerHealth
	waitFor  uint64 // the revision a peer was at last round, while we were behind
}

type catchUpAsk struct {
	peer    string
	sent    time.Time
	applied uint64 // our applied revision when asking
}

// peerHealth backs off a peer whose answers did not help.
type peerHealth struct {
	failures int
	next     time.Time // not asked before
}

func (u *catchUp) init() {
	u.inflight = map[uint64]catchUpAsk{}
	u.health = map[string]*peerHealth{}
}

// askTimeout is how long a catch-up answer may take before its peer counts
// as having failed.
func (c *Cluster) askTimeout() time.Duration { return max(5*c.cfg.SyncInterval, 500*time.Millisecond) }

// catchUpLoop compares our applied revision with the peers' every
// SyncInterval. Behind a peer for a whole round (the stream or gossip did
// not bring it meanwhile), it fetches from its own source, else asks
// peers that are ahead.
func (c *Cluster) catchUpLoop() {
	defer c.done.Done()
	t := time.NewTicker(c.cfg.SyncInterval)
	defer t.Stop()
	for {
		select {
		case <-c.stop:
			return
		case <-t.C:
		}
		if c.gone.Load() {
			continue
		}
		c.catchUpRound()
	}
}

func (c *Cluster) catchUpRound() {
	applied := c.cfg.Applied()
	var target uint64
	for _, n := range c.peerNodes() {
		if r, _ := decodeMeta(n.Meta); r > target {
			target = r
		}
	}
	c.catchUp.mu.Lock()
	lagging := c.catchUp.waitFor != 0 && applied < c.catchUp.waitFor
	c.catchUp.waitFor = 0
	if target > applied {
		c.catchUp.waitFor = target
	}
	c.catchUp.mu.Unlock()
	c.expireAsks(time.Now())
	if !lagging {
		return
	}
	if c.cfg.Fetch != nil {
		c.fetches.Add(1)
		err := c.cfg.Fetch(applied+1, target)
		if now := c.cfg.Applied(); err == nil && now > applied {
			return
		} else if err != nil {
			c.log.Debug("gossip: fetching missed events from our own source; asking peers", "from", applied+1, "err", err)
		}
	}
	c.askPeers(applied)
}

// askPeers sends catch-up requests to up to CatchUpPeers peers that are
// ahead: those that have answered well first, in random order, skipping
// any backed off or already asked.
func (c *Cluster) askPeers(applied uint64) {
	now := time.Now()
	type cand struct {
		n        *memberlist.Node
		failures int
		tie      uint64
	}
	var cands []cand
	c.catchUp.mu.Lock()
	busy := map[string]bool{}
	for _, a := range c.catchUp.inflight {
		busy[a.peer] = true
	}
	for _, n := range c.peerNodes() {
		r, _ := decodeMeta(n.Meta)
		if r <= applied || busy[n.Name] {
			continue
		}
		h := c.catchUp.health[n.Name]
		if h != nil && now.Before(h.next) {
			continue
		}
		f := 0
		if h != nil {
			f = h.failures
		}
		cands = append(cands, cand{n, f, rand.Uint64()})
	}
	sort.Slice(cands, func(i, j int) bool {
		if cands[i].failures != cands[j].failures {
			return cands[i].failures < cands[j].failures
		}
		return cands[i].tie < cands[j].tie
	})
	if len(cands) > c.cfg.CatchUpPeers {
		cands = cands[:c.cfg.CatchUpPeers]
	}
	type send struct {
		n   *memberlist.Node
		msg []byte
	}
	var sends []send
	for _, p := range cands {
		c.catchUp.nextID++
		id := c.catchUp.nextID
		c.catchUp.inflight[id] = catchUpAsk{peer: p.n.Name, sent: now, applied: applied}
		msg := binary.BigEndian.AppendUint64([]byte{msgCatchUp}, id)
		msg = binary.BigEndian.AppendUint64(msg, applied+1)
		msg = append(msg, c.cfg.Name...)
		sends = append(sends, send{p.n, msg})
	}
	c.catchUp.mu.Unlock()
	for _, s := range sends {
		c.asked.Add(1)
		c.sendAsync(s.n, s.msg, nil) // a lost request shows as a timeout
	}
}

// expireAsks counts requests unanswered for askTimeout as failures.
func (c *Cluster) expireAsks(now time.Time) {
	c.catchUp.mu.Lock()
	defer c.catchUp.mu.Unlock()
	for id, a := range c.catchUp.inflight {
		if now.Sub(a.sent) > c.askTimeout() {
			delete(c.catchUp.inflight, id)
			c.peerResult(a.peer, false, now)
		}
	}
}

// peerResult records whether a peer's answer helped; catchUp.mu held.
func (c *Cluster) peerResult(peer string, ok bool, now time.Time) {
	h := c.catchUp.health[peer]
	if h == nil {
		if ok {
			return
		}
		if len(c.catchUp.health) >= maxFailedPeers {
			clear(c.catchUp.health)
		}
		h = &peerHealth{}
		c.catchUp.health[peer] = h
	}
	if ok {
		delete(c.catchUp.health, peer)
		return
	}
	c.askFailures.Add(1)
	h.failures++
	backoff := c.cfg.SyncInterval << min(h.failures, 5)
	h.next = now.Add(backoff)
}

// answerCatchUp sends the requester what this node's log holds from rev on.
func (c *Cluster) answerCatchUp(id, from uint64, name string) {
	c.requests.Add(1)
	to := c.peer(name)
	if to == nil {
		return
	}
	batch := binary.BigEndian.AppendUint64([]byte{msgBatch}, id)
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
	if len(batch) == 9 {
		return // nothing to offer: the requester times out and asks another
	}
	c.sendAsync(to, batch, func() { c.answered.Add(1) })
}

// batch delivers a catch-up answer in order, then judges its sender by
// whether our applied revision moved.
func (c *Cluster) batch(id uint64, b []byte) {
	c.catchUp.mu.Lock()
	a, ok := c.catchUp.inflight[id]
	delete(c.catchUp.inflight, id)
	c.catchUp.mu.Unlock()
	for len(b) >= 12 {
		rev, n := binary.BigEndian.Uint64(b), int(binary.BigEndian.Uint32(b[8:]))
		if n > len(b)-12 {
			break
		}
		c.deliver(rev, b[12:12+n])
		b = b[12+n:]
	}
	if !ok {
		return // answered after its timeout: the events were still welcome
	}
	c.catchUp.mu.Lock()
	c.peerResult(a.peer, c.cfg.Applied() > a.applied, time.Now())
	c.catchUp.mu.Unlock()
}
