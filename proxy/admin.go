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
	}
}

func (s *Server) serveStatus(w http.ResponseWriter, _ *http.Request) {
	w.Header().Set("Content-Type", "application/json")
	_ = json.NewEncoder(w).Encode(s.Status())
}
