// Package feed keeps an edge's cache.View current from the origin over
// NATS: the JetStream event stream (resumed after the persisted revision,
// resynchronised from a snapshot when events were lost), the copies of
// them the origin republishes once the stream holds them (the live
// subscription: the next revision is applied from it at once, whatever the
// stream consumer's pull request is doing), the origin's heartbeats, and records offered by gossip peers,
// each verified by the View before it is applied and applied in revision
// order, once. It also
// persists the View's state and answers cache misses over NATS
// request/reply (NATSLookup). It is the edge's only link to the event
// stream; package cache itself knows nothing of NATS.
package feed

import (
	"context"
	"crypto/ed25519"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"sync"
	"sync/atomic"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/keymesh/keymesh/apikey"
	"github.com/keymesh/keymesh/cache"
	"github.com/keymesh/keymesh/event"
)

// Config configures a Feed. Zero fields take the documented defaults.
type Config struct {
	// Conn is the NATS connection events and snapshots come over. Required.
	Conn *nats.Conn
	// StatePath is where the applied revision and deployments are persisted;
	// empty means nothing is persisted and every start takes a snapshot.
	StatePath string
	// SaveInterval is how often changed state is written. Default 200ms.
	SaveInterval time.Duration
	// RequestTimeout bounds a snapshot request. Default 5s.
	RequestTimeout time.Duration
	// RetryInterval is the pause before reconnecting the event stream after
	// an error. Default 500ms.
	RetryInterval time.Duration
	// OnVerified, if set, is given every record once it is verified (from
	// the stream or offered by a peer), so it can be gossiped on.
	OnVerified func(rev uint64, wire []byte)
	// OnHeartbeat, if set, is given every origin heartbeat from NATS that
	// is genuine and newer than any seen, so it can be gossiped on.
	OnHeartbeat func(wire []byte)
	// Logger receives progress and errors. Default slog.Default().
	Logger *slog.Logger
}

// Feed keeps a View current from the origin's JetStream event stream. It
// resumes after the persisted revision, detects lost events (JetStream
// silently starts at the stream's first message when the asked-for one is
// gone) and then resynchronises from a snapshot, dropping cached keys.
type Feed struct {
	v      *cache.View
	cfg    Config
	log    *slog.Logger
	js     jetstream.JetStream
	synced chan struct{}
	once   sync.Once
	cancel context.CancelFunc
	done   chan struct{}
	hbSub  *nats.Subscription
	live   *nats.Subscription

	applyMu        sync.Mutex        // one applier at a time: stream or gossip
	pending        map[uint64][]byte // verified records ahead of a gap
	gossipRejected atomic.Uint64
	pendingDropped atomic.Uint64
	liveApplied    atomic.Uint64
	saved          uint64
}

// NATSLookup returns a Lookup that asks the origin's lookup responders over
// NATS request/reply.
func NATSLookup(nc *nats.Conn) cache.Lookup {
	return func(ctx context.Context, h apikey.Hash) ([]byte, error) {
		msg, err := nc.RequestWithContext(ctx, event.LookupKeySubject, h[:])
		if err != nil {
			return nil, err
		}
		return replyData(msg)
	}
}

func replyData(msg *nats.Msg) ([]byte, error) {
	if reason := msg.Header.Get(event.ErrorHeader); reason != "" {
		return nil, fmt.Errorf("origin: %s", reason)
	}
	return msg.Data, nil
}

