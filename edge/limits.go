package edge

import (
	"log/slog"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/keymesh/keymesh/event"
)

// limitsFullEvery is how often a report carries every entry of the current
// windows rather than those changed since the last one: what a lost report
// (or a peer that joined late) missed is healed within it.
const limitsFullEvery = 3 * time.Second

// limitsPartEntries bounds the entries of one message: a report with more
// is split (event.LimitReport.Split), each part well under NATS's payload
// limit and cluster.MaxLimitsBytes (an entry of the longest ids is ~350
// bytes of JSON).
const limitsPartEntries = 512

// limitsPeerLive is how long an edge heard from over NATS only (no gossip)
// counts as live for the share of a limit each edge may spend
// (proxy.SetLimitPeers).
const limitsPeerLive = 5 * limitsFullEvery

// limitsSubPending bounds the reports waiting for the subscriber; past it
// NATS drops them (counted by result "dropped").
const limitsSubPending = 4096

// limitEngine is the data plane's side of global limits (package proxy):
// what this edge has admitted, what the others report, how many share.
type limitEngine interface {
	// LimitReport returns this edge's report (every entry of the current
	// windows when full), or nil when it has nothing to say.
	LimitReport(full bool) *event.LimitReport
	// MergeLimitReport takes another edge's report (max per entry).
	MergeLimitReport(r *event.LimitReport) error
	// SetLimitPeers says how many edges, this one included, are live.
	SetLimitPeers(live int)
	// LimitBoot is this edge run's boot id, the Boot of its reports.
	LimitBoot() string
}

// limitGossip is the cluster's side (nil without gossip).
type limitGossip interface {
	RecordLimits(wire []byte)
}

// limitsGossipAll says whether every report should go to the gossip ring
// too, not only the full ones: while this edge or a peer has no NATS (only
// gossip reaches it then). Nil: always.
type limitsGossipAll func() bool

// Report transports and receive results, the metrics' label values.
const (
	viaNATS   = "nats"
	viaGossip = "gossip"

	limitMerged    = "merged"
	limitBad       = "bad"        // malformed or out of bounds
	limitWrongEdge = "wrong_edge" // NATS: the report names another edge than its subject
	limitOwn       = "own"        // names this edge: its own, back, or forged
)

const receivedHelp = "Other edges' limit reports received, by transport and result: merged, bad (malformed or refused by the engine), wrong_edge (names another edge than its NATS subject), own (names this edge), dropped (the subscriber's queue was full)."

// limitsReceived exports the received counters and, as result "dropped",
// what NATS dropped at the subscriber's pending limit.
type limitsReceived struct {
	l    *limitSync
	desc *prometheus.Desc
}

func (c *limitsReceived) Describe(ch chan<- *prometheus.Desc) { c.l.received.Describe(ch) }

func (c *limitsReceived) Collect(ch chan<- prometheus.Metric) {
	c.l.received.Collect(ch)
	var dropped int
	if sub := c.l.sub.Load(); sub != nil {
		dropped, _ = sub.Dropped()
	}
	ch <- prometheus.MustNewConstMetric(c.desc, prometheus.CounterValue, float64(dropped), viaNATS, "dropped")
}

// limitSync carries limit reports between this edge and the others: every
// interval it takes the engine's report and publishes it over core NATS on
// its own subject and to the gossip ring; it merges what the others publish
// on theirs and what peers gossip. Nothing here blocks a request: the
// engine is asked from this loop, and a report that cannot be sent now is
// dropped and counted (the next one, or the next full one, heals it: the
// counters only grow).
type limitSync struct {
	id       string
	nc       *nats.Conn
	engine   limitEngine
	gossip   func() limitGossip // nil result: no gossip (yet)
	peers    func() []string    // ids of the live gossip peers
	needAll  limitsGossipAll
	interval time.Duration
	log      *slog.Logger
	subject  string

	sent, dropped *prometheus.CounterVec // {via}
	received      *prometheus.CounterVec // {via, result}
	sub           atomic.Pointer[nats.Subscription]

	mu    sync.Mutex
	heard map[string]time.Time // edge id -> last NATS report merged

	started    atomic.Bool
	stop, done chan struct{}
	once       sync.Once
}

