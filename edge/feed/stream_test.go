package feed

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"slices"
	"sync"
	"testing"
	"time"

	"github.com/nats-io/nats-server/v2/server"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/keymesh/keymesh/bench"
	"github.com/keymesh/keymesh/event"
	"github.com/keymesh/keymesh/internal/testutil"
)

// streamOrigin is the origin's side of the real thing: an embedded NATS
// server with the event stream, records published at their revision as
// the origin's publisher does, and a snapshot responder.
type streamOrigin struct {
	*origin
	ns    *server.Server
	nc    *nats.Conn
	js    jetstream.JetStream
	mu    sync.Mutex // publishes and snapshots: one revision at a time
	sent  map[uint64]time.Time
	relay *bench.DelayRelay
}

func newStreamOrigin(t *testing.T, delay time.Duration) *streamOrigin {
	t.Helper()
	ns, err := server.NewServer(&server.Options{Host: "127.0.0.1", Port: -1, JetStream: true, StoreDir: t.TempDir(),
		NoLog: true, NoSigs: true})
	if err != nil {
		t.Fatal(err)
	}
	go ns.Start()
	if !ns.ReadyForConnections(10 * time.Second) {
		t.Fatal("nats server not ready")
	}
	t.Cleanup(ns.Shutdown)
	nc, err := nats.Connect(ns.ClientURL())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(nc.Close)
	js, err := jetstream.New(nc)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	// The origin's subjects (not event.StreamSubjects, which covers the
	// live copies too); in memory, so that a slow disk on a shared machine
	// does not delay what the test times.
	if _, err := js.CreateStream(ctx, jetstream.StreamConfig{Name: event.StreamName, Storage: jetstream.MemoryStorage,
		Subjects: []string{event.SubjectPrefix + "key.*", event.SubjectPrefix + "deployment.*"}}); err != nil {
		t.Fatal(err)
	}
	so := &streamOrigin{origin: newOrigin(t), ns: ns, nc: nc, js: js, sent: map[uint64]time.Time{}}
	if _, err := nc.Subscribe(event.SnapshotSubject, func(m *nats.Msg) {
		so.mu.Lock()
		w := so.seal(&event.Record{Revision: so.rev, Kind: event.KindSnapshot, Time: time.Now()})
		so.mu.Unlock()
		_ = m.Respond(w)
	}); err != nil {
		t.Fatal(err)
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := ns.Addr().String()
	so.relay = bench.NewDelayRelay(ln, delay, func() (net.Conn, error) { return net.DialTimeout("tcp", addr, 5*time.Second) })
	t.Cleanup(so.relay.Close)
	return so
}

// publish commits one key change and publishes it as the origin does (at
// its revision, or not at all, then its live copy), noting when.
func (so *streamOrigin) publish(t *testing.T, k event.Key) {
	t.Helper()
	so.mu.Lock()
	defer so.mu.Unlock()
	w := so.change(k)
	rev := so.rev
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	so.sent[rev] = time.Now()
	if _, err := so.js.Publish(ctx, event.Subject(event.KindKey, rev), w,
		jetstream.WithMsgID(fmt.Sprint(rev)), jetstream.WithExpectLastSequence(rev-1)); err != nil {
		t.Fatalf("publishing revision %d: %v", rev, err)
	}
	if err := so.nc.Publish(event.LiveSubject(rev), w); err != nil {
		t.Fatal(err)
	}
}

// edgeFeed is a Feed on a connection through the origin's delay relay,
// noting when each revision was passed on (applied).
type edgeFeed struct {
	*Feed
	mu     sync.Mutex
	at     map[uint64]time.Time
	live   map[uint64]bool // applied from the live subscription
	seen   uint64          // LiveApplied at the last record passed on
	order  []uint64
	closed bool
}

func newEdgeFeed(t *testing.T, so *streamOrigin) *edgeFeed {
	t.Helper()
	nc, err := nats.Connect("nats://"+so.relay.Addr(), nats.MaxReconnects(-1), nats.ReconnectWait(50*time.Millisecond))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(nc.Close)
	e := &edgeFeed{at: map[uint64]time.Time{}, live: map[uint64]bool{}}
	f, err := New(newView(t, so.origin), Config{Conn: nc, RetryInterval: 50 * time.Millisecond,
		Logger: slog.New(slog.NewTextHandler(io.Discard, nil)),
		OnVerified: func(rev uint64, _ []byte) {
			now := time.Now()
			e.mu.Lock()
			defer e.mu.Unlock()
			if _, ok := e.at[rev]; !ok {
				e.at[rev] = now
			}
			// Records are passed on under the feed's apply lock, and the
			// live path counts before it passes one on.
			if n := e.Feed.LiveApplied(); n != e.seen {
				e.seen, e.live[rev] = n, true
			}
			e.order = append(e.order, rev)
		}})
	if err != nil {
		t.Fatal(err)
	}
	e.Feed = f
	if err := f.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		_ = f.Shutdown(ctx)
	})
	select {
	case <-f.Synced():
	case <-time.After(10 * time.Second):
		t.Fatal("feed not synced within 10s")
	}
	return e
}

