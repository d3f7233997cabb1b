package edge

import (
	"bytes"
	"context"
	"crypto/ed25519"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"
	"unicode/utf8"

	"github.com/nats-io/nats-server/v2/server"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/keymesh/keymesh/event"
	"github.com/keymesh/keymesh/internal/testutil"
)

// jsServer is an embedded NATS server with JetStream, restartable on its
// port with its store.
type jsServer struct {
	t    testing.TB
	dir  string
	port int
	mu   sync.Mutex
	ns   *server.Server
}

func startJS(t testing.TB) *jsServer {
	t.Helper()
	s := &jsServer{t: t, dir: t.TempDir(), port: -1}
	s.start()
	s.port = s.ns.Addr().(*net.TCPAddr).Port
	t.Cleanup(s.stop)
	return s
}

func (s *jsServer) start() {
	s.t.Helper()
	ns, err := server.NewServer(&server.Options{Host: "127.0.0.1", Port: s.port, JetStream: true, StoreDir: s.dir, NoLog: true, NoSigs: true})
	if err != nil {
		s.t.Fatal(err)
	}
	ns.Start()
	if !ns.ReadyForConnections(10 * time.Second) {
		s.t.Fatal("nats not ready")
	}
	s.mu.Lock()
	s.ns = ns
	s.mu.Unlock()
}

func (s *jsServer) stop() {
	s.mu.Lock()
	ns := s.ns
	s.ns = nil
	s.mu.Unlock()
	if ns != nil {
		ns.Shutdown()
		ns.WaitForShutdown()
	}
}

func (s *jsServer) url() string { return fmt.Sprintf("nats://127.0.0.1:%d", s.port) }

// client connects a test client (not the sink's connection).
func (s *jsServer) client() jetstream.JetStream {
	s.t.Helper()
	nc, err := nats.Connect(s.url())
	if err != nil {
		s.t.Fatal(err)
	}
	s.t.Cleanup(nc.Close)
	js, err := jetstream.New(nc)
	if err != nil {
		s.t.Fatal(err)
	}
	return js
}

// usageStream creates KEYMESH_USAGE as the origin does: every edge's
// usage subject, deduplicated by Nats-Msg-Id.
func usageStream(t testing.TB, js jetstream.JetStream) jetstream.Stream {
	t.Helper()
	st, err := js.CreateStream(context.Background(), jetstream.StreamConfig{Name: event.UsageStreamName,
		Subjects: []string{event.UsageStreamSubjects}, Storage: jetstream.FileStorage, Duplicates: 10 * time.Minute})
	if err != nil {
		t.Fatal(err)
	}
	return st
}

// streamMsgs returns the stream's records, one message each as an old
// edge published them: a batched message is split into its lines, each
// with its record's id as Nats-Msg-Id, after checking the message's own
// Nats-Msg-Id (usageBatchID of its records' ids).
func streamMsgs(t *testing.T, st jetstream.Stream) []*jetstream.RawStreamMsg {
	t.Helper()
	ctx := context.Background()
	info, err := st.Info(ctx)
	if err != nil {
		t.Fatal(err)
	}
	var out []*jetstream.RawStreamMsg
	for seq := info.State.FirstSeq; seq <= info.State.LastSeq && info.State.Msgs > 0; seq++ {
		m, err := st.GetMsg(ctx, seq)
		if err != nil {
			t.Fatal(err)
		}
		lines := bytes.Split(m.Data, []byte{'\n'})
		if len(lines) == 1 {
			out = append(out, m)
			continue
		}
		if len(lines) > usageMsgRecords || len(m.Data) > usageMsgBytes {
			t.Fatalf("message %d: %d records, %d bytes", m.Sequence, len(lines), len(m.Data))
		}
		var recs []spooled
		for _, l := range lines {
			var u event.Usage
			if err := json.Unmarshal(l, &u); err != nil {
				t.Fatalf("message %d: %v", m.Sequence, err)
			}
			recs = append(recs, spooled{id: u.ID})
			out = append(out, &jetstream.RawStreamMsg{Subject: m.Subject, Sequence: m.Sequence, Data: l,
				Header: nats.Header{jetstream.MsgIDHeader: {u.ID}}, Time: m.Time})
		}
		if id := m.Header.Get(jetstream.MsgIDHeader); id != usageBatchID(recs) {
			t.Fatalf("message %d: Nats-Msg-Id %q, want %q", m.Sequence, id, usageBatchID(recs))
		}
	}
	return out
}

// streamCount is how many records the stream holds.
func streamCount(t *testing.T, st jetstream.Stream) uint64 {
	t.Helper()
	return uint64(len(streamMsgs(t, st)))
}

// msgIDs returns the messages' Nats-Msg-Id headers, checking each body is
// the record with that id.
func msgIDs(t *testing.T, msgs []*jetstream.RawStreamMsg) []string {
	t.Helper()
	var ids []string
	for _, m := range msgs {
		var u event.Usage
		if err := json.Unmarshal(m.Data, &u); err != nil {
			t.Fatalf("message %d: %v", m.Sequence, err)
		}
		id := m.Header.Get(jetstream.MsgIDHeader)
		if id != u.ID {
			t.Fatalf("message %d: Nats-Msg-Id %q, record id %q", m.Sequence, id, u.ID)
		}
		ids = append(ids, id)
	}
	return ids
}

// deadURL is a NATS URL nothing listens on.
func deadURL(t testing.TB) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := ln.Addr().String()
	ln.Close()
	return "nats://" + addr
}

type testSink struct {
	*usageSink
	nc  *nats.Conn
	log *testutil.Buffer
}

