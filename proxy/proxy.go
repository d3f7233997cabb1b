// Package proxy is the edge's data plane: a fasthttp reverse proxy that
// routes each request to a deployment, authorizes its API key against a
// State (the edge's cache.View), and forwards it — streaming responses
// included — to the deployment's upstream inference servers. It knows
// nothing of NATS, gossip or the origin: package edge assembles the node
// around it.
//
// Guarantees: a request is decided by the State alone — with a cache.View,
// against state at least as new as its applied revision when the request
// started (see package cache) — and a deployment without auth is served
// only while the State is trusted; a malformed key is refused without any
// lookup; each request is read once, when its header arrives, and routing,
// the limits, the permission checks and what is sent upstream all use that
// reading (request); the upstream is one of the matched deployment's
// servers, at an address the upstream policy allows and never one of the
// node's own listeners, sent the normalised path and the body as inspected
// (forward, body); no client credential is forwarded upstream, and none is
// logged or put in an audit record; a model allow-list (models.go) is
// decided on the body as forwarded, every occurrence of a model counting;
// every admitted request holds its concurrency slots (concurrency.go) until
// it is finished, and gives them back exactly once; a request under a token
// bound or quota (tokens.go) reserves its maximum tokens at admission and
// settles them with its metered usage exactly once, when it is finished, a
// refused one holding nothing, and its stream extends the reservation as it
// goes or is ended at an event's end (streamcut.go); every answered request
// gives the AuditSink one record, and every refusal carries the error body
// of the external API. With a UsageSink, every POST forwarded and answered
// gives it one usage record, read from the answer as it is relayed (meter):
// the client receives the upstream's answer byte for byte, but for the
// usage-only chunk of a stream that the edge itself asked for and the end
// of a stream its token budget cut.
package proxy

import (
	"context"
	"crypto/rand"
	"crypto/tls"
	"encoding/binary"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/valyala/fasthttp"

	"github.com/keymesh/keymesh/apikey"
	"github.com/keymesh/keymesh/cache"
	"github.com/keymesh/keymesh/event"
)

// ErrServerClosed is returned by Serve after Shutdown.
var ErrServerClosed = errors.New("proxy: server closed")

// ErrConfig is returned by New for a Config it cannot run with.
var ErrConfig = errors.New("proxy: bad config")

// State is what the data plane reads of the edge's keys and deployments.
// *cache.View implements it; see package cache for what its answers
// guarantee.
type State interface {
	// Authorize returns the key whose secret hashes to h, or why not:
	// cache.ErrUnavailable (answered 503) when nothing could be proven,
	// any other error a refusal of the key.
	Authorize(ctx context.Context, h apikey.Hash) (*cache.Key, error)
	// Deployments returns the current deployments: the same value until
	// they change (the router is rebuilt when it is another).
	Deployments() *cache.Deployments
	// Trusted reports whether a deployment without auth may be served on
	// the state alone; false is a refusal (503).
	Trusted() bool
	// HasSnapshot reports whether the state holds the deployments: /health
	// answers 503 "syncing" until it does.
	HasSnapshot() bool
}

var _ State = (*cache.View)(nil)

// AuditSink takes the audit record of every answered request: one JSON
// object (see auditWire) holding no client credential. Record is called on
// the request path, so it must not block; rec is only valid during the
// call.
type AuditSink interface {
	Record(rec []byte)
}

