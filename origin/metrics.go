package origin

// The origin's Prometheus metrics. Each Server has a registry of its own
// (tests and embedders run several origins in one process), served at
// GET /metrics. What the origin already keeps in atomics (revisions, the
// publisher's alarms, the audit writer's counts, NATS's) is read at scrape
// time by one collector; what happens per request, login or lookup is
// counted where it happens. Labels are bounded and never carry secrets,
// keys, user names or e-mail addresses: route patterns as registered
// (never the raw path, which holds ids), status codes and fixed results.

import (
	"net/http"
	"strconv"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/prometheus/client_golang/prometheus/promhttp"
)

// routeUnmatched is the route label of a request no registered pattern
// matched (the catch-all's 404 and 405 answers, ServeMux's redirects).
const routeUnmatched = "unmatched"

// loginResult is what a login came to; each has a counter.
type loginResult int

const (
	loginOK        loginResult = iota
	loginFailed                // wrong username or password
	loginThrottled             // refused by loginGuard (429) before checking
	numLoginResults
)

var loginResultNames = [numLoginResults]string{"ok", "failed", "throttled"}

// lookupResult is how a key lookup (event.LookupKeySubject) was answered.
type lookupResult int

const (
	lookupFound        lookupResult = iota
	lookupNotFound                  // no such key, or its secret has ended
	lookupInvalid                   // the request was not a key hash
	lookupError                     // the store failed; an error reply
	lookupShuttingDown              // refused: the origin is stopping
	numLookupResults
)

var lookupResultNames = [numLookupResults]string{"found", "not_found", "invalid", "error", "shutting_down"}

// snapshotResult is how a snapshot request was answered.
type snapshotResult int

const (
	snapshotOK snapshotResult = iota
	snapshotError
	snapshotShuttingDown
	numSnapshotResults
)

var snapshotResultNames = [numSnapshotResults]string{"ok", "error", "shutting_down"}

// auditDrop is why an audit record was not stored; each has a counter.
type auditDrop int

const (
	auditQueueFull     auditDrop = iota // the writer's queue (Config.AuditBuffer) was full
	auditBatchTooLarge                  // past maxAuditPerBatch in one edge batch
	auditWrongEdge                      // an edge's record naming another edge
	auditStoreError                     // the insert failed
	numAuditDrops
)

var auditDropNames = [numAuditDrops]string{"queue_full", "batch_too_large", "wrong_edge", "store_error"}

// originMetrics holds the registry and the counters updated as things
// happen.
type originMetrics struct {
	reg       *prometheus.Registry
	handler   http.Handler
	requests  *prometheus.CounterVec
	duration  *prometheus.HistogramVec
	logins    [numLoginResults]prometheus.Counter
	lookups   [numLookupResults]prometheus.Counter
	snapshots [numSnapshotResults]prometheus.Counter
}

// newMetrics builds s's registry: the Go and process collectors (as the
// edge has), the state read at scrape time, and the event counters, each
// fixed label value present from the start (at 0).
func newMetrics(s *Server) *originMetrics {
	m := &originMetrics{reg: prometheus.NewRegistry()}
	m.requests = prometheus.NewCounterVec(prometheus.CounterOpts{Name: "keymesh_origin_http_requests_total",
		Help: "HTTP requests answered, by route pattern (\"" + routeUnmatched + "\" when none matched) and status code."},
		[]string{"route", "code"})
	m.duration = prometheus.NewHistogramVec(prometheus.HistogramOpts{Name: "keymesh_origin_http_request_duration_seconds",
		Help:    "Time from a request's arrival at the router to its handler's return, by route pattern.",
		Buckets: prometheus.ExponentialBuckets(0.001, 2, 16)}, []string{"route"})
	logins := prometheus.NewCounterVec(prometheus.CounterOpts{Name: "keymesh_origin_logins_total",
		Help: "Admin logins (POST /v1/auth/login) by result: ok, failed (wrong username or password) or throttled (429)."},
		[]string{"result"})
	for i, name := range loginResultNames {
		m.logins[i] = logins.WithLabelValues(name)
	}
	lookups := prometheus.NewCounterVec(prometheus.CounterOpts{Name: "keymesh_origin_lookups_total",
		Help: "Key lookups from edges answered, by result: found, not_found, invalid (not a key hash), error (the store failed) or shutting_down."},
		[]string{"result"})
	for i, name := range lookupResultNames {
		m.lookups[i] = lookups.WithLabelValues(name)
	}
	snapshots := prometheus.NewCounterVec(prometheus.CounterOpts{Name: "keymesh_origin_snapshots_total",
		Help: "Snapshot requests from edges answered, by result: ok, error or shutting_down."},
		[]string{"result"})
	for i, name := range snapshotResultNames {
		m.snapshots[i] = snapshots.WithLabelValues(name)
	}
	m.reg.MustRegister(collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}),
		newStateCollector(s), m.requests, m.duration, logins, lookups, snapshots, newUsageCollector(s), newBalanceCollector(s))
	m.handler = promhttp.HandlerFor(m.reg, promhttp.HandlerOpts{})
	return m
}

func (m *originMetrics) login(r loginResult)       { m.logins[r].Inc() }
func (m *originMetrics) lookup(r lookupResult)     { m.lookups[r].Inc() }
func (m *originMetrics) snapshot(r snapshotResult) { m.snapshots[r].Inc() }

