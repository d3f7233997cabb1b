package origin

import (
	"context"
	"time"
)

const (
	outboxPruneEvery = time.Hour // how often published events past StreamMaxAge are deleted
	outboxPruneRows  = 1000      // events deleted per transaction
)

// startOutboxPruner deletes published events older than StreamMaxAge from
// the store, now and every outboxPruneEvery: the stream drops them at that
// age too, so the outbox stays bounded (DESIGN invariant 5). Unpublished
// events are never deleted.
func (s *Server) startOutboxPruner() {
	s.prStop, s.prDone = make(chan struct{}), make(chan struct{})
	go func() {
		defer close(s.prDone)
		t := time.NewTicker(outboxPruneEvery)
		defer t.Stop()
		for {
			if _, err := s.pruneOutbox(time.Now()); err != nil {
				s.log.Warn("pruning published events", "err", err)
			}
			select {
			case <-s.prStop:
				return
			case <-t.C:
			}
		}
	}()
}

// pruneOutbox deletes the published events created before now minus
// StreamMaxAge and reports how many.
func (s *Server) pruneOutbox(now time.Time) (int64, error) {
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	go func() {
		select {
		case <-s.prStop:
			cancel()
		case <-ctx.Done():
		}
	}()
	before := now.Add(-s.cfg.StreamMaxAge)
	var total int64
	for {
		n, err := s.store.pruneEvents(ctx, before, outboxPruneRows)
		total += n
		if err != nil || n < outboxPruneRows {
			return total, err
		}
	}
}

func (s *Server) stopOutboxPruner() {
	if s.prStop == nil {
		return
	}
	close(s.prStop)
	<-s.prDone
}