// Config configures the data plane. Its limits have no defaults here:
// the edge's live in package edge (edge.DefaultConfig), and New refuses a
// zero limit rather than guess one.
type Config struct {
	// State decides every request. Required.
	State State
	// Audit receives an audit record per answered request; nil keeps none.
	Audit AuditSink
	// Usage receives the usage record of every metered request (a POST
	// forwarded and answered: see UsageSink and docs/api.md, "Metering");
	// nil meters nothing, and then no request body is rewritten either —
	// but for a request under a token bound, metered to settle its
	// reservation (tokens.go).
	Usage UsageSink
	// Metrics registers the data plane's metrics (keymesh_edge_requests_total
	// and the others of the request path); nil registers them nowhere.
	Metrics prometheus.Registerer
	// Logger receives operational logs. Required.
	Logger *slog.Logger
	// EdgeID and Site name this edge in audit records; Site also selects
	// each deployment's upstream list. Site is required.
	EdgeID, Site string
	// SecretsDir holds upstream credentials per project, as files
	// <SecretsDir>/<project>/<secret>; the environment variable
	// EDGE_SECRET_<PROJECT>__<SECRET> takes precedence (see secretStore).
	SecretsDir string
	// TLSCert and TLSKey serve HTTPS (TLS 1.2 or newer); ReloadTLS reads
	// them again. TLSClientCA, if set, requires client certificates signed
	// by it (mutual TLS).
	TLSCert, TLSKey, TLSClientCA string
	// CORSAllowedOrigins enables CORS for these origins ("*" for any);
	// empty disables it. CORSAllowedMethods and CORSAllowedHeaders are what
	// preflights are answered with.
	CORSAllowedOrigins, CORSAllowedMethods, CORSAllowedHeaders []string
	// UpstreamIdleTimeout cuts an upstream that sends nothing for this long,
	// before its headers or mid-stream; a generation that keeps producing
	// tokens is never cut, however long it runs. Required.
	UpstreamIdleTimeout time.Duration
	// UpstreamConnectTimeout bounds connecting to an upstream. Required.
	UpstreamConnectTimeout time.Duration
	// MaxUpstreamConns bounds the connections (so the requests and streams
	// in flight) to each upstream server. A request that finds them all
	// busy waits up to UpstreamPoolWait for one, then gets 503 + Retry-After
	// and is counted in keymesh_edge_upstream_pool_full_total. Required.
	MaxUpstreamConns int
	UpstreamPoolWait time.Duration
	// MaxRequestBodyBytes caps any request body before a deployment's own
	// limit applies. Required.
	MaxRequestBodyBytes int
	// UpstreamAllow restricts the upstreams the edge connects to: CIDRs or
	// IP addresses (of the address connected to), or [http(s)://]host[:port]
	// with host a name or "*.domain" (of the upstream URL). Empty allows any
	// upstream. Whatever it says, the edge's own listeners are never an
	// upstream, and link-local and cloud-metadata addresses only when a
	// prefix inside them is listed (see upstreamPolicy).
	UpstreamAllow []string
	// OwnListeners are the node's listen addresses as configured, by flag
	// name ("--admin-listen": "127.0.0.1:9090"): an UpstreamAllow pattern
	// naming one is refused. The addresses actually bound are added with
	// AddOwnListener (Serve adds its own).
	OwnListeners map[string]string
	// LimitPartition is what the edge does while partitioned from the
	// other edges (it knows of live peers, SetLimitPeers, but has merged no
	// limit report for five LimitSync intervals): LimitPartitionShare
	// (the default, ""), LimitPartitionDeny or LimitPartitionLocal. See
	// global.go and docs/design.md, "Edge: limits across edges".
	LimitPartition string
	// LimitSync is the interval the transport exchanges limit reports at
	// (LimitReport, MergeLimitReport): the length of a strict-mode round
	// and the unit of partition detection. Zero is DefaultLimitSync.
	LimitSync time.Duration
}

// Proxy is the data plane: it answers inference requests, forwarding them
// upstream. Its methods are safe for concurrent use.
type Proxy struct {
	cfg     Config
	log     *slog.Logger
	state   State
	client  *fasthttp.Client
	srv     *fasthttp.Server
	router  atomic.Pointer[router]
	health  healthTable
	metrics *metrics
	tls     *tls.Config
	certs   *certStore
	cors    *cors
	limits  *limiter
	// pending carries each request's reading from the header hook to its
	// handler.
	pending *pendingRequests
	audit   auditRecorder
	// secrets holds upstream credentials for upstream_auth "inject".
	secrets secretStore
	// policy decides which addresses upstream connections may go to.
	policy *upstreamPolicy
	// inflight counts requests in flight per key and deployment.
	inflight *inflight
	// tokens holds the token limits' and quotas' counters (tokens.go).
	tokens *tokenTable
	// global holds the limit counters across edges (global.go).
	global *globalLimits
	// noUpstreamLogged maps a deployment id to the revision whose missing
	// upstream was logged (forward.go: noUpstream).
	noUpstreamLogged sync.Map
	// lastModel is the model name of the last usage record (modelName).
	lastModel atomic.Pointer[string]

	mu sync.Mutex
	ln net.Listener
	// lingering wraps the listener: refused uploads drain before closing.
	lingering *lingerListener
	shutdown  bool
}

