package cluster

import (
	"strconv"

	"github.com/hashicorp/memberlist"
)

// delegate is memberlist's view of the Cluster: metadata, user messages and
// the broadcast queue. None of it blocks.
type delegate struct{ c *Cluster }

var _ memberlist.Delegate = (*delegate)(nil)

// NodeMeta returns the metadata syncLoop last computed (revision, Info).
func (d *delegate) NodeMeta(limit int) []byte {
	m := *d.c.meta.Load()
	if len(m) > limit {
		return m[:8]
	}
	return m
}

// NotifyMsg copies the message (memberlist reuses the buffer) and queues it.
// An event received here is not re-broadcast yet: only once its consumer has
// verified it and called Record, so a forged message travels no further.
func (d *delegate) NotifyMsg(b []byte) { d.c.receive(b) }

// GetBroadcasts fills the room memberlist leaves in its own packets, from
// the same queues as the cluster's own gossip rounds (gossip.go).
func (d *delegate) GetBroadcasts(overhead, limit int) [][]byte {
	return d.c.takeBroadcasts(overhead, limit)
}

func (d *delegate) LocalState(join bool) []byte          { return nil }
func (d *delegate) MergeRemoteState(b []byte, join bool) {}

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

// heartbeatBroadcast is an origin heartbeat in the gossip queue: only the
// newest matters, so each replaces the one queued before it.
type heartbeatBroadcast struct{ msg []byte }

var _ memberlist.NamedBroadcast = (*heartbeatBroadcast)(nil)

func (b *heartbeatBroadcast) Invalidates(o memberlist.Broadcast) bool {
	_, ok := o.(*heartbeatBroadcast)
	return ok
}
func (b *heartbeatBroadcast) Message() []byte { return b.msg }
func (b *heartbeatBroadcast) Finished()       {}
func (b *heartbeatBroadcast) Name() string    { return "h" }
