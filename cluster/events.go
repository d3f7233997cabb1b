package cluster

import "github.com/hashicorp/memberlist"

// events follows membership: it keeps the Cluster's copy of its peers and
// logs changes.
type events struct{ c *Cluster }

var _ memberlist.EventDelegate = (*events)(nil)

func (e *events) NotifyJoin(n *memberlist.Node) {
	e.c.setPeer(n)
	if n.Name != e.c.cfg.Name {
		e.c.log.Info("gossip peer joined", "peer", n.Name, "addr", n.Address())
	}
}

func (e *events) NotifyLeave(n *memberlist.Node) {
	if e.c.dropPeer(n) {
		e.c.log.Info("gossip peer left", "peer", n.Name, "addr", n.Address())
		return
	}
	e.c.log.Warn("gossip peer failed; joining it again while it is away", "peer", n.Name, "addr", n.Address())
}

func (e *events) NotifyUpdate(n *memberlist.Node) { e.c.setPeer(n) }