// New validates cfg and builds the data plane; Serve then accepts
// requests.
func New(cfg Config) (*Proxy, error) {
	switch {
	case cfg.State == nil:
		return nil, fmt.Errorf("%w: State is required", ErrConfig)
	case cfg.Logger == nil:
		return nil, fmt.Errorf("%w: Logger is required", ErrConfig)
	case cfg.Site == "":
		return nil, fmt.Errorf("%w: Site is required", ErrConfig)
	case cfg.MaxRequestBodyBytes <= 0, cfg.MaxUpstreamConns <= 0, cfg.UpstreamIdleTimeout <= 0,
		cfg.UpstreamConnectTimeout <= 0, cfg.UpstreamPoolWait <= 0:
		return nil, fmt.Errorf("%w: MaxRequestBodyBytes, MaxUpstreamConns, UpstreamIdleTimeout, UpstreamConnectTimeout and UpstreamPoolWait must be positive", ErrConfig)
	}
	var tlsConf *tls.Config
	var certs *certStore
	if cfg.TLSCert != "" || cfg.TLSKey != "" || cfg.TLSClientCA != "" {
		var err error
		if tlsConf, certs, err = newTLSConfig(cfg.TLSCert, cfg.TLSKey, cfg.TLSClientCA); err != nil {
			return nil, err
		}
	}
	policy, err := parseUpstreamPolicy(cfg.UpstreamAllow)
	if err != nil {
		return nil, err
	}
	if err := policy.checkOwnPatterns(cfg.OwnListeners); err != nil {
		return nil, err
	}
	reg := cfg.Metrics
	if reg == nil {
		reg = prometheus.NewRegistry() // registered nowhere anyone scrapes
	}
	s := &Proxy{cfg: cfg, log: cfg.Logger, state: cfg.State, limits: newLimiter(time.Now, 1_000_000),
		tls: tlsConf, certs: certs, pending: newPendingRequests(), policy: policy, inflight: newInflight(),
		tokens: newTokenTable(time.Now, 1_000_000),
		cors:   newCORS(cfg.CORSAllowedOrigins, cfg.CORSAllowedMethods, cfg.CORSAllowedHeaders),
		audit:  newAuditRecorder(cfg.Audit, cfg.EdgeID, cfg.Site)}
	if s.global, err = newGlobalLimits(time.Now, cfg.EdgeID, cfg.LimitPartition, cfg.LimitSync, 1_000_000); err != nil {
		return nil, err
	}
	s.limits.global, s.tokens.global = s.global, s.global
	s.global.floors = s.tokens.floors // the ledger's floors count across edges too (balance.go)
	if s.metrics, err = newMetrics(reg, s.limits); err != nil {
		return nil, err
	}
	if err := s.global.register(reg); err != nil {
		return nil, err
	}
	if err := reg.Register(prometheus.NewCounterFunc(prometheus.CounterOpts{Name: "keymesh_edge_token_untracked_total",
		Help: "Token-limit and quota checks made against a counter not kept because the token table was full."},
		func() float64 { return float64(s.tokens.untracked.Load()) })); err != nil {
		return nil, fmt.Errorf("registering metrics: %w", err)
	}
	s.secrets.dir = cfg.SecretsDir
	s.secrets.warnUnscoped(cfg.Logger)
	s.client = &fasthttp.Client{
		Name:                     "keymesh-edge",
		NoDefaultUserAgentHeader: true,
		StreamResponseBody:       true,
		MaxConnsPerHost:          cfg.MaxUpstreamConns,
		MaxConnWaitTimeout:       cfg.UpstreamPoolWait,
		MaxIdleConnDuration:      30 * time.Second,
		ReadBufferSize:           16 << 10,
		DisablePathNormalizing:   true,
		// No ReadTimeout: it keeps running while a response streams and
		// would cut a healthy long generation.
		Dial: policy.dialer(cfg.UpstreamConnectTimeout, cfg.UpstreamIdleTimeout),
	}
	s.srv = &fasthttp.Server{
		Handler:                       s.handle,
		Name:                          "keymesh-edge",
		MaxRequestBodySize:            cfg.MaxRequestBodyBytes,
		ReadTimeout:                   60 * time.Second,
		IdleTimeout:                   120 * time.Second,
		DisablePreParseMultipartForm:  true,
		NoDefaultServerHeader:         true,
		DisableHeaderNamesNormalizing: false,
		Logger:                        fasthttpLogger{s.log},
		SecureErrorLogMessage:         true, // and the Logger never prints its arguments anyway
		HeaderReceived:                s.headerReceived,
		ErrorHandler:                  s.serveError,
	}
	return s, nil
}

