package edge

import (
	"context"
	"crypto/rand"
	"crypto/sha256"
	"encoding/binary"
	"encoding/hex"
	"errors"
	"fmt"
	"log/slog"
	"path/filepath"
	"strconv"
	"sync"
	"sync/atomic"
	"time"
	"unicode/utf8"

	"github.com/keymesh/keymesh/internal/rfc3339"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/keymesh/keymesh/event"
)

// Usage records move from the data plane to the origins' ledger in three
// steps, none of which a request waits for:
//
//  1. Usage (the proxy's sink) copies the record into a bounded queue;
//     when the queue is full the record is dropped and counted
//     (queue_full).
//  2. The writer goroutine, woken by the first record, lets records
//     gather for usageCoalesce and appends what the queue holds to the
//     spool (on disk under <DataDir>/usage, else in memory) in one write,
//     and fsyncs it at most usageSyncInterval later; when the spool is full the record is
//     dropped and counted (spool_full), and the episode logged.
//  3. The publisher goroutine publishes the spool's records in order to
//     JetStream (stream event.UsageStreamName), up to usageMsgRecords
//     records a message joined by '\n' (Nats-Msg-Id: the record's id for
//     one, usageBatchID for more), and forgets each only once the PubAck
//     of its message arrived. NATS down, the
//     stream missing or full, a timeout: the records wait in the spool and
//     are published when publishing works again, across restarts too.
//
// So a record Usage took is lost only if: the queue or the spool was full
// (counted); the process died with it still in the queue (at most
// usageCoalesce after Usage took it: the writer empties it then); the machine died within usageSyncInterval of
// the record being written, before its fsync; or the edge has no data dir
// and stopped (or died) before the record was acknowledged. A record may
// be published twice (an ack lost, a crash before the acknowledgement
// position was saved): the stream and the origin deduplicate by id.
const (
	// usageQueueRecords bounds the queue between requests and the writer.
	usageQueueRecords = 16 << 10
	// usageBatch bounds the records per spool write and per publish window.
	usageBatch = 256
	// usageSyncInterval bounds how long a written record waits for its
	// fsync: what a machine crash can lose.
	usageSyncInterval = 100 * time.Millisecond
	// usageCoalesce is how long the writer lets records gather after the
	// first one arrives before it spools them: under load one spool write
	// and one JetStream message then carry many records instead of one each
	// (each costs a write syscall, a goroutine switch and a PubAck). It is
	// the longest a record waits in memory before the spool has it.
	usageCoalesce = 2 * time.Millisecond
	// usagePublishTimeout bounds the wait for a window's PubAcks.
	usagePublishTimeout = 5 * time.Second
	// usageRetryMin and usageRetryMax bound the wait between failed
	// publishing attempts (doubling); NATS down is checked at the minimum.
	usageRetryMin = 250 * time.Millisecond
	usageRetryMax = 5 * time.Second
	// usageShutdownPublish bounds how long Shutdown goes on publishing what
	// waits (within its context); the rest stays spooled.
	usageShutdownPublish = 5 * time.Second
)

// errUsageStopping ends a publish window at Shutdown.
var errUsageStopping = errors.New("usage publisher stopping")

// usageSink is the data plane's usage sink: Usage never blocks and keeps
// no pointer (proxy.UsageSink).
type usageSink struct {
	// qmu guards pending, the queue: copies of the records Usage took,
	// at most maxQueue. It grows only as far as it is used (no memory
	// held, nor scanned by the collector, for an idle edge) and the
	// writer swaps it out whole.
	qmu      sync.Mutex
	pending  []event.Usage
	maxQueue int
	ready    chan struct{} // cap 1: pending has records
	edge     string
	subject  string // this edge's usage subject (event.EdgeSubject)
	sp       spool
	bound    int64
	nc       *nats.Conn
	js       jetstream.JetStream
	log      *slog.Logger

	published, publishErrors             atomic.Uint64
	queueFull, spoolFull, corrupt, spErr atomic.Uint64

	wake chan struct{} // cap 1: the writer appended records

	spare []event.Usage // the queue's other buffer (writer goroutine only)
	enc   usageEncoder  // the records' encoder (writer goroutine only)
	batch []spooled     // the writer's batch, reused (writer goroutine only)

	futs     []jetstream.PubAckFuture // a window's futures, reused (publisher only)
	ends     []int                    // records up to the end of each future's message (publisher only)
	pubOpts  []jetstream.PublishOpt
	pubTimer *time.Timer // bounds a window's wait for its PubAcks (publisher only)

	// full is true during a spool-full episode, which began when
	// spoolFull was fullFrom (writer goroutine only).
	full     bool
	fullFrom uint64

	startOnce sync.Once
	started   atomic.Bool
	stopOnce  sync.Once
	stopW     chan struct{} // the writer: take what is queued, sync, return
	wDone     chan struct{}
	drain     chan struct{} // the publisher: publish what waits, then return
	abort     chan struct{} // the publisher: return now
	pDone     chan struct{}
}

