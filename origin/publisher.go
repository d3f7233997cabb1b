package origin

import (
	"bytes"
	"context"
	"errors"
	"fmt"
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
//
// It recovers without an operator where it can and raises an alarm where it
// cannot:
//   - A publish that fails (NATS away, the stream gone, a JetStream store
//     that hit a write error such as a full disk) is retried with backoff;
//     after a failure (at most every 5 s), heal (set when NATS is embedded) checks
//     the embedded JetStream and restarts it if it is disabled or a stream
//     reports a write error: nats-server keeps such an error until its
//     stream is reopened, so without the restart publishing stays wedged
//     after the space is back (see jetstream.go).
//   - The stream holding something other than this store's event at a
//     revision (a message some other client published on an event subject,
//     or another origin's) cannot be repaired here: the publisher keeps
//     retrying, and reports the conflict once in the log, in the metric
//     keymesh_origin_stream_conflict and in /health (status "degraded"),
//     until a publish succeeds again.
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

	// heal, if set, repairs the JetStream server and reports what it did
	// ("" when nothing needed repair).
	heal func() (string, error)

	conflict  atomic.Bool   // the stream conflicts with the store
	since     atomic.Int64  // when publishing started failing (Unix ns; 0: it works)
	errors    atomic.Uint64 // failed drains
	restarts  atomic.Uint64 // JetStream restarts by heal
	conflicts atomic.Uint64 // conflicts detected (each episode once)
}

// maxHealEvery bounds how long publishing can stay wedged after the disk
// has room again: the next JetStream restart comes at most this late.
const maxHealEvery = 20 * time.Second

// errPublishTimeout: JetStream acknowledged none of the pending publishes in time.
var errPublishTimeout = errors.New("JetStream did not acknowledge the published events in time")

// errStreamConflict: the stream holds, at a revision of this store,
// something this store did not publish there.
var errStreamConflict = errors.New("the event stream holds a message this origin did not publish")

// health reports why publishing is degraded ("" when it is not). /health
// is open: the reason names the condition, the log has the details (paths,
// subjects, errors).
func (p *publisher) health() string {
	if p.conflict.Load() {
		return "stream conflict: the event stream holds a message this origin did not publish; publishing is stopped (see the origin log)"
	}
	if since := p.since.Load(); since != 0 && time.Since(time.Unix(0, since)) >= stalledAfter {
		return "publishing events to JetStream has failed for " + time.Since(time.Unix(0, since)).Round(time.Second).String() + " (see the origin log)"
	}
	return ""
}

// stalledAfter is how long publishing must fail before /health says so (a
// failure or two is a routine repair: NATS reconnecting, the stream being
// recreated).
const stalledAfter = 10 * time.Second

// streamDuplicates is the stream's de-duplication window.
const streamDuplicates = 2 * time.Minute

// streamSubjects are the subjects of the events the origin publishes
// (event.Subject of the kinds its store writes).
var streamSubjects = []string{
	event.SubjectPrefix + string(event.KindKey) + ".*",
	event.SubjectPrefix + string(event.KindDeployment) + ".*",
}

