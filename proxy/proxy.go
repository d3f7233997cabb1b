// Package proxy is the edge's data plane: a fasthttp reverse proxy that
// routes each request to a deployment, authorizes its API key against the
// edge's cache.View, and forwards it — streaming responses included — to
// the deployment's upstream inference servers.
//
// Guarantees: a request is authorized against state at least as new as the
// View's applied revision when the request started (see package cache); a
// malformed key is refused without any lookup; each request is read once,
// when its header arrives, and routing, the limits, the permission checks
// and what is sent upstream all use that reading (request); the upstream is
// one of the matched deployment's servers, at an address the upstream
// policy allows, sent the normalised path and the body as inspected
// (forward, body); no client credential is forwarded upstream, and none is
// logged; every refusal carries the error body of the external API.
package proxy

import (
	"context"
	"crypto/ed25519"
	"crypto/rand"
	"crypto/tls"
	"encoding/binary"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nkeys"
	"github.com/valyala/fasthttp"

	"github.com/keymesh/keymesh/cache"
	"github.com/keymesh/keymesh/cluster"
	"github.com/keymesh/keymesh/edge/feed"
	"github.com/keymesh/keymesh/event"
	"github.com/keymesh/keymesh/internal/dirlock"
	"github.com/keymesh/keymesh/internal/natsauth"
)

// ErrServerClosed is returned by Serve after Shutdown.
var ErrServerClosed = errors.New("proxy: server closed")