// served records one answered request.
func (m *originMetrics) served(route string, code int, d time.Duration) {
	m.requests.WithLabelValues(route, strconv.Itoa(code)).Inc()
	m.duration.WithLabelValues(route).Observe(d.Seconds())
}

// metrics serves GET /metrics from s's registry.
func (s *Server) metrics(w http.ResponseWriter, r *http.Request) { s.met.handler.ServeHTTP(w, r) }

// stateCollector exports, at scrape time, what the origin keeps anyway:
// its revisions (read once per scrape, so that the lag is their
// difference), the publisher's alarms and counts, NATS's state and the
// audit writer's counts.
type stateCollector struct {
	s *Server

	revision, published, lag, natsConnected, natsReconnects, conflict, conflicts, publishErrors, restarts,
	auditStored, auditDropped, auditBad *prometheus.Desc
}

var _ prometheus.Collector = (*stateCollector)(nil)

func newStateCollector(s *Server) *stateCollector {
	d := func(name, help string, labels ...string) *prometheus.Desc {
		return prometheus.NewDesc("keymesh_origin_"+name, help, labels, nil)
	}
	return &stateCollector{s: s,
		// The help texts of the metrics the origin had before this
		// collector are kept word for word.
		revision:       d("revision", "Last committed revision."),
		published:      d("published_revision", "Revision up to which every event is in JetStream."),
		lag:            d("outbox_lag", "Revisions committed but not yet in JetStream (revision - published_revision)."),
		natsConnected:  d("nats_connected", "1 if the NATS client is connected."),
		natsReconnects: d("nats_reconnects_total", "Times the NATS client reconnected."),
		conflict:       d("stream_conflict", "1 while the event stream holds a message this origin did not publish (publishing is stopped)."),
		conflicts:      d("stream_conflicts_total", "Times the event stream was found holding a message this origin did not publish."),
		publishErrors:  d("publish_errors_total", "Failed attempts to publish events to JetStream."),
		restarts:       d("jetstream_restarts_total", "Restarts of the embedded JetStream after write errors or its disabling."),
		auditStored:    d("audit_stored_total", "Audit records (edges' and admin actions') this replica stored."),
		auditDropped:   d("audit_dropped_total", "Audit records not stored, by reason: queue_full, batch_too_large, wrong_edge (an edge's record naming another edge) or store_error.", "reason"),
		auditBad:       d("audit_bad_batches_total", "Edge audit batches dropped unread: not on an edge's subject, too large, or not JSON."),
	}
}

func (c *stateCollector) Describe(ch chan<- *prometheus.Desc) {
	for _, d := range []*prometheus.Desc{c.revision, c.published, c.lag, c.natsConnected, c.natsReconnects, c.conflict,
		c.conflicts, c.publishErrors, c.restarts, c.auditStored, c.auditDropped, c.auditBad} {
		ch <- d
	}
}

func (c *stateCollector) Collect(ch chan<- prometheus.Metric) {
	s := c.s
	gauge := func(d *prometheus.Desc, v float64) {
		ch <- prometheus.MustNewConstMetric(d, prometheus.GaugeValue, v)
	}
	counter := func(d *prometheus.Desc, v uint64, labels ...string) {
		ch <- prometheus.MustNewConstMetric(d, prometheus.CounterValue, float64(v), labels...)
	}
	flag := func(b bool) float64 {
		if b {
			return 1
		}
		return 0
	}
	rev, pub := s.Revision(), s.PublishedRevision()
	gauge(c.revision, float64(rev))
	gauge(c.published, float64(pub))
	gauge(c.lag, float64(rev-min(rev, pub))) // another replica's publishes may be ahead of this one's commits
	gauge(c.natsConnected, flag(s.nc.IsConnected()))
	counter(c.natsReconnects, s.nc.Stats().Reconnects)
	gauge(c.conflict, flag(s.pub.conflict.Load()))
	counter(c.conflicts, s.pub.conflicts.Load())
	counter(c.publishErrors, s.pub.errors.Load())
	counter(c.restarts, s.pub.restarts.Load())
	var drops [numAuditDrops]uint64
	var stored, bad uint64
	if a := s.audit; a != nil {
		for i := range drops {
			drops[i] = a.dropped[i].Load()
		}
		stored, bad = a.stored.Load(), a.bad.Load()
	}
	counter(c.auditStored, stored)
	for i, name := range auditDropNames {
		counter(c.auditDropped, drops[i], name)
	}
	counter(c.auditBad, bad)
}

// statusWriter remembers the status code of the response it passes on.
type statusWriter struct {
	http.ResponseWriter
	status int
}

func (w *statusWriter) WriteHeader(code int) {
	if w.status == 0 && code >= 200 { // 1xx are not the answer
		w.status = code
	}
	w.ResponseWriter.WriteHeader(code)
}

func (w *statusWriter) Write(b []byte) (int, error) {
	if w.status == 0 {
		w.status = http.StatusOK
	}
	return w.ResponseWriter.Write(b)
}

// Unwrap lets http.ResponseController reach the connection (?wait sets
// its write deadline).
func (w *statusWriter) Unwrap() http.ResponseWriter { return w.ResponseWriter }

// code is the status sent, 200 if the handler wrote nothing (as net/http
// answers then).
func (w *statusWriter) code() int {
	if w.status == 0 {
		return http.StatusOK
	}
	return w.status
}