// New validates cfg and restores persisted state into v. State signed
// by a key other than the View's origin key is discarded with one warning
// (the View then synchronises from a snapshot); any other unusable state is
// an error. Start begins consuming.
func New(v *cache.View, cfg Config) (*Feed, error) {
	if cfg.Conn == nil {
		return nil, errors.New("feed: Config.Conn is required")
	}
	if cfg.SaveInterval <= 0 {
		cfg.SaveInterval = 200 * time.Millisecond
	}
	if cfg.RequestTimeout <= 0 {
		cfg.RequestTimeout = 5 * time.Second
	}
	if cfg.RetryInterval <= 0 {
		cfg.RetryInterval = 500 * time.Millisecond
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.Default()
	}
	js, err := jetstream.New(cfg.Conn)
	if err != nil {
		return nil, fmt.Errorf("opening jetstream: %w", err)
	}
	f := &Feed{v: v, cfg: cfg, log: cfg.Logger, js: js, synced: make(chan struct{}), done: make(chan struct{}),
		pending: map[uint64][]byte{}}
	if cfg.StatePath != "" {
		s, ok, err := cache.LoadState(cfg.StatePath)
		if err != nil {
			return nil, err
		}
		if ok {
			switch err := v.Restore(s); {
			case errors.Is(err, event.ErrBadSignature):
				// Signed by another key: the origin's was rotated, or the edge
				// now follows another origin. Nothing in it can be trusted,
				// and nothing is lost by dropping it: the origin is the
				// authority and a snapshot brings everything back. Restore
				// changed nothing, so the View starts empty and syncs.
				f.log.Warn("persisted edge state is not signed by the origin public key; discarding it and resynchronising from the origin",
					"path", cfg.StatePath, "revision", s.Revision)
			case err != nil:
				return nil, fmt.Errorf("state in %s: %w", cfg.StatePath, err)
			default:
				f.saved = s.Revision
				f.log.Info("resuming from persisted state", "revision", s.Revision)
			}
		}
	}
	return f, nil
}

// Start consumes events and origin heartbeats in the background until
// Shutdown.
func (f *Feed) Start() error {
	sub, err := f.cfg.Conn.Subscribe(event.OriginHeartbeatSubject, func(m *nats.Msg) {
		fresh, err := f.v.Heartbeat(m.Data)
		if err != nil {
			f.log.Warn("dropping origin heartbeat", "err", err)
			return
		}
		if fresh && f.cfg.OnHeartbeat != nil {
			f.cfg.OnHeartbeat(m.Data)
		}
	})
	if err != nil {
		return fmt.Errorf("subscribing to origin heartbeats: %w", err)
	}
	f.hbSub = sub
	live, err := f.cfg.Conn.Subscribe(event.LiveSubjects, func(m *nats.Msg) { f.fromLive(m.Subject, m.Data) })
	if err != nil {
		_ = sub.Unsubscribe()
		return fmt.Errorf("subscribing to live events: %w", err)
	}
	f.live = live
	ctx, cancel := context.WithCancel(context.Background())
	f.cancel = cancel
	go f.run(ctx)
	return nil
}

// Synced is closed once the View holds deployments and the event stream is
// being consumed.
func (f *Feed) Synced() <-chan struct{} { return f.synced }

// Shutdown stops consuming and persists the state. It is safe to call twice.
func (f *Feed) Shutdown(ctx context.Context) error {
	if f.cancel == nil {
		return f.save()
	}
	_ = f.hbSub.Unsubscribe()
	_ = f.live.Unsubscribe()
	f.cancel()
	select {
	case <-f.done:
	case <-ctx.Done():
		return ctx.Err()
	}
	return f.save()
}

func (f *Feed) run(ctx context.Context) {
	defer close(f.done)
	var wg sync.WaitGroup
	defer wg.Wait()
	wg.Go(func() { f.saveLoop(ctx) })
	for {
		err := f.consume(ctx)
		if ctx.Err() != nil {
			return
		}
		f.log.Warn("event stream interrupted; retrying", "err", err, "applied", f.v.AppliedRevision())
		select {
		case <-ctx.Done():
			return
		case <-time.After(f.cfg.RetryInterval):
		}
	}
}

