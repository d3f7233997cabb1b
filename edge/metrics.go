package edge

import (
	"net/http"
	"net/http/pprof"
	"sync/atomic"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/promhttp"

	"github.com/keymesh/keymesh/cache"
)

// watchView exports the View's counters, read at scrape time.
func (n *Node) watchView() {
	v, reg := n.view, n.reg
	counter := func(name, help string, f func(cache.Stats) uint64) {
		reg.MustRegister(prometheus.NewCounterFunc(prometheus.CounterOpts{Name: name, Help: help},
			func() float64 { return float64(f(v.Stats())) }))
	}
	gauge := func(name, help string, f func() float64) {
		reg.MustRegister(prometheus.NewGaugeFunc(prometheus.GaugeOpts{Name: name, Help: help}, f))
	}
	counter("keymesh_edge_cache_hits_total", "Key checks answered from the cache.", func(s cache.Stats) uint64 { return s.Hits })
	counter("keymesh_edge_cache_misses_total", "Key checks that needed a lookup.", func(s cache.Stats) uint64 { return s.Misses })
	counter("keymesh_edge_cache_evictions_total", "Cached keys evicted for room.", func(s cache.Stats) uint64 { return s.Evictions })
	counter("keymesh_edge_cache_negative_hits_total", "Unknown keys refused from the negative cache.", func(s cache.Stats) uint64 { return s.NegativeHits })
	counter("keymesh_edge_lookups_total", "Lookups sent to the origin.", func(s cache.Stats) uint64 { return s.Lookups })
	counter("keymesh_edge_lookup_errors_total", "Lookups that failed.", func(s cache.Stats) uint64 { return s.LookupErrors })
	counter("keymesh_edge_lookups_shed_total", "Cache misses refused (503) because --max-lookups lookups were in flight.", func(s cache.Stats) uint64 { return s.LookupsShed })
	counter("keymesh_edge_records_rejected_total", "Records dropped for a bad signature or shape.", func(s cache.Stats) uint64 { return s.Rejected })
	counter("keymesh_edge_resyncs_total", "Snapshots taken: first start or a gap in the event stream.", func(s cache.Stats) uint64 { return s.Resyncs })
	counter("keymesh_edge_revalidations_total", "Cached keys looked up again by the staleness guard.", func(s cache.Stats) uint64 { return s.Revalidations })
	counter("keymesh_edge_stale_served_total", "Cached keys served unproven (fail mode open-cached).", func(s cache.Stats) uint64 { return s.StaleServed })
	gauge("keymesh_edge_applied_revision", "Last revision the edge applied.", func() float64 { return float64(v.AppliedRevision()) })
	counter("keymesh_edge_stale_answers_total", "Genuine lookup answers (a gossip peer's) the origin signed longer ago than --max-staleness, while the edge was not current.", func(s cache.Stats) uint64 { return s.StaleAnswers })
	counter("keymesh_edge_unproven_refusals_total", "Requests to deployments without auth refused (503) because the edge could not prove it was current (fail mode closed).", func(s cache.Stats) uint64 { return s.UntrustedRefusals })
	gauge("keymesh_edge_revision_lag", "Revisions the origin has committed (as its heartbeats name) that the edge has not applied.", func() float64 {
		c := v.Currency()
		return float64(c.Head - min(c.Head, c.Applied))
	})
	gauge("keymesh_edge_committed_head", "Highest committed head the origin named in a heartbeat.", func() float64 {
		return float64(v.Currency().Head)
	})
	gauge("keymesh_edge_current", "1 when the edge has proven it is current within --max-staleness.", func() float64 {
		if ok, _ := v.Current(); ok {
			return 1
		}
		return 0
	})
}

// watchNode exports the node's own bounded buffers, read at scrape time:
// what happened at each bound is counted (DESIGN invariant 5). The data
// plane registers its own (the rate limiter's).
func (n *Node) watchNode() {
	counter := func(name, help string, f func() uint64) {
		n.reg.MustRegister(prometheus.NewCounterFunc(prometheus.CounterOpts{Name: name, Help: help},
			func() float64 { return float64(f()) }))
	}
	counter("keymesh_edge_audit_shipped_total", "Audit records published to the origin.", func() uint64 { shipped, _, _ := n.AuditStats(); return shipped })
	counter("keymesh_edge_audit_dropped_total", "Audit records dropped because the audit buffer was full.", func() uint64 { _, dropped, _ := n.AuditStats(); return dropped })
	counter("keymesh_edge_audit_failed_total", "Audit records lost to NATS publish errors.", func() uint64 { _, _, failed := n.AuditStats(); return failed })
	n.reg.MustRegister(prometheus.NewGaugeFunc(prometheus.GaugeOpts{Name: "keymesh_edge_nats_connected",
		Help: "1 while the edge's NATS connection is up (events, lookups, audit and usage go over it)."},
		func() float64 {
			if n.nc.IsConnected() {
				return 1
			}
			return 0
		}))
	counter("keymesh_edge_heartbeats_ignored_total", "Origin heartbeats ignored for being no newer than one already taken.", func() uint64 { return n.view.Stats().OldHeartbeats })
	n.watchUsage()
}

