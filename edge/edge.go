// Package edge assembles an edge node: the data plane (package proxy) in
// front of a cache.View that package feed keeps current from the origin
// over NATS, with gossip between edges (package cluster), heartbeats to the
// origins, audit shipping, usage records to JetStream through a spool
// (usage.go), limit reports to and from the other edges over NATS and
// gossip (limits.go) and an admin listener (/metrics, /status, /health,
// pprof).
//
// Guarantees: a Node serves nothing until New has verified its
// configuration, taken the data dir (one edge per dir, held until Shutdown
// ends) and connected to NATS; everything it acts on is verified against
// the origin's public key, whether it came over NATS, from a gossip peer or
// from the data dir; its /health (on both listeners) answers 503 until it
// holds the deployments; it tells the origins its applied revision every
// HeartbeatInterval and within ~20 ms of applying new revisions, and
// publishes for gossip peers cut off from NATS only what they signed; its
// audit buffer and every other queue are bounded, and what is dropped at a
// bound is counted; a usage record the data plane reported is forgotten
// only after JetStream acknowledged it, waits meanwhile in a bounded spool
// under DataDir that survives restarts and crashes (all but the last
// ~100 ms before a machine crash), and is never half-written; Shutdown
// stops accepting requests, lets in-flight ones (streams included) finish
// until its context ends, ships the queued audit records, spools the
// queued usage records and persists the applied state before it
// disconnects.
package edge

import (
	"context"
	"crypto/ed25519"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"sync"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nkeys"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"

	"github.com/keymesh/keymesh/cache"
	"github.com/keymesh/keymesh/cluster"
	"github.com/keymesh/keymesh/edge/feed"
	"github.com/keymesh/keymesh/event"
	"github.com/keymesh/keymesh/internal/dirlock"
	"github.com/keymesh/keymesh/internal/natsauth"
	"github.com/keymesh/keymesh/proxy"
)

// ErrServerClosed is returned by Serve after Shutdown.
var ErrServerClosed = proxy.ErrServerClosed

// Config configures an edge. Zero fields take the defaults DefaultConfig
// documents; DefaultConfig is the one place they are written down.
type Config struct {
	// Listen is the inference-facing address. Default 127.0.0.1:8080.
	Listen string
	// AdminListen serves /metrics, /status, /health and pprof; empty
	// disables it. DefaultConfig sets 127.0.0.1:9090.
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
	// means nothing persists and every start resynchronises from a
	// snapshot. DefaultConfig sets ./data/edge.
	DataDir string
	// SecretsDir holds upstream credentials per project, as files
	// <SecretsDir>/<project>/<secret>; the environment variable
	// EDGE_SECRET_<PROJECT>__<SECRET> takes precedence.
	SecretsDir string
	// TLSCert and TLSKey serve HTTPS on Listen (TLS 1.2 or newer); ReloadTLS
	// reads them again. TLSClientCA, if set, requires client certificates
	// signed by it (mutual TLS).
	TLSCert, TLSKey, TLSClientCA string
	// CORSAllowedOrigins enables CORS for these origins ("*" for any);
	// empty disables it. CORSAllowedMethods default to GET, POST, OPTIONS;
	// CORSAllowedHeaders to the headers inference clients send
	// (Authorization, Content-Type, X-API-Key, X-Request-Id).
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
	// is as stale as the newest origin-signed record in it. Default 10s;
	// negative disables the guard.
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
	// UpstreamAllow restricts the upstreams the edge connects to (see
	// proxy.Config.UpstreamAllow). Empty allows any upstream; the edge's
	// own listeners are never one.
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
	// LimitsSync is how often the edge tells the other edges what it has
	// admitted against global limits (rate limits, token limits, quotas,
	// budgets), over core NATS and gossip, and so the Δ of the overshoot
	// bound (docs/design.md). Default 200ms.
	LimitsSync time.Duration
	// LimitsPartition is what the edge does with bounded requests while it
	// hears no other edge's limit report although it knows of live ones
	// (proxy.Config.LimitPartition): "share" (the default, ""; admit at
	// most this edge's share of each bound, fail-closed at it), "deny"
	// (refuse them) or "local" (count on this edge alone, as before global
	// limits).
	LimitsPartition string
	// UsageSpoolBytes bounds the usage records waiting for JetStream's
	// acknowledgement, in <DataDir>/usage (in memory, lost with the
	// process, without DataDir); when it is full, new records are dropped
	// and counted. Default 256 MiB.
	UsageSpoolBytes int64
}