// Config configures an edge. Zero fields take the documented defaults.
type Config struct {
	// Listen is the inference-facing address. Default 127.0.0.1:8080.
	Listen string
	// AdminListen serves /status; empty disables it. Default (from
	// DefaultConfig) 127.0.0.1:9090.
	AdminListen string
	// NATSURL is the NATS server(s) events and lookups come over. Default
	// nats://127.0.0.1:4222.
	NATSURL string
	// NATSCreds is the NATS .creds file this edge connects with ("origin
	// nats-creds --role edge --id ID"; required by the origin's embedded
	// NATS). An edge credential names the edge: ID defaults to that name,
	// and a different ID is refused at start. "" connects without.
	NATSCreds string
	// NATSTLSCA verifies the NATS server's certificate (PEM); NATSTLSCert
	// and NATSTLSKey are a client certificate to present. Each "" for none.
	NATSTLSCA, NATSTLSCert, NATSTLSKey string
	// Site is this edge's site; it selects the deployment's upstream list.
	// Default "default".
	Site string
	// OriginPublicKey verifies everything the edge acts on. Required.
	OriginPublicKey ed25519.PublicKey
	// DataDir holds the persisted applied revision and deployments; empty
	// means nothing persists and every start resynchronises from a snapshot.
	DataDir string
	// SecretsDir holds upstream credentials per project, as files
	// <SecretsDir>/<project>/<secret>; the environment variable
	// EDGE_SECRET_<PROJECT>__<SECRET> takes precedence (see secretStore).
	SecretsDir string
	// TLSCert and TLSKey serve HTTPS on Listen (TLS 1.2 or newer); ReloadTLS
	// reads them again. TLSClientCA, if set, requires client certificates
	// signed by it (mutual TLS).
	TLSCert, TLSKey, TLSClientCA string
	// CORSAllowedOrigins enables CORS for these origins ("*" for any);
	// empty disables it. CORSAllowedMethods and CORSAllowedHeaders default to
	// GET, POST, OPTIONS and the headers inference clients send.
	CORSAllowedOrigins, CORSAllowedMethods, CORSAllowedHeaders []string
	// Gossip joins the edge to its peers so that changes arrive even when
	// this edge's NATS link is down. Off unless keys (or Insecure) are set.
	Gossip GossipConfig
	// LookupTimeout bounds a cache-miss lookup. Default 2s.
	LookupTimeout time.Duration
	// MaxLookups bounds the cache-miss lookups in flight; past it a miss
	// gets 503 at once (cache.Config.MaxLookups). Default 256.
	MaxLookups int
	// MaxKeys bounds the key cache. Default 1,000,000.
	MaxKeys int64
	// MaxStaleness: without proof for this long that the edge is current —
	// a signed origin heartbeat naming a committed head it has applied —
	// cached keys are re-validated by lookup before use, and (closed) a
	// deployment without auth is not served. State restored from DataDir
	// is as stale as the newest origin-signed record in it. Default 10s.
	MaxStaleness time.Duration
	// FailOpen ("open-cached") keeps serving cached keys, and deployments
	// without auth, when a stale edge cannot re-validate them; the default
	// ("closed") answers 503 for them, and refuses a gossip peer's answer
	// the origin signed longer ago than MaxStaleness.
	FailOpen bool
	// UpstreamIdleTimeout cuts an upstream that sends nothing for this long,
	// before its headers or mid-stream; a generation that keeps producing
	// tokens is never cut, however long it runs. Default 2m.
	UpstreamIdleTimeout time.Duration
	// UpstreamConnectTimeout bounds connecting to an upstream. Default 5s.
	UpstreamConnectTimeout time.Duration
	// MaxUpstreamConns bounds the connections (so the requests and streams
	// in flight) to each upstream server. A request that finds them all
	// busy waits up to UpstreamPoolWait for one, then gets 503 + Retry-After
	// and is counted in keymesh_edge_upstream_pool_full_total. Defaults
	// 1024 and 2s.
	MaxUpstreamConns int
	UpstreamPoolWait time.Duration
	// MaxRequestBodyBytes caps any request body before a deployment's own
	// limit applies. Default 64 MiB.
	MaxRequestBodyBytes int
	// UpstreamAllow restricts the upstreams the edge connects to: CIDRs or
	// IP addresses (of the address connected to), or [http(s)://]host[:port]
	// with host a name or "*.domain" (of the upstream URL). Empty allows any
	// upstream. Whatever it says, the edge's own listeners are never an
	// upstream, and link-local and cloud-metadata addresses only when a
	// prefix inside them is listed (see upstreamPolicy).
	UpstreamAllow []string
	// Logger receives operational logs. Default slog.Default().
	Logger *slog.Logger
	// ID names this edge in heartbeats and audit records. Default: an id
	// kept in <DataDir>/edge-id (random on first start); without DataDir,
	// hostname/Listen when the port is fixed, else hostname plus a random
	// suffix.
	ID string
	// HeartbeatInterval is how often the edge tells the origins, over core
	// NATS, its applied revision (also within ~20 ms of applying new
	// revisions). Default 1s.
	HeartbeatInterval time.Duration
	// AuditBuffer bounds the queue of audit records waiting to be shipped;
	// when it is full, records are dropped and counted. Default 10,000.
	AuditBuffer int
	// AuditFile, if set, receives every audit record as a JSON line too
	// (appended, mode 0600).
	AuditFile string
	// AuditFlushInterval is how long an audit record may wait for its batch
	// to be shipped. Default 200ms.
	AuditFlushInterval time.Duration
}

// DefaultConfig returns the defaults of the external API.
func DefaultConfig() Config {
	return Config{
		Listen:      "127.0.0.1:8080",
		AdminListen: "127.0.0.1:9090",
		NATSURL:     nats.DefaultURL,
		Site:        "default",
		DataDir:     "./data/edge",
	}
}

// Server is one edge. Its methods are safe for concurrent use.
type Server struct {
	cfg     Config
	pres    *presence     // signs what peers relay for this edge (heartbeat.go)
	dirLock *dirlock.Lock // keeps a second edge off DataDir; released last
	log     *slog.Logger
	nc      *nats.Conn
	view    *cache.View
	feed    *feed.Feed
	client  *fasthttp.Client
	srv     *fasthttp.Server
	admin   *http.Server
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

	id    string
	hb    *heartbeater
	audit *auditor
	// secrets holds upstream credentials for upstream_auth "inject".
	secrets secretStore
	// policy decides which addresses upstream connections may go to.
	policy *upstreamPolicy

	gossip     *cluster.Cluster // nil without gossip
	gossipHook *gossipHook

	mu sync.Mutex
	ln net.Listener
	// lingering wraps the listener: refused uploads drain before closing.
	lingering *lingerListener
	shutdown  bool
}

