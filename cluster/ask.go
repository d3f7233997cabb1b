package cluster

import (
	"context"
	"encoding/binary"
	"fmt"
	"math/rand/v2"
	"sort"
	"sync"

	"github.com/hashicorp/memberlist"
)

// askFanout is how many peers one Ask goes to.
const askFanout = 3

// maxAsks bounds the Asks waiting for answers; over it, Ask fails at once.
const maxAsks = 1024

// asks are this node's Asks waiting for answers, by request id.
type asks struct {
	mu      sync.Mutex
	nextID  uint64
	waiting map[uint64]chan []byte
}

func (a *asks) init() { a.waiting = map[uint64]chan []byte{} }

func (a *asks) add(n int) (uint64, chan []byte, bool) {
	a.mu.Lock()
	defer a.mu.Unlock()
	if a.waiting == nil || len(a.waiting) >= maxAsks {
		return 0, nil, false
	}
	a.nextID++
	ch := make(chan []byte, 4*n)
	a.waiting[a.nextID] = ch
	return a.nextID, ch, true
}

func (a *asks) remove(id uint64) {
	a.mu.Lock()
	defer a.mu.Unlock()
	delete(a.waiting, id)
}

// answer hands a peer's answer to its Ask, if that still waits; it never
// blocks (each Ask's channel holds an answer from every peer asked).
func (a *asks) answer(id uint64, wire []byte) {
	a.mu.Lock()
	defer a.mu.Unlock()
	if ch, ok := a.waiting[id]; ok {
		select {
		case ch <- wire:
		default:
		}
	}
}

func (a *asks) closeAll() {
	a.mu.Lock()
	defer a.mu.Unlock()
	a.waiting = nil
}

// Ask asks up to three peers — the most advanced first — for the sealed
// record they hold for key (the edge: a key hash), and returns the first
// answer accept approves. Answers accept refuses (forged, say) are counted
// and the next one awaited. It returns ErrNoAnswer when every peer asked
// answered without an accepted record, or when ctx ends first.
func (c *Cluster) Ask(ctx context.Context, key []byte, accept func(wire []byte) bool) ([]byte, error) {
	if len(key) == 0 || len(key) > 255 {
		return nil, fmt.Errorf("cluster: ask key must be 1 to 255 bytes")
	}
	c.asksN.Add(1)
	peers := c.peerNodes()
	revs := make(map[string]uint64, len(peers))
	for _, n := range peers {
		revs[n.Name], _ = decodeMeta(n.Meta)
	}
	rand.Shuffle(len(peers), func(i, j int) { peers[i], peers[j] = peers[j], peers[i] })
	sort.SliceStable(peers, func(i, j int) bool { return revs[peers[i].Name] > revs[peers[j].Name] })
	if len(peers) > askFanout {
		peers = peers[:askFanout]
	}
	if len(peers) == 0 {
		return nil, fmt.Errorf("%w: no peers", ErrNoAnswer)
	}
	id, ch, ok := c.asks.add(len(peers))
	if !ok {
		return nil, fmt.Errorf("%w: too many asks waiting", ErrNoAnswer)
	}
	defer c.asks.remove(id)
	msg := binary.BigEndian.AppendUint64([]byte{msgAsk}, id)
	msg = append(msg, byte(len(key)))
	msg = append(msg, key...)
	msg = append(msg, c.cfg.Name...)
	for _, n := range peers {
		c.sendAsk(n, msg, ch)
	}
	// A refused answer does not end the wait: a forged one must not stop an
	// honest peer's answer from counting.
	for none := 0; none < len(peers); {
		select {
		case <-ctx.Done():
			return nil, fmt.Errorf("%w: %w", ErrNoAnswer, ctx.Err())
		case <-c.stop:
			return nil, ErrShutdown
		case wire := <-ch:
			if len(wire) == 0 {
				none++ // that peer holds none, or could not be asked
				continue
			}
			if accept(wire) {
				c.asksAnswered.Add(1)
				return wire, nil
			}
			c.answersRefused.Add(1)
		}
	}
	return nil, ErrNoAnswer
}

// sendAsk sends one Ask; a failed send counts as an empty answer, so the
// Ask need not wait for its deadline.
func (c *Cluster) sendAsk(n *memberlist.Node, msg []byte, ch chan []byte) {
	select {
	case c.sends <- struct{}{}:
	default:
		c.droppedSends.Add(1)
		noAnswer(ch)
		return
	}
	go func() {
		defer func() { <-c.sends }()
		if err := c.ml.SendReliable(n, msg); err != nil {
			c.log.Debug("gossip: asking peer", "peer", n.Name, "err", err)
			noAnswer(ch)
		}
	}()
}

func noAnswer(ch chan []byte) {
	select {
	case ch <- nil:
	default:
	}
}

// answerAsk answers a peer's Ask with what Config.Answer holds (an empty
// answer says "none").
func (c *Cluster) answerAsk(id uint64, key []byte, name string) {
	to := c.peer(name)
	if to == nil {
		return
	}
	var wire []byte
	if c.cfg.Answer != nil {
		wire = c.cfg.Answer(key)
	}
	if len(wire) > 0 {
		c.asksServed.Add(1)
	}
	msg := binary.BigEndian.AppendUint64([]byte{msgAnswer}, id)
	c.sendAsync(to, append(msg, wire...), nil)
}