// UsageStats reports the edge's usage pipeline (Node.UsageStats, /status).
type UsageStats struct {
	// Persistent is true when the spool is on disk (the edge has a data
	// dir); false: in memory, lost with the process.
	Persistent bool `json:"persistent"`
	// Queued records wait for the writer; SpooledRecords and SpoolBytes
	// wait in the spool for their PubAck; SpoolLimitBytes bounds those.
	Queued          int    `json:"queued"`
	SpooledRecords  int64  `json:"spooled_records"`
	SpoolBytes      int64  `json:"spool_bytes"`
	SpoolLimitBytes int64  `json:"spool_limit_bytes"`
	Published       uint64 `json:"published"`
	PublishErrors   uint64 `json:"publish_errors"`
	// Dropped counts records lost, by reason: queue_full, spool_full,
	// corrupt (torn or damaged in the spool), spool_error (the spool could
	// not be written).
	Dropped map[string]uint64 `json:"dropped"`
}

// newUsageSink opens the spool (under dataDir/usage, or in memory when
// dataDir is "") and prepares the publisher on nc; start runs them.
func newUsageSink(nc *nats.Conn, edgeID, dataDir string, bound int64, queue int, log *slog.Logger) (*usageSink, error) {
	u := &usageSink{maxQueue: max(queue, 1), ready: make(chan struct{}, 1), edge: edgeID, bound: bound,
		subject: event.EdgeSubject(event.EdgeUsageSubject, edgeID), nc: nc, log: log,
		wake: make(chan struct{}, 1), stopW: make(chan struct{}), wDone: make(chan struct{}),
		drain: make(chan struct{}), abort: make(chan struct{}), pDone: make(chan struct{})}
	if dataDir == "" {
		u.sp = newMemSpool(bound)
	} else {
		sp, corrupt, err := openDiskSpool(filepath.Join(dataDir, "usage"), bound, log)
		if err != nil {
			return nil, err
		}
		u.sp = sp
		u.corrupt.Add(uint64(corrupt))
	}
	if nc != nil {
		js, err := jetstream.New(nc, jetstream.WithPublishAsyncMaxPending(4*usageBatch),
			jetstream.WithPublishAsyncTimeout(usagePublishTimeout))
		if err != nil {
			_ = u.sp.close()
			return nil, fmt.Errorf("usage publisher: %w", err)
		}
		u.js = js
		u.pubOpts = []jetstream.PublishOpt{jetstream.WithRetryAttempts(0)}
	}
	return u, nil
}

// Usage queues a copy of r (proxy.UsageSink): it never blocks, and keeps
// nothing r points to beyond the strings (immutable) it copies.
func (u *usageSink) Usage(r *event.Usage) {
	if r == nil {
		return
	}
	u.qmu.Lock()
	if len(u.pending) >= u.maxQueue {
		u.qmu.Unlock()
		u.queueFull.Add(1)
		return
	}
	u.pending = append(u.pending, *r)
	u.qmu.Unlock()
	// The writer coalesces wake-ups: while it works, these cost nothing.
	select {
	case u.ready <- struct{}{}:
	default:
	}
}

// swapQueue takes what is queued, leaving spare (emptied) in its place.
func (u *usageSink) swapQueue(spare []event.Usage) []event.Usage {
	clear(spare) // no strings kept alive by records already spooled
	spare = spare[:0]
	if cap(spare) > 4*usageBatch { // a burst's memory is not kept for ever
		spare = nil
	}
	u.qmu.Lock()
	got := u.pending
	u.pending = spare
	u.qmu.Unlock()
	return got
}

func (u *usageSink) start() {
	u.startOnce.Do(func() {
		u.started.Store(true)
		go u.writeLoop()
		go u.publishLoop()
	})
}