// newTestSink connects as an edge does (reconnecting for ever) and starts
// a sink for edge "e1".
func newTestSink(t testing.TB, url, dataDir string, bound int64, queue int, start bool) *testSink {
	t.Helper()
	nc, err := nats.Connect(url, nats.MaxReconnects(-1), nats.RetryOnFailedConnect(true), nats.ReconnectWait(50*time.Millisecond))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(nc.Close)
	log := &testutil.Buffer{}
	u, err := newUsageSink(nc, "e1", dataDir, bound, queue, slog.New(slog.NewTextHandler(log, nil)))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { u.shutdown(context.Background()) })
	if start {
		u.start()
	}
	return &testSink{usageSink: u, nc: nc, log: log}
}

func usageRec(i int) *event.Usage {
	return &event.Usage{ID: fmt.Sprintf("u-%04d", i), Project: "p1", Deployment: "d1", Model: "m",
		PromptTokens: int64(i), CompletionTokens: 2 * int64(i), Status: 200, DurationMS: 12,
		Time: time.Date(2026, 12, 2, 12, 0, 0, i, time.UTC)}
}

func wantIDs(from, to int) []string {
	var ids []string
	for i := from; i < to; i++ {
		ids = append(ids, usageRec(i).ID)
	}
	return ids
}

// Every record is published once, on this edge's usage subject, with its
// id as Nats-Msg-Id, and forgotten once acknowledged; Usage copies the
// record (the caller reuses it at once).
func TestUsagePublishedOnceWithMsgID(t *testing.T) {
	ns := startJS(t)
	st := usageStream(t, ns.client())
	s := newTestSink(t, ns.url(), t.TempDir(), 1<<20, 1024, true)
	for i := range 50 {
		r := usageRec(i)
		s.Usage(r)
		r.ID, r.Project = "reused", "reused" // the proxy's record is its own again
	}
	s.Usage(&event.Usage{Project: "p1", Deployment: "d1"}) // no id: one is given
	testutil.CheckFor(t, 10*time.Second, 10*time.Millisecond, func() error {
		if n := streamCount(t, st); n != 51 {
			return fmt.Errorf("%d messages in the stream", n)
		}
		if st := s.stats(); st.Published != 51 || st.SpooledRecords != 0 || st.SpoolBytes != 0 {
			return fmt.Errorf("stats %+v", st)
		}
		return nil
	})
	msgs := streamMsgs(t, st)
	ids := msgIDs(t, msgs)
	if !slices.Equal(ids[:50], wantIDs(0, 50)) || ids[50] == "" {
		t.Fatalf("ids %v", ids)
	}
	for _, m := range msgs {
		var u event.Usage
		_ = json.Unmarshal(m.Data, &u)
		if m.Subject != event.EdgeSubject(event.EdgeUsageSubject, "e1") || u.Edge != "e1" || u.Project != "p1" {
			t.Fatalf("message %d on %s: %s", m.Sequence, m.Subject, m.Data)
		}
	}
	if st := s.stats(); st.PublishErrors != 0 || st.Dropped["queue_full"]+st.Dropped["spool_full"]+st.Dropped["corrupt"] != 0 {
		t.Fatalf("stats %+v", st)
	}
}

// NATS down (in the embedded default it goes down with the origin): the
// records wait on disk; NATS back: all are published, in order, each once.
func TestUsageSpooledWhileNATSDown(t *testing.T) {
	ns := startJS(t)
	st := usageStream(t, ns.client())
	dataDir := t.TempDir()
	s := newTestSink(t, ns.url(), dataDir, 1<<20, 1024, true)
	for i := range 10 {
		s.Usage(usageRec(i))
	}
	testutil.CheckFor(t, 10*time.Second, 10*time.Millisecond, func() error {
		if p := s.stats().Published; p != 10 {
			return fmt.Errorf("published %d", p)
		}
		return nil
	})
	ns.stop()
	testutil.CheckFor(t, 10*time.Second, 10*time.Millisecond, func() error {
		if s.nc.IsConnected() {
			return errors.New("still connected")
		}
		return nil
	})
	for i := 10; i < 110; i++ {
		s.Usage(usageRec(i))
	}
	testutil.CheckFor(t, 10*time.Second, 10*time.Millisecond, func() error {
		if st := s.stats(); st.SpooledRecords != 100 || st.SpoolBytes == 0 {
			return fmt.Errorf("stats %+v", st)
		}
		return nil
	})
	if size := dirSize(t, filepath.Join(dataDir, "usage")); size < s.stats().SpoolBytes {
		t.Fatalf("the spool holds %d bytes on disk, %d waiting", size, s.stats().SpoolBytes)
	}
	ns.start()
	testutil.CheckFor(t, 20*time.Second, 20*time.Millisecond, func() error {
		if n := streamCount(t, st); n != 110 {
			return fmt.Errorf("%d messages in the stream", n)
		}
		if st := s.stats(); st.SpooledRecords != 0 || st.Published < 110 {
			return fmt.Errorf("stats %+v", st)
		}
		return nil
	})
	if ids := msgIDs(t, streamMsgs(t, st)); !slices.Equal(ids, wantIDs(0, 110)) {
		t.Fatalf("stream ids %v", ids)
	}
	// What waited went batched: far fewer messages than records.
	if info, err := st.Info(context.Background()); err != nil || info.State.Msgs > 10+2*(100/usageMsgRecords+1) {
		t.Fatalf("stream %+v, %v", info.State, err)
	}
}