// watchUsage exports the usage pipeline (usage.go): what JetStream
// acknowledged, what waits in the spool, what was dropped at which bound.
func (n *Node) watchUsage() {
	u := n.usage
	counter := func(name, help string, labels prometheus.Labels, f func() uint64) {
		n.reg.MustRegister(prometheus.NewCounterFunc(prometheus.CounterOpts{Name: name, Help: help, ConstLabels: labels},
			func() float64 { return float64(f()) }))
	}
	gauge := func(name, help string, f func() float64) {
		n.reg.MustRegister(prometheus.NewGaugeFunc(prometheus.GaugeOpts{Name: name, Help: help}, f))
	}
	counter("keymesh_edge_usage_published_total", "Usage records JetStream acknowledged.", nil, u.published.Load)
	counter("keymesh_edge_usage_publish_errors_total", "Failed attempts to publish usage records (the records wait in the spool).", nil, u.publishErrors.Load)
	const dropped = "Usage records lost: queue_full (the queue to the spool), spool_full (--usage-spool-bytes), corrupt (torn or damaged in the spool), spool_error (the spool could not be written)."
	for reason, c := range map[string]*atomic.Uint64{"queue_full": &u.queueFull, "spool_full": &u.spoolFull, "corrupt": &u.corrupt, "spool_error": &u.spErr} {
		counter("keymesh_edge_usage_dropped_total", dropped, prometheus.Labels{"reason": reason}, c.Load)
	}
	gauge("keymesh_edge_usage_spooled_records", "Usage records waiting in the spool for JetStream's acknowledgement.", func() float64 {
		records, _ := u.sp.depth()
		return float64(records)
	})
	gauge("keymesh_edge_usage_spool_bytes", "Bytes the usage records waiting in the spool take (bounded by --usage-spool-bytes).", func() float64 {
		_, bytes := u.sp.depth()
		return float64(bytes)
	})
}

// adminHandler serves /metrics, /status, /health and pprof.
func (n *Node) adminHandler() http.Handler {
	mux := http.NewServeMux()
	mux.Handle("GET /metrics", promhttp.HandlerFor(n.reg, promhttp.HandlerOpts{}))
	mux.HandleFunc("GET /status", n.serveStatus)
	mux.HandleFunc("GET /health", func(w http.ResponseWriter, _ *http.Request) {
		w.Header().Set("Content-Type", "application/json")
		if !n.view.HasSnapshot() { // not ready until it holds the deployments
			w.WriteHeader(http.StatusServiceUnavailable)
			_, _ = w.Write([]byte(`{"status":"syncing"}` + "\n"))
			return
		}
		_, _ = w.Write([]byte(`{"status":"ok"}` + "\n"))
	})
	mux.HandleFunc("/debug/pprof/", pprof.Index)
	mux.HandleFunc("/debug/pprof/cmdline", pprof.Cmdline)
	mux.HandleFunc("/debug/pprof/profile", pprof.Profile)
	mux.HandleFunc("/debug/pprof/symbol", pprof.Symbol)
	mux.HandleFunc("/debug/pprof/trace", pprof.Trace)
	return mux
}

// AdminHandler returns the admin listener's handler (for tests and for
// embedding the edge).
func (n *Node) AdminHandler() http.Handler { return n.adminHandler() }

// gossipCollector exports the cluster view at scrape time: members, how
// far this edge is behind its most advanced peer and each peer behind this
// edge, what peers sent that was refused, what bounded queues dropped,
// catch-ups and lookups answered by peers.
type gossipCollector struct {
	s *Node

	members, behind, peerLag, rejected, dropped, catchUps, peerLookups, heartbeats,
	received, rejoins, conflicts, relaying *prometheus.Desc
}

var _ prometheus.Collector = (*gossipCollector)(nil)