// shutdown takes what is queued into the spool, goes on publishing what
// waits while publishing works, ctx allows and at most
// usageShutdownPublish, and closes the spool. What is left waits on disk
// for the next start (without a data dir it is lost, and logged).
func (u *usageSink) shutdown(ctx context.Context) {
	if u == nil {
		return
	}
	u.stopOnce.Do(func() {
		u.startOnce.Do(func() {}) // a sink never started is not started now
		if u.started.Load() {
			close(u.stopW)
			<-u.wDone
			close(u.drain)
			t := time.NewTimer(usageShutdownPublish)
			select {
			case <-u.pDone:
			case <-ctx.Done():
			case <-t.C:
			}
			t.Stop()
			close(u.abort)
			<-u.pDone
		} else {
			u.flushQueue()
			u.sync()
		}
		if n, _ := u.sp.depth(); n > 0 {
			if u.sp.persistent() {
				u.log.Info("usage records wait in the spool for the next start", "records", n)
			} else {
				u.log.Warn("usage records lost at shutdown: not published and no data dir to keep them", "records", n)
			}
		}
		if err := u.sp.close(); err != nil {
			u.log.Warn("closing the usage spool", "err", err)
		}
	})
}

// writeLoop moves records from the queue to the spool and syncs it.
func (u *usageSink) writeLoop() {
	defer close(u.wDone)
	t := time.NewTicker(usageSyncInterval)
	defer t.Stop()
	gather := time.NewTimer(usageCoalesce)
	gather.Stop()
	// A queue-full episode lasts while a sync interval saw new drops; it
	// is logged when it begins and when it ends.
	var seen, from uint64
	inEpisode := false
	for {
		select {
		case <-u.ready:
			gather.Reset(usageCoalesce)
			select {
			case <-gather.C:
			case <-u.stopW:
				gather.Stop()
			}
			u.flushQueue()
		case <-t.C:
			u.sync()
			d := u.queueFull.Load()
			switch {
			case d != seen && !inEpisode:
				u.log.Warn("usage queue full: new usage records are dropped", "queue", u.maxQueue)
				inEpisode, from = true, seen
			case d == seen && inEpisode:
				u.log.Info("usage queue has room again", "dropped", d-from)
				inEpisode = false
			}
			seen = d
		case <-u.stopW:
			u.flushQueue()
			u.sync()
			return
		}
	}
}

// flushQueue moves everything queued to the spool, in batches (the
// writer's goroutine, or shutdown when there is none).
func (u *usageSink) flushQueue() {
	got := u.swapQueue(u.spare)
	recs := got
	batch := u.batch
	for len(recs) > 0 {
		n := min(len(recs), usageBatch)
		batch = batch[:0]
		// One buffer holds the batch's JSON: the spool keeps (in memory)
		// and the publisher sends these bytes, so it is never reused.
		arena := make([]byte, 0, n*usageRecordBytes)
		for i := range recs[:n] {
			batch, arena = u.take(batch, arena, &recs[i])
		}
		u.store(batch)
		recs = recs[n:]
	}
	clear(batch) // the spool has its own copies; no arena kept alive here
	u.batch = batch[:0]
	u.spare = got
}

// usageRecordBytes is about what a record's JSON takes (a guess for the
// batch's buffer; more only costs a reallocation).
const usageRecordBytes = 320

// A record given without an id gets usageIDPrefix + a counter: globally
// unique without a random draw per record. The prefix is 80 random bits
// drawn at each start, so a restarted edge (its counter at 0 again) never
// makes an id an earlier run made: a collision needs two starts drawing
// the same prefix (2^-80 per pair). The "~" keeps these apart from the
// proxy's ids (edge id + "-" + request id).
var (
	usageIDPrefix  = rand.Text()[:16] + "~"
	usageIDCounter atomic.Uint64
)

func newRecordID() string {
	var b [32]byte
	return string(strconv.AppendUint(append(b[:0], usageIDPrefix...), usageIDCounter.Add(1), 36))
}

// usageMaxString bounds each string of a record: a client's model name,
// however long, cannot make a record too large to spool or publish (so
// that it would go unbilled); cut ones stay valid UTF-8.
const usageMaxString = 512