// consume runs one ordered consumer from the applied revision on, until an
// error or ctx ends.
func (f *Feed) consume(ctx context.Context) error {
	if !f.v.HasSnapshot() {
		if err := f.lockedResync(ctx, 0); err != nil {
			return err
		}
	}
	stream, err := f.js.Stream(ctx, event.StreamName)
	if err != nil {
		return fmt.Errorf("finding event stream: %w", err)
	}
	st := stream.CachedInfo().State
	if next := f.v.AppliedRevision() + 1; st.FirstSeq > next && st.LastSeq >= next {
		f.log.Warn("events lost from the stream; dropping cached state",
			"applied", next-1, "stream_first", st.FirstSeq)
		if err := f.lockedResync(ctx, st.FirstSeq-1); err != nil {
			return err
		}
	}
	cons, err := f.js.OrderedConsumer(ctx, event.StreamName, jetstream.OrderedConsumerConfig{
		DeliverPolicy: jetstream.DeliverByStartSequencePolicy,
		OptStartSeq:   f.v.AppliedRevision() + 1,
	})
	if err != nil {
		return fmt.Errorf("creating consumer: %w", err)
	}
	it, err := cons.Messages()
	if err != nil {
		return fmt.Errorf("consuming events: %w", err)
	}
	stop := context.AfterFunc(ctx, it.Stop)
	defer stop()
	defer it.Stop()
	f.once.Do(func() { close(f.synced) })
	for {
		msg, err := it.Next()
		if err != nil {
			return fmt.Errorf("reading events: %w", err)
		}
		var seq uint64
		if md, err := msg.Metadata(); err == nil {
			seq = md.Sequence.Stream
		}
		if err := f.fromStream(ctx, seq, msg.Data()); err != nil {
			return err
		}
	}
}

// fromStream applies one record from the JetStream stream, whose order is
// the revision order: a revision missing there is lost for good, so a gap
// means resynchronising. Records that fail verification are dropped (and
// counted by the View); their revision then shows up as a gap. A record
// at a sequence (seq: the revision, 0 if unknown) already applied, from
// the live subscription or a peer, is skipped unopened: it was verified
// and passed on once already.
func (f *Feed) fromStream(ctx context.Context, seq uint64, wire []byte) error {
	f.applyMu.Lock()
	defer f.applyMu.Unlock()
	if seq != 0 && seq <= f.v.AppliedRevision() {
		return nil
	}
	rev, err := f.v.Apply(wire)
	var gap *cache.GapError
	if errors.As(err, &gap) {
		f.log.Warn("revision gap in the event stream; dropping cached state", "applied", gap.Have, "next", gap.Got)
		if err := f.resync(ctx, gap.Got-1); err != nil {
			return err
		}
		rev, err = f.v.Apply(wire)
	}
	if err != nil {
		f.log.Warn("dropping event", "err", err)
		return nil
	}
	f.applied(rev, wire)
	return nil
}

// fromLive applies a record from the live subscription (event.LiveSubjects:
// the origin's copy of each event the stream has acknowledged) if it is the
// next revision, and otherwise drops it: the stream brings every revision in
// order anyway, so this path never holds records, never sees a gap and
// never resynchronises. It only removes the stream consumer's own latency
// from the common case: JetStream hands an ordered pull consumer a
// message only while one of its pull requests is outstanding at the
// server, and between a request's expiry and its successor's arrival (a
// round trip to the server) a change waits; see docs/design.md, "Edge
// feed". The subject names the revision, so a copy that is not the next
// one costs nothing; the next one is verified before the apply lock is
// taken (as Offer does): one that fails is counted by the View and
// dropped, as is one that is not the revision its subject names.
func (f *Feed) fromLive(subject string, wire []byte) {
	rev, ok := event.LiveRevision(subject)
	if !ok || rev != f.v.AppliedRevision()+1 || !f.v.HasSnapshot() {
		return
	}
	if rec, err := f.v.Verify(wire); err != nil || rec.Revision != rev {
		return
	}
	f.applyMu.Lock()
	defer f.applyMu.Unlock()
	if rev != f.v.AppliedRevision()+1 {
		return // the stream or a peer applied it meanwhile
	}
	if _, err := f.v.Apply(wire); err != nil {
		return // verified above: only a record the View refuses (counted)
	}
	f.liveApplied.Add(1)
	f.applied(rev, wire)
}