// AddOwnListener records an address the node listens on (admin, gossip):
// never an upstream, whatever UpstreamAllow says.
func (s *Proxy) AddOwnListener(addr net.Addr) { s.policy.addOwn(addr) }

// Serve accepts requests on ln until Shutdown, then returns ErrServerClosed.
// With TLSCert set it serves HTTPS.
func (s *Proxy) Serve(ln net.Listener) error {
	s.mu.Lock()
	if s.shutdown {
		s.mu.Unlock()
		ln.Close()
		return ErrServerClosed
	}
	s.policy.addOwn(ln.Addr())
	s.lingering = newLingerListener(ln)
	ln = s.lingering
	if s.tls != nil {
		ln = tls.NewListener(ln, s.tls)
	}
	s.ln = ln
	s.mu.Unlock()
	err := s.srv.Serve(ln)
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.shutdown {
		return ErrServerClosed
	}
	return err
}

// Addr returns the address Serve is listening on, once it is.
func (s *Proxy) Addr() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.ln == nil {
		return ""
	}
	return s.ln.Addr().String()
}

// Shutdown stops accepting requests and waits for in-flight ones (streams
// included) until ctx ends, then for refused uploads still draining (each
// bounded). It is safe to call twice.
func (s *Proxy) Shutdown(ctx context.Context) error {
	s.mu.Lock()
	already := s.shutdown
	s.shutdown = true
	s.mu.Unlock()
	if already {
		return nil
	}
	var err error
	if e := s.srv.ShutdownWithContext(ctx); e != nil {
		err = fmt.Errorf("draining requests: %w", e)
	}
	s.mu.Lock()
	lingering := s.lingering
	s.mu.Unlock()
	if lingering != nil {
		lingering.wait() // refused uploads still draining, each bounded
	}
	return err
}

// currentRouter returns the router for the View's current deployments,
// rebuilding it when they changed.
func (s *Proxy) currentRouter() *router {
	deps := s.state.Deployments()
	r := s.router.Load()
	if r == nil || r.deps != deps {
		r = newRouter(deps, s.cfg.Site, &s.health, s.metrics.upstream, s.policy)
		s.router.Store(r)
	}
	return r
}

// headerReceived reads the request's header into its one reading (see
// request) as soon as the header has arrived: a request refused from its
// header is answered without its body being read, and the matching
// deployment's body limit applies before the body is buffered.
func (s *Proxy) headerReceived(h *fasthttp.RequestHeader) fasthttp.RequestConfig {
	r := acquireRequest()
	r.read(h, s.currentRouter(), s.cfg.MaxRequestBodyBytes)
	s.pending.put(h, r)
	switch {
	case r.refusal != nil:
		// Nothing of the body is needed: a body of more than one byte ends
		// the read at once, and serveError gives the refusal.
		return fasthttp.RequestConfig{MaxRequestBodySize: 1}
	case r.bodyLimit > 0:
		return fasthttp.RequestConfig{MaxRequestBodySize: r.bodyLimit}
	}
	return fasthttp.RequestConfig{}
}

// takeRequest returns the reading headerReceived made of ctx's request, or
// (if it was dropped) a reading made now.
func (s *Proxy) takeRequest(ctx *fasthttp.RequestCtx) *request {
	if r := s.pending.take(&ctx.Request.Header); r != nil {
		return r
	}
	r := acquireRequest()
	r.read(&ctx.Request.Header, s.currentRouter(), s.cfg.MaxRequestBodyBytes)
	return r
}