// take encodes r for the spool into arena: an id if it has none (the
// deduplication key must exist), this edge's name if it names none,
// strings cut to usageMaxString. r is the queue's copy, changed in place.
func (u *usageSink) take(batch []spooled, arena []byte, r *event.Usage) ([]spooled, []byte) {
	if r.ID == "" {
		r.ID = newRecordID()
	}
	if r.Edge == "" {
		r.Edge = u.edge
	}
	r.ID = cutString(r.ID, usageMaxString)
	r.Edge = cutString(r.Edge, usageMaxString)
	r.KeyID = cutString(r.KeyID, usageMaxString)
	r.Project = cutString(r.Project, usageMaxString)
	r.Deployment = cutString(r.Deployment, usageMaxString)
	r.Model = cutString(r.Model, usageMaxString)
	start := len(arena)
	arena, ok := u.enc.appendUsageJSON(arena, r)
	if !ok || len(arena)-start > maxUsageFrame { // a time out of JSON's range; nothing else fails
		u.spErr.Add(1)
		return batch, arena[:start]
	}
	return append(batch, spooled{id: r.ID, data: arena[start:len(arena):len(arena)]}), arena
}

// usageEncoder encodes records for the spool: appendUsageJSON appends r
// exactly as json.Marshal encodes it (the same bytes:
// TestUsageJSONMatchesMarshal, FuzzUsageJSON), without reflection or
// allocation; the origin decodes it with encoding/json. For the strings
// that repeat from one record to the next (the edge, and mostly a few
// projects, deployments, keys and models) it remembers the last one of
// each field with its JSON: the same string again is copied, not escaped
// again. One goroutine at a time uses an encoder.
type usageEncoder struct {
	edge, key, project, deployment, model jsonMemo
}

// jsonMemo is one field's last string and its JSON.
type jsonMemo struct {
	s   string
	enc []byte
}

// appendTo appends s as appendJSONString does.
func (m *jsonMemo) appendTo(b []byte, s string) []byte {
	if m.enc == nil || s != m.s {
		m.s, m.enc = s, appendJSONString(m.enc[:0], s)
	}
	return append(b, m.enc...)
}

// appendUsageJSON appends r's JSON to b. ok is false for a time
// json.Marshal refuses (a year beyond 9999, a zone offset of 24 h or
// more), and then nothing is to be kept of b.
func (e *usageEncoder) appendUsageJSON(b []byte, r *event.Usage) (_ []byte, ok bool) {
	b = append(b, `{"id":`...)
	b = appendJSONString(b, r.ID)
	b = append(b, `,"edge":`...)
	b = e.edge.appendTo(b, r.Edge)
	if r.KeyID != "" {
		b = append(b, `,"key_id":`...)
		b = e.key.appendTo(b, r.KeyID)
	}
	b = append(b, `,"project":`...)
	b = e.project.appendTo(b, r.Project)
	b = append(b, `,"deployment":`...)
	b = e.deployment.appendTo(b, r.Deployment)
	if r.Model != "" {
		b = append(b, `,"model":`...)
		b = e.model.appendTo(b, r.Model)
	}
	b = append(b, `,"prompt_tokens":`...)
	b = strconv.AppendInt(b, r.PromptTokens, 10)
	b = append(b, `,"completion_tokens":`...)
	b = strconv.AppendInt(b, r.CompletionTokens, 10)
	if r.CachedTokens != 0 {
		b = append(b, `,"cached_tokens":`...)
		b = strconv.AppendInt(b, r.CachedTokens, 10)
	}
	if r.Estimated {
		b = append(b, `,"estimated":true`...)
	}
	b = append(b, `,"status":`...)
	b = strconv.AppendInt(b, int64(r.Status), 10)
	b = append(b, `,"duration_ms":`...)
	b = strconv.AppendInt(b, r.DurationMS, 10)
	b = append(b, `,"time":"`...)
	// time.Time.MarshalJSON: RFC 3339 with nanoseconds, refusing what RFC
	// 3339 cannot say (the same checks).
	t0 := len(b)
	b = usageTimes.AppendNano(b, r.Time)
	if len(b)-t0 < len("2006-01-02T15:04:05Z") || b[t0+4] != '-' {
		return b, false // the year is not four digits
	}
	if b[len(b)-1] != 'Z' {
		c := b[len(b)-len("Z07:00")]
		if ('0' <= c && c <= '9') || 10*(b[len(b)-5]-'0')+(b[len(b)-4]-'0') >= 24 {
			return b, false
		}
	}
	return append(b, `"}`...), true
}

