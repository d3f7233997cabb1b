package origin

// The usage ledger: edges publish one event.Usage record per metered
// request into the JetStream stream event.UsageStreamName, on their own
// subject, one or more records a message (JSON, one a line; Nats-Msg-Id
// the record's id, or for several a hash of their ids); the origins read it with
// one durable pull consumer they share (each record goes to one replica at
// a time) and store each record once (usage_store.go).
//
// Guarantees:
//
//   - Counted once. A record is acknowledged only after the transaction
//     that inserted its id into usage_seen (primary key) and, if the id was
//     new, added it to the aggregates has committed. A copy (an edge's
//     retry, a redelivery after a crash between commit and ack, two
//     replicas holding one message) finds its id and adds nothing. Ids are
//     kept for Config.UsageDedupRetention after the record's time, and a
//     record older than that is refused: a late copy is found or refused,
//     never counted again.
//   - Never evicted unread. The stream's retention is a work queue (a
//     record leaves it when acknowledged), bounded by
//     Config.UsageStreamMaxBytes with DiscardNew: a full stream refuses the
//     edges' publishes, and they keep the records in their spool. Only a
//     record nobody read for Config.UsageStreamMaxAge is dropped.
//   - An edge speaks for itself only. The subject names the edge (its NATS
//     credentials allow no other); a record whose Edge is another is
//     refused, as is one whose key or deployment belongs to another project
//     than the record says.
//   - A malformed record (not JSON, too large, a field missing or too long,
//     a negative count or one over maxUsageTokens, a time outside the
//     accepted window) is acknowledged, so it cannot wedge the consumer,
//     counted, and logged in one line naming the edge and the reason, never
//     the record's content.

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"strings"
	"sync"
	"sync/atomic"
	"time"
	"unicode/utf8"

	"github.com/nats-io/nats.go/jetstream"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/keymesh/keymesh/event"
)

const (
	// usageConsumer is the durable consumer every origin replica pulls from.
	usageConsumer = "keymesh-origin-usage"
	// usageStreamDuplicates is the stream's de-duplication window by
	// Nats-Msg-Id; past it the store's usage_seen catches copies.
	usageStreamDuplicates = 10 * time.Minute
	// usageBatch is how many records one fetch, and one transaction, takes.
	usageBatch = 256
	// usageFetchWait is how long a fetch waits for records.
	usageFetchWait = 2 * time.Second
	// usageAckWait: a record fetched but not acknowledged for this long is
	// delivered again (to any replica).
	usageAckWait = 30 * time.Second
	// maxUsageMessage bounds one message (the stream's MaxMsgSize,
	// headers included) and so each record in it; an edge puts up to 64
	// records a message (one a line) within it.
	maxUsageMessage = 16 << 10
	// maxUsageTokens bounds each token count of one record: no request
	// has ten million tokens; a larger count is an edge's bug, refused
	// rather than billed.
	maxUsageTokens = 10_000_000
	// maxUsageModel bounds the model name.
	maxUsageModel = 256
	// usageFutureSkew is how far in the future a record's time may be
	// (an edge's clock ahead of the origin's).
	usageFutureSkew = time.Hour
)

// usageResult is what became of a record; each has a counter.
type usageResult int

const (
	usageStored    usageResult = iota // new: counted into the aggregates
	usageDuplicate                    // its id was stored before
	usageMalformed                    // refused (see checkUsage)
	numUsageResults
)

var usageResultNames = [numUsageResults]string{"stored", "duplicate", "malformed"}

// usageLedger is the consumer goroutine and its counts.
type usageLedger struct {
	s      *Server
	js     jetstream.JetStream
	counts [numUsageResults]atomic.Uint64
	ctx    context.Context
	cancel context.CancelFunc
	done   chan struct{}
	once   sync.Once
}

// startUsage starts the ledger: it creates or updates the usage stream and
// the consumer (retrying while NATS is away), then stores what arrives.
func (s *Server) startUsage() {
	js, _ := jetstream.New(s.nc) // only fails on a nil conn
	u := &usageLedger{s: s, js: js, done: make(chan struct{})}
	u.ctx, u.cancel = context.WithCancel(context.Background())
	s.usage = u
	go u.run()
}

// stopUsage stops the ledger after the batch under way is stored and
// acknowledged.
func (s *Server) stopUsage() {
	if s.usage == nil {
		return
	}
	s.usage.once.Do(func() {
		s.usage.cancel()
		<-s.usage.done
	})
}

// UsageStats reports the records this replica stored, found to be
// duplicates, and refused as malformed.
func (s *Server) UsageStats() (stored, duplicate, malformed uint64) {
	if s.usage == nil {
		return 0, 0, 0
	}
	return s.usage.counts[usageStored].Load(), s.usage.counts[usageDuplicate].Load(), s.usage.counts[usageMalformed].Load()
}

