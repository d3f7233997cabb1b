package proxy

import (
	"fmt"
	"strconv"
	"sync"
	"sync/atomic"

	"github.com/prometheus/client_golang/prometheus"
)

// reason is why a request was let through or refused; each has a counter.
type reason int

const (
	// reasonNone: refused before any authorization decision (a body too
	// large, say); not counted as a decision.
	reasonNone reason = iota
	reasonAllowed
	reasonAuthOff
	reasonNoCredential
	reasonMalformed
	reasonUnknown
	reasonExpired
	reasonDisabled
	reasonUnlinked
	reasonPermission
	reasonRateLimited
	reasonUnavailable
	reasonTokenLimit // tokens_per_minute or tokens_per_day (tokens.go)
	reasonQuota      // a quota of tokens or requests
	// The reasons below refine a decision above for the audit record
	// (counted under the label reasonNames gives), or name a refusal that
	// is no decision (outcome.refused; not counted here).
	reasonModel       // a model the allow-lists do not allow (counted as permission_denied)
	reasonConcurrency // max_concurrency (counted as rate_limited)
	reasonTooLarge    // a body over the limit
	reasonPromptLong  // a prompt over max_prompt_chars
	reasonBadBody     // a body the edge cannot read, or an ambiguous max_tokens
	reasonBadRequest  // refused for its request line or headers
	reasonNoRoute     // no deployment matched
	reasonNoUpstream  // the deployment lists no upstream for this edge's site
	reasonStreamCut   // a stream ended when its token budget ran out (streamcut.go)
	numReasons
)

// reasonNames are the label values of keymesh_edge_auth_decisions_total.
var reasonNames = [numReasons]string{"", "allowed", "auth_off", "no_credential", "malformed", "unknown",
	"expired", "disabled", "unlinked", "permission_denied", "rate_limited", "unavailable",
	"token_limit", "quota", "permission_denied", "rate_limited"}

// auditReasons are the reasons audit records carry (docs/api.md, "Audit
// log"): "" for a request let through.
var auditReasons = [numReasons]string{"", "", "", "no_credential", "malformed", "unknown",
	"expired", "disabled", "unlinked", "permission", "rate_limited", "unavailable",
	"token_limit", "quota", "model_not_allowed", "concurrency", "too_large", "prompt_too_long",
	"bad_body", "bad_request", "no_deployment", "no_upstream", "stream_cut"}

// metrics are the data plane's Prometheus metrics, registered where
// Config.Metrics says (the edge's own registry, so that several edges can
// live in one process). Labels never carry secrets: deployment names,
// status codes and fixed reasons only.
type metrics struct {
	requests  *prometheus.CounterVec
	decisions [numReasons]prometheus.Counter
	upstream  *prometheus.HistogramVec
	streams   prometheus.Gauge
	poolFull  prometheus.Counter
	refused   [numRefusals]prometheus.Counter
	// upstreamDenied counts upstream connections the policy refused.
	upstreamDenied *prometheus.CounterVec
	// noUpstream counts requests answered 502 because their deployment
	// lists no upstream for this edge's site, by deployment name.
	noUpstream *prometheus.CounterVec
	// streamsCut counts streams the edge ended when their token budget
	// ran out, by the kind of bound (token_limit, quota).
	streamsCut *prometheus.CounterVec

	reqMu    sync.RWMutex
	reqCache map[reqLabel]*reqCounter
	// lastReq is the counter counted last: most requests an edge answers
	// are of the deployment and status the one before was (a map lookup
	// under the lock for each cost more than the count itself).
	lastReq atomic.Pointer[reqCounter]

	// tokenCounts counts metered tokens by deployment name and kind
	// (prompt, completion, cached); tokenCache holds each deployment's
	// three, lastTokens those counted last.
	tokenCounts *prometheus.CounterVec
	tokMu       sync.RWMutex
	tokenCache  map[string]*tokenCounters
	lastTokens  atomic.Pointer[tokenCounters]
}

type reqLabel struct {
	deployment string
	code       int
}

// reqCounter is the request counter of a deployment and status.
type reqCounter struct {
	reqLabel
	c prometheus.Counter
}

// tokenCounters are a deployment's token counters: prompt, completion,
// cached.
type tokenCounters struct {
	deployment string
	c          [3]prometheus.Counter
}

