package origin

import (
	"bytes"
	"context"
	"errors"
	"log/slog"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/keymesh/keymesh/event"
)

// publisher drains the events table to JetStream in revision order.
type publisher struct {
	store *Store
	nc    *nats.Conn
	js    jetstream.JetStream
	log   *slog.Logger
	poll  time.Duration
	// replicas of the stream (Config.StreamReplicas)
	replicas int

	wakeC   chan struct{}
	quit    chan struct{}
	done    chan struct{}
	once    sync.Once
	running atomic.Bool
	stream  jetstream.Stream
	ready   bool          // stream created or updated
	maxAge  time.Duration // the stream's MaxAge (Config.StreamMaxAge)
}

// streamDuplicates is the stream's de-duplication window.
const streamDuplicates = 2 * time.Minute

func newPublisher(st *Store, nc *nats.Conn, log *slog.Logger, poll time.Duration, replicas int) *publisher {
	js, _ := jetstream.New(nc) // only fails on nil conn
	return &publisher{store: st, nc: nc, js: js, log: log, poll: poll, replicas: replicas,
		wakeC: make(chan struct{}, 1), quit: make(chan struct{}), done: make(chan struct{})}
}

func (p *publisher) start() {
	p.running.Store(true)
	go p.run()
}

func (p *publisher) wake() {
	select {
	case p.wakeC <- struct{}{}:
	default:
	}
}

// stop ends the loop after one last drain attempt bounded by ctx (and 5 s).
func (p *publisher) stop(ctx context.Context) {
	p.once.Do(func() { close(p.quit) })
	if !p.running.Load() {
		return
	}
	select {
	case <-p.done:
	case <-ctx.Done():
	}
}

func (p *publisher) run() {
	defer close(p.done)
	backoff := 100 * time.Millisecond
	const maxBackoff = 5 * time.Second
	t := time.NewTicker(p.poll)
	defer t.Stop()
	for {
		ctx, cancel := context.WithCancel(context.Background())
		go func() {
			select {
			case <-p.quit:
				cancel()
			case <-ctx.Done():
			}
		}()
		err := p.drain(ctx)
		cancel()
		select {
		case <-p.quit:
			fctx, fcancel := context.WithTimeout(context.Background(), 5*time.Second)
			if err := p.drain(fctx); err != nil {
				p.log.Warn("final outbox drain incomplete; events will be published on next start", "err", err)
			}
			fcancel()
			return
		default:
		}
		if err != nil {
			p.log.Warn("publishing events failed; retrying", "err", err, "retry_in", backoff)
			select {
			case <-time.After(backoff):
			case <-p.quit:
			}
			backoff = min(backoff*2, maxBackoff)
			continue
		}
		backoff = 100 * time.Millisecond
		select {
		case <-p.wakeC:
		case <-t.C:
		case <-p.quit:
		}
	}
}

func (p *publisher) ensureStream(ctx context.Context) error {
	if p.ready {
		return nil
	}
	cctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	st, err := p.js.CreateOrUpdateStream(cctx, jetstream.StreamConfig{
		Name:        event.StreamName,
		Description: "keymesh change events; stream sequence = revision",
		Subjects:    []string{event.StreamSubjects},
		Storage:     jetstream.FileStorage,
		Retention:   jetstream.LimitsPolicy,
		Discard:     jetstream.DiscardOld,
		MaxAge:      p.maxAge,
		Duplicates:  streamDuplicates,
		Replicas:    p.replicas,
	})
	if err != nil {
		return err
	}
	p.stream, p.ready = st, true
	return nil
}

// drain publishes every unpublished event, oldest first.
func (p *publisher) drain(ctx context.Context) error {
	if err := p.ensureStream(ctx); err != nil {
		return err
	}
	for {
		evs, err := p.store.unpublished(ctx, 256)
		if err != nil {
			return err
		}
		if len(evs) == 0 {
			return nil
		}
		// Publish in order, then mark the run that reached the stream in
		// one statement (a crash in between republishes; JetStream's
		// Nats-Msg-Id and the expected sequence make that a no-op).
		n, perr := p.publishBatch(ctx, evs)
		if n > 0 {
			if err := p.store.markPublishedRange(ctx, evs[0].Revision, evs[n-1].Revision); err != nil {
				return err
			}
		}
		if perr != nil {
			return perr
		}
	}
}

