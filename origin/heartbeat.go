package origin

import (
	"context"
	"time"

	"github.com/keymesh/keymesh/event"
)

// startHeartbeat publishes a sealed KindHeartbeat every HeartbeatInterval
// naming the origin's committed head. Core NATS is enough: a lost
// heartbeat only makes an edge more careful.
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

// heartbeat seals and sends one heartbeat. Its revision is the committed
// head read from the store — the revision of the latest change the store
// has acknowledged, whichever replica committed it — never the published
// one: an edge that reports itself current must have applied every
// acknowledged change, so a publisher that cannot publish (the stream
// blocked, NATS refusing, a full disk) must show as edges falling behind,
// not as edges that are current with a head that stopped moving. The
// signed Time is taken before the read, so what the heartbeat says holds:
// every change acknowledged before Time has a revision at or below the one
// it names. An origin that cannot read its store sends nothing: it cannot
// vouch for anything.
func (s *Server) heartbeat() {
	at := time.Now().UTC()
	ctx, cancel := context.WithTimeout(context.Background(), s.cfg.HeartbeatInterval)
	defer cancel()
	head, err := s.store.revision(ctx, s.store.db)
	if err != nil {
		s.log.Warn("heartbeat not sent: reading the committed head", "err", err)
		return
	}
	// This process's own commits are acknowledged before the read above
	// can miss them; never announce less than those.
	head = max(head, s.rev.Load())
	wire, err := s.signer.Seal(&event.Record{Revision: head, Kind: event.KindHeartbeat, Time: at})
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