func newLimitSync(id string, nc *nats.Conn, engine limitEngine, interval time.Duration, reg prometheus.Registerer,
	log *slog.Logger) *limitSync {
	l := &limitSync{id: id, nc: nc, engine: engine, interval: interval, log: log,
		subject: event.EdgeSubject(event.EdgeLimitsSubject, id),
		gossip:  func() limitGossip { return nil }, peers: func() []string { return nil },
		heard: map[string]time.Time{}, stop: make(chan struct{}), done: make(chan struct{}),
		sent: prometheus.NewCounterVec(prometheus.CounterOpts{Name: "keymesh_edge_limit_reports_sent_total",
			Help: "Limit reports (or parts of one) this edge sent to the other edges, by transport."}, []string{"via"}),
		dropped: prometheus.NewCounterVec(prometheus.CounterOpts{Name: "keymesh_edge_limit_reports_dropped_total",
			Help: "Limit reports this edge could not send (NATS down or refusing): the next full report heals what they carried."}, []string{"via"}),
		received: prometheus.NewCounterVec(prometheus.CounterOpts{Name: "keymesh_edge_limit_reports_received_total",
			Help: receivedHelp}, []string{"via", "result"}),
	}
	for _, via := range []string{viaNATS, viaGossip} {
		l.sent.WithLabelValues(via)
		l.dropped.WithLabelValues(via)
		for _, r := range []string{limitMerged, limitBad, limitOwn} {
			l.received.WithLabelValues(via, r)
		}
	}
	l.received.WithLabelValues(viaNATS, limitWrongEdge)
	reg.MustRegister(l.sent, l.dropped, &limitsReceived{l: l,
		desc: prometheus.NewDesc("keymesh_edge_limit_reports_received_total", receivedHelp, []string{"via", "result"}, nil)})
	return l
}

// start subscribes to the other edges' reports and starts the loop.
func (l *limitSync) start() error {
	sub, err := l.nc.Subscribe(event.EdgeLimitsSubject+".*", l.fromNATS)
	if err != nil {
		return err
	}
	if err := sub.SetPendingLimits(limitsSubPending, limitsSubPending*4096); err != nil {
		_ = sub.Unsubscribe()
		return err
	}
	l.sub.Store(sub)
	l.started.Store(true)
	go l.loop()
	return nil
}

func (l *limitSync) loop() {
	defer close(l.done)
	t := time.NewTicker(l.interval)
	defer t.Stop()
	var lastFull time.Time
	var lastPeers string
	for {
		select {
		case <-l.stop:
			return
		case <-t.C:
		}
		peers := l.livePeers()
		l.engine.SetLimitPeers(len(peers) + 1)
		// A peer that joined learns everything at once, not within
		// limitsFullEvery.
		key := joinIDs(peers)
		full := time.Since(lastFull) >= limitsFullEvery || key != lastPeers
		lastPeers = key
		l.send(full)
		if full {
			lastFull = time.Now()
		}
	}
}

// send publishes the engine's report: over NATS every interval (an empty
// one when the engine has nothing to say: the others tell a quiet peer
// from a partition by hearing from it, proxy.SetLimitPeers), and to the
// gossip ring when it is full or some member lacks NATS.
func (l *limitSync) send(full bool) {
	r := l.engine.LimitReport(full)
	if r == nil {
		r = &event.LimitReport{Edge: l.id, Boot: l.engine.LimitBoot(), TimeMS: time.Now().UnixMilli()}
	}
	g := l.gossip()
	if g != nil && !r.Full && l.needAll != nil && !l.needAll() {
		g = nil // NATS reaches everyone; the full reports are gossip's backstop
	}
	for _, part := range r.Split(limitsPartEntries) {
		b, err := part.Marshal()
		if err != nil { // the engine's own report: a bug, not input
			l.log.Warn("limit report not encodable", "err", err)
			return
		}
		if !l.nc.IsConnected() {
			// Not into the reconnect buffer: it would go out late, after
			// fresher ones; gossip carries it meanwhile.
			l.dropped.WithLabelValues(viaNATS).Inc()
		} else if err := l.nc.Publish(l.subject, b); err != nil {
			l.dropped.WithLabelValues(viaNATS).Inc()
		} else {
			l.sent.WithLabelValues(viaNATS).Inc()
		}
		if g != nil {
			g.RecordLimits(b)
			l.sent.WithLabelValues(viaGossip).Inc()
		}
	}
}