func newGossipCollector(s *Node) *gossipCollector {
	d := func(name, help string, labels ...string) *prometheus.Desc {
		return prometheus.NewDesc("keymesh_edge_gossip_"+name, help, labels, nil)
	}
	return &gossipCollector{s: s,
		members:     d("members", "Live members of the gossip ring, this edge included."),
		behind:      d("behind_revisions", "Revisions the most advanced gossip peer has applied that this edge has not."),
		peerLag:     d("peer_lag_revisions", "Revisions each gossip peer is behind this edge (negative: ahead).", "peer"),
		rejected:    d("rejected_total", "Records, heartbeats and lookup answers from peers refused (bad signature or shape).", "kind"),
		dropped:     d("dropped_total", "Gossip messages dropped at a bounded queue.", "queue"),
		catchUps:    d("catch_ups_total", "Anti-entropy: fetches from JetStream, requests to peers and their failures, peers' requests answered.", "result"),
		peerLookups: d("peer_lookups_total", "Cache misses the origin could not answer, sent to peers, and those a peer answered.", "result"),
		heartbeats:  d("heartbeats_total", "Origin heartbeats gossiped: sent to peers, received, new ones that proved this edge current.", "dir"),
		received:    d("events_received_total", "Events delivered by peers (each revision once)."),
		rejoins:     d("rejoins_total", "Joins made because a known peer had failed (partitions healed)."),
		conflicts:   d("name_conflicts_total", "Two nodes seen claiming one name."),
		relaying:    d("relayed_edges", "Peers without NATS whose heartbeats this edge publishes."),
	}
}

func (g *gossipCollector) Describe(ch chan<- *prometheus.Desc) {
	for _, d := range []*prometheus.Desc{g.members, g.behind, g.peerLag, g.rejected, g.dropped, g.catchUps,
		g.peerLookups, g.heartbeats, g.received, g.rejoins, g.conflicts, g.relaying} {
		ch <- d
	}
}

func (g *gossipCollector) Collect(ch chan<- prometheus.Metric) {
	s := g.s
	st := s.gossip.Stats()
	applied := s.view.AppliedRevision()
	var behind uint64
	for _, p := range s.gossip.Peers() {
		if p.Revision > applied {
			behind = max(behind, p.Revision-applied)
		}
		ch <- prometheus.MustNewConstMetric(g.peerLag, prometheus.GaugeValue, float64(int64(applied)-int64(p.Revision)), p.Name)
	}
	gauge := func(d *prometheus.Desc, v float64, labels ...string) {
		ch <- prometheus.MustNewConstMetric(d, prometheus.GaugeValue, v, labels...)
	}
	counter := func(d *prometheus.Desc, v uint64, labels ...string) {
		ch <- prometheus.MustNewConstMetric(d, prometheus.CounterValue, float64(v), labels...)
	}
	gauge(g.members, float64(st.Members))
	gauge(g.behind, float64(behind))
	gauge(g.relaying, float64(len(s.relayed())))
	recRejected, held := s.feed.GossipStats()
	counter(g.rejected, recRejected, "record")
	counter(g.rejected, s.gossipHook.hbRejected.Load(), "heartbeat")
	counter(g.rejected, st.AnswersRefused, "lookup_answer")
	counter(g.dropped, st.DroppedInbox, "inbox")
	counter(g.dropped, st.DroppedQueue, "broadcast")
	counter(g.dropped, st.DroppedSends, "tcp_send")
	counter(g.dropped, held, "held")
	counter(g.catchUps, st.Fetches, "fetched")
	counter(g.catchUps, st.CatchUpsAsked, "asked")
	counter(g.catchUps, st.CatchUpFailures, "failed")
	counter(g.catchUps, st.CatchUpsAnswered, "answered")
	counter(g.peerLookups, s.gossipHook.peerLookups.Load(), "asked")
	counter(g.peerLookups, s.gossipHook.peerAnswers.Load(), "answered")
	counter(g.heartbeats, st.HeartbeatsSent, "sent")
	counter(g.heartbeats, st.HeartbeatsReceived, "received")
	counter(g.heartbeats, s.view.Stats().PeerHeartbeats, "new")
	counter(g.received, st.Received)
	counter(g.rejoins, st.Rejoins)
	counter(g.conflicts, st.Conflicts)
}

// watchGossip exports the cluster's metrics once gossip runs.
func (n *Node) watchGossip() { n.reg.MustRegister(newGossipCollector(n)) }
