// Package proxy is the edge's data plane: a fasthttp reverse proxy that
// routes each request to a deployment, authorizes its API key against the
// edge's cache.View, and forwards it — streaming responses included — to
// the deployment's upstream inference servers.
//
// Guarantees: a request is authorized against state at least as new as the
// View's applied revision when the request started (see package cache); a
// malformed key is refused without any lookup; the client's keymesh key is
// never forwarded upstream and never logged; every refusal carries the
// error body of the external API.
package proxy

import (
	"bytes"
	"context"
	"crypto/ed25519"
	"crypto/rand"
	"crypto/tls"
	"encoding/binary"
	"encoding/hex"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"regexp"
	"sync"
	"sync/atomic"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/valyala/fasthttp"

	"github.com/keymesh/keymesh/cache"
	"github.com/keymesh/keymesh/cluster"
	"github.com/keymesh/keymesh/event"
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
	// Site is this edge's site; it selects the deployment's upstream list.
	// Default "default".
	Site string
	// OriginPublicKey verifies everything the edge acts on. Required.
	OriginPublicKey ed25519.PublicKey
	// DataDir holds the persisted applied revision and deployments; empty
	// means nothing persists and every start resynchronises from a snapshot.
	DataDir string
	// SecretsDir holds upstream credentials as files named after the secret;
	// the environment variable EDGE_SECRET_<NAME> takes precedence.
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
	// MaxStaleness: without a signed origin heartbeat for this long, cached
	// keys are re-validated by lookup before use. Default 10s.
	MaxStaleness time.Duration
	// FailOpen ("open-cached") keeps serving cached keys when a stale edge
	// cannot re-validate them; the default ("closed") answers 503.
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
	log     *slog.Logger
	nc      *nats.Conn
	view    *cache.View
	feed    *cache.Feed
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

	id    string
	hb    *heartbeater
	audit *auditor
	// secrets holds upstream credentials for upstream_auth "inject".
	secrets secretStore

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

	nc, err := nats.Connect(cfg.NATSURL,
		nats.Name("keymesh-edge "+cfg.Site),
		nats.MaxReconnects(-1),
		nats.RetryOnFailedConnect(true),
		nats.ReconnectWait(250*time.Millisecond),
	)
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
	feed, err := cache.NewFeed(view, cache.FeedConfig{Conn: nc, StatePath: statePath, Logger: cfg.Logger,
		OnVerified: hook.record, OnHeartbeat: hook.heartbeat})
	if err != nil {
		view.Close()
		nc.Close()
		return nil, err
	}
	m.watch(view)
	id, err := edgeID(&cfg)
	if err != nil {
		view.Close()
		nc.Close()
		return nil, err
	}
	audit, err := newAuditor(nc, id, cfg.Site, cfg.AuditBuffer, cfg.AuditFile, cfg.AuditFlushInterval, cfg.Logger)
	if err != nil {
		view.Close()
		nc.Close()
		return nil, err
	}
	s := &Server{cfg: cfg, log: cfg.Logger, nc: nc, view: view, feed: feed, metrics: m, id: id, audit: audit,
		limits: newLimiter(time.Now, 1_000_000), tls: tlsConf, certs: certs,
		cors: newCORS(cfg.CORSAllowedOrigins, cfg.CORSAllowedMethods, cfg.CORSAllowedHeaders)}
	s.secrets.dir = cfg.SecretsDir
	m.watchServer(s)
	dialer := &fasthttp.TCPDialer{Concurrency: 1000}
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
		Dial: func(addr string) (net.Conn, error) {
			c, err := dialer.DialTimeout(addr, cfg.UpstreamConnectTimeout)
			if err != nil {
				return nil, err
			}
			return &idleConn{Conn: c, idle: cfg.UpstreamIdleTimeout}, nil
		},
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
	audit.start()
	s.startHeartbeat()
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
	return errors.Join(errs...)
}

// currentRouter returns the router for the View's current deployments,
// rebuilding it when they changed.
func (s *Server) currentRouter() *router {
	deps := s.view.Deployments()
	r := s.router.Load()
	if r == nil || r.deps != deps {
		r = newRouter(deps, s.cfg.Site, &s.health, s.metrics.upstream)
		s.router.Store(r)
	}
	return r
}

// headerReceived applies the matching deployment's body limit before the
// body is read, so an oversized upload is refused without being buffered.
func (s *Server) headerReceived(h *fasthttp.RequestHeader) fasthttp.RequestConfig {
	path := h.RequestURI()
	if i := bytes.IndexByte(path, '?'); i >= 0 {
		path = path[:i]
	}
	rt := s.currentRouter().match(hostOnly(h.Host()), path)
	if rt == nil || rt.dep.MaxBodyBytes <= 0 || rt.dep.MaxBodyBytes >= int64(s.cfg.MaxRequestBodyBytes) {
		return fasthttp.RequestConfig{}
	}
	return fasthttp.RequestConfig{MaxRequestBodySize: int(rt.dep.MaxBodyBytes)}
}

