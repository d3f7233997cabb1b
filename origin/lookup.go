package origin

import (
	"context"
	"errors"
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
	for subj, h := range map[string]func(context.Context, *nats.Msg) ([][]byte, error){
		event.LookupKeySubject: one(s.answerKey),
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

// one adapts a handler answering with one message.
func one(h func(context.Context, *nats.Msg) ([]byte, error)) func(context.Context, *nats.Msg) ([][]byte, error) {
	return func(ctx context.Context, m *nats.Msg) ([][]byte, error) {
		b, err := h(ctx, m)
		if err != nil {
			return nil, err
		}
		return [][]byte{b}, nil
	}
}

// responder runs h for each request on a bounded number of goroutines and
// replies with its sealed records, one message each, in order, or an empty
// body with event.ErrorHeader.
func (s *Server) responder(subj string, h func(context.Context, *nats.Msg) ([][]byte, error)) nats.MsgHandler {
	return func(m *nats.Msg) {
		if m.Reply == "" {
			return
		}
		s.lookupMu.Lock()
		if s.closed.Load() {
			s.lookupMu.Unlock()
			s.countRefused(subj)
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
			bodies, err := h(ctx, m)
			if err != nil {
				s.log.Warn("lookup failed", "subject", subj, "err", err)
				s.replyError(m, reasonFor(err))
				return
			}
			for _, body := range bodies {
				if err := m.Respond(body); err != nil {
					s.log.Debug("lookup reply not sent", "subject", subj, "err", err)
					return
				}
			}
		}()
	}
}

// countRefused counts a request refused because the origin is stopping.
func (s *Server) countRefused(subj string) {
	switch subj {
	case event.LookupKeySubject:
		s.met.lookup(lookupShuttingDown)
	case event.SnapshotSubject:
		s.met.snapshot(snapshotShuttingDown)
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

// answerKey answers a key lookup, counting how (lookupResult).
func (s *Server) answerKey(ctx context.Context, m *nats.Msg) (_ []byte, err error) {
	found := false
	defer func() {
		var fe *FieldError
		switch {
		case errors.As(err, &fe):
			s.met.lookup(lookupInvalid)
		case err != nil:
			s.met.lookup(lookupError)
		case found:
			s.met.lookup(lookupFound)
		default:
			s.met.lookup(lookupNotFound)
		}
	}()
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
	found = true
	rec := k.record(false)
	rec.Revision, rec.Time = rev, now
	return s.signer.Seal(rec)
}

// answerSnapshot answers a snapshot request from one read of the store: a
// single KindSnapshot record (edges older than chunked snapshots), or,
// when the request has event.SnapshotChunksHeader, the deployments split
// into KindSnapshotChunk records of at most snapshotChunkBytes each.
func (s *Server) answerSnapshot(ctx context.Context, m *nats.Msg) (_ [][]byte, err error) {
	defer func() {
		if err != nil {
			s.met.snapshot(snapshotError)
		} else {
			s.met.snapshot(snapshotOK)
		}
	}()
	rev, deps, err := s.store.snapshot(ctx)
	if err != nil {
		return nil, err
	}
	now := time.Now().UTC()
	if m.Header.Get(event.SnapshotChunksHeader) == "" {
		b, err := s.signer.Seal(&event.Record{Revision: rev, Kind: event.KindSnapshot, Time: now, Deployments: deps})
		if err != nil {
			return nil, err
		}
		return [][]byte{b}, nil
	}
	budget := snapshotChunkBytes
	if mp := int(s.nc.MaxPayload()); mp > 0 {
		budget = min(budget, mp/2)
	}
	return sealChunks(s.signer, rev, now, deps, budget)
}

// snapshotChunkBytes bounds a snapshot chunk's deployments (their JSON);
// the record around them adds well under 1 KiB. It is far below NATS's
// default max_payload (1 MiB), and below half of whatever the server says.
const snapshotChunkBytes = 256 << 10

// sealChunks splits deps into consecutive chunks whose deployments' JSON
// stays within budget (a deployment larger than budget, which the API's
// field bounds rule out, gets a chunk of its own) and seals each as part
// of one answer at rev. An empty project is one empty chunk.
func sealChunks(signer *event.Signer, rev uint64, now time.Time, deps []event.Deployment, budget int) ([][]byte, error) {
	var groups [][]event.Deployment
	start, size := 0, 0
	for i := range deps {
		b, err := event.Marshal(&deps[i])
		if err != nil {
			return nil, fmt.Errorf("encoding deployment: %w", err)
		}
		if i > start && size+len(b)+1 > budget {
			groups = append(groups, deps[start:i])
			start, size = i, 0
		}
		size += len(b) + 1
	}
	groups = append(groups, deps[start:])
	if len(groups) > event.MaxSnapshotChunks {
		return nil, fmt.Errorf("snapshot of %d deployments needs %d chunks, over the %d an edge takes", len(deps), len(groups), event.MaxSnapshotChunks)
	}
	id := randomToken(12)
	out := make([][]byte, len(groups))
	for i, g := range groups {
		b, err := signer.Seal(&event.Record{Revision: rev, Kind: event.KindSnapshotChunk, Time: now, Deployments: g,
			Chunk: &event.Chunk{ID: id, Index: i, Count: len(groups)}})
		if err != nil {
			return nil, err
		}
		out[i] = b
	}
	return out, nil
}