// usageStreamConfig is the usage stream as the origin keeps it.
func (s *Server) usageStreamConfig() jetstream.StreamConfig {
	return jetstream.StreamConfig{
		Name:        event.UsageStreamName,
		Description: "keymesh usage records from edges; each leaves when an origin has stored it",
		Subjects:    []string{event.UsageStreamSubjects},
		// A record leaves when acknowledged, so the bounds count unread
		// records only; full, the stream refuses new ones (the edges
		// spool and retry) instead of evicting unread ones.
		Retention:  jetstream.WorkQueuePolicy,
		Discard:    jetstream.DiscardNew,
		MaxBytes:   s.cfg.UsageStreamMaxBytes,
		MaxAge:     s.cfg.UsageStreamMaxAge,
		MaxMsgSize: maxUsageMessage,
		Storage:    jetstream.FileStorage,
		Duplicates: usageStreamDuplicates,
		Replicas:   s.cfg.StreamReplicas,
		// Nobody deletes or purges unread usage.
		DenyDelete: true,
		DenyPurge:  true,
	}
}

// ensure creates or updates the stream and the consumer.
func (u *usageLedger) ensure() (jetstream.Consumer, error) {
	ctx, cancel := context.WithTimeout(u.ctx, 5*time.Second)
	defer cancel()
	st, err := u.js.CreateOrUpdateStream(ctx, u.s.usageStreamConfig())
	if err != nil {
		return nil, fmt.Errorf("creating the usage stream: %w", err)
	}
	c, err := st.CreateOrUpdateConsumer(ctx, jetstream.ConsumerConfig{
		Durable:       usageConsumer,
		Description:   "origin replicas storing usage records",
		AckPolicy:     jetstream.AckExplicitPolicy,
		AckWait:       usageAckWait,
		MaxAckPending: 4 * usageBatch,
		DeliverPolicy: jetstream.DeliverAllPolicy,
	})
	if err != nil {
		return nil, fmt.Errorf("creating the usage consumer: %w", err)
	}
	return c, nil
}

func (u *usageLedger) run() {
	defer close(u.done)
	s := u.s
	prune := time.NewTicker(s.cfg.UsagePruneInterval)
	defer prune.Stop()
	var cons jetstream.Consumer
	failing := false
	retry := func(err error) bool {
		if !failing {
			s.log.Warn("usage ledger: retrying", "err", err)
			failing = true
		}
		select {
		case <-u.ctx.Done():
			return false
		case <-time.After(time.Second):
			return true
		}
	}
	for u.ctx.Err() == nil {
		select {
		case <-prune.C:
			u.prune()
		default:
		}
		if cons == nil {
			c, err := u.ensure()
			if err != nil {
				if !retry(err) {
					return
				}
				continue
			}
			cons = c
		}
		fctx, cancel := context.WithTimeout(u.ctx, usageFetchWait)
		batch, err := cons.Fetch(usageBatch, jetstream.FetchContext(fctx))
		if err != nil {
			cancel()
			cons = nil
			if !retry(err) {
				return
			}
			continue
		}
		var msgs []jetstream.Msg
		for m := range batch.Messages() {
			msgs = append(msgs, m)
		}
		cancel()
		if len(msgs) > 0 {
			u.store(msgs)
		}
		if err := batch.Error(); err != nil && u.ctx.Err() == nil && !errors.Is(err, context.DeadlineExceeded) {
			cons = nil // the consumer or stream may be gone (a JetStream restart): ensure again
			if !retry(err) {
				return
			}
			continue
		}
		if failing {
			s.log.Info("usage ledger: consuming again")
			failing = false
		}
	}
}

// store stores the records of one fetched batch of messages in one
// transaction and acknowledges the messages after the commit; on a store
// error it asks for redelivery instead.
func (u *usageLedger) store(msgs []jetstream.Msg) {
	s := u.s
	now := s.cfg.now()
	var recs []usageRecord
	seen := map[string]bool{}
	malformed, dups := 0, 0
	var why, whose string
	for _, m := range msgs {
		// A message holds one record (old edges) or several, one a line;
		// each is checked, and stored or refused, on its own.
		for line := range bytes.SplitSeq(m.Data(), []byte{'\n'}) {
			r, err := checkUsage(m.Subject(), line, now, s.cfg.UsageDedupRetention)
			switch {
			case err != nil:
				malformed++
				if why == "" {
					why, whose = err.reason, err.edge
				}
			case seen[r.ID]:
				dups++
			default:
				seen[r.ID] = true
				recs = append(recs, r)
			}
		}
	}
	stored, dup, wrong := 0, 0, 0
	if len(recs) > 0 {
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		var err error
		stored, dup, wrong, err = s.store.storeUsage(ctx, recs)
		cancel()
		if err != nil {
			s.log.Error("usage ledger: storing records failed; they will be delivered again", "records", len(recs), "err", err)
			for _, m := range msgs {
				_ = m.NakWithDelay(time.Second)
			}
			return
		}
		s.balances.touch(recs) // their owners' balances changed (balance.go)
	}
	if wrong > 0 && why == "" {
		why, whose = "key or deployment of another project", edgeOf(msgs)
	}
	malformed += wrong
	dups += dup
	u.counts[usageStored].Add(uint64(stored))
	u.counts[usageDuplicate].Add(uint64(dups))
	u.counts[usageMalformed].Add(uint64(malformed))
	if malformed > 0 {
		s.log.Warn("usage ledger: refused malformed records", "records", malformed, "edge", whose, "reason", why)
	}
	for _, m := range msgs {
		_ = m.Ack()
	}
}