// NewServer validates cfg, connects to NATS and starts following the event
// stream. Serve or ListenAndServe then accepts requests.
func NewServer(cfg Config) (*Server, error) {
	def := DefaultConfig()
	if cfg.Listen == "" {
		cfg.Listen = def.Listen
	}
	if cfg.NATSURL == "" {
		cfg.NATSURL = def.NATSURL
	}
	if cfg.Site == "" {
		cfg.Site = def.Site
	}
	if cfg.MaxRequestBodyBytes <= 0 {
		cfg.MaxRequestBodyBytes = 64 << 20
	}
	if cfg.UpstreamIdleTimeout <= 0 {
		cfg.UpstreamIdleTimeout = 2 * time.Minute
	}
	if cfg.UpstreamConnectTimeout <= 0 {
		cfg.UpstreamConnectTimeout = 5 * time.Second
	}
	if cfg.MaxUpstreamConns <= 0 {
		cfg.MaxUpstreamConns = 1024
	}
	if cfg.UpstreamPoolWait <= 0 {
		cfg.UpstreamPoolWait = 2 * time.Second
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.Default()
	}
	if cfg.HeartbeatInterval <= 0 {
		cfg.HeartbeatInterval = time.Second
	}
	if cfg.AuditBuffer <= 0 {
		cfg.AuditBuffer = 10_000
	}
	if cfg.AuditFlushInterval <= 0 {
		cfg.AuditFlushInterval = 200 * time.Millisecond
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
	gossipListen := ""
	if cfg.Gossip.enabled() {
		gossipListen = cfg.Gossip.Listen
	}
	if err := policy.checkOwnPatterns(map[string]string{"--listen": cfg.Listen, "--admin-listen": cfg.AdminListen,
		"--gossip-listen": gossipListen}); err != nil {
		return nil, err
	}
	ver, err := event.NewVerifier(cfg.OriginPublicKey)
	if err != nil {
		return nil, fmt.Errorf("origin public key: %w", err)
	}
	statePath := ""
	if cfg.DataDir != "" {
		if err := os.MkdirAll(cfg.DataDir, 0o700); err != nil {
			return nil, fmt.Errorf("creating data dir: %w", err)
		}
		statePath = filepath.Join(cfg.DataDir, "state.json")
	}
	// Two edges on one data dir would overwrite each other's state.
	var lock *dirlock.Lock
	if cfg.DataDir != "" {
		if lock, err = dirlock.Acquire(cfg.DataDir); err != nil {
			return nil, err
		}
	}
	started := false
	defer func() {
		if !started {
			lock.Release()
		}
	}()

	natsOpts, err := natsauth.ClientOptions(cfg.NATSCreds, cfg.NATSTLSCA, cfg.NATSTLSCert, cfg.NATSTLSKey)
	if err != nil {
		return nil, err
	}
	var presenceKey nkeys.KeyPair
	if cfg.NATSCreds != "" {
		b, err := os.ReadFile(cfg.NATSCreds)
		if err != nil {
			return nil, fmt.Errorf("NATS credentials: %w", err)
		}
		if presenceKey, err = natsauth.PresenceKey(b); err != nil {
			return nil, fmt.Errorf("NATS credentials %s: %w", cfg.NATSCreds, err)
		}
		credID, err := natsauth.EdgeIDFromCreds(b)
		if err != nil {
			return nil, fmt.Errorf("NATS credentials %s: %w", cfg.NATSCreds, err)
		}
		switch {
		case credID == "":
		case cfg.ID == "":
			cfg.ID = credID
		case cfg.ID != credID:
			return nil, fmt.Errorf("edge id %q: the NATS credentials are for edge %q", cfg.ID, credID)
		}
	}
	id, err := edgeID(&cfg)
	if err != nil {
		return nil, err
	}
	pres, err := newPresence(presenceKey, id, cfg.HeartbeatInterval)
	if err != nil {
		return nil, err
	}
	nc, err := nats.Connect(cfg.NATSURL, append(natsOpts,
		nats.CustomInboxPrefix(event.EdgeInbox(id)),
		nats.Name("keymesh-edge "+cfg.Site),
		nats.MaxReconnects(-1),
		nats.RetryOnFailedConnect(true),
		nats.ReconnectWait(250*time.Millisecond),
		nats.ErrorHandler(func(_ *nats.Conn, _ *nats.Subscription, err error) {
			// A permissions violation: credentials for another edge or role.
			cfg.Logger.Warn("nats error", "err", err)
		}),
	)...)
	if err != nil {
		return nil, fmt.Errorf("connecting to NATS: %w", err)
	}
	m := newMetrics()
	hook := &gossipHook{} // misses may be answered by gossip peers (gossip.go)
	view, err := cache.New(cache.Config{Verifier: ver, Lookup: hook.lookup(nc), ObserveLookup: m.observeLookup,
		MaxKeys: cfg.MaxKeys, LookupTimeout: cfg.LookupTimeout, MaxLookups: cfg.MaxLookups, Logger: cfg.Logger,
		MaxStaleness: cfg.MaxStaleness, FailOpen: cfg.FailOpen})
	if err != nil {
		nc.Close()
		return nil, err
	}
	feed, err := feed.New(view, feed.Config{Conn: nc, StatePath: statePath, Logger: cfg.Logger,
		OnVerified: hook.record, OnHeartbeat: hook.heartbeat})
	if err != nil {
		view.Close()
		nc.Close()
		return nil, err
	}
	m.watch(view)
	audit, err := newAuditor(nc, id, cfg.Site, cfg.AuditBuffer, cfg.AuditFile, cfg.AuditFlushInterval, cfg.Logger)
	if err != nil {
		view.Close()
		nc.Close()
		return nil, err
	}
	s := &Server{cfg: cfg, log: cfg.Logger, nc: nc, view: view, feed: feed, metrics: m, id: id, audit: audit,
		limits: newLimiter(time.Now, 1_000_000), tls: tlsConf, certs: certs, pending: newPendingRequests(),
		cors: newCORS(cfg.CORSAllowedOrigins, cfg.CORSAllowedMethods, cfg.CORSAllowedHeaders), policy: policy,
		pres: pres}
	s.secrets.dir = cfg.SecretsDir
	s.secrets.warnUnscoped(cfg.Logger)
	m.watchServer(s)
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
	if cfg.AdminListen != "" {
		s.admin = &http.Server{Addr: cfg.AdminListen, Handler: s.adminHandler(), ReadHeaderTimeout: 10 * time.Second}
	}
	if err := feed.Start(); err != nil {
		audit.shutdown(false)
		view.Close()
		nc.Close()
		return nil, err
	}
	s.gossipHook = hook
	if err := s.startGossip(feed, view); err != nil {
		_ = feed.Shutdown(context.Background())
		audit.shutdown(false)
		view.Close()
		nc.Close()
		return nil, fmt.Errorf("starting gossip: %w", err)
	}
	if s.gossip != nil {
		if a, err := net.ResolveTCPAddr("tcp", s.gossip.Addr()); err == nil {
			policy.addOwn(a)
		}
	}
	audit.start()
	s.startHeartbeat()
	s.dirLock, started = lock, true
	return s, nil
}

// View returns the edge's key and deployment view.
func (s *Server) View() *cache.View { return s.view }

// Synced is closed once the edge holds deployments and follows the stream.
func (s *Server) Synced() <-chan struct{} { return s.feed.Synced() }

// ListenAndServe listens on Config.Listen (and AdminListen) and serves.
func (s *Server) ListenAndServe() error {
	ln, err := net.Listen("tcp", s.cfg.Listen)
	if err != nil {
		return fmt.Errorf("listening on %s: %w", s.cfg.Listen, err)
	}
	if s.admin != nil {
		aln, err := net.Listen("tcp", s.cfg.AdminListen)
		if err != nil {
			ln.Close()
			return fmt.Errorf("listening on %s: %w", s.cfg.AdminListen, err)
		}
		s.policy.addOwn(aln.Addr())
		go func() {
			if err := s.admin.Serve(aln); err != nil && !errors.Is(err, http.ErrServerClosed) {
				s.log.Error("admin listener failed", "err", err)
			}
		}()
	}
	return s.Serve(ln)
}

// Serve accepts requests on ln until Shutdown, then returns ErrServerClosed.
func (s *Server) Serve(ln net.Listener) error {
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
func (s *Server) Addr() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.ln == nil {
		return ""
	}
	return s.ln.Addr().String()
}

// Shutdown stops accepting requests, waits for in-flight ones (streams
// included) until ctx ends, then persists state and disconnects. It is safe
// to call twice.
func (s *Server) Shutdown(ctx context.Context) error {
	s.mu.Lock()
	already := s.shutdown
	s.shutdown = true
	s.mu.Unlock()
	if already {
		return nil
	}
	var errs []error
	if err := s.srv.ShutdownWithContext(ctx); err != nil {
		errs = append(errs, fmt.Errorf("draining requests: %w", err))
	}
	s.mu.Lock()
	lingering := s.lingering
	s.mu.Unlock()
	if lingering != nil {
		lingering.wait() // refused uploads still draining, each bounded
	}
	if s.admin != nil {
		if err := s.admin.Shutdown(ctx); err != nil {
			errs = append(errs, err)
		}
	}
	s.stopHeartbeat()
	if err := s.stopGossip(); err != nil {
		errs = append(errs, fmt.Errorf("leaving gossip: %w", err))
	}
	s.audit.shutdown(true)
	if err := s.feed.Shutdown(ctx); err != nil {
		errs = append(errs, fmt.Errorf("stopping event feed: %w", err))
	}
	s.nc.Close()
	s.view.Close()
	s.dirLock.Release()
	return errors.Join(errs...)
}

// currentRouter returns the router for the View's current deployments,
// rebuilding it when they changed.
func (s *Server) currentRouter() *router {
	deps := s.view.Deployments()
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
func (s *Server) headerReceived(h *fasthttp.RequestHeader) fasthttp.RequestConfig {
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
func (s *Server) takeRequest(ctx *fasthttp.RequestCtx) *request {
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
func (s *Server) serveError(ctx *fasthttp.RequestCtx, err error) {
	// The client may still be sending what was not read: let it read the
	// answer instead of a reset.
	lingerOnClose(ctx.Conn())
	setRequestID(ctx)
	out := outcome{}
	class := errorClass(err)
	if errors.Is(err, fasthttp.ErrBodyTooLarge) {
		// Only the body is read after the header hook ran, so the reading
		// it left is this request's.
		out.req = s.pending.take(&ctx.Request.Header)
	}
	switch r := out.req; {
	case r != nil && r.refusal != nil:
		s.refuse(ctx, r)
		class = ""
	case class == "body_too_large":
		fail(ctx, errBodyTooLarge, 0)
		if r != nil && r.rt != nil {
			out.dep = r.rt.dep
		}
	default:
		fail(ctx, errMalformedRequest, 0)
	}
	if class != "" {
		s.log.Info("request not read", "remote", ctx.RemoteAddr().String(), "error", class,
			"request_id", string(ctx.Response.Header.PeekBytes(headerRequestID)))
	}
	s.finish(ctx, &out)
}

// refuse answers a request refused from its header, and counts it.
func (s *Server) refuse(ctx *fasthttp.RequestCtx, r *request) {
	if r.refusal == errMethodRefused {
		ctx.Response.Header.Set(fasthttp.HeaderAllow, "GET, HEAD, POST, PUT, PATCH, DELETE, OPTIONS")
	}
	fail(ctx, r.refusal, 0)
	s.metrics.refused[r.refused].Inc()
}

// outcome is what handling one request decided, for metrics and audit.
type outcome struct {
	req    *request          // the request's reading; nil if it was never read
	dep    *event.Deployment // nil when no deployment matched
	key    *cache.Key        // nil when no key was checked or it was refused
	reason reason
	open   bool // /health, /ping or a CORS preflight: not counted
	// body is the upstream answer being relayed, if any: the request is
	// finished (audited, counted) when it is closed.
	body *upstreamBody
}

func (s *Server) handle(ctx *fasthttp.RequestCtx) {
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
func (s *Server) finish(ctx *fasthttp.RequestCtx, out *outcome) {
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

func (s *Server) serve(ctx *fasthttp.RequestCtx) (out outcome) {
	setRequestID(ctx)
	r := s.takeRequest(ctx)
	out.req = r
	if s.cors.apply(ctx) {
		out.open = true // a preflight, answered
		return out
	}
	if r.refusal != nil {
		s.refuse(ctx, r)
		return out
	}
	if r.open() {
		ctx.Response.Header.SetContentType("application/json")
		if string(r.path) == "/health" && !s.view.HasSnapshot() {
			// Not ready: without deployments every request would be a 404.
			ctx.SetStatusCode(fasthttp.StatusServiceUnavailable)
			ctx.SetBodyString(`{"status":"syncing"}`)
		} else {
			ctx.SetBodyString(`{"status":"ok"}`)
		}
		out.open = true
		return out
	}
	rt := r.rt
	if rt == nil {
		fail(ctx, errNoDeployment, 0)
		return out
	}
	dep := rt.dep
	out.dep = dep
	if ctx.Request.Header.ContentLength() == -1 && len(ctx.Request.Header.TrailerHeader()) > 2 {
		// Trailers (a chunked body's) arrived after the decision was made
		// on the header, and would be read as header fields: refuse.
		r.refuse(errTrailers, refusedTrailers)
		s.refuse(ctx, r)
		return out
	}
	if dep.MaxBodyBytes > 0 && int64(len(ctx.Request.Body())) > dep.MaxBodyBytes {
		fail(ctx, errBodyTooLarge, 0) // read under the server's limit: the reading was redone
		return out
	}
	out.reason = reasonAuthOff
	if dep.AuthEnabled {
		if out.key, out.reason = s.authenticate(ctx, dep, r.cred); out.key == nil {
			return out
		}
	} else if !s.view.Trusted() {
		// Only the deployment, as this edge last knew it, lets the request
		// through — and the edge cannot prove that is still so (auth may
		// have been turned on meanwhile): closed mode refuses.
		ctx.Response.Header.Set(fasthttp.HeaderRetryAfter, "1")
		fail(ctx, errUnproven, 0)
		out.reason = reasonUnavailable
		return out
	}
	body, ok := s.inspect(ctx, dep, out.key)
	if !ok {
		return out
	}
	if out.key != nil && !permitted(ctx, out.key, r, body.stream) {
		out.reason = reasonPermission
		return out
	}
	lim := s.limits.check(dep, out.key)
	lim.setHeaders(&ctx.Response.Header)
	if lim.retry > 0 {
		fail(ctx, errRateLimited, 0)
		out.reason = reasonRateLimited
		return out
	}
	out.body = s.forward(ctx, r, body, lim)
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
)

const requestIDLen = 32

// setRequestID keeps the client's X-Request-Id if it is a sensible one (1 to
// 128 visible ASCII characters), or makes one, and puts it on the answer;
// forward sends the same one upstream.
func setRequestID(ctx *fasthttp.RequestCtx) {
	id := ctx.Request.Header.PeekBytes(headerRequestID)
	if !validRequestID(id) {
		var buf [requestIDLen]byte
		id = appendRequestID(buf[:0])
	}
	ctx.Response.Header.SetBytesKV(headerRequestID, id)
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
	dst = hex.AppendEncode(dst, requestIDPrefix[:])
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