// serveError answers requests fasthttp could not read, and finishes them
// like any other: a request id, an audit record, a count.
func (s *Server) serveError(ctx *fasthttp.RequestCtx, err error) {
	// The client may still be sending what was not read: let it read the
	// answer instead of a reset.
	lingerOnClose(ctx.Conn())
	setRequestID(ctx)
	var out outcome
	if errors.Is(err, fasthttp.ErrBodyTooLarge) {
		fail(ctx, errBodyTooLarge, 0)
		if rt := s.currentRouter().match(hostOnly(ctx.Host()), ctx.Path()); rt != nil {
			out.dep = rt.dep
		}
	} else {
		fail(ctx, errMalformedRequest, 0)
	}
	s.finish(ctx, &out)
}

var (
	headerAPIKey    = []byte("X-API-Key")
	headerRequestID = []byte("X-Request-Id")
	bearer          = []byte("bearer ")
)

// credential returns the client's key: X-API-Key if present and non-empty,
// else the token of Authorization: Bearer. fromAuth reports the latter.
func credential(h *fasthttp.RequestHeader) (cred []byte, fromAuth bool) {
	if k := h.PeekBytes(headerAPIKey); len(k) > 0 {
		return bytes.TrimSpace(k), false
	}
	a := h.Peek(fasthttp.HeaderAuthorization)
	if len(a) > len(bearer) && bytes.EqualFold(a[:len(bearer)], bearer) {
		return bytes.TrimSpace(a[len(bearer):]), true
	}
	return nil, false
}

// outcome is what handling one request decided, for metrics and audit.
type outcome struct {
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
}

func (s *Server) serve(ctx *fasthttp.RequestCtx) (out outcome) {
	setRequestID(ctx)

	if s.cors.apply(ctx) {
		return outcome{open: true} // a preflight, answered
	}
	path := ctx.Path()
	if (ctx.IsGet() || ctx.IsHead()) && (string(path) == "/health" || string(path) == "/ping") {
		ctx.Response.Header.SetContentType("application/json")
		ctx.SetBodyString(`{"status":"ok"}`)
		return outcome{open: true}
	}

	rt := s.currentRouter().match(hostOnly(ctx.Host()), path)
	if rt == nil {
		fail(ctx, errNoDeployment, 0)
		return out
	}
	dep := rt.dep
	out.dep = dep
	if dep.MaxBodyBytes > 0 && int64(len(ctx.Request.Body())) > dep.MaxBodyBytes {
		fail(ctx, errBodyTooLarge, 0) // the deployment changed since the header was read
		return out
	}
	cred, fromAuth := credential(&ctx.Request.Header)
	out.reason = reasonAuthOff
	if dep.AuthEnabled {
		if out.key, out.reason = s.authenticate(ctx, dep, cred); out.key == nil {
			return out
		}
	}
	streams, ok := inspect(ctx, dep)
	if !ok {
		return out
	}
	if out.key != nil && !permitted(ctx, out.key, path, streams) {
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
	out.body = s.forward(ctx, rt, cred, fromAuth, lim)
	return out
}

func hostOnly(host []byte) []byte {
	if i := bytes.LastIndexByte(host, ':'); i >= 0 && !bytes.Contains(host[i:], []byte("]")) {
		return host[:i]
	}
	return host
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

// setRequestID keeps the client's X-Request-Id, or makes one, and puts it
// on the request (for the upstream) and on the answer.
func setRequestID(ctx *fasthttp.RequestCtx) {
	id := ctx.Request.Header.PeekBytes(headerRequestID)
	if len(id) == 0 {
		var buf [requestIDLen]byte
		id = appendRequestID(buf[:0])
		ctx.Request.Header.SetBytesKV(headerRequestID, id)
	}
	ctx.Response.Header.SetBytesKV(headerRequestID, id)
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

// fasthttpLogger passes fasthttp's own messages on. Some quote raw request
// bytes (a header that failed to parse, say), so anything that looks like a
// credential is cut out first.
type fasthttpLogger struct{ log *slog.Logger }

var credentialPattern = regexp.MustCompile(`(?i)(km_[a-z2-7]*|bearer\s+\S+|x-api-key:\s*\S+)`)

func (l fasthttpLogger) Printf(format string, args ...any) {
	msg := credentialPattern.ReplaceAllString(fmt.Sprintf(format, args...), "[redacted]")
	l.log.Warn(msg, "component", "fasthttp")
}