func edgeOf(msgs []jetstream.Msg) string {
	id, _ := event.EdgeFromSubject(event.EdgeUsageSubject, msgs[0].Subject())
	return id
}

// usageError is why a record was refused: a fixed reason (never the
// record's content) and the edge whose subject it came on.
type usageError struct{ reason, edge string }

// checkUsage reads one record (a line of a message) published on subject: nil error only for a
// record from the edge its subject names, every field within bounds, its
// time within [now - retention, now + usageFutureSkew].
func checkUsage(subject string, data []byte, now time.Time, retention time.Duration) (usageRecord, *usageError) {
	from, ok := event.EdgeFromSubject(event.EdgeUsageSubject, subject)
	bad := func(reason string) (usageRecord, *usageError) {
		return usageRecord{}, &usageError{reason: reason, edge: from}
	}
	if !ok {
		return bad("not on an edge's usage subject")
	}
	if len(data) > maxUsageMessage {
		return bad("too large")
	}
	var u event.Usage
	if err := json.Unmarshal(data, &u); err != nil {
		return bad("not a usage record")
	}
	switch {
	case u.Edge != from:
		return bad("names another edge than its subject")
	case !usageText(u.ID, maxRefLen) || u.ID == "":
		return bad("bad id")
	case !usageText(u.Project, maxRefLen) || u.Project == "":
		return bad("bad project")
	case !usageText(u.Deployment, maxRefLen) || u.Deployment == "":
		return bad("bad deployment")
	case !usageText(u.KeyID, maxRefLen):
		return bad("bad key id")
	case !usageText(u.Model, maxUsageModel):
		return bad("bad model")
	case !tokenCount(u.PromptTokens) || !tokenCount(u.CompletionTokens) || !tokenCount(u.CachedTokens):
		return bad(fmt.Sprintf("a token count is negative or over %d", maxUsageTokens))
	case u.Time.IsZero() || u.Time.Before(now.Add(-retention)):
		return bad("older than the usage dedup retention")
	case u.Time.After(now.Add(usageFutureSkew)):
		return bad("time in the future")
	}
	r := usageRecord{ID: u.ID, Project: u.Project, KeyID: u.KeyID, Deployment: u.Deployment, Model: u.Model, Time: u.Time.UTC(),
		Counts: usageCounts{Requests: 1, PromptTokens: u.PromptTokens, CompletionTokens: u.CompletionTokens, CachedTokens: u.CachedTokens}}
	if u.Estimated {
		r.Counts.EstimatedRequests = 1
	}
	return r, nil
}

func tokenCount(n int64) bool { return n >= 0 && n <= maxUsageTokens }

// usageText: valid UTF-8 of at most max bytes without control characters.
func usageText(s string, max int) bool {
	if len(s) > max || !utf8.ValidString(s) {
		return false
	}
	return !strings.ContainsFunc(s, func(r rune) bool { return r < 0x20 || r == 0x7f })
}

// prune deletes the ids of records past the dedup retention.
func (u *usageLedger) prune() {
	s := u.s
	ctx, cancel := context.WithTimeout(u.ctx, 5*time.Minute)
	defer cancel()
	if _, err := s.store.pruneUsageSeen(ctx, s.cfg.now().Add(-s.cfg.UsageDedupRetention)); err != nil && u.ctx.Err() == nil {
		s.log.Warn("usage ledger: pruning record ids", "err", err)
	}
}

// usageCollector exports the ledger's counts at scrape time.
type usageCollector struct {
	s       *Server
	records *prometheus.Desc
}

func newUsageCollector(s *Server) *usageCollector {
	return &usageCollector{s: s, records: prometheus.NewDesc("keymesh_origin_usage_records_total",
		"Usage records from edges this replica took off the usage stream, by result: stored (counted), duplicate (its id was stored before) or malformed (refused).",
		[]string{"result"}, nil)}
}

func (c *usageCollector) Describe(ch chan<- *prometheus.Desc) { ch <- c.records }

func (c *usageCollector) Collect(ch chan<- prometheus.Metric) {
	var v [numUsageResults]uint64
	if u := c.s.usage; u != nil {
		for i := range v {
			v[i] = u.counts[i].Load()
		}
	}
	for i, name := range usageResultNames {
		ch <- prometheus.MustNewConstMetric(c.records, prometheus.CounterValue, float64(v[i]), name)
	}
}