// LiveApplied reports how many records were applied from the live
// subscription (the rest of the stream's came through the consumer, or
// from peers).
func (f *Feed) LiveApplied() uint64 { return f.liveApplied.Load() }

// Offer takes a record from a gossip peer, which may come in any order:
// it is verified at once (a forged one goes no further), applied if it is
// the next revision, else held (bounded) until the ones before it arrive
// from the stream or from peers.
func (f *Feed) Offer(rev uint64, wire []byte) {
	rec, err := f.v.Verify(wire)
	if err != nil || rec.Revision != rev {
		f.gossipRejected.Add(1)
		return
	}
	f.applyMu.Lock()
	defer f.applyMu.Unlock()
	switch applied := f.v.AppliedRevision(); {
	case rev <= applied:
		return
	case rev == applied+1:
		if _, err := f.v.Apply(wire); err != nil {
			f.log.Warn("dropping gossiped event", "revision", rev, "err", err)
			return
		}
		f.applied(rev, wire)
	default:
		if len(f.pending) >= maxPending {
			f.pendingDropped.Add(1)
			return
		}
		f.pending[rev] = wire
		if f.cfg.OnVerified != nil {
			f.cfg.OnVerified(rev, wire)
		}
	}
}

// maxPending bounds the gossiped records held for an earlier gap.
const maxPending = 4096

// maxFetch bounds the events one Fetch reads from the stream.
const maxFetch = 1024

// ErrNotConnected is returned by Fetch when NATS is not connected.
var ErrNotConnected = errors.New("feed: not connected to NATS")

// Fetch reads the events from revision from to to (at most maxFetch) from
// the JetStream stream, whose sequence is the revision, and offers them in
// order: the gossip layer's first resort when a peer is ahead. It fails at
// once when NATS is not connected.
func (f *Feed) Fetch(from, to uint64) error {
	if !f.cfg.Conn.IsConnected() {
		return ErrNotConnected
	}
	ctx, cancel := context.WithTimeout(context.Background(), min(f.cfg.RequestTimeout, 2*time.Second))
	defer cancel()
	stream, err := f.js.Stream(ctx, event.StreamName)
	if err != nil {
		return fmt.Errorf("finding event stream: %w", err)
	}
	to = min(to, from+maxFetch-1)
	for seq := max(from, f.v.AppliedRevision()+1); seq <= to; seq++ {
		msg, err := stream.GetMsg(ctx, seq)
		if err != nil {
			return fmt.Errorf("reading event %d: %w", seq, err)
		}
		f.Offer(seq, msg.Data)
	}
	return nil
}

// applied runs after rev is applied, with applyMu held: it passes the
// record on and applies any held records that now follow.
func (f *Feed) applied(rev uint64, wire []byte) {
	if f.cfg.OnVerified != nil {
		f.cfg.OnVerified(rev, wire)
	}
	for {
		next := f.v.AppliedRevision() + 1
		w, ok := f.pending[next]
		if !ok {
			break
		}
		delete(f.pending, next)
		if _, err := f.v.Apply(w); err != nil {
			f.log.Warn("dropping held event", "revision", next, "err", err)
			break
		}
	}
	for r := range f.pending {
		if r <= f.v.AppliedRevision() {
			delete(f.pending, r)
		}
	}
}

// GossipStats reports records refused from peers and held ones dropped.
func (f *Feed) GossipStats() (rejected, dropped uint64) {
	return f.gossipRejected.Load(), f.pendingDropped.Load()
}

