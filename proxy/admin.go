package proxy

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
	Cache           any    `json:"cache"`
	ID              string `json:"id"`
	Audit           any    `json:"audit"`
	Gossip          any    `json:"gossip,omitempty"`
}

// gossipStatus is the cluster view on /status: each peer with its applied
// revision and how far it is behind this edge (negative: ahead).
type gossipStatus struct {
	Name     string       `json:"name"`
	Peers    []peerStatus `json:"peers"`
	Stats    any          `json:"stats"`
	Rejected uint64       `json:"rejected_from_peers"`
	Dropped  uint64       `json:"held_dropped"`
}

type peerStatus struct {
	Name            string `json:"name"`
	Addr            string `json:"addr"`
	AppliedRevision uint64 `json:"applied_revision"`
	Lag             int64  `json:"lag"`
}

// Status returns what /status reports.
func (s *Server) Status() any {
	current, at := s.view.Current()
	return status{
		Current:         current,
		LastProofAt:     at.UTC().Format(time.RFC3339Nano),
		Site:            s.cfg.Site,
		AppliedRevision: s.view.AppliedRevision(),
		Deployments:     len(s.view.Deployments().List()),
		NATSConnected:   s.nc.IsConnected(),
		Cache:           s.view.Stats(),
		ID:              s.id,
		Audit:           s.auditStatus(),
		Gossip:          s.gossipStatus(),
	}
}

func (s *Server) auditStatus() map[string]uint64 {
	shipped, dropped, failed := s.AuditStats()
	return map[string]uint64{"shipped": shipped, "dropped": dropped, "failed": failed}
}

func (s *Server) gossipStatus() *gossipStatus {
	if s.gossip == nil {
		return nil
	}
	applied := s.view.AppliedRevision()
	g := &gossipStatus{Name: s.gossip.Name(), Peers: []peerStatus{}, Stats: s.gossip.Stats()}
	g.Rejected, g.Dropped = s.feed.GossipStats()
	for _, p := range s.gossip.Peers() {
		g.Peers = append(g.Peers, peerStatus{Name: p.Name, Addr: p.Addr, AppliedRevision: p.Revision,
			Lag: int64(applied) - int64(p.Revision)})
	}
	return g
}

func (s *Server) serveStatus(w http.ResponseWriter, _ *http.Request) {
	w.Header().Set("Content-Type", "application/json")
	_ = json.NewEncoder(w).Encode(s.Status())
}
