package proxy

import (
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/keymesh/keymesh/event"
)

// heartbeatCoalesce is how soon after applying new revisions an edge tells
// the origins; revisions applied within it share one heartbeat.
const heartbeatCoalesce = 20 * time.Millisecond

// edgeHeartbeat is what an edge publishes on event.EdgeHeartbeatSubject. It
// is not signed: it can only delay an origin's ?wait, never grant access.
type edgeHeartbeat struct {
	ID              string    `json:"id"`
	Site            string    `json:"site"`
	Address         string    `json:"address"`
	AppliedRevision uint64    `json:"applied_revision"`
	Time            time.Time `json:"time"`
}

// heartbeater publishes the edge's heartbeats until stopped.
type heartbeater struct {
	stop chan struct{}
	done chan struct{}
}

// ID returns the id this edge reports in heartbeats and audit records.
func (s *Server) ID() string { return s.id }

// startHeartbeat publishes a heartbeat now, every HeartbeatInterval, and
// within heartbeatCoalesce of the applied revision changing.
func (s *Server) startHeartbeat() {
	hb := &heartbeater{stop: make(chan struct{}), done: make(chan struct{})}
	s.hb = hb
	go func() {
		defer close(hb.done)
		every := time.NewTicker(s.cfg.HeartbeatInterval)
		defer every.Stop()
		// Checking an atomic every 20 ms is what coalescing costs; the View
		// offers no notification of applied revisions.
		check := time.NewTicker(heartbeatCoalesce)
		defer check.Stop()
		sent := s.publishHeartbeat()
		for {
			select {
			case <-hb.stop:
				return
			case <-every.C:
				sent = s.publishHeartbeat()
			case <-check.C:
				if s.view.AppliedRevision() != sent {
					sent = s.publishHeartbeat()
				}
			}
		}
	}()
}

// publishHeartbeat sends one heartbeat and returns the revision it carried.
func (s *Server) publishHeartbeat() uint64 {
	hb := edgeHeartbeat{ID: s.id, Site: s.cfg.Site, Address: s.Addr(),
		AppliedRevision: s.view.AppliedRevision(), Time: time.Now().UTC()}
	if hb.Address == "" {
		hb.Address = s.cfg.Listen
	}
	b, err := json.Marshal(hb)
	if err != nil {
		return hb.AppliedRevision
	}
	if err := s.nc.Publish(event.EdgeHeartbeatSubject, b); err != nil {
		s.log.Debug("edge heartbeat not sent", "err", err)
	}
	return hb.AppliedRevision
}

func (s *Server) stopHeartbeat() {
	if s.hb == nil {
		return
	}
	close(s.hb.stop)
	<-s.hb.done
}

// edgeID returns cfg.ID; else an id persisted in <DataDir>/edge-id (created
// at random); else hostname/listen-address when the port is fixed; else
// hostname plus a random suffix.
func edgeID(cfg *Config) (string, error) {
	if cfg.ID != "" {
		if len(cfg.ID) > 200 || strings.ContainsAny(cfg.ID, " \t\r\n") {
			return "", errors.New("edge id: at most 200 characters, no spaces")
		}
		return cfg.ID, nil
	}
	host, _ := os.Hostname()
	if host == "" {
		host = "edge"
	}
	if cfg.DataDir != "" {
		path := filepath.Join(cfg.DataDir, "edge-id")
		b, err := os.ReadFile(path)
		if err == nil {
			if id := strings.TrimSpace(string(b)); id != "" {
				return id, nil
			}
		} else if !errors.Is(err, os.ErrNotExist) {
			return "", fmt.Errorf("reading edge id: %w", err)
		}
		id := host + "-" + randomHex(6)
		if err := os.WriteFile(path, []byte(id+"\n"), 0o600); err != nil {
			return "", fmt.Errorf("writing edge id: %w", err)
		}
		return id, nil
	}
	if _, port, err := net.SplitHostPort(cfg.Listen); err == nil && port != "0" && port != "" {
		return host + "/" + cfg.Listen, nil
	}
	return host + "-" + randomHex(6), nil
}

func randomHex(n int) string {
	b := make([]byte, n)
	_, _ = rand.Read(b)
	return hex.EncodeToString(b)
}