// serveError answers requests fasthttp could not read, and finishes them
// like any other: a request id, an audit record, a count, and one log line
// that names the remote address, the kind of error and the request id —
// never the request's bytes, which fasthttp's own messages quote.
func (s *Proxy) serveError(ctx *fasthttp.RequestCtx, err error) {
	// The client may still be sending what was not read: let it read the
	// answer instead of a reset.
	lingerOnClose(ctx.Conn())
	var idBuf [auditMaxRequestID]byte
	id := setRequestID(ctx, idBuf[:0])
	out := outcome{}
	class := errorClass(err)
	if errors.Is(err, fasthttp.ErrBodyTooLarge) {
		// Only the body is read after the header hook ran, so the reading
		// it left is this request's.
		if out.req = s.pending.take(&ctx.Request.Header); out.req != nil {
			out.req.id = append(out.req.idBuf[:0], id...) // the audit record's
		}
	}
	switch r := out.req; {
	case r != nil && r.refusal != nil:
		out.refused = s.refuse(ctx, r)
		class = ""
	case class == "body_too_large":
		fail(ctx, errBodyTooLarge, 0)
		out.refused = reasonTooLarge
		if r != nil && r.rt != nil {
			out.dep = r.rt.dep
		}
	default:
		fail(ctx, errMalformedRequest, 0)
		out.refused = reasonBadRequest
	}
	if class != "" {
		s.log.Info("request not read", "remote", ctx.RemoteAddr().String(), "error", class, "request_id", string(id))
	}
	s.finish(ctx, &out)
}

// refuse answers a request refused from its header, counts it and returns
// its audit reason.
func (s *Proxy) refuse(ctx *fasthttp.RequestCtx, r *request) reason {
	if r.refusal == errMethodRefused {
		ctx.Response.Header.Set(fasthttp.HeaderAllow, "GET, HEAD, POST, PUT, PATCH, DELETE, OPTIONS")
	}
	fail(ctx, r.refusal, 0)
	s.metrics.refused[r.refused].Inc()
	if r.refused == refusedNoDeployment {
		return reasonNoRoute
	}
	return reasonBadRequest
}

// outcome is what handling one request decided, for metrics and audit.
type outcome struct {
	req    *request          // the request's reading; nil if it was never read
	dep    *event.Deployment // nil when no deployment matched
	key    *cache.Key        // nil when no key was checked, or a refused one is unknown
	reason reason            // the authorization decision, counted
	// refused is why the request was refused other than by a decision (its
	// body, its header, no deployment); audited in preference to reason.
	refused reason
	open    bool // /health, /ping or a CORS preflight: not counted
	// body is the upstream answer being relayed, if any: the request is
	// finished (audited, counted) when it is closed.
	body *upstreamBody
	// meter meters the request, when it is metered; usage is what it
	// found, once the request is finished.
	meter *meter
	usage usageCounts
	// adm is the request's concurrency slots, given back when it is
	// finished.
	adm admission
	// took is how long the request took, from its first byte to being
	// finished: read once, by finish, for its audit and usage records.
	took time.Duration
}

func (s *Proxy) handle(ctx *fasthttp.RequestCtx) {
	out := s.serve(ctx)
	if out.open {
		releaseRequest(out.req)
		return
	}
	if b := out.body; b != nil {
		// Audited when the body has been relayed, with its full duration.
		b.s, b.ctx, b.out = s, ctx, out
		return
	}
	s.finish(ctx, &out)
}

// finish records an answered request: its audit record and metrics.
func (s *Proxy) finish(ctx *fasthttp.RequestCtx, out *outcome) {
	out.took = time.Since(ctx.Time())
	s.release(&out.adm)
	if out.meter != nil {
		s.noteCut(out)
		if out.meter.answered && out.dep != nil {
			s.meterUsage(ctx, out)
		}
		releaseMeter(out.meter)
		out.meter = nil
	}
	if r := out.req; r != nil && r.tok != nil {
		// What the upstream never answered used nothing.
		var used int64
		if out.usage.ok {
			used = out.usage.prompt + out.usage.completion
		}
		r.tok.spent = meteredCost(out.dep, &out.usage)
		s.tokens.settle(r.tok, used)
		r.tok = nil
	}
	s.audit.record(ctx, out)
	name := ""
	if out.dep != nil {
		name = out.dep.Name
		s.metrics.decide(out.reason)
	}
	s.metrics.count(name, ctx.Response.StatusCode())
	releaseRequest(out.req)
	out.req = nil
}