func dirSize(t *testing.T, dir string) int64 {
	t.Helper()
	ents, err := os.ReadDir(dir)
	if err != nil {
		t.Fatal(err)
	}
	var n int64
	for _, e := range ents {
		if fi, err := e.Info(); err == nil && strings.HasSuffix(e.Name(), usageSegExt) {
			n += fi.Size()
		}
	}
	return n
}

// A restarted edge publishes what its spool holds, what already reached
// the stream before (an ack lost in a crash) included.
func TestUsageRestartRepublishesSpool(t *testing.T) {
	ns := startJS(t)
	js := ns.client()
	st := usageStream(t, js)
	dataDir := t.TempDir()
	s1 := newTestSink(t, deadURL(t), dataDir, 1<<20, 1024, true)
	for i := range 30 {
		s1.Usage(usageRec(i))
	}
	testutil.CheckFor(t, 10*time.Second, 10*time.Millisecond, func() error {
		if n := s1.stats().SpooledRecords; n != 30 {
			return fmt.Errorf("%d spooled", n)
		}
		return nil
	})
	s1.shutdown(context.Background())
	// The first ten reached the stream before the edge went down.
	for i := range 10 {
		r := usageRec(i)
		r.Edge = "e1"
		data, _ := json.Marshal(r)
		if _, err := js.PublishMsg(context.Background(), &nats.Msg{Subject: event.EdgeSubject(event.EdgeUsageSubject, "e1"), Data: data},
			jetstream.WithMsgID(r.ID)); err != nil {
			t.Fatal(err)
		}
	}
	s2 := newTestSink(t, ns.url(), dataDir, 1<<20, 1024, true)
	testutil.CheckFor(t, 10*time.Second, 10*time.Millisecond, func() error {
		if st := s2.stats(); st.Published != 30 || st.SpooledRecords != 0 {
			return fmt.Errorf("stats %+v", st)
		}
		return nil
	})
	// The restarted edge cuts its records into another message than the
	// ten went in (one batch of 30): the stream, deduplicating by message,
	// keeps both copies of the ten, which the origin counts once each by
	// record id (usage_seen; origin TestUsageBatchMessage).
	if n := streamCount(t, st); n != 40 {
		t.Fatalf("%d records in the stream, want 40", n)
	}
	if ids := msgIDs(t, streamMsgs(t, st)); !slices.Equal(ids, append(wantIDs(0, 10), wantIDs(0, 30)...)) {
		t.Fatalf("stream ids %v", ids)
	}
	// Acknowledged records are not published again by the next start.
	s2.shutdown(context.Background())
	sp, corrupt, err := openDiskSpool(filepath.Join(dataDir, "usage"), 1<<20, slog.New(slog.DiscardHandler))
	if err != nil {
		t.Fatal(err)
	}
	defer sp.close()
	if n, _ := sp.depth(); n != 0 || corrupt != 0 {
		t.Fatalf("after publishing, the spool holds %d records (%d corrupt)", n, corrupt)
	}
}

// A crash leaves the spool's files as they were: a new edge on a copy of
// them (the crash image, taken while the sink runs) publishes every record.
func TestUsageCrashImageRepublished(t *testing.T) {
	ns := startJS(t)
	st := usageStream(t, ns.client())
	dataDir := t.TempDir()
	s1 := newTestSink(t, deadURL(t), dataDir, 1<<20, 1024, true)
	for i := range 20 {
		s1.Usage(usageRec(i))
	}
	testutil.CheckFor(t, 10*time.Second, 10*time.Millisecond, func() error {
		if n := s1.stats().SpooledRecords; n != 20 {
			return fmt.Errorf("%d spooled", n)
		}
		return nil
	})
	image := t.TempDir()
	copyDir(t, filepath.Join(dataDir, "usage"), filepath.Join(image, "usage"))
	s2 := newTestSink(t, ns.url(), image, 1<<20, 1024, true)
	testutil.CheckFor(t, 10*time.Second, 10*time.Millisecond, func() error {
		if n := streamCount(t, st); n != 20 {
			return fmt.Errorf("%d messages in the stream", n)
		}
		return nil
	})
	if ids := msgIDs(t, streamMsgs(t, st)); !slices.Equal(ids, wantIDs(0, 20)) {
		t.Fatalf("stream ids %v", ids)
	}
	if d := s2.stats().Dropped["corrupt"]; d != 0 {
		t.Fatalf("%d corrupt", d)
	}
}

func copyDir(t *testing.T, from, to string) {
	t.Helper()
	if err := os.MkdirAll(to, 0o700); err != nil {
		t.Fatal(err)
	}
	ents, err := os.ReadDir(from)
	if err != nil {
		t.Fatal(err)
	}
	for _, e := range ents {
		b, err := os.ReadFile(filepath.Join(from, e.Name()))
		if err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(filepath.Join(to, e.Name()), b, 0o600); err != nil {
			t.Fatal(err)
		}
	}
}

// spoolRecs encodes records from..to-1 as the writer does.
func spoolRecs(from, to int) []spooled {
	var out []spooled
	for i := from; i < to; i++ {
		r := usageRec(i)
		data, _ := json.Marshal(r)
		out = append(out, spooled{id: r.ID, data: data})
	}
	return out
}

func peekIDs(t *testing.T, sp spool) []string {
	t.Helper()
	recs, corrupt, err := sp.peek(1000)
	if err != nil || corrupt != 0 {
		t.Fatalf("peek: %v, %d corrupt", err, corrupt)
	}
	var ids []string
	for _, r := range recs {
		ids = append(ids, r.id)
	}
	return ids
}

