package edge

import (
	"encoding/json"
	"net/http"
	"time"
)

// status is the edge's /status document.
type status struct {
	Site            string `json:"site"`
	AppliedRevision uint64 `json:"applied_revision"`
	Deployments     int    `json:"deployments"`
	NATSConnected   bool   `json:"nats_connected"`
	Current         bool   `json:"current"`
	LastProofAt     string `json:"last_current_at"`
	// CommittedHead is the highest committed head the origin named in a
	// heartbeat (0: none heard since start); Behind, how far the applied
	// revision is below it.
	CommittedHead uint64 `json:"committed_head"`
	Behind        uint64 `json:"behind_committed_head"`
	// StalenessSeconds is how long ago the edge last proved it was
	// current; past MaxStalenessSeconds it is not, and StaleReason says
	// why (omitted while current).
	StalenessSeconds    float64 `json:"staleness_seconds"`
	MaxStalenessSeconds float64 `json:"max_staleness_seconds"`
	StaleReason         string  `json:"stale_reason,omitempty"`
	// Restored is true while the edge runs on state restored from its data
	// dir with no proof of currency since.
	Restored bool   `json:"restored_state"`
	FailMode string `json:"fail_mode"`
	Cache    any    `json:"cache"`
	ID       string `json:"id"`
	Audit    any    `json:"audit"`
	// Usage is the usage pipeline: the spool's depth, what was published
	// and dropped.
	Usage  UsageStats `json:"usage"`
	Gossip any        `json:"gossip,omitempty"`
}

// gossipStatus is the cluster view on /status: each peer with its applied
// revision, what it says about itself, and how far it is behind this edge
// (negative: ahead).
type gossipStatus struct {
	Name    string       `json:"name"`
	Addr    string       `json:"addr"`
	Members int          `json:"members"`
	Peers   []peerStatus `json:"peers"`
	// Behind is how many revisions the most advanced peer has that this
	// edge has not applied; MaxPeerLag, how far the slowest peer is behind.
	Behind     uint64 `json:"behind"`
	MaxPeerLag int64  `json:"max_peer_lag"`
	// Relaying lists the peers without NATS whose heartbeats this edge
	// publishes to the origins.
	Relaying []string `json:"relaying"`
	Stats    any      `json:"stats"`
	Rejected uint64   `json:"rejected_from_peers"`
	Dropped  uint64   `json:"held_dropped"`
	// PeerLookups counts misses sent to peers, PeerAnswers those answered.
	PeerLookups uint64 `json:"peer_lookups"`
	PeerAnswers uint64 `json:"peer_answers"`
	Error       string `json:"error,omitempty"`
}

type peerStatus struct {
	Name            string `json:"name"`
	Addr            string `json:"addr"`
	AppliedRevision uint64 `json:"applied_revision"`
	Lag             int64  `json:"lag"`
	ID              string `json:"id,omitempty"`
	Site            string `json:"site,omitempty"`
	Address         string `json:"address,omitempty"`
	NATSConnected   bool   `json:"nats_connected"`
}

// NATSConnected reports whether the edge's NATS connection is up.
func (n *Node) NATSConnected() bool { return n.nc.IsConnected() }

// Status returns what /status reports.
func (n *Node) Status() any {
	c := n.view.Currency()
	failMode := "closed"
	if n.cfg.FailOpen {
		failMode = "open-cached"
	}
	return status{
		Current:             c.Current,
		LastProofAt:         c.ProvenAt.UTC().Format(time.RFC3339Nano),
		CommittedHead:       c.Head,
		Behind:              c.Head - min(c.Head, c.Applied),
		StalenessSeconds:    c.Staleness.Seconds(),
		MaxStalenessSeconds: c.MaxStaleness.Seconds(),
		StaleReason:         c.Reason,
		Restored:            c.Restored,
		FailMode:            failMode,
		Site:                n.cfg.Site,
		AppliedRevision:     n.view.AppliedRevision(),
		Deployments:         len(n.view.Deployments().List()),
		NATSConnected:       n.nc.IsConnected(),
		Cache:               n.view.Stats(),
		ID:                  n.id,
		Audit:               n.auditStatus(),
		Usage:               n.UsageStats(),
		Gossip:              n.gossipStatus(),
	}
}

func (n *Node) auditStatus() map[string]uint64 {
	shipped, dropped, failed := n.AuditStats()
	return map[string]uint64{"shipped": shipped, "dropped": dropped, "failed": failed}
}

func (n *Node) gossipStatus() *gossipStatus {
	if n.gossip == nil {
		return nil
	}
	applied := n.view.AppliedRevision()
	st := n.gossip.Stats()
	g := &gossipStatus{Name: n.gossip.Name(), Addr: n.gossip.Addr(), Members: st.Members, Peers: []peerStatus{},
		Relaying: []string{}, Stats: st, PeerLookups: n.gossipHook.peerLookups.Load(), PeerAnswers: n.gossipHook.peerAnswers.Load()}
	g.Rejected, g.Dropped = n.GossipStats()
	for _, p := range n.gossip.Peers() {
		lag := int64(applied) - int64(p.Revision)
		g.Peers = append(g.Peers, peerStatus{Name: p.Name, Addr: p.Addr, AppliedRevision: p.Revision, Lag: lag,
			ID: p.ID, Site: p.Site, Address: p.Address, NATSConnected: p.NATS})
		g.MaxPeerLag = max(g.MaxPeerLag, lag)
		if lag < 0 {
			g.Behind = max(g.Behind, uint64(-lag))
		}
	}
	for _, p := range n.relayed() {
		g.Relaying = append(g.Relaying, p.Name)
	}
	if err := n.gossip.Err(); err != nil {
		g.Error = err.Error()
	}
	return g
}

func (n *Node) serveStatus(w http.ResponseWriter, _ *http.Request) {
	w.Header().Set("Content-Type", "application/json")
	_ = json.NewEncoder(w).Encode(n.Status())
}