func (s *Proxy) serve(ctx *fasthttp.RequestCtx) (out outcome) {
	r := s.takeRequest(ctx)
	r.id = setRequestID(ctx, r.idBuf[:0])
	out.req = r
	if s.cors.apply(ctx) {
		out.open = true // a preflight, answered
		return out
	}
	if r.refusal != nil {
		out.refused = s.refuse(ctx, r)
		return out
	}
	if r.open() {
		ctx.Response.Header.SetContentType("application/json")
		if string(r.path) == "/health" && !s.state.HasSnapshot() {
			// Not ready: without deployments every request would be a 404.
			ctx.SetStatusCode(fasthttp.StatusServiceUnavailable)
			ctx.SetBodyString(`{"status":"syncing"}`)
		} else {
			ctx.SetBodyString(`{"status":"ok"}`)
		}
		out.open = true
		return out
	}
	if r.keyInfo() {
		out.key, out.reason = s.serveKeyInfo(ctx, r)
		return out
	}
	rt := r.rt
	if rt == nil {
		fail(ctx, errNoDeployment, 0)
		out.refused = reasonNoRoute
		return out
	}
	dep := rt.dep
	out.dep = dep
	if ctx.Request.Header.ContentLength() == -1 && len(ctx.Request.Header.TrailerHeader()) > 2 {
		// Trailers (a chunked body's) arrived after the decision was made
		// on the header, and would be read as header fields: refuse.
		r.refuse(errTrailers, refusedTrailers)
		out.refused = s.refuse(ctx, r)
		return out
	}
	if dep.MaxBodyBytes > 0 && int64(len(ctx.Request.Body())) > dep.MaxBodyBytes {
		fail(ctx, errBodyTooLarge, 0) // read under the server's limit: the reading was redone
		out.refused = reasonTooLarge
		return out
	}
	out.reason = reasonAuthOff
	if dep.AuthEnabled {
		if out.key, out.reason = s.authenticate(ctx, dep, r.cred); out.reason != reasonAllowed {
			return out
		}
	} else if !s.state.Trusted() {
		// Only the deployment, as this edge last knew it, lets the request
		// through — and the edge cannot prove that is still so (auth may
		// have been turned on meanwhile): closed mode refuses.
		ctx.Response.Header.Set(fasthttp.HeaderRetryAfter, "1")
		fail(ctx, errUnproven, 0)
		out.reason = reasonUnavailable
		return out
	}
	body, why := s.inspect(ctx, dep, out.key)
	if why != reasonNone {
		out.refused = why
		return out
	}
	if out.key != nil && !permitted(ctx, out.key, r, body.stream) {
		out.reason = reasonPermission
		return out
	}
	if !s.checkModels(ctx, r, out.key, &body) {
		out.reason = reasonModel
		return out
	}
	// A misconfiguration, not an outage (forward.go): answered once the
	// key is known, so no anonymous client learns of it, and before any
	// slot, reservation, quota unit or rate-limit token is taken for a
	// request that cannot be forwarded.
	if rt.noUpstream != nil {
		s.noUpstream(ctx, rt)
		out.refused = reasonNoUpstream
		return out
	}
	bounded := tokenBounded(dep, out.key)
	var res int64
	ok := true
	if bounded {
		if res, ok = reservation(ctx, dep, &body); !ok {
			out.refused = reasonBadBody
			return out
		}
	}
	if out.adm, ok = s.admit(ctx, dep, out.key); !ok {
		out.reason = reasonConcurrency
		return out
	}
	var tokHeaders tokenHeaders
	if bounded {
		// After the slots (finish gives those back), before the request
		// rate limit (which gives the reservation back when it refuses).
		var tr tokenResult
		if r.tok, tr, ok = s.admitTokens(ctx, dep, out.key, res, body.chars); !ok {
			out.reason = tr.reason
			return out
		}
		tokHeaders = tr.tokenHeaders
	}
	lim := s.limits.check(dep, out.key)
	lim.tokens = tokHeaders
	lim.setHeaders(&ctx.Response.Header)
	if lim.retry > 0 {
		if r.tok != nil {
			s.tokens.cancel(r.tok)
			r.tok = nil
		}
		fail(ctx, errRateLimited, 0)
		out.reason = reasonRateLimited
		return out
	}
	out.meter = s.meterRequest(ctx.Method(), r, &body, r.tok != nil)
	out.body = s.forward(ctx, r, body, lim, out.meter)
	return out
}

// Request ids the edge makes are unique without a random read per request:
// a random per-process prefix, then a counter passed through a bijective
// mix so that ids do not tell a client how busy the edge is.
var (
	requestIDPrefix = func() (p [8]byte) {
		_, _ = rand.Read(p[:])
		return p
	}()
	requestIDCounter atomic.Uint64
	// requestIDPrefixHex is the prefix as every id starts, encoded once.
	requestIDPrefixHex = hex.EncodeToString(requestIDPrefix[:])
)