// DefaultConfig returns the edge's defaults, every one filled in: those of
// the external API (cmd/edge's flags take theirs from here) and those New
// puts in a zero field.
func DefaultConfig() Config {
	return Config{
		Listen:                 "127.0.0.1:8080",
		AdminListen:            "127.0.0.1:9090",
		NATSURL:                nats.DefaultURL,
		Site:                   "default",
		DataDir:                "./data/edge",
		CORSAllowedMethods:     []string{"GET", "POST", "OPTIONS"},
		CORSAllowedHeaders:     []string{"Authorization", "Content-Type", "X-API-Key", "X-Request-Id"},
		Gossip:                 GossipConfig{Listen: "127.0.0.1:7946"},
		LookupTimeout:          2 * time.Second,
		MaxLookups:             256,
		MaxKeys:                1_000_000,
		MaxStaleness:           10 * time.Second,
		UpstreamIdleTimeout:    2 * time.Minute,
		UpstreamConnectTimeout: 5 * time.Second,
		MaxUpstreamConns:       1024,
		UpstreamPoolWait:       2 * time.Second,
		MaxRequestBodyBytes:    64 << 20,
		Logger:                 slog.Default(),
		HeartbeatInterval:      time.Second,
		AuditBuffer:            10_000,
		AuditFlushInterval:     200 * time.Millisecond,
		UsageSpoolBytes:        256 << 20,
		LimitsSync:             200 * time.Millisecond,
		LimitsPartition:        proxy.LimitPartitionShare,
	}
}

// withDefaults returns cfg with its zero fields (those DefaultConfig
// documents as defaulted; not AdminListen, DataDir or the optional files)
// set from DefaultConfig.
func withDefaults(cfg Config) Config {
	def := DefaultConfig()
	set := func(dst *string, v string) {
		if *dst == "" {
			*dst = v
		}
	}
	set(&cfg.Listen, def.Listen)
	set(&cfg.NATSURL, def.NATSURL)
	set(&cfg.Site, def.Site)
	set(&cfg.Gossip.Listen, def.Gossip.Listen)
	if len(cfg.CORSAllowedMethods) == 0 {
		cfg.CORSAllowedMethods = def.CORSAllowedMethods
	}
	if len(cfg.CORSAllowedHeaders) == 0 {
		cfg.CORSAllowedHeaders = def.CORSAllowedHeaders
	}
	positive := func(dst *time.Duration, v time.Duration) {
		if *dst <= 0 {
			*dst = v
		}
	}
	positive(&cfg.LookupTimeout, def.LookupTimeout)
	positive(&cfg.UpstreamIdleTimeout, def.UpstreamIdleTimeout)
	positive(&cfg.UpstreamConnectTimeout, def.UpstreamConnectTimeout)
	positive(&cfg.UpstreamPoolWait, def.UpstreamPoolWait)
	positive(&cfg.HeartbeatInterval, def.HeartbeatInterval)
	positive(&cfg.AuditFlushInterval, def.AuditFlushInterval)
	positive(&cfg.LimitsSync, def.LimitsSync)
	set(&cfg.LimitsPartition, def.LimitsPartition)
	if cfg.MaxStaleness == 0 { // negative disables the guard
		cfg.MaxStaleness = def.MaxStaleness
	}
	if cfg.MaxLookups <= 0 {
		cfg.MaxLookups = def.MaxLookups
	}
	if cfg.MaxKeys <= 0 {
		cfg.MaxKeys = def.MaxKeys
	}
	if cfg.MaxUpstreamConns <= 0 {
		cfg.MaxUpstreamConns = def.MaxUpstreamConns
	}
	if cfg.MaxRequestBodyBytes <= 0 {
		cfg.MaxRequestBodyBytes = def.MaxRequestBodyBytes
	}
	if cfg.AuditBuffer <= 0 {
		cfg.AuditBuffer = def.AuditBuffer
	}
	if cfg.UsageSpoolBytes <= 0 {
		cfg.UsageSpoolBytes = def.UsageSpoolBytes
	}
	if cfg.Logger == nil {
		cfg.Logger = def.Logger
	}
	return cfg
}