func (f *Feed) lockedResync(ctx context.Context, resume uint64) error {
	f.applyMu.Lock()
	defer f.applyMu.Unlock()
	return f.resync(ctx, resume)
}

// resync takes a snapshot; applyMu must be held.
func (f *Feed) resync(ctx context.Context, resume uint64) error {
	ctx, cancel := context.WithTimeout(ctx, f.cfg.RequestTimeout)
	defer cancel()
	start := time.Now()
	chunks, size, err := requestSnapshot(ctx, f.cfg.Conn)
	if err != nil {
		return fmt.Errorf("requesting snapshot: %w", err)
	}
	rev, err := f.v.ResyncChunks(chunks, resume)
	if err != nil {
		return fmt.Errorf("applying snapshot: %w", err)
	}
	f.log.Info("synchronised from snapshot", "revision", rev, "deployments", len(f.v.Deployments().List()),
		"chunks", len(chunks), "bytes", size, "took", time.Since(start).Round(time.Millisecond))
	return nil
}

// requestSnapshot asks for a chunked snapshot and collects the answer's
// messages on a private inbox until the first chunk's count has arrived
// (or ctx ends: an incomplete set is an error). It only collects; the View
// verifies the set (ResyncChunks). A one-message KindSnapshot answer (an
// older origin) is one chunk too.
func requestSnapshot(ctx context.Context, nc *nats.Conn) (chunks [][]byte, size int, err error) {
	inbox := nc.NewRespInbox()
	sub, err := nc.SubscribeSync(inbox)
	if err != nil {
		return nil, 0, err
	}
	defer func() { _ = sub.Unsubscribe() }()
	_ = sub.SetPendingLimits(event.MaxSnapshotChunks+1, 256<<20)
	req := nats.NewMsg(event.SnapshotSubject)
	req.Reply = inbox
	req.Header.Set(event.SnapshotChunksHeader, "1")
	if err := nc.PublishMsg(req); err != nil {
		return nil, 0, err
	}
	want := 1
	for len(chunks) < want {
		msg, err := sub.NextMsgWithContext(ctx)
		if err != nil {
			if len(chunks) > 0 {
				return nil, 0, fmt.Errorf("%d of %d chunks arrived: %w", len(chunks), want, err)
			}
			return nil, 0, err
		}
		if msg.Header.Get("Status") == "503" && len(msg.Data) == 0 {
			return nil, 0, nats.ErrNoResponders
		}
		data, err := replyData(msg)
		if err != nil {
			return nil, 0, err
		}
		if len(chunks) == 0 {
			if n := chunkCount(data); n > 1 && n <= event.MaxSnapshotChunks {
				want = n
			}
		}
		chunks = append(chunks, data)
		size += len(data)
	}
	return chunks, size, nil
}

// chunkCount reads the chunk count a sealed record claims, unverified: it
// only says how many messages to wait for; the View verifies every one.
func chunkCount(wire []byte) int {
	if len(wire) <= ed25519.SignatureSize {
		return 1
	}
	var r struct {
		Chunk *event.Chunk `json:"chunk"`
	}
	if json.Unmarshal(wire[ed25519.SignatureSize:], &r) != nil || r.Chunk == nil {
		return 1
	}
	return r.Chunk.Count
}

func (f *Feed) saveLoop(ctx context.Context) {
	if f.cfg.StatePath == "" {
		return
	}
	t := time.NewTicker(f.cfg.SaveInterval)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
			if f.v.AppliedRevision() != f.saved {
				if err := f.save(); err != nil {
					f.log.Error("persisting edge state", "err", err)
				}
			}
		}
	}
}

func (f *Feed) save() error {
	if f.cfg.StatePath == "" || !f.v.HasSnapshot() {
		return nil
	}
	s := f.v.State()
	if err := cache.SaveState(f.cfg.StatePath, s); err != nil {
		return err
	}
	f.saved = s.Revision
	return nil
}
