package origin

import (
	"time"

	"github.com/keymesh/keymesh/event"
)

// startHeartbeat publishes a sealed KindHeartbeat every HeartbeatInterval
// with the revision up to which every event is on the stream. Core NATS is
// enough: a lost heartbeat only makes an edge more careful.
func (s *Server) startHeartbeat() {
	s.hbStop, s.hbDone = make(chan struct{}), make(chan struct{})
	go func() {
		defer close(s.hbDone)
		t := time.NewTicker(s.cfg.HeartbeatInterval)
		defer t.Stop()
		for {
			s.heartbeat()
			select {
			case <-s.hbStop:
				return
			case <-t.C:
			}
		}
	}()
}

func (s *Server) heartbeat() {
	wire, err := s.signer.Seal(&event.Record{Revision: s.PublishedRevision(), Kind: event.KindHeartbeat, Time: time.Now().UTC()})
	if err != nil {
		s.log.Error("sealing heartbeat", "err", err)
		return
	}
	if err := s.nc.Publish(event.OriginHeartbeatSubject, wire); err != nil {
		s.log.Debug("heartbeat not sent", "err", err)
	}
}

func (s *Server) stopHeartbeat() {
	if s.hbStop == nil {
		return
	}
	close(s.hbStop)
	<-s.hbDone
}
