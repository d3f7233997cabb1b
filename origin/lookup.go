package origin

import (
	"context"
	"fmt"
	"time"

	"github.com/nats-io/nats.go"

	"github.com/keymesh/keymesh/apikey"
	"github.com/keymesh/keymesh/event"
)

const lookupTimeout = 5 * time.Second

// startResponders subscribes the key-lookup and snapshot responders in the
// queue group event.LookupQueue.
func (s *Server) startResponders() error {
	for subj, h := range map[string]func(context.Context, *nats.Msg) ([]byte, error){
		event.LookupKeySubject: s.answerKey,
		event.SnapshotSubject:  s.answerSnapshot,
	} {
		sub, err := s.nc.QueueSubscribe(subj, event.LookupQueue, s.responder(subj, h))
		if err != nil {
			return fmt.Errorf("subscribing %s: %w", subj, err)
		}
		_ = sub.SetPendingLimits(65536, 64<<20)
		s.subs = append(s.subs, sub)
	}
	// With NATS away (external cluster down at start) the subscriptions are
	// sent on reconnect; only wait for them when connected.
	if s.nc.IsConnected() {
		if err := s.nc.FlushTimeout(5 * time.Second); err != nil {
			s.log.Warn("nats flush after subscribing failed", "err", err)
		}
	}
	return nil
}

// responder runs h for each request on a bounded number of goroutines and
// replies with its sealed record, or an empty body with event.ErrorHeader.
func (s *Server) responder(subj string, h func(context.Context, *nats.Msg) ([]byte, error)) nats.MsgHandler {
	return func(m *nats.Msg) {
		if m.Reply == "" {
			return
		}
		s.lookupMu.Lock()
		if s.closed.Load() {
			s.lookupMu.Unlock()
			s.replyError(m, "origin shutting down")
			return
		}
		s.lookupWG.Add(1)
		s.lookupMu.Unlock()
		s.lookupSem <- struct{}{}
		go func() {
			defer func() { <-s.lookupSem; s.lookupWG.Done() }()
			ctx, cancel := context.WithTimeout(context.Background(), lookupTimeout)
			defer cancel()
			body, err := h(ctx, m)
			if err != nil {
				s.log.Warn("lookup failed", "subject", subj, "err", err)
				s.replyError(m, reasonFor(err))
				return
			}
			if err := m.Respond(body); err != nil {
				s.log.Debug("lookup reply not sent", "subject", subj, "err", err)
			}
		}()
	}
}

func reasonFor(err error) string {
	if fe, ok := err.(*FieldError); ok {
		return fe.Message
	}
	return "store unavailable"
}

func (s *Server) replyError(m *nats.Msg, reason string) {
	r := nats.NewMsg(m.Reply)
	r.Header.Set(event.ErrorHeader, reason)
	_ = m.RespondMsg(r)
}

func (s *Server) answerKey(ctx context.Context, m *nats.Msg) ([]byte, error) {
	if len(m.Data) != len(apikey.Hash{}) {
		return nil, &FieldError{Field: "hash", Message: "request must be the 32-byte key hash"}
	}
	var h apikey.Hash
	copy(h[:], m.Data)
	rev, k, notAfter, err := s.store.keyByHash(ctx, h)
	if err != nil {
		return nil, err
	}
	now := time.Now().UTC()
	if k == nil || (notAfter != nil && !now.Before(*notAfter)) {
		return s.signer.Seal(&event.Record{Revision: rev, Kind: event.KindKeyNotFound, Time: now, Hash: &h})
	}
	// Secrets past their end are left out; the asked one is live.
	live := k.Secrets[:0]
	for _, sec := range k.Secrets {
		if sec.NotAfter == nil || now.Before(*sec.NotAfter) {
			live = append(live, sec)
		}
	}
	k.Secrets = live
	rec := k.record(false)
	rec.Revision, rec.Time = rev, now
	return s.signer.Seal(rec)
}

func (s *Server) answerSnapshot(ctx context.Context, _ *nats.Msg) ([]byte, error) {
	rev, deps, err := s.store.snapshot(ctx)
	if err != nil {
		return nil, err
	}
	return s.signer.Seal(&event.Record{Revision: rev, Kind: event.KindSnapshot, Time: time.Now().UTC(), Deployments: deps})
}
