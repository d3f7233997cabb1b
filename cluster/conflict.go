package cluster

import "github.com/hashicorp/memberlist"

// conflicts hears of two nodes claiming one name. Memberlist keeps the one
// it knew first and ignores the other; a node that finds its own name taken
// while joining refuses to start (see Create), every other one logs and
// counts it.
type conflicts struct{ c *Cluster }

var _ memberlist.ConflictDelegate = (*conflicts)(nil)

func (d *conflicts) NotifyConflict(existing, other *memberlist.Node) {
	c := d.c
	c.conflicts.Add(1)
	if existing.Name == c.cfg.Name && c.joining.Load() {
		c.nameTaken.Store(true)
	}
	c.log.Error("gossip: two nodes use one name; give every edge a unique --node-name",
		"name", existing.Name, "known_addr", existing.Address(), "other_addr", other.Address())
}