const requestIDLen = 32

// setRequestID keeps the client's X-Request-Id if it is a sensible one (1 to
// 128 visible ASCII characters), or makes one, puts it on the answer and
// returns it appended to dst; forward sends the same one upstream.
func setRequestID(ctx *fasthttp.RequestCtx, dst []byte) []byte {
	if id := ctx.Request.Header.PeekBytes(headerRequestID); validRequestID(id) {
		dst = append(dst, id...)
	} else {
		dst = appendRequestID(dst)
	}
	ctx.Response.Header.SetCanonical(headerRequestID, dst)
	return dst
}

func validRequestID(id []byte) bool {
	if len(id) == 0 || len(id) > auditMaxRequestID {
		return false
	}
	for _, c := range id {
		if c <= ' ' || c >= 0x7f {
			return false
		}
	}
	return true
}

func appendRequestID(dst []byte) []byte {
	dst = append(dst, requestIDPrefixHex...)
	// splitmix64's finalizer: a bijection on uint64.
	z := requestIDCounter.Add(1)
	z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9
	z = (z ^ (z >> 27)) * 0x94d049bb133111eb
	z ^= z >> 31
	var b [8]byte
	binary.BigEndian.PutUint64(b[:], z)
	return hex.AppendEncode(dst, b[:])
}

// fasthttpLogger takes fasthttp's own messages. Several quote the bytes of
// the request that failed (a header line, a host, a whole buffer), and a
// request's bytes can hold credentials, cookies and prompts: so no argument
// is ever formatted. Each message becomes one line naming what happened, the
// remote address where fasthttp gives one, and the class of the error.
type fasthttpLogger struct{ log *slog.Logger }

func (l fasthttpLogger) Printf(format string, args ...any) {
	attrs := []any{"component", "fasthttp"}
	for _, a := range args {
		switch v := a.(type) {
		case net.Addr:
			attrs = append(attrs, "addr", v.String())
		case error:
			attrs = append(attrs, "error", errorClass(v))
		}
	}
	switch {
	case strings.HasPrefix(format, "error when serving connection"):
		// The request, if one was read, has had its own line (serveError).
		l.log.Debug("connection ended with an error", attrs...)
	case strings.Contains(format, "concurrent connections"), strings.Contains(format, "MaxConnsPerIP"):
		l.log.Warn("connection refused at the concurrency limit", attrs...)
	case strings.Contains(format, "accepting new connections"):
		l.log.Warn("accepting connections failed", attrs...)
	default:
		// fasthttp's format strings are its own constants: no request bytes.
		l.log.Warn("fasthttp: "+strings.TrimSpace(strings.SplitN(format, "%", 2)[0]), attrs...)
	}
}

// errorClass names the kind of a read or connection error for logs,
// without any of its text (which may quote the request).
func errorClass(err error) string {
	var small *fasthttp.ErrSmallBuffer
	var netErr net.Error
	var hostErr fasthttp.InvalidHostError
	switch {
	case err == nil:
		return ""
	case errors.Is(err, fasthttp.ErrBodyTooLarge):
		return "body_too_large"
	case errors.Is(err, fasthttp.ErrSmallReadBuffer), errors.As(err, &small):
		return "header_too_large"
	case errors.As(err, &netErr) && netErr.Timeout():
		return "timeout"
	case errors.Is(err, io.EOF), errors.Is(err, io.ErrUnexpectedEOF):
		return "eof"
	case errors.As(err, &hostErr):
		return "bad_host"
	case errors.Is(err, fasthttp.ErrorInvalidURI):
		return "bad_target"
	case errors.Is(err, fasthttp.ErrBadTrailer):
		return "bad_trailer"
	}
	msg := err.Error() // classified, never logged
	switch {
	case strings.Contains(msg, "trailer"):
		return "bad_trailer"
	case strings.Contains(msg, "request headers"), strings.Contains(msg, "request uri"), strings.Contains(msg, "method"):
		return "malformed_header"
	case strings.Contains(msg, "body"), strings.Contains(msg, "chunk"):
		return "malformed_body"
	case strings.Contains(msg, "reset by peer"), strings.Contains(msg, "broken pipe"):
		return "connection_reset"
	}
	return "other"
}