// jsonSafe[c] is true for the ASCII bytes encoding/json copies as they
// are (it escapes the control characters, '"', '\\', and, HTML-safe,
// '<', '>', '&'); bytes from 0x80 on need a look at their rune.
var jsonSafe = func() (t [256]bool) {
	for c := 0x20; c < utf8.RuneSelf; c++ {
		t[c] = c != '"' && c != '\\' && c != '<' && c != '>' && c != '&'
	}
	return t
}()

const jsonHex = "0123456789abcdef"

// safeWord reports whether each byte of w is one encoding/json copies as
// it is (jsonSafe). w's own high bits mark the bytes from 0x80 on; below
// them, subtracting 0x20 from each byte (or 1, from w with the bits of
// '"', '\\', '<', '>' or '&' flipped) borrows, setting the lowest such
// byte's high bit, exactly when some byte is below 0x20 (is that byte).
func safeWord(w uint64) bool {
	const ones, high = 0x0101010101010101, 0x8080808080808080
	q, bs, lt, gt, amp := w^(ones*'"'), w^(ones*'\\'), w^(ones*'<'), w^(ones*'>'), w^(ones*'&')
	return (w|(w-ones*0x20)|(q-ones)|(bs-ones)|(lt-ones)|(gt-ones)|(amp-ones))&high == 0
}

// appendJSONString appends s as a JSON string, byte for byte as
// encoding/json does (HTML-safe; invalid UTF-8 as U+FFFD; U+2028 and
// U+2029 escaped). Safe bytes are skipped eight at a time where they run.
func appendJSONString(b []byte, s string) []byte {
	b = append(b, '"')
	start := 0
	for i := 0; ; {
		for i+8 <= len(s) {
			w := s[i : i+8] // constant indices: one load
			if !safeWord(uint64(w[0]) | uint64(w[1])<<8 | uint64(w[2])<<16 | uint64(w[3])<<24 |
				uint64(w[4])<<32 | uint64(w[5])<<40 | uint64(w[6])<<48 | uint64(w[7])<<56) {
				break
			}
			i += 8
		}
		for i < len(s) && jsonSafe[s[i]] {
			i++
		}
		if i >= len(s) {
			break
		}
		c := s[i]
		if c < utf8.RuneSelf {
			b = append(b, s[start:i]...)
			switch c {
			case '\\', '"':
				b = append(b, '\\', c)
			case '\b':
				b = append(b, '\\', 'b')
			case '\f':
				b = append(b, '\\', 'f')
			case '\n':
				b = append(b, '\\', 'n')
			case '\r':
				b = append(b, '\\', 'r')
			case '\t':
				b = append(b, '\\', 't')
			default:
				b = append(b, '\\', 'u', '0', '0', jsonHex[c>>4], jsonHex[c&0xF])
			}
			i++
			start = i
			continue
		}
		r, size := utf8.DecodeRuneInString(s[i:])
		switch {
		case r == utf8.RuneError && size == 1:
			b = append(b, s[start:i]...)
			b = append(b, `\ufffd`...)
		case r == '\u2028' || r == '\u2029':
			b = append(b, s[start:i]...)
			b = append(b, '\\', 'u', '2', '0', '2', jsonHex[r&0xF])
		default:
			i += size
			continue
		}
		i += size
		start = i
	}
	b = append(b, s[start:]...)
	return append(b, '"')
}

// usageTimes formats the records' times (records of one second share
// its formatting).
var usageTimes rfc3339.Formatter

// store appends a batch to the spool, counting what did not fit, and
// wakes the publisher.
func (u *usageSink) store(batch []spooled) {
	if len(batch) == 0 {
		return
	}
	n, err := u.sp.append(batch)
	if lost := uint64(len(batch) - n); lost > 0 {
		if err != nil {
			u.spErr.Add(lost)
			u.log.Error("usage spool write failed: records dropped", "records", lost, "err", err)
		} else {
			if !u.full {
				u.full = true
				u.fullFrom = u.spoolFull.Load()
				records, bytes := u.sp.depth()
				u.log.Warn("usage spool full: new usage records are dropped until it drains",
					"limit_bytes", u.bound, "spooled_records", records, "spool_bytes", bytes)
			}
			u.spoolFull.Add(lost)
		}
	} else if u.full {
		u.full = false
		u.log.Info("usage spool has room again", "dropped", u.spoolFull.Load()-u.fullFrom)
	}
	if n > 0 {
		select {
		case u.wake <- struct{}{}:
		default:
		}
	}
}