// onlySegment returns the path of the one segment file in dir.
func onlySegment(t *testing.T, dir string) string {
	t.Helper()
	m, _ := filepath.Glob(filepath.Join(dir, "*"+usageSegExt))
	if len(m) != 1 {
		t.Fatalf("segments %v", m)
	}
	return m[0]
}

// A record torn by a crash (the file cut mid-record) is dropped and
// counted at the next start; those before it are kept, in order, and the
// spool goes on taking records after them. A record damaged on disk
// (checksum) ends what is read of its segment. Nothing panics.
func TestUsageSpoolTornTail(t *testing.T) {
	quiet := slog.New(slog.DiscardHandler)
	for _, tc := range []struct {
		name    string
		damage  func(b []byte) []byte
		keep    int
		corrupt int
	}{
		{"cut mid-record", func(b []byte) []byte { return b[:len(b)-3] }, 4, 1},
		{"cut mid-header", func(b []byte) []byte {
			return b[:len(b)-len(spoolRecs(4, 5)[0].data)-usageFrameHeader+5]
		}, 4, 1},
		{"bit flipped in record 2", func(b []byte) []byte {
			// Still JSON, with the id: only the checksum tells: 2 tokens become 3.
			recs := spoolRecs(0, 3)
			off := int(frameSize(recs[0].data)+frameSize(recs[1].data)) + usageFrameHeader
			off += strings.Index(string(recs[2].data), `"prompt_tokens":2`) + len(`"prompt_tokens":`)
			b[off] ^= 0x01
			return b
		}, 2, 1},
		{"garbage length", func(b []byte) []byte { return append(b, 0xff, 0xff, 0xff, 0xff, 1, 2, 3, 4, 5) }, 5, 1},
		{"intact", func(b []byte) []byte { return b }, 5, 0},
	} {
		t.Run(tc.name, func(t *testing.T) {
			dir := t.TempDir()
			sp, _, err := openDiskSpool(dir, 1<<20, quiet)
			if err != nil {
				t.Fatal(err)
			}
			if n, err := sp.append(spoolRecs(0, 5)); n != 5 || err != nil {
				t.Fatalf("append: %d %v", n, err)
			}
			if err := sp.close(); err != nil {
				t.Fatal(err)
			}
			path := onlySegment(t, dir)
			b, _ := os.ReadFile(path)
			if err := os.WriteFile(path, tc.damage(b), 0o600); err != nil {
				t.Fatal(err)
			}
			sp, corrupt, err := openDiskSpool(dir, 1<<20, quiet)
			if err != nil {
				t.Fatal(err)
			}
			defer sp.close()
			if corrupt != tc.corrupt {
				t.Fatalf("corrupt %d, want %d", corrupt, tc.corrupt)
			}
			if ids := peekIDs(t, sp); !slices.Equal(ids, wantIDs(0, tc.keep)) {
				t.Fatalf("kept %v", ids)
			}
			if n, _ := sp.depth(); n != int64(tc.keep) {
				t.Fatalf("depth %d", n)
			}
			// New records follow the kept ones, and survive a restart.
			if n, err := sp.append(spoolRecs(100, 102)); n != 2 || err != nil {
				t.Fatalf("append: %d %v", n, err)
			}
			want := append(wantIDs(0, tc.keep), wantIDs(100, 102)...)
			if ids := peekIDs(t, sp); !slices.Equal(ids, want) {
				t.Fatalf("after append %v", ids)
			}
			_ = sp.close()
			sp, corrupt, err = openDiskSpool(dir, 1<<20, quiet)
			if err != nil || corrupt != 0 {
				t.Fatalf("reopen: %v, %d corrupt", err, corrupt)
			}
			defer sp.close()
			if ids := peekIDs(t, sp); !slices.Equal(ids, want) {
				t.Fatalf("after restart %v", ids)
			}
		})
	}
}

// The sink counts the torn record in keymesh_edge_usage_dropped_total
// {reason="corrupt"} and publishes the others.
func TestUsageTornSpoolPublished(t *testing.T) {
	dataDir := t.TempDir()
	dir := filepath.Join(dataDir, "usage")
	sp, _, err := openDiskSpool(dir, 1<<20, slog.New(slog.DiscardHandler))
	if err != nil {
		t.Fatal(err)
	}
	if n, err := sp.append(spoolRecs(0, 5)); n != 5 || err != nil {
		t.Fatalf("append: %d %v", n, err)
	}
	_ = sp.close()
	path := onlySegment(t, dir)
	fi, _ := os.Stat(path)
	if err := os.Truncate(path, fi.Size()-10); err != nil {
		t.Fatal(err)
	}
	ns := startJS(t)
	st := usageStream(t, ns.client())
	s := newTestSink(t, ns.url(), dataDir, 1<<20, 1024, true)
	testutil.CheckFor(t, 10*time.Second, 10*time.Millisecond, func() error {
		if n := streamCount(t, st); n != 4 {
			return fmt.Errorf("%d messages in the stream", n)
		}
		return nil
	})
	if ids := msgIDs(t, streamMsgs(t, st)); !slices.Equal(ids, wantIDs(0, 4)) {
		t.Fatalf("stream ids %v", ids)
	}
	if d := s.stats().Dropped["corrupt"]; d != 1 {
		t.Fatalf("corrupt %d, want 1", d)
	}
	if !strings.Contains(s.log.String(), "torn or corrupt record dropped") {
		t.Fatalf("no log line for the torn record:\n%s", s.log.String())
	}
}