// Node is one edge. Its methods are safe for concurrent use.
type Node struct {
	cfg     Config
	pres    *presence     // signs what peers relay for this edge (heartbeat.go)
	dirLock *dirlock.Lock // keeps a second edge off DataDir; released last
	log     *slog.Logger
	nc      *nats.Conn
	view    *cache.View
	feed    *feed.Feed
	proxy   *proxy.Proxy
	admin   *http.Server
	reg     *prometheus.Registry // every metric of the edge, served on /metrics
	lookups prometheus.Histogram

	id     string
	hb     *heartbeater
	audit  *auditor
	usage  *usageSink
	limits *limitSync // limit reports to and from the other edges (limits.go)
	// balances takes the origin's signed ledger balances (balance.go).
	balances *balanceListener

	gossip     *cluster.Cluster // nil without gossip
	gossipHook *gossipHook

	mu       sync.Mutex
	shutdown bool
}

// New validates cfg, connects to NATS and starts following the event
// stream (and gossip, heartbeats and audit shipping). Serve or
// ListenAndServe then accepts requests.
func New(cfg Config) (*Node, error) {
	cfg = withDefaults(cfg)
	if err := proxy.CheckUpstreamAllow(cfg.UpstreamAllow); err != nil {
		return nil, err
	}
	if !cfg.Gossip.enabled() && len(cfg.Gossip.Join) > 0 {
		return nil, errors.New("starting gossip: gossip: --join needs --gossip-key (or --gossip-insecure)")
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
	// undo, until New succeeds, releases what was built, last first.
	var undo []func()
	started := false
	defer func() {
		if !started {
			for i := len(undo) - 1; i >= 0; i-- {
				undo[i]()
			}
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
	n := &Node{cfg: cfg, log: cfg.Logger, id: id, pres: pres, reg: prometheus.NewRegistry(),
		// Misses may be answered by gossip peers (gossip.go); heartbeats
		// are passed on at most every quarter of MaxStaleness: one every
		// interval is more than a View needs.
		gossipHook: &gossipHook{hbEvery: max(cfg.MaxStaleness/4, 0)}}
	n.reg.MustRegister(collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
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
	n.nc = nc
	undo = append(undo, nc.Close)
	n.lookups = prometheus.NewHistogram(prometheus.HistogramOpts{Name: "keymesh_edge_lookup_seconds",
		Help: "Cache-miss lookups at the origin.", Buckets: prometheus.ExponentialBuckets(0.0002, 2, 14)})
	n.reg.MustRegister(n.lookups)
	n.view, err = cache.New(cache.Config{Verifier: ver, Lookup: n.gossipHook.lookup(nc), ObserveLookup: n.observeLookup,
		MaxKeys: cfg.MaxKeys, LookupTimeout: cfg.LookupTimeout, MaxLookups: cfg.MaxLookups, Logger: cfg.Logger,
		MaxStaleness: cfg.MaxStaleness, FailOpen: cfg.FailOpen})
	if err != nil {
		return nil, err
	}
	undo = append(undo, n.view.Close)
	// The View exists before anything that asks it: its lookup (run by
	// requests, which start after New returns) and the gossip peers (whose
	// cluster is created below).
	n.gossipHook.v = n.view
	n.audit, err = newAuditor(nc, id, cfg.AuditBuffer, cfg.AuditFile, cfg.AuditFlushInterval, cfg.Logger)
	if err != nil {
		return nil, err
	}
	undo = append(undo, func() { n.audit.shutdown(false) })
	n.usage, err = newUsageSink(nc, id, cfg.DataDir, cfg.UsageSpoolBytes, usageQueueRecords, cfg.Logger)
	if err != nil {
		return nil, err
	}
	undo = append(undo, func() { n.usage.shutdown(context.Background()) })
	gossipListen := ""
	if cfg.Gossip.enabled() {
		gossipListen = cfg.Gossip.Listen
	}
	n.proxy, err = proxy.New(proxy.Config{State: n.view, Audit: n.audit, Usage: n.usage, Metrics: n.reg, Logger: cfg.Logger,
		EdgeID: id, Site: cfg.Site, SecretsDir: cfg.SecretsDir,
		TLSCert: cfg.TLSCert, TLSKey: cfg.TLSKey, TLSClientCA: cfg.TLSClientCA,
		CORSAllowedOrigins: cfg.CORSAllowedOrigins, CORSAllowedMethods: cfg.CORSAllowedMethods,
		CORSAllowedHeaders: cfg.CORSAllowedHeaders, UpstreamIdleTimeout: cfg.UpstreamIdleTimeout,
		UpstreamConnectTimeout: cfg.UpstreamConnectTimeout, MaxUpstreamConns: cfg.MaxUpstreamConns,
		UpstreamPoolWait: cfg.UpstreamPoolWait, MaxRequestBodyBytes: cfg.MaxRequestBodyBytes,
		UpstreamAllow: cfg.UpstreamAllow, LimitPartition: cfg.LimitsPartition, LimitSync: cfg.LimitsSync,
		OwnListeners: map[string]string{"--listen": cfg.Listen, "--admin-listen": cfg.AdminListen, "--gossip-listen": gossipListen}})
	if err != nil {
		return nil, err
	}
	n.limits = newLimitSync(id, nc, n.proxy, cfg.LimitsSync, n.reg, cfg.Logger)
	n.feed, err = feed.New(n.view, feed.Config{Conn: nc, StatePath: statePath, Logger: cfg.Logger,
		OnVerified: n.gossipHook.record, OnHeartbeat: n.gossipHook.heartbeat})
	if err != nil {
		return nil, err
	}
	n.watchView()
	n.watchNode()
	if cfg.AdminListen != "" {
		n.admin = &http.Server{Addr: cfg.AdminListen, Handler: n.adminHandler(), ReadHeaderTimeout: 10 * time.Second}
	}
	if err := n.feed.Start(); err != nil {
		return nil, err
	}
	undo = append(undo, func() { _ = n.feed.Shutdown(context.Background()) })
	if err := n.startBalances(ver, n.proxy.MergeBalance); err != nil {
		return nil, err
	}
	if err := n.startGossip(); err != nil {
		return nil, fmt.Errorf("starting gossip: %w", err)
	}
	if n.gossip != nil {
		if a, err := net.ResolveTCPAddr("tcp", n.gossip.Addr()); err == nil {
			n.proxy.AddOwnListener(a)
		}
	}
	n.limits.gossip, n.limits.peers, n.limits.needAll = n.limitGossip, n.gossipPeerIDs, n.someoneWithoutNATS
	if err := n.limits.start(); err != nil {
		return nil, fmt.Errorf("subscribing to limit reports: %w", err)
	}
	undo = append(undo, n.limits.shutdown)
	n.audit.start()
	n.usage.start()
	n.startHeartbeat()
	n.dirLock, started = lock, true
	return n, nil
}

// UsageSink is where the data plane reports each metered request
// (proxy.Config.Usage): Usage never blocks and keeps no pointer; the
// record reaches the origins through the spool and JetStream (usage.go).
func (n *Node) UsageSink() interface{ Usage(*event.Usage) } { return n.usage }

// UsageStats reports the usage pipeline: queued, spooled, published,
// dropped.
func (n *Node) UsageStats() UsageStats { return n.usage.stats() }

// observeLookup is the View's lookup callback.
func (n *Node) observeLookup(d time.Duration, _ error) { n.lookups.Observe(d.Seconds()) }

// View returns the edge's key and deployment view.
func (n *Node) View() *cache.View { return n.view }

// Synced is closed once the edge holds deployments and follows the stream.
func (n *Node) Synced() <-chan struct{} { return n.feed.Synced() }

// ListenAndServe listens on Config.Listen (and AdminListen) and serves.
func (n *Node) ListenAndServe() error {
	ln, err := net.Listen("tcp", n.cfg.Listen)
	if err != nil {
		return fmt.Errorf("listening on %s: %w", n.cfg.Listen, err)
	}
	if n.admin != nil {
		aln, err := net.Listen("tcp", n.cfg.AdminListen)
		if err != nil {
			ln.Close()
			return fmt.Errorf("listening on %s: %w", n.cfg.AdminListen, err)
		}
		n.proxy.AddOwnListener(aln.Addr())
		go func() {
			if err := n.admin.Serve(aln); err != nil && !errors.Is(err, http.ErrServerClosed) {
				n.log.Error("admin listener failed", "err", err)
			}
		}()
	}
	return n.Serve(ln)
}

// Serve accepts requests on ln until Shutdown, then returns ErrServerClosed.
func (n *Node) Serve(ln net.Listener) error { return n.proxy.Serve(ln) }

// Addr returns the address Serve is listening on, once it is.
func (n *Node) Addr() string { return n.proxy.Addr() }

// ReloadSecrets makes the next request read the upstream credentials again
// (env and SecretsDir), as after a rotation of the files.
func (n *Node) ReloadSecrets() { n.proxy.ReloadSecrets() }

// ReloadTLS reads the certificate and key files again; on error the
// current certificate stays in use. It does nothing without TLS.
func (n *Node) ReloadTLS() error { return n.proxy.ReloadTLS() }

// Shutdown stops accepting requests, waits for in-flight ones (streams
// included) until ctx ends, then stops heartbeats and gossip, sends the
// last limit report (limits.go), ships the queued audit records, moves the
// queued usage records to the spool (and publishes what it can, within ctx
// and a few seconds), persists state and disconnects. It is safe to call
// twice.
func (n *Node) Shutdown(ctx context.Context) error {
	n.mu.Lock()
	already := n.shutdown
	n.shutdown = true
	n.mu.Unlock()
	if already {
		return nil
	}
	var errs []error
	// Heartbeats stop and the edge says it leaves before draining: the
	// origins stop counting it as live (a ?wait no longer waits for an
	// edge that will apply nothing more) while its last requests finish.
	n.stopHeartbeat()
	n.announceLeaving()
	if err := n.proxy.Shutdown(ctx); err != nil {
		errs = append(errs, err)
	}
	if n.admin != nil {
		if err := n.admin.Shutdown(ctx); err != nil {
			errs = append(errs, err)
		}
	}
	// Requests have ended: the others learn what the last ones spent, over
	// NATS (flushed) and gossip, before this edge leaves both.
	n.limits.shutdown()
	if n.nc.IsConnected() {
		if err := n.nc.FlushTimeout(leaveTimeout); err != nil {
			n.log.Debug("last limit report not flushed", "err", err)
		}
	}
	if err := n.stopGossip(); err != nil {
		errs = append(errs, fmt.Errorf("leaving gossip: %w", err))
	}
	n.stopBalances()
	n.audit.shutdown(true)
	// Requests have ended: what they metered goes to the spool (and to
	// JetStream while it answers) before NATS is closed.
	n.usage.shutdown(ctx)
	if err := n.feed.Shutdown(ctx); err != nil {
		errs = append(errs, fmt.Errorf("stopping event feed: %w", err))
	}
	n.nc.Close()
	n.view.Close()
	n.dirLock.Release()
	return errors.Join(errs...)
}