// waitApplied polls until the feed has applied rev.
func (e *edgeFeed) waitApplied(t *testing.T, rev uint64, within time.Duration) {
	t.Helper()
	testutil.CheckFor(t, within, 5*time.Millisecond, func() error {
		if got := e.v.AppliedRevision(); got < rev {
			return fmt.Errorf("applied %d of %d", got, rev)
		}
		return nil
	})
}

// passedOnOnce fails unless revisions 1..last were passed on exactly once
// each, in order.
func (e *edgeFeed) passedOnOnce(t *testing.T, last uint64) {
	t.Helper()
	e.mu.Lock()
	defer e.mu.Unlock()
	want := make([]uint64, last)
	for i := range want {
		want[i] = uint64(i + 1)
	}
	if !slices.Equal(e.order, want) {
		n := min(len(e.order), 20)
		t.Fatalf("passed on %d records (first %v), want revisions 1..%d once each, in order", len(e.order), e.order[:n], last)
	}
}

// Every change reaches an edge one network delay after it is published,
// at any moment. An ordered pull consumer alone does not: JetStream hands
// it a message only while one of its pull requests is outstanding at the
// server. When one expires (30s after it reached the server, the client's
// default) the next one is asked for only once the expiry's notice has
// reached the client, so it arrives a round trip later, and a change
// published in between waits for it — up to three one-way delays in all
// (the bench wan maxima of issue 17). The same holds for the first request
// of every new consumer. The live subscription applies the next revision
// as the server routes it.
//
// Through a relay of one-way delay d, the test publishes a change every
// 500ms (the client renews its request early once half its batch of 500 is
// used: too many changes would hide the expiry), then one every 10ms
// around the moment the first request expires. No change may reach the
// edge late by way of the stream (more than 2d after its publish: the pull
// window delays up to 3d); one that was late but came live was late for
// the machine's own reasons (a loaded CI runner), which this test does not
// judge. And the stream still passes every revision on once, in order.
func TestStreamChangesArriveOneDelayLate(t *testing.T) {
	const d = 50 * time.Millisecond
	so := newStreamOrigin(t, d)
	e := newEdgeFeed(t, so)
	start := time.Now() // the consumer's first pull request is on its way
	h := newSecret(t)
	dense := start.Add(jetstream.DefaultExpires - 500*time.Millisecond)
	until := start.Add(jetstream.DefaultExpires + 4*d + 500*time.Millisecond)
	for i := 0; time.Now().Before(until); i++ {
		k := linked(h, "d1")
		k.Name = fmt.Sprint(i)
		so.publish(t, k)
		pause := 10 * time.Millisecond
		if time.Now().Before(dense) {
			pause = min(500*time.Millisecond, time.Until(dense))
		}
		time.Sleep(pause) // the publishing pace, not synchronisation
	}
	last := so.rev
	e.waitApplied(t, last, 10*time.Second)
	e.passedOnOnce(t, last)

	e.mu.Lock()
	defer e.mu.Unlock()
	var worst time.Duration
	var worstRev uint64
	late := 0
	for rev := uint64(1); rev <= last; rev++ {
		lag := e.at[rev].Sub(so.sent[rev])
		if lag > worst {
			worst, worstRev = lag, rev
		}
		if lag > 2*d && !e.live[rev] {
			late++
		}
	}
	t.Logf("%d changes: slowest %s (revision %d, published %s after the feed synced), %d applied live",
		last, worst.Round(time.Millisecond), worstRev, so.sent[worstRev].Sub(start).Round(time.Millisecond), e.LiveApplied())
	if late > 0 {
		t.Fatalf("%d of %d changes came from the stream more than 2×%s after their publish (slowest %s, revision %d published %s after the feed synced): a change waited for the stream consumer's next pull request",
			late, last, d, worst.Round(time.Millisecond), worstRev, so.sent[worstRev].Sub(start).Round(time.Millisecond))
	}
	if e.LiveApplied() == 0 {
		t.Fatal("no change was applied from the live subscription")
	}
}

// While the edge's link is cut, changes are lost to its live subscription;
// once the link is back, the stream brings them in order, and live records
// ahead of what is applied are dropped, not applied out of order, and
// force no resynchronisation.
func TestStreamCatchesUpAfterCut(t *testing.T) {
	const d = 10 * time.Millisecond
	so := newStreamOrigin(t, d)
	e := newEdgeFeed(t, so)
	h := newSecret(t)
	so.publish(t, linked(h, "d1"))
	e.waitApplied(t, 1, 5*time.Second)
	so.relay.Cut()
	testutil.CheckFor(t, 5*time.Second, 5*time.Millisecond, func() error {
		if e.cfg.Conn.IsConnected() {
			return errors.New("still connected")
		}
		return nil
	})
	for range 5 {
		so.publish(t, linked(h, "d1"))
	}
	so.relay.Heal()
	e.waitApplied(t, 6, 10*time.Second)
	for range 5 {
		so.publish(t, linked(h, "d1"))
	}
	e.waitApplied(t, 11, 5*time.Second)
	e.passedOnOnce(t, 11)
	if n := e.v.Stats().Resyncs; n != 1 {
		t.Fatalf("%d snapshots taken, want only the first", n)
	}
}