// A full spool drops new records and counts them, logs the episode once,
// and Usage never waits.
func TestUsageSpoolFullDropsWithoutBlocking(t *testing.T) {
	for _, persistent := range []bool{true, false} {
		t.Run(fmt.Sprintf("disk=%v", persistent), func(t *testing.T) {
			dataDir := ""
			if persistent {
				dataDir = t.TempDir()
			}
			const bound, n = 2048, 2000
			s := newTestSink(t, deadURL(t), dataDir, bound, usageQueueRecords, true)
			done := make(chan struct{})
			go func() {
				defer close(done)
				for i := range n {
					s.Usage(usageRec(i))
				}
			}()
			select {
			case <-done:
			case <-time.After(5 * time.Second):
				t.Fatal("Usage blocked on a full spool")
			}
			var st UsageStats
			testutil.CheckFor(t, 10*time.Second, 10*time.Millisecond, func() error {
				st = s.stats()
				if st.Queued != 0 || st.SpooledRecords+int64(st.Dropped["spool_full"]+st.Dropped["queue_full"]) != n {
					return fmt.Errorf("stats %+v", st)
				}
				return nil
			})
			if st.Dropped["spool_full"] == 0 || st.SpooledRecords == 0 || st.SpoolBytes > bound || st.Persistent != persistent {
				t.Fatalf("stats %+v", st)
			}
			if got := strings.Count(s.log.String(), "usage spool full"); got != 1 {
				t.Fatalf("%d log lines for one full episode:\n%s", got, s.log.String())
			}
			// The spooled ones are the first, in order.
			if ids := peekIDs(t, s.sp); !slices.Equal(ids, wantIDs(0, int(st.SpooledRecords))) {
				t.Fatalf("spooled %v", ids)
			}
		})
	}
}

// When the queue to the spool is full, Usage drops and counts at once.
func TestUsageQueueFullCounted(t *testing.T) {
	s := newTestSink(t, deadURL(t), t.TempDir(), 1<<20, 4, false) // the writer not running: the queue fills
	done := make(chan struct{})
	go func() {
		defer close(done)
		for i := range 10 {
			s.Usage(usageRec(i))
		}
	}()
	select {
	case <-done:
	case <-time.After(5 * time.Second):
		t.Fatal("Usage blocked on a full queue")
	}
	if st := s.stats(); st.Dropped["queue_full"] != 6 || st.Queued != 4 {
		t.Fatalf("stats %+v", st)
	}
	s.start()
	testutil.CheckFor(t, 10*time.Second, 10*time.Millisecond, func() error {
		if !strings.Contains(s.log.String(), "usage queue has room again") {
			return errors.New("no log line for the episode's end")
		}
		if n := s.stats().SpooledRecords; n != 4 {
			return fmt.Errorf("%d spooled", n)
		}
		return nil
	})
	if ids := peekIDs(t, s.sp); !slices.Equal(ids, wantIDs(0, 4)) {
		t.Fatalf("spooled %v", ids)
	}
	if log := s.log.String(); strings.Count(log, "usage queue full") != 1 || !strings.Contains(log, "dropped=6") {
		t.Fatalf("one episode, logged:\n%s", log)
	}
}

// A stream that does not exist (the origin has not created it yet) is a
// failed attempt: counted, the records kept until it exists.
func TestUsageStreamMissingKeepsRecords(t *testing.T) {
	ns := startJS(t)
	js := ns.client()
	s := newTestSink(t, ns.url(), t.TempDir(), 1<<20, 1024, true)
	for i := range 5 {
		s.Usage(usageRec(i))
	}
	testutil.CheckFor(t, 10*time.Second, 10*time.Millisecond, func() error {
		if st := s.stats(); st.PublishErrors == 0 || st.SpooledRecords != 5 {
			return fmt.Errorf("stats %+v", st)
		}
		return nil
	})
	st := usageStream(t, js)
	testutil.CheckFor(t, 20*time.Second, 20*time.Millisecond, func() error {
		if n := streamCount(t, st); n != 5 {
			return fmt.Errorf("%d messages in the stream", n)
		}
		return nil
	})
	if ids := msgIDs(t, streamMsgs(t, st)); !slices.Equal(ids, wantIDs(0, 5)) {
		t.Fatalf("stream ids %v", ids)
	}
	if got := strings.Count(s.log.String(), "usage records not published"); got != 1 {
		t.Fatalf("%d log lines for one failing episode:\n%s", got, s.log.String())
	}
}