// cutString returns s cut to at most n bytes at a rune boundary.
func cutString(s string, n int) string {
	if len(s) <= n {
		return s
	}
	for n > 0 && !utf8.RuneStart(s[n]) {
		n--
	}
	return s[:n]
}

func (u *usageSink) sync() {
	if err := u.sp.sync(); err != nil {
		u.log.Warn("usage spool sync failed", "err", err)
	}
}

// publishLoop publishes the spool's records in order, forgetting each
// after its PubAck, until shutdown.
func (u *usageSink) publishLoop() {
	defer close(u.pDone)
	retry := usageRetryMin
	failing := 0 // failed attempts in the current episode
	// wait returns false when the publisher is to return.
	wait := func(d time.Duration, wake bool) bool {
		var wakeC <-chan struct{}
		if wake {
			wakeC = u.wake
		}
		var tc <-chan time.Time
		if d > 0 {
			t := time.NewTimer(d)
			defer t.Stop()
			tc = t.C
		}
		select {
		case <-wakeC:
			return true
		case <-tc:
			return true
		case <-u.drain:
			return false
		case <-u.abort:
			return false
		}
	}
	draining := func() bool {
		select {
		case <-u.drain:
			return true
		default:
			return false
		}
	}
	for {
		recs, corrupt, err := u.sp.peek(usageBatch)
		if corrupt > 0 {
			u.corrupt.Add(uint64(corrupt))
			continue
		}
		if err != nil {
			u.log.Warn("reading the usage spool", "err", err)
			if !wait(usageRetryMax, false) {
				return
			}
			continue
		}
		if len(recs) == 0 {
			if draining() || !wait(0, true) {
				return
			}
			continue
		}
		if u.js == nil || !u.nc.IsConnected() {
			// The records wait; no attempt counts while NATS is down.
			if draining() || !wait(usageRetryMin, false) {
				return
			}
			continue
		}
		k, err := u.publish(recs)
		if k > 0 {
			if aerr := u.sp.ack(recs[:k]); aerr != nil {
				u.log.Warn("usage spool", "err", aerr)
			}
			u.published.Add(uint64(k))
		}
		if err == nil {
			if failing > 0 {
				u.log.Info("usage records published again", "failed_attempts", failing)
			}
			failing, retry = 0, usageRetryMin
			continue
		}
		if errors.Is(err, errUsageStopping) {
			return
		}
		u.publishErrors.Add(1)
		if failing == 0 {
			records, _ := u.sp.depth()
			u.log.Warn("usage records not published; they wait in the spool", "spooled_records", records, "err", err)
		}
		failing++
		if draining() || !wait(retry, false) {
			return
		}
		retry = min(2*retry, usageRetryMax)
	}
}

// usageExpectStream is the Nats-Expected-Stream header's value (shared,
// never changed).
var usageExpectStream = []string{event.UsageStreamName}

const (
	// usageMsgRecords bounds the records one JetStream message carries:
	// a message costs the edge's client, the stream's store and ack and
	// the origin's fetch about as much whatever it holds, so records
	// travel together.
	usageMsgRecords = 64
	// usageMsgBytes bounds a message's records (joined by '\n'): the
	// usage stream's MaxMsgSize is 16 KiB (origin maxUsageMessage, old
	// origins too) and counts the headers, for which 1 KiB is left. A
	// record larger than this goes alone, as every record did before.
	usageMsgBytes = 16<<10 - 1<<10
)

