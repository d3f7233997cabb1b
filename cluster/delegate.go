package cluster

import (
	"encoding/binary"
	"strconv"

	"github.com/hashicorp/memberlist"
)

// delegate is memberlist's view of the Cluster: metadata, user messages and
// the broadcast queue. None of it blocks.
type delegate struct{ c *Cluster }

var _ memberlist.Delegate = (*delegate)(nil)

func (d *delegate) NodeMeta(limit int) []byte {
	return binary.BigEndian.AppendUint64(nil, d.c.metaRev.Load())
}

// NotifyMsg copies the message (memberlist reuses the buffer) and queues it.
// An event received here is not re-broadcast yet: only once its consumer has
// verified it and called Record, so a forged message travels no further.
func (d *delegate) NotifyMsg(b []byte) { d.c.receive(b) }

func (d *delegate) GetBroadcasts(overhead, limit int) [][]byte {
	return d.c.queue.GetBroadcasts(overhead, limit)
}

func (d *delegate) LocalState(join bool) []byte          { return nil }
func (d *delegate) MergeRemoteState(b []byte, join bool) {}

// events logs membership changes.
type events struct{ c *Cluster }

var _ memberlist.EventDelegate = (*events)(nil)

func (e *events) NotifyJoin(n *memberlist.Node) {
	e.c.setPeer(n, true)
	e.c.log.Info("gossip peer joined", "peer", n.Name, "addr", n.Address())
}

func (e *events) NotifyLeave(n *memberlist.Node) {
	e.c.setPeer(n, false)
	e.c.log.Info("gossip peer left", "peer", n.Name, "addr", n.Address())
}

func (e *events) NotifyUpdate(n *memberlist.Node) { e.c.setPeer(n, true) }

// eventBroadcast is one event in the gossip queue, named by its revision so
// that the same event is never queued twice.
type eventBroadcast struct {
	rev uint64
	msg []byte
}

var _ memberlist.NamedBroadcast = (*eventBroadcast)(nil)

func (b *eventBroadcast) Invalidates(o memberlist.Broadcast) bool {
	ob, ok := o.(*eventBroadcast)
	return ok && ob.rev == b.rev
}
func (b *eventBroadcast) Message() []byte { return b.msg }
func (b *eventBroadcast) Finished()       {}
func (b *eventBroadcast) Name() string    { return "e" + strconv.FormatUint(b.rev, 10) }