// The Node wires the sink: records reach the stream, the metrics and
// /status show the pipeline, and Shutdown with NATS down keeps what was
// queued in the spool for the next start.
func TestNodeUsageWiredAndSpooledAtShutdown(t *testing.T) {
	ns := startJS(t)
	st := usageStream(t, ns.client())
	pub, _, err := ed25519.GenerateKey(nil)
	if err != nil {
		t.Fatal(err)
	}
	dataDir := t.TempDir()
	n, err := New(Config{Listen: "127.0.0.1:0", NATSURL: ns.url(), OriginPublicKey: pub, DataDir: dataDir, ID: "edge-u",
		Logger: slog.New(slog.DiscardHandler)})
	if err != nil {
		t.Fatal(err)
	}
	shut := false
	t.Cleanup(func() {
		if !shut {
			_ = n.Shutdown(context.Background())
		}
	})
	n.UsageSink().Usage(usageRec(0))
	testutil.CheckFor(t, 10*time.Second, 10*time.Millisecond, func() error {
		if c := streamCount(t, st); c != 1 {
			return fmt.Errorf("%d messages in the stream", c)
		}
		return nil
	})
	if m := streamMsgs(t, st)[0]; m.Subject != event.EdgeSubject(event.EdgeUsageSubject, "edge-u") {
		t.Fatalf("subject %s", m.Subject)
	}
	// The message reaches the stream before its acknowledgement reaches the
	// sink, which only then counts it published and trims the spool: poll.
	testutil.CheckFor(t, 10*time.Second, 10*time.Millisecond, func() error {
		fams, err := n.reg.Gather()
		if err != nil {
			return err
		}
		got := map[string]float64{}
		for _, f := range fams {
			for _, m := range f.GetMetric() {
				name := f.GetName()
				for _, l := range m.GetLabel() {
					name += "{" + l.GetName() + "=" + l.GetValue() + "}"
				}
				got[name] = m.GetCounter().GetValue() + m.GetGauge().GetValue()
			}
		}
		var errs []error
		for name, want := range map[string]float64{
			"keymesh_edge_usage_published_total": 1, "keymesh_edge_usage_publish_errors_total": 0,
			"keymesh_edge_usage_spooled_records": 0, "keymesh_edge_usage_spool_bytes": 0,
			"keymesh_edge_usage_dropped_total{reason=queue_full}": 0, "keymesh_edge_usage_dropped_total{reason=spool_full}": 0,
			"keymesh_edge_usage_dropped_total{reason=corrupt}": 0, "keymesh_edge_usage_dropped_total{reason=spool_error}": 0,
		} {
			if v, ok := got[name]; !ok || v != want {
				errs = append(errs, fmt.Errorf("%s = %v (present %v), want %v", name, v, ok, want))
			}
		}
		return errors.Join(errs...)
	})
	var status struct {
		Usage UsageStats `json:"usage"`
	}
	b, _ := json.Marshal(n.Status())
	if err := json.Unmarshal(b, &status); err != nil || status.Usage.Published != 1 || !status.Usage.Persistent {
		t.Fatalf("/status usage: %s", b)
	}

	ns.stop()
	testutil.CheckFor(t, 10*time.Second, 10*time.Millisecond, func() error {
		if n.NATSConnected() {
			return errors.New("still connected")
		}
		return nil
	})
	for i := 1; i <= 5; i++ {
		n.UsageSink().Usage(usageRec(i))
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	shut = true
	_ = n.Shutdown(ctx)
	sp, corrupt, err := openDiskSpool(filepath.Join(dataDir, "usage"), 1<<20, slog.New(slog.DiscardHandler))
	if err != nil {
		t.Fatal(err)
	}
	defer sp.close()
	if ids := peekIDs(t, sp); !slices.Equal(ids, wantIDs(1, 6)) || corrupt != 0 {
		t.Fatalf("spooled at shutdown %v (%d corrupt)", ids, corrupt)
	}
}

// Records span segments; acknowledged segments are deleted, the position
// inside one survives a restart (nothing acknowledged comes back), and
// losing it only brings back acknowledged records, never loses one.
func TestUsageSpoolSegments(t *testing.T) {
	quiet := slog.New(slog.DiscardHandler)
	dir := t.TempDir()
	const bound = 64 << 10 // segments of 4 KiB
	sp, _, err := openDiskSpool(dir, bound, quiet)
	if err != nil {
		t.Fatal(err)
	}
	for i := 0; i < 100; i += 10 { // a batch goes to one segment
		if n, err := sp.append(spoolRecs(i, i+10)); n != 10 || err != nil {
			t.Fatalf("append: %d %v", n, err)
		}
	}
	segs := func() int {
		m, _ := filepath.Glob(filepath.Join(dir, "*"+usageSegExt))
		return len(m)
	}
	if segs() < 4 {
		t.Fatalf("%d segments for 100 records", segs())
	}
	before := segs()
	recs, _, _ := sp.peek(30)
	if err := sp.ack(recs); err != nil {
		t.Fatal(err)
	}
	if segs() >= before {
		t.Fatalf("acknowledged segments kept: %d, were %d", segs(), before)
	}
	if err := sp.close(); err != nil {
		t.Fatal(err)
	}
	sp, _, err = openDiskSpool(dir, bound, quiet)
	if err != nil {
		t.Fatal(err)
	}
	if ids := peekIDs(t, sp); !slices.Equal(ids, wantIDs(30, 100)) {
		t.Fatalf("after restart %v", ids)
	}
	if n, b := sp.depth(); n != 70 || b > dirSize(t, dir) || b <= 0 {
		t.Fatalf("depth %d %d", n, b)
	}
	_ = sp.close()

	// Without the saved position, the segments are read from their start.
	_ = os.Remove(filepath.Join(dir, usageAckFile))
	sp, _, err = openDiskSpool(dir, bound, quiet)
	if err != nil {
		t.Fatal(err)
	}
	ids := peekIDs(t, sp)
	if len(ids) < 70 || !slices.Equal(ids[len(ids)-70:], wantIDs(30, 100)) {
		t.Fatalf("without the position %v", ids)
	}
	// Everything acknowledged: the files go, and numbering goes on past
	// the saved position (a new segment is never taken for acknowledged).
	for {
		recs, _, _ := sp.peek(1000)
		if len(recs) == 0 {
			break
		}
		_ = sp.ack(recs)
	}
	_ = sp.close()
	if segs() != 0 {
		t.Fatalf("%d segments left with nothing waiting", segs())
	}
	for round := range 3 {
		// The saved position is written without fsync: a machine crash
		// may bring back the one from before this start.
		oldAck, err := os.ReadFile(filepath.Join(dir, usageAckFile))
		if err != nil {
			t.Fatal(err)
		}
		sp, _, err = openDiskSpool(dir, bound, quiet)
		if err != nil {
			t.Fatal(err)
		}
		if n, err := sp.append(spoolRecs(200+round, 201+round)); n != 1 || err != nil {
			t.Fatalf("append: %d %v", n, err)
		}
		_ = sp.close()
		if err := os.WriteFile(filepath.Join(dir, usageAckFile), oldAck, 0o600); err != nil {
			t.Fatal(err)
		}
		sp, _, err = openDiskSpool(dir, bound, quiet)
		if err != nil {
			t.Fatal(err)
		}
		if ids := peekIDs(t, sp); !slices.Equal(ids, wantIDs(200+round, 201+round)) {
			t.Fatalf("round %d: %v", round, ids)
		}
		recs, _, _ := sp.peek(10)
		_ = sp.ack(recs)
		_ = sp.close()
	}
	// The bound: what waits never passes it.
	sp, _, err = openDiskSpool(dir, bound, quiet)
	if err != nil {
		t.Fatal(err)
	}
	defer sp.close()
	n := 0
	for i := 1000; i < 2000; i += 10 {
		k, _ := sp.append(spoolRecs(i, i+10))
		n += k
	}
	if _, b := sp.depth(); n == 0 || n == 1000 || b > bound || dirSize(t, dir) > bound+sp.segMax {
		t.Fatalf("took %d, %d bytes waiting, %d on disk, bound %d", n, b, dirSize(t, dir), bound)
	}
}

// Shutdown moves what is still queued to the spool: the next start
// publishes it.
func TestUsageShutdownSpoolsQueue(t *testing.T) {
	dataDir := t.TempDir()
	s := newTestSink(t, deadURL(t), dataDir, 1<<20, 1024, false) // no writer: all of it is queued at shutdown
	for i := range 7 {
		s.Usage(usageRec(i))
	}
	s.shutdown(context.Background())
	sp, corrupt, err := openDiskSpool(filepath.Join(dataDir, "usage"), 1<<20, slog.New(slog.DiscardHandler))
	if err != nil {
		t.Fatal(err)
	}
	defer sp.close()
	if ids := peekIDs(t, sp); !slices.Equal(ids, wantIDs(0, 7)) || corrupt != 0 {
		t.Fatalf("spooled at shutdown %v (%d corrupt)", ids, corrupt)
	}
	if !strings.Contains(s.log.String(), "wait in the spool for the next start") {
		t.Fatalf("log:\n%s", s.log.String())
	}
}

// A client-chosen string (the model name), however long, cannot make its
// record too large to spool: it is cut, at a rune boundary, and the
// record kept.
func TestUsageLongStringsCut(t *testing.T) {
	dataDir := t.TempDir()
	s := newTestSink(t, deadURL(t), dataDir, 1<<20, 1024, false)
	r := usageRec(0)
	r.Model = strings.Repeat("é", 100_000)
	s.Usage(r)
	s.Usage(usageRec(1))
	s.shutdown(context.Background())
	sp, corrupt, err := openDiskSpool(filepath.Join(dataDir, "usage"), 1<<20, slog.New(slog.DiscardHandler))
	if err != nil {
		t.Fatal(err)
	}
	defer sp.close()
	recs, _, _ := sp.peek(10)
	if len(recs) != 2 || corrupt != 0 {
		t.Fatalf("%d records spooled, %d corrupt", len(recs), corrupt)
	}
	var got event.Usage
	if err := json.Unmarshal(recs[0].data, &got); err != nil {
		t.Fatal(err)
	}
	if got.ID != r.ID || len(got.Model) == 0 || len(got.Model) > usageMaxString || !utf8.ValidString(got.Model) {
		t.Fatalf("model of %d bytes (valid UTF-8 %v), id %q", len(got.Model), utf8.ValidString(got.Model), got.ID)
	}
}

// Usage copies the record into the queue without allocating (once the
// queue has grown): the request path pays a copy and a lock.
func TestUsageQueueCopiesWithoutAllocating(t *testing.T) {
	s := newTestSink(t, deadURL(t), "", 1<<20, 100_000, false)
	s.pending = make([]event.Usage, 0, 1000)
	r := usageRec(1)
	if n := testing.AllocsPerRun(200, func() { s.Usage(r) }); n != 0 {
		t.Fatalf("Usage allocates %v times, want 0", n)
	}
}

// What this process just wrote is published from memory, not read back:
// damage on disk after the write does not reach the publisher (whose
// copy is what was written), and the memory goes once acknowledged.
func TestUsageSpoolPeeksWrittenRecordsFromMemory(t *testing.T) {
	dir := t.TempDir()
	sp, _, err := openDiskSpool(dir, 1<<20, slog.New(slog.DiscardHandler))
	if err != nil {
		t.Fatal(err)
	}
	defer sp.close()
	if n, err := sp.append(spoolRecs(0, 20)); n != 20 || err != nil {
		t.Fatalf("append: %d %v", n, err)
	}
	b, err := os.ReadFile(onlySegment(t, dir))
	if err != nil {
		t.Fatal(err)
	}
	for i := usageFrameHeader; i < len(b); i++ {
		b[i] = 'X'
	}
	if err := os.WriteFile(onlySegment(t, dir), b, 0o600); err != nil {
		t.Fatal(err)
	}
	recs, corrupt, err := sp.peek(1000)
	if err != nil || corrupt != 0 || len(recs) != 20 {
		t.Fatalf("peek: %d records, %d corrupt, %v", len(recs), corrupt, err)
	}
	want := spoolRecs(0, 20)
	for i, r := range recs {
		if r.id != want[i].id || !bytes.Equal(r.data, want[i].data) {
			t.Fatalf("record %d: %s %s", i, r.id, r.data)
		}
	}
	if err := sp.ack(recs); err != nil {
		t.Fatal(err)
	}
	if r, by := sp.depth(); r != 0 || by != 0 || sp.tailBytes != 0 || sp.head != len(sp.tail) {
		t.Fatalf("depth %d %d, tail %d bytes, %d of %d", r, by, sp.tailBytes, sp.head, len(sp.tail))
	}
}

// The memory kept is bounded: beyond it, records are read back from
// disk, and whichever way each comes, all are published in order, each
// once, across segments; the memory goes as they are acknowledged.
func TestUsageSpoolTailBounded(t *testing.T) {
	dir := t.TempDir()
	sp, _, err := openDiskSpool(dir, 1<<20, slog.New(slog.DiscardHandler))
	if err != nil {
		t.Fatal(err)
	}
	defer sp.close()
	frame := frameSize(spoolRecs(0, 1)[0].data)
	sp.tailMax = 7 * frame
	sp.segMax = 10 * frame
	var got []string
	next := 0
	for round := 0; next < 200 || len(got) < 200; round++ {
		if next < 200 {
			k := min(1+round%23, 200-next) // batches bigger and smaller than the tail
			if n, err := sp.append(spoolRecs(next, next+k)); n != k || err != nil {
				t.Fatalf("append: %d %v", n, err)
			}
			next += k
		}
		if sp.tailBytes > sp.tailMax {
			t.Fatalf("tail %d bytes, bound %d", sp.tailBytes, sp.tailMax)
		}
		recs, corrupt, err := sp.peek(1 + round%5)
		if err != nil || corrupt != 0 {
			t.Fatalf("peek: %d corrupt, %v", corrupt, err)
		}
		for _, r := range recs {
			got = append(got, r.id)
		}
		if err := sp.ack(recs); err != nil {
			t.Fatal(err)
		}
	}
	if !slices.Equal(got, wantIDs(0, 200)) {
		t.Fatalf("published %v", got)
	}
	if r, _ := sp.depth(); r != 0 || sp.tailBytes != 0 {
		t.Fatalf("depth %d, tail %d bytes", r, sp.tailBytes)
	}
}

// Records travel up to usageMsgRecords a message, and count as published
// only once their message is acknowledged: a window whose second message
// the stream refuses moves the spool past the first message's records
// only; the same records cut the same way again are a duplicate to the
// stream (the batch's Nats-Msg-Id), not a second copy.
func TestUsageBatchAckedPerMessage(t *testing.T) {
	ns := startJS(t)
	js := ns.client()
	st, err := js.CreateStream(context.Background(), jetstream.StreamConfig{Name: event.UsageStreamName,
		Subjects: []string{event.UsageStreamSubjects}, Storage: jetstream.FileStorage, Duplicates: 10 * time.Minute,
		MaxMsgs: 1, Discard: jetstream.DiscardNew})
	if err != nil {
		t.Fatal(err)
	}
	s := newTestSink(t, ns.url(), "", 1<<20, 1024, false)
	recs := spoolRecs(0, 100)
	for range 2 {
		k, err := s.publish(recs)
		if k != usageMsgRecords || err == nil {
			t.Fatalf("published %d records (err %v), want the first message's %d and an error", k, err, usageMsgRecords)
		}
		if info, err := st.Info(context.Background()); err != nil || info.State.Msgs != 1 {
			t.Fatalf("stream %+v, %v", info.State, err)
		}
		if ids := msgIDs(t, streamMsgs(t, st)); !slices.Equal(ids, wantIDs(0, usageMsgRecords)) {
			t.Fatalf("stream ids %v", ids)
		}
	}
	// A record too large to share a message goes alone.
	big := spooled{id: "big", data: bytes.Repeat([]byte{'x'}, usageMsgBytes)}
	n, data, id := usageMessage([]spooled{recs[0], big})
	if n != 1 || id != recs[0].id || !bytes.Equal(data, recs[0].data) {
		t.Fatalf("usageMessage: %d records, id %q", n, id)
	}
	if n, _, id := usageMessage([]spooled{big, recs[0]}); n != 1 || id != "big" {
		t.Fatalf("usageMessage: %d records, id %q", n, id)
	}
}

// TestUsageBatchIDNamesTheRun: a batch's Nats-Msg-Id is the same for the
// same run of the spool and differs for any other run the spool can hand
// out — one that starts or ends elsewhere, or has a record fewer in the
// middle (skipped as corrupt) — so the stream never drops a message whose
// records it does not already hold. It stays short whatever the ids.
func TestUsageBatchIDNamesTheRun(t *testing.T) {
	recs := spoolRecs(0, 10)
	id := usageBatchID(recs)
	if again := usageBatchID(slices.Clone(recs)); again != id {
		t.Fatalf("the same run: %q, then %q", id, again)
	}
	others := map[string][]spooled{
		"a record later":         recs[1:],
		"a record shorter":       recs[:9],
		"one skipped in between": slices.Delete(slices.Clone(recs), 4, 5),
		"another run":            spoolRecs(10, 20),
		// As long, from the same record, one skipped: the last differs.
		"one skipped, one more": slices.Delete(spoolRecs(0, 11), 4, 5),
	}
	for name, run := range others {
		if usageBatchID(run) == id {
			t.Errorf("%s: the same id %q", name, id)
		}
	}
	long := []spooled{{id: strings.Repeat("a", usageMaxString)}, {id: strings.Repeat("b", usageMaxString)}}
	if got := usageBatchID(long); len(got) > 48 || !strings.HasPrefix(got, "batch:2:") {
		t.Fatalf("batch id %q", got)
	}
}