// pubOpts are the options of the publish of e: its revision as message id
// (a republish is a duplicate), the previous revision as the stream's last
// sequence (it lands at its revision or not at all), and the stream.
func pubOpts(e outboxEvent) []jetstream.PublishOpt {
	return []jetstream.PublishOpt{
		jetstream.WithMsgID(strconv.FormatUint(e.Revision, 10)),
		jetstream.WithExpectLastSequence(e.Revision - 1),
		jetstream.WithExpectStream(event.StreamName),
	}
}

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
	failures := 0
	var lastHeal, lastWarn time.Time
	// healEvery spaces JetStream checks; it doubles (to maxHealEvery) after
	// each restart that publishing did not follow, so a disk that stays
	// full does not restart JetStream every few seconds.
	healEvery := 5 * time.Second
	restarted := false // JetStream restarted since publishing last worked
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
			failures++
			p.errors.Add(1)
			p.since.CompareAndSwap(0, time.Now().UnixNano())
			if errors.Is(err, errStreamConflict) {
				if !p.conflict.Load() {
					p.conflicts.Add(1)
					p.log.Error("publishing stopped: the event stream holds a message this origin did not publish "+
						"(another client publishes on the event subjects, or another origin shares the stream); "+
						"retrying until the stream is repaired (see README, publisher alarms)", "err", err)
				}
				p.conflict.Store(true)
			} else if time.Since(lastWarn) >= time.Minute {
				// One line a minute while it fails, not one per retry.
				lastWarn = time.Now()
				p.log.Warn("publishing events failed; retrying", "err", err, "retry_in", backoff, "failures", failures)
			}
			if p.heal != nil && time.Since(lastHeal) >= healEvery {
				lastHeal = time.Now()
				what, herr := p.heal()
				switch {
				case herr != nil:
					p.log.Warn("restarting the embedded JetStream failed; retrying", "err", herr)
					healEvery = min(2*healEvery, maxHealEvery)
				case what != "":
					p.restarts.Add(1)
					if restarted {
						healEvery = min(2*healEvery, maxHealEvery)
					}
					restarted = true
					p.ready = false
					p.log.Warn("restarted the embedded JetStream", "reason", what)
					backoff = 100 * time.Millisecond
				}
			}
			select {
			case <-time.After(backoff):
			case <-p.quit:
			}
			backoff = min(backoff*2, maxBackoff)
			continue
		}
		if failures > 0 {
			p.log.Info("publishing events works again", "after_failures", failures)
			if p.conflict.Load() {
				p.log.Info("the event stream no longer conflicts with the store")
			}
			failures, lastWarn, healEvery, restarted = 0, time.Time{}, 5*time.Second, false
			p.conflict.Store(false)
			p.since.Store(0)
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
		// Only the subjects the origin publishes on: a message on any
		// other event subject is not stored, so cannot take a revision.
		Subjects: streamSubjects,
		// The origin never deletes single messages; nobody else may. (Not
		// DenyPurge: the origin purges to skip events its store pruned,
		// and a stream cannot lose DenyPurge again.)
		DenyDelete: true,
		Storage:    jetstream.FileStorage,
		Retention:  jetstream.LimitsPolicy,
		Discard:    jetstream.DiscardOld,
		MaxAge:     p.maxAge,
		Duplicates: streamDuplicates,
		Replicas:   p.replicas,
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
	republished := false
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
			if errors.Is(perr, errRepublish) && !republished {
				// A repair, not a failure: once per drain, at once.
				republished = true
				continue
			}
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
		f, err := p.js.PublishMsgAsync(&nats.Msg{Subject: e.Subject, Data: e.Payload}, pubOpts(e)...)
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
			if ack.Sequence != evs[i].Revision || ack.Duplicate {
				// Checked one by one below.
				break acks
			}
			p.live(evs[i])
			n++
		case <-f.Err():
			break acks
		case <-timer.C:
			// No answer at all (JetStream away or wedged): publishing the
			// rest one by one would only wait as long again.
			return n, errPublishTimeout
		case <-ctx.Done():
			return n, ctx.Err()
		}
	}
	for _, e := range evs[n:] {
		if err := p.publish(ctx, e); err != nil {
			return n, err
		}
		p.live(e)
		n++
	}
	return n, nil
}

// live republishes e, which the stream now holds at its revision, on its
// live subject (event.LiveSubject) over core NATS, at most once: edges
// apply it from there at once if it is their next revision, and take it
// from the stream otherwise (edge/feed). Only what the stream holds goes
// out live, so an edge never runs ahead of the stream; a live copy lost is
// no loss. Sent for every event publishBatch sees the stream hold, pipelined
// or published one by one after a refusal.
func (p *publisher) live(e outboxEvent) {
	_ = p.nc.Publish(event.LiveSubject(e.Revision), e.Payload)
}

// publish sends e and returns nil once the stream holds it at sequence
// e.Revision (sent now, or found there already); the caller marks it.
func (p *publisher) publish(ctx context.Context, e outboxEvent) error {
	pctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	ack, err := p.js.PublishMsg(pctx, &nats.Msg{Subject: e.Subject, Data: e.Payload}, pubOpts(e)...)
	if err == nil {
		if ack.Sequence != e.Revision {
			return fmt.Errorf("%w: the stream stored revision %d at sequence %d", errStreamConflict, e.Revision, ack.Sequence)
		}
		if ack.Duplicate {
			// A message with this revision's id was there already: ours
			// (published, not marked) or someone else's.
			return p.sameAt(pctx, e)
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
		return p.sameAt(pctx, e)
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
	return fmt.Errorf("%w from %d", errRepublish, last+1)
}

// errRepublish: the stream lacks events the store had marked published;
// they are unmarked, and the drain starts again from there.
var errRepublish = errors.New("event stream behind the store, republishing")

// sameAt returns nil if the stream holds e at sequence e.Revision (or no
// longer holds that sequence: aged out by limits, so it was published), and
// errStreamConflict if it holds something else there.
func (p *publisher) sameAt(ctx context.Context, e outboxEvent) error {
	if p.stream == nil {
		p.ready = false
		return errors.New("event stream not open")
	}
	msg, err := p.stream.GetMsg(ctx, e.Revision)
	if errors.Is(err, jetstream.ErrMsgNotFound) {
		return nil
	}
	if err != nil {
		return err
	}
	if msg.Subject != e.Subject || !bytes.Equal(msg.Data, e.Payload) {
		return fmt.Errorf("%w: at revision %d it holds a message on %q that differs from the store's event", errStreamConflict, e.Revision, msg.Subject)
	}
	return nil
}