// usageBatchID is a batch message's Nats-Msg-Id: its record count and a
// hash of its first and last records' ids (length-prefixed). A message
// holds a run of the spool, which is an ordered log of records with
// unique ids that only ever loses records (acknowledged, or corrupt and
// skipped), never gains one between two others: so a run's first and
// last ids and its length name it. The same records re-published as the
// same message are dropped by the stream, while a batch cut differently
// (after a restart, or around a record skipped as corrupt) has another
// id and the origin dedupes its records one by one (usage_seen). A single
// record's message keeps the record's id, as before. Two ids hashed per
// message, not every record's: hashing each record's id cost more than
// encoding the record. 128 bits of SHA-256: no record id equals a batch's
// id unless someone finds a preimage.
func usageBatchID(recs []spooled) string {
	var buf [2*binary.MaxVarintLen64 + 2*usageMaxString]byte
	first, last := recs[0].id, recs[len(recs)-1].id
	b := binary.AppendUvarint(buf[:0], uint64(len(first)))
	b = append(b, first...)
	b = binary.AppendUvarint(b, uint64(len(last)))
	b = append(b, last...)
	sum := sha256.Sum256(b)
	var o [48]byte // "batch:", up to usageMsgRecords, ':', 32 hex digits
	out := append(o[:0], "batch:"...)
	out = strconv.AppendInt(out, int64(len(recs)), 10)
	out = append(out, ':')
	out = hex.AppendEncode(out, sum[:16])
	return string(out)
}

// usageMessage cuts the next message off recs: how many records it holds
// (at least one), its data (the records' JSON joined by '\n', which
// appears in no record: the encoder escapes it) and its Nats-Msg-Id.
func usageMessage(recs []spooled) (int, []byte, string) {
	n, size := 1, len(recs[0].data)
	for n < len(recs) && n < usageMsgRecords && size+1+len(recs[n].data) <= usageMsgBytes {
		size += 1 + len(recs[n].data)
		n++
	}
	if n == 1 {
		return 1, recs[0].data, recs[0].id
	}
	// A new buffer per message: the client may keep the message until
	// its PubAck.
	data := make([]byte, 0, size)
	for i, r := range recs[:n] {
		if i > 0 {
			data = append(data, '\n')
		}
		data = append(data, r.data...)
	}
	return n, data, usageBatchID(recs[:n])
}

// publish sends recs as one window of asynchronous publishes, up to
// usageMsgRecords records a message, and returns how many records, from
// the first, are in messages JetStream acknowledged; err says why the
// rest were not. A message's records count only once that message is
// acknowledged. Those published after a failed one are sent again with
// the rest: the stream keeps the first copy (Nats-Msg-Id), the origin
// each record once (its id).
func (u *usageSink) publish(recs []spooled) (int, error) {
	futs, ends := u.futs[:0], u.ends[:0]
	defer func() { clear(futs); u.futs, u.ends = futs[:0], ends[:0] }()
	var perr error
	for done := 0; done < len(recs); {
		n, data, id := usageMessage(recs[done:])
		// The headers WithMsgID and WithExpectStream would set, without
		// the options' allocations.
		m := &nats.Msg{Subject: u.subject, Data: data, Header: nats.Header{
			jetstream.MsgIDHeader: {id}, jetstream.ExpectedStreamHeader: usageExpectStream}}
		f, err := u.js.PublishMsgAsync(m, u.pubOpts...)
		if err != nil {
			perr = err
			break
		}
		done += n
		futs, ends = append(futs, f), append(ends, done)
	}
	// One timer for every window (since Go 1.23 a Reset timer never
	// delivers a stale expiry).
	if u.pubTimer == nil {
		u.pubTimer = time.NewTimer(usagePublishTimeout)
	} else {
		u.pubTimer.Reset(usagePublishTimeout)
	}
	t := u.pubTimer
	defer t.Stop()
	acked := 0
	for i, f := range futs {
		select {
		case <-f.Ok():
			acked = ends[i]
			continue
		case err := <-f.Err():
			return acked, err
		case <-t.C:
			return acked, fmt.Errorf("no PubAck within %v: %w", usagePublishTimeout, context.DeadlineExceeded)
		case <-u.abort:
			return acked, errUsageStopping
		}
	}
	return acked, perr
}

func (u *usageSink) queued() int {
	u.qmu.Lock()
	defer u.qmu.Unlock()
	return len(u.pending)
}

// stats reports the pipeline.
func (u *usageSink) stats() UsageStats {
	records, bytes := u.sp.depth()
	return UsageStats{Persistent: u.sp.persistent(), Queued: u.queued(), SpooledRecords: records, SpoolBytes: bytes,
		SpoolLimitBytes: u.bound, Published: u.published.Load(), PublishErrors: u.publishErrors.Load(),
		Dropped: map[string]uint64{"queue_full": u.queueFull.Load(), "spool_full": u.spoolFull.Load(),
			"corrupt": u.corrupt.Load(), "spool_error": u.spErr.Load()}}
}