// newMetrics registers the request path's metrics on reg, and the rate
// limiter's bound: what happens at it is counted (DESIGN invariant 5).
func newMetrics(reg prometheus.Registerer, limits *limiter) (*metrics, error) {
	m := &metrics{reqCache: map[reqLabel]*reqCounter{}, tokenCache: map[string]*tokenCounters{}}
	m.tokenCounts = prometheus.NewCounterVec(prometheus.CounterOpts{Name: "keymesh_edge_tokens_total",
		Help: "Tokens of metered requests, by deployment and kind (prompt, completion, cached), as the upstream reported them or as estimated."},
		[]string{"deployment", "kind"})
	m.requests = prometheus.NewCounterVec(prometheus.CounterOpts{Name: "keymesh_edge_requests_total",
		Help: "Requests answered, by deployment (\"\" when none matched) and status code."}, []string{"deployment", "code"})
	auth := prometheus.NewCounterVec(prometheus.CounterOpts{Name: "keymesh_edge_auth_decisions_total",
		Help: "Authorization decisions by reason."}, []string{"reason"})
	for i, name := range reasonNames {
		if name != "" {
			m.decisions[i] = auth.WithLabelValues(name)
		}
	}
	m.upstream = prometheus.NewHistogramVec(prometheus.HistogramOpts{Name: "keymesh_edge_upstream_seconds",
		Help:    "Time from sending a request upstream to its response headers, by deployment.",
		Buckets: prometheus.ExponentialBuckets(0.001, 2, 16)}, []string{"deployment"})
	m.streams = prometheus.NewGauge(prometheus.GaugeOpts{Name: "keymesh_edge_streams",
		Help: "Streamed responses in flight."})
	m.poolFull = prometheus.NewCounter(prometheus.CounterOpts{Name: "keymesh_edge_upstream_pool_full_total",
		Help: "Requests refused with 503 because every upstream connection stayed busy."})
	refused := prometheus.NewCounterVec(prometheus.CounterOpts{Name: "keymesh_edge_requests_refused_total",
		Help: "Requests refused for their request line or headers (a tunnelling method, a malformed target or path, two credentials, trailers) or an uninspectable body, by reason."}, []string{"reason"})
	for i, name := range refusalNames {
		if refusalReason(i) != refusedNone {
			m.refused[i] = refused.WithLabelValues(name)
		}
	}
	m.refused[refusedNone] = prometheus.NewCounter(prometheus.CounterOpts{Name: "unused"}) // never registered
	m.upstreamDenied = prometheus.NewCounterVec(prometheus.CounterOpts{Name: "keymesh_edge_upstream_denied_total",
		Help: "Requests answered 502 because the upstream policy refused their upstream's address: not_allowed (outside --upstream-allow), denied_address (link-local, cloud metadata, unspecified, multicast) or own_listener (this edge's own listen, admin or gossip address)."}, []string{"reason"})
	for _, r := range deniedReasons {
		m.upstreamDenied.WithLabelValues(r.reason)
	}
	m.noUpstream = prometheus.NewCounterVec(prometheus.CounterOpts{Name: "keymesh_edge_no_upstream_total",
		Help: "Requests answered 502 because their deployment lists no upstream for this edge's site and no \"*\" entry (a misconfiguration, not an unreachable upstream), by deployment."}, []string{"deployment"})
	m.streamsCut = prometheus.NewCounterVec(prometheus.CounterOpts{Name: "keymesh_edge_streams_cut_total",
		Help: "Streamed answers the edge ended (with an insufficient_quota error event, the upstream connection closed) because a token bound or spend cap ran out mid-stream, by the bound: token_limit (tokens_per_minute, tokens_per_day) or quota (a token quota or a max_budget)."}, []string{"reason"})
	for _, r := range []reason{reasonTokenLimit, reasonQuota} {
		m.streamsCut.WithLabelValues(reasonNames[r])
	}
	untracked := prometheus.NewCounterFunc(prometheus.CounterOpts{Name: "keymesh_edge_ratelimit_untracked_total",
		Help: "Requests admitted without a rate-limit bucket because the bucket table was full."},
		func() float64 { return float64(limits.untracked.Load()) })
	for _, c := range []prometheus.Collector{refused, m.upstreamDenied, m.noUpstream, m.streamsCut, m.requests, m.tokenCounts, auth, m.upstream, m.streams, m.poolFull, untracked} {
		if err := reg.Register(c); err != nil {
			return nil, fmt.Errorf("registering metrics: %w", err)
		}
	}
	return m, nil
}

func (m *metrics) decide(r reason) {
	if c := m.decisions[r]; c != nil {
		c.Inc()
	}
}

// count records one answered request.
func (m *metrics) count(deployment string, code int) {
	if c := m.lastReq.Load(); c != nil && c.code == code && c.deployment == deployment {
		c.c.Inc()
		return
	}
	l := reqLabel{deployment, code}
	m.reqMu.RLock()
	c, ok := m.reqCache[l]
	m.reqMu.RUnlock()
	if !ok {
		c = &reqCounter{l, m.requests.WithLabelValues(deployment, strconv.Itoa(code))}
		m.reqMu.Lock()
		m.reqCache[l] = c
		m.reqMu.Unlock()
	}
	m.lastReq.Store(c)
	c.c.Inc()
}

// tokens counts one metered request's tokens.
func (m *metrics) tokens(deployment string, prompt, completion, cached int64) {
	c := m.lastTokens.Load()
	if c == nil || c.deployment != deployment {
		m.tokMu.RLock()
		var ok bool
		c, ok = m.tokenCache[deployment]
		m.tokMu.RUnlock()
		if !ok {
			c = &tokenCounters{deployment, [3]prometheus.Counter{m.tokenCounts.WithLabelValues(deployment, "prompt"),
				m.tokenCounts.WithLabelValues(deployment, "completion"), m.tokenCounts.WithLabelValues(deployment, "cached")}}
			m.tokMu.Lock()
			m.tokenCache[deployment] = c
			m.tokMu.Unlock()
		}
		m.lastTokens.Store(c)
	}
	c.c[0].Add(float64(prompt))
	c.c[1].Add(float64(completion))
	c.c[2].Add(float64(cached))
}