// fromNATS takes a report another edge published: its sender is the
// subject's edge (the credentials let an edge publish on no other), and a
// report naming anyone else is dropped.
func (l *limitSync) fromNATS(m *nats.Msg) {
	from, ok := event.EdgeFromSubject(event.EdgeLimitsSubject, m.Subject)
	switch {
	case !ok:
		l.received.WithLabelValues(viaNATS, limitBad).Inc()
		return
	case from == l.id:
		return // our own, echoed back by the server: not counted
	}
	r, err := event.UnmarshalLimitReport(m.Data)
	switch {
	case err != nil:
		l.received.WithLabelValues(viaNATS, limitBad).Inc()
	case r.Edge != from:
		l.received.WithLabelValues(viaNATS, limitWrongEdge).Inc()
	case l.engine.MergeLimitReport(r) != nil:
		l.received.WithLabelValues(viaNATS, limitBad).Inc()
	default:
		l.received.WithLabelValues(viaNATS, limitMerged).Inc()
		l.mu.Lock()
		if len(l.heard) > 4*maxLiveEdges {
			clear(l.heard) // refilled within one full-report period
		}
		l.heard[from] = time.Now()
		l.mu.Unlock()
	}
}

// fromGossip takes a report a gossip peer passed on (cluster's
// DeliverLimits). Nothing vouches for its sender: any ring member could
// have written it, in any edge's name, which is harmless because merging
// only ever raises counts (a forged report can refuse requests, never
// admit one). One naming this edge is dropped: this edge is the only
// writer of its entries.
func (l *limitSync) fromGossip(wire []byte) {
	r, err := event.UnmarshalLimitReport(wire)
	switch {
	case err != nil:
		l.received.WithLabelValues(viaGossip, limitBad).Inc()
	case r.Edge == l.id:
		l.received.WithLabelValues(viaGossip, limitOwn).Inc()
	case l.engine.MergeLimitReport(r) != nil:
		l.received.WithLabelValues(viaGossip, limitBad).Inc()
	default:
		l.received.WithLabelValues(viaGossip, limitMerged).Inc()
	}
}

// maxLiveEdges bounds the edges heard over NATS that are remembered.
const maxLiveEdges = 4096

// livePeers returns the ids of the other edges known to be live: the
// gossip peers, and those whose reports arrived over NATS within
// limitsPeerLive.
func (l *limitSync) livePeers() []string {
	seen := map[string]bool{l.id: true}
	var out []string
	for _, id := range l.peers() {
		if id != "" && !seen[id] {
			seen[id] = true
			out = append(out, id)
		}
	}
	now := time.Now()
	l.mu.Lock()
	for id, at := range l.heard {
		if now.Sub(at) > limitsPeerLive {
			delete(l.heard, id)
			continue
		}
		if !seen[id] {
			seen[id] = true
			out = append(out, id)
		}
	}
	l.mu.Unlock()
	return out
}

// shutdown stops the loop and sends one last full report, so that the
// others count what this edge admitted until its last request ended. The
// caller flushes NATS.
func (l *limitSync) shutdown() {
	if !l.started.Load() {
		return
	}
	l.once.Do(func() {
		close(l.stop)
		<-l.done
		if sub := l.sub.Load(); sub != nil {
			_ = sub.Unsubscribe()
		}
		l.send(true)
	})
}

// joinIDs is a set of ids as one comparable string.
func joinIDs(ids []string) string {
	sorted := slices.Clone(ids)
	slices.Sort(sorted)
	return strings.Join(sorted, "\x00")
}