// publishBatch pipelines evs to JetStream (asynchronous publishes, acks
// awaited in order) and returns how many leading events the stream now holds
// at their revision. Each publish expects the previous revision as the
// stream's last sequence, so a publish can only land right after its
// predecessor: from the first one refused (or not sent) on, the rest go
// through publish, which also sorts out events already in the stream and a
// stream that lost events.
func (p *publisher) publishBatch(ctx context.Context, evs []outboxEvent) (int, error) {
	futs := make([]jetstream.PubAckFuture, 0, len(evs))
	for _, e := range evs {
		f, err := p.js.PublishMsgAsync(&nats.Msg{Subject: e.Subject, Data: e.Payload},
			jetstream.WithMsgID(strconv.FormatUint(e.Revision, 10)),
			jetstream.WithExpectLastSequence(e.Revision-1))
		if err != nil {
			break
		}
		futs = append(futs, f)
	}
	n := 0
	timer := time.NewTimer(5 * time.Second)
	defer timer.Stop()
acks:
	for i, f := range futs {
		select {
		case ack := <-f.Ok():
			if ack.Sequence != evs[i].Revision {
				return n, errors.New("stream sequence differs from revision " + strconv.FormatUint(evs[i].Revision, 10) + " (got " + strconv.FormatUint(ack.Sequence, 10) + ")")
			}
			n++
		case <-f.Err():
			break acks
		case <-timer.C:
			break acks
		case <-ctx.Done():
			return n, ctx.Err()
		}
	}
	for _, e := range evs[n:] {
		if err := p.publish(ctx, e); err != nil {
			return n, err
		}
		n++
	}
	return n, nil
}

// publish sends e and returns nil once the stream holds it at sequence
// e.Revision (sent now, or found there already); the caller marks it.
func (p *publisher) publish(ctx context.Context, e outboxEvent) error {
	pctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	ack, err := p.js.PublishMsg(pctx, &nats.Msg{Subject: e.Subject, Data: e.Payload},
		jetstream.WithMsgID(strconv.FormatUint(e.Revision, 10)),
		jetstream.WithExpectLastSequence(e.Revision-1))
	if err == nil {
		if ack.Sequence != e.Revision {
			return errors.New("stream sequence differs from revision " + strconv.FormatUint(e.Revision, 10) + " (got " + strconv.FormatUint(ack.Sequence, 10) + ")")
		}
		return nil
	}
	var apiErr *jetstream.APIError
	if !errors.As(err, &apiErr) || apiErr.ErrorCode != jetstream.JSErrCodeStreamWrongLastSequence {
		// NATS away, or the stream gone (no responders): create or update
		// the stream again before the next attempt.
		p.ready = false
		return err
	}
	// The stream is not at revision-1: either this event was published and
	// not marked (a crash in between), or the stream lost events.
	info, ierr := p.stream.Info(pctx)
	if ierr != nil {
		return ierr
	}
	last := info.State.LastSeq
	if last >= e.Revision {
		msg, gerr := p.stream.GetMsg(pctx, e.Revision)
		if gerr == nil && !bytes.Equal(msg.Data, e.Payload) {
			p.log.Error("the event stream holds a different event at this revision; is it shared with another origin?", "revision", e.Revision)
			return errors.New("stream content conflicts with the store")
		}
		// Same bytes, or already purged by limits: it was published.
		return nil
	}
	p.log.Warn("event stream is behind the store; republishing", "stream_last_seq", last, "revision", e.Revision)
	first, err := p.store.firstEventRevision(ctx)
	if err != nil {
		return err
	}
	if first > last+1 {
		// The outbox no longer holds the events in between (pruned after
		// StreamMaxAge): move the stream past them. Edges see the gap and
		// drop their caches, as for events the stream aged out itself.
		p.log.Warn("the store no longer holds the events the stream lacks; the stream skips them", "from", last+1, "to", first-1)
		if err := p.stream.Purge(pctx, jetstream.WithPurgeSequence(first)); err != nil {
			return err
		}
		last = first - 1
	}
	if err := p.store.markUnpublishedAfter(ctx, last); err != nil {
		return err
	}
	return errors.New("stream behind store, republishing from " + strconv.FormatUint(last+1, 10))
}
