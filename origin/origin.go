// Package origin is keymesh's control plane: the store of users, projects,
// API keys (as hashes only) and deployments, the REST admin API, the
// transactional outbox that publishes every change to JetStream, and the
// NATS lookup responders edges ask on a cache miss.
//
// Guarantees:
//
//   - Every mutation is one store transaction that applies the change, takes
//     the next revision (gap-free, starting at 1) and writes the change's
//     event: a Record sealed with the origin's Ed25519 key, carrying the full
//     state of the affected key or deployment. A change is never visible
//     without its event, nor an event without its change.
//   - The publisher sends events to the JetStream stream event.StreamName in
//     revision order with an expected last sequence, so each event's stream
//     sequence equals its revision; events committed while NATS is away are
//     published when it returns, exactly once. Stream and outbox keep events
//     for Config.StreamMaxAge; unpublished events are never pruned.
//   - Lookup and snapshot answers are read in one transaction together with
//     the revision they reflect, and are sealed like events.
//   - Key secrets are returned only by create and rotate; only their
//     SHA-256 hashes are stored. No secret, password, token or hash is ever
//     logged or echoed in an error.
//   - Tenants are isolated: the hosts x path prefixes a deployment matches
//     belong to its project alone, its upstream secret names can only be
//     its project's, and its upstreams must pass the project's
//     allowed_upstreams (see claims.go, policy.go); only admin users set a
//     project's policy and quotas.
//   - Every input is bounded (limits.go), and a change whose sealed event
//     would exceed MaxEventBytes is refused before commit.
//   - Admin tokens name a user and their token version; logout, a password
//     change or deletion ends every token of that user on every replica
//     by the time it answers (usercache.go).
//   - Edges' usage records (stream event.UsageStreamName) are stored
//     exactly once by record id, and never evicted from the stream unread
//     (see usage.go).
//   - Replicas sharing a store sign with one key: the store records the
//     signing public key at its first start, and an origin with another
//     refuses to start (ErrKeyMismatch).
//
// Trust boundary: NATS. What edges send the origin is not signed: their
// heartbeats (event.EdgeHeartbeatSubject: id, site, address and applied
// revision, which GET /v1/edges lists and ?wait counts) and their audit
// batches (event.EdgeAuditSubject, stored as they come). Whoever may
// publish on those subjects can list phantom edges, make ?wait return early
// or hold it to its deadline, and write or flood audit records. None of it
// can grant access, since edges act only on records the origin signs, but
// the operator's NATS accounts or user permissions must allow only edges to
// publish there, and only origins to publish on event.StreamSubjects (a
// foreign message in the stream stops the publisher and raises the stream
// conflict alarm, see publisher) and to answer the
// lookup subjects.
package origin

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
	"sync/atomic"
	"time"

	"github.com/nats-io/nats.go"

	"github.com/keymesh/keymesh/event"
	"github.com/keymesh/keymesh/internal/dirlock"
	"github.com/keymesh/keymesh/internal/redact"
)

// Server is an origin: built by New, served by Start, stopped by Shutdown.
type Server struct {
	cfg Config
	// dirLock keeps a second origin off DataDir (released last).
	dirLock *dirlock.Lock
	// patterns lists every registered route (see routes).
	patterns []string
	logins   *loginGuard
	users    *userCache
	hasher   passwordHasher
	// dummyHash is compared with when a login names no user: a bcrypt hash
	// at PasswordCost, so that unknown users cost what known ones do.
	dummyHash []byte
	hbStop    chan struct{}
	hbDone    chan struct{}
	prStop    chan struct{} // outbox pruner
	prDone    chan struct{}
	log       *slog.Logger
	store     *Store
	signer    *event.Signer
	jwtKey    []byte
	ns        natsServer
	nc        *nats.Conn
	natsURL   string

	httpLn  net.Listener
	httpSrv *http.Server
	httpErr chan error

	pub   *publisher
	met   *originMetrics
	edges *edgeRegistry
	audit *auditLog
	usage *usageLedger // usage.go
	// balances publishes the ledger's balances (balance.go); nil when
	// disabled.
	balances *balancePublisher
	// auditStore holds the audit log: the store itself on PostgreSQL, a
	// database of its own next to it on SQLite.
	auditStore *Store
	subs       []*nats.Subscription
	lookupMu   sync.Mutex
	lookupWG   sync.WaitGroup
	lookupSem  chan struct{}

	rev    atomic.Uint64
	closed atomic.Bool
	// lifeMu orders Start and Shutdown: started, stopped and serving (the
	// HTTP server owns the listener) change under it.
	lifeMu       sync.Mutex
	started      bool
	stopped      bool
	serving      bool
	shutdownOnce sync.Once
	shutdownErr  error
}

// New validates cfg and builds an origin without serving: opens the store
// (creating the admin user and project "default" on first start), loads or
// creates the signing key, starts or connects to NATS and binds the HTTP
// listener, so that every error of configuration or state is New's. When New
// returns, Addr() and NATSURL() are known; Start serves. A built origin that
// is never started is released by Shutdown.
func New(cfg Config) (*Server, error) {
	if err := cfg.fill(); err != nil {
		return nil, err
	}
	s := &Server{cfg: cfg, log: cfg.Logger, httpErr: make(chan error, 1), lookupSem: make(chan struct{}, 64),
		logins: newLoginGuard(cfg.now), hasher: cfg.hasher}
	ok := false
	defer func() {
		if !ok {
			s.closeResources()
		}
	}()
	if err := os.MkdirAll(cfg.DataDir, 0o700); err != nil {
		return nil, fmt.Errorf("creating data dir: %w", err)
	}
	// Two origins on one data dir would share one SQLite file and one
	// embedded NATS store: refuse the second, naming the first.
	lock, err := dirlock.Acquire(cfg.DataDir)
	if err != nil {
		return nil, err
	}
	s.dirLock = lock
	priv, err := loadSigningKey(cfg.DataDir)
	if err != nil {
		return nil, err
	}
	if s.signer, err = event.NewSigner(priv); err != nil {
		return nil, err
	}
	if s.jwtKey, err = loadSecretFile(filepath.Join(cfg.DataDir, "jwt.key"), jwtKeySize); err != nil {
		return nil, err
	}
	if s.store, err = openStore(cfg.Store, cfg.DataDir); err != nil {
		return nil, err
	}
	s.users = newUserCache(cfg.UserCacheTTL, s.store.userByID)
	if s.dummyHash, err = s.hasher.hash([]byte(randomToken(18)), cfg.PasswordCost); err != nil {
		return nil, fmt.Errorf("hashing the dummy password: %w", err)
	}
	if s.auditStore, err = openAuditStore(s.store); err != nil {
		return nil, fmt.Errorf("opening the audit store: %w", err)
	}
	s.store.seal = s.signer.Seal
	s.store.onCommit = s.committed
	for _, note := range s.store.notes {
		s.log.Warn("store: " + note)
	}
	if err := s.checkIdentity(context.Background()); err != nil {
		return nil, err
	}
	if err := s.bootstrap(); err != nil {
		return nil, err
	}
	if err := s.ensureAuditSchema(context.Background()); err != nil {
		return nil, fmt.Errorf("creating audit table: %w", err)
	}
	rev, err := s.store.revision(context.Background(), s.store.db)
	if err != nil {
		return nil, fmt.Errorf("reading revision: %w", err)
	}
	s.rev.Store(rev)

	if err := s.startNATS(); err != nil {
		return nil, err
	}
	if s.httpLn, err = net.Listen("tcp", cfg.Listen); err != nil {
		return nil, fmt.Errorf("listening on %s: %w", cfg.Listen, err)
	}

	s.pub = newPublisher(s.store, s.nc, s.log, cfg.PollInterval, cfg.StreamReplicas)
	s.pub.maxAge = cfg.StreamMaxAge
	if s.ns != nil {
		s.pub.heal = s.healJetStream
	}
	s.edges = newEdgeRegistry(time.Now, cfg.EdgeLiveness, cfg.MaxEdges)
	s.met = newMetrics(s)
	s.httpSrv = &http.Server{
		Handler:           s.routes(),
		ReadHeaderTimeout: 10 * time.Second,
		ReadTimeout:       30 * time.Second,
		WriteTimeout:      60 * time.Second,
		IdleTimeout:       2 * time.Minute,
		ErrorLog:          slog.NewLogLogger(s.log.Handler(), slog.LevelWarn),
	}
	ok = true
	return s, nil
}

// Start serves what New built: the publisher, the lookup responders, the
// edge registry (restored from the store) and its heartbeat subscription,
// the audit subscriber and writer, the origin's own heartbeat, the outbox
// pruner, and last the HTTP API at Addr(). A Start that fails shuts the
// origin down (Shutdown then returns at once). Start may be called once, and
// not after Shutdown (ErrClosed).
func (s *Server) Start() error {
	s.lifeMu.Lock()
	if s.stopped || s.started {
		s.lifeMu.Unlock()
		if s.stopped {
			return ErrClosed
		}
		return errAlreadyStarted
	}
	s.started = true
	err := s.serve()
	s.lifeMu.Unlock()
	if err != nil {
		_ = s.Shutdown(context.Background())
		return err
	}
	s.log.Info("origin started", "listen", s.Addr(), "nats", redact.URLs(s.natsURL), "data_dir", s.cfg.DataDir, "revision", s.Revision(),
		"signing_pub", filepath.Join(s.cfg.DataDir, "signing.pub"))
	return nil
}

// errAlreadyStarted: Start was called twice.
var errAlreadyStarted = errors.New("origin already started")

// serve starts Start's goroutines, the HTTP server last.
func (s *Server) serve() error {
	if !s.cfg.disablePublisher {
		s.pub.start()
	}
	if err := s.startResponders(); err != nil {
		return err
	}
	if err := s.restoreEdges(context.Background()); err != nil {
		return fmt.Errorf("restoring the edge registry: %w", err)
	}
	if err := s.startEdgeRegistry(); err != nil {
		return fmt.Errorf("subscribing to edge heartbeats: %w", err)
	}
	if err := s.startAudit(); err != nil {
		return fmt.Errorf("subscribing to edge audit records: %w", err)
	}
	// Once Start returns, a heartbeat or audit batch published anywhere is
	// delivered: the server has the subscriptions (a PING round trip after
	// the SUBs). Without it an edge's first heartbeat could be missed, and
	// a ?wait right after start not count that edge. With NATS away the
	// subscriptions go out on reconnect.
	if s.nc.IsConnected() {
		if err := s.nc.FlushTimeout(5 * time.Second); err != nil {
			s.log.Warn("nats flush after subscribing failed", "err", err)
		}
	}
	s.startBalances() // before the ledger, which tells it what changed
	s.startUsage()
	s.startHeartbeat()
	s.startOutboxPruner()
	s.serving = true
	go func() {
		err := s.httpSrv.Serve(s.httpLn)
		if errors.Is(err, http.ErrServerClosed) {
			err = nil
		}
		s.httpErr <- err
	}()
	return nil
}

// Err returns a channel that yields the HTTP server's error if serving stops
// before Shutdown (nil after a clean Shutdown).
func (s *Server) Err() <-chan error { return s.httpErr }

// Addr returns the address the REST API is served on (host:port).
func (s *Server) Addr() string { return s.httpLn.Addr().String() }

// NATSURL returns the client URL of the NATS server the origin uses,
// embedded or external.
func (s *Server) NATSURL() string { return s.natsURL }

// PublicKey returns the Ed25519 key every record is signed with.
func (s *Server) PublicKey() ed25519.PublicKey { return s.signer.Public() }

// Revision returns the last committed revision.
func (s *Server) Revision() uint64 { return s.rev.Load() }

// PublishedRevision returns the highest revision up to which every event
// has been acknowledged by JetStream.
func (s *Server) PublishedRevision() uint64 {
	rev, err := s.store.publishedRevision(context.Background())
	if err != nil {
		return 0
	}
	return rev
}

func (s *Server) committed(rev uint64) {
	for {
		cur := s.rev.Load()
		if rev <= cur || s.rev.CompareAndSwap(cur, rev) {
			break
		}
	}
	if s.pub != nil {
		s.pub.wake()
	}
}

// Shutdown stops the HTTP server (draining requests until ctx ends), the
// lookup responders, the publisher (after a final attempt to publish what
// is committed), NATS, and closes the store; of an origin never started it
// releases what New built. It is safe to call more than once; later calls
// return the first call's result.
func (s *Server) Shutdown(ctx context.Context) error {
	s.shutdownOnce.Do(func() {
		// Waits for a Start under way, so that what it started is stopped.
		s.lifeMu.Lock()
		s.stopped = true
		s.lifeMu.Unlock()
		s.lookupMu.Lock()
		s.closed.Store(true)
		s.lookupMu.Unlock()
		var errs []error
		if s.httpSrv != nil {
			if err := s.httpSrv.Shutdown(ctx); err != nil {
				errs = append(errs, fmt.Errorf("stopping http: %w", err))
				_ = s.httpSrv.Close()
			}
		}
		for _, sub := range s.subs {
			_ = sub.Unsubscribe()
		}
		s.lookupWG.Wait()
		s.stopAudit()
		s.stopUsage()
		s.stopBalances() // after the ledger: its last records are published
		s.stopOutboxPruner()
		s.stopHeartbeat()
		if s.pub != nil {
			s.pub.stop(ctx)
		}
		s.closeResources()
		s.shutdownErr = errors.Join(errs...)
		s.log.Info("origin stopped")
	})
	return s.shutdownErr
}

// closeResources closes NATS and the store (used by Shutdown and by a
// failed New).
func (s *Server) closeResources() {
	s.edges.stopFlusher() // writes the registry's last changes
	if s.httpLn != nil && !s.serving {
		_ = s.httpLn.Close()
	}
	if s.nc != nil {
		s.nc.Close()
	}
	if s.ns != nil {
		s.ns.Shutdown()
		s.ns.WaitForShutdown()
	}
	if s.auditStore != nil && s.auditStore != s.store {
		_ = s.auditStore.Close()
	}
	if s.store != nil {
		_ = s.store.Close()
	}
	s.dirLock.Release()
}

// bootstrap creates the admin user and the default project on first start.
// Both steps are idempotent: origins starting at once on one fresh store
// all succeed, and exactly one of them creates the admin.
func (s *Server) bootstrap() error {
	ctx := context.Background()
	if err := s.store.ensureProject(ctx, "default"); err != nil {
		return fmt.Errorf("creating default project: %w", err)
	}
	n, err := s.store.userCount(ctx)
	if err != nil {
		return fmt.Errorf("reading users: %w", err)
	}
	if n > 0 {
		return nil
	}
	pw, pwFile := s.cfg.AdminPassword, ""
	if pw == "" {
		// Written before the user exists, so that a crash in between
		// cannot leave an admin whose password nobody has.
		pw, pwFile = randomToken(18), filepath.Join(s.cfg.DataDir, "admin-password")
		if err := writeFileAtomic(pwFile, []byte(pw+"\n"), 0o600); err != nil {
			return fmt.Errorf("writing admin password file: %w", err)
		}
	}
	if len(pw) > maxPasswordLen {
		return fmt.Errorf("%w: the admin password is longer than %d bytes", ErrInvalidConfig, maxPasswordLen)
	}
	hash, err := s.hasher.hash([]byte(pw), s.cfg.PasswordCost)
	if err != nil {
		return fmt.Errorf("hashing admin password: %w", err)
	}
	created, err := s.store.createUser(ctx, "admin", string(hash))
	if err != nil {
		return err
	}
	switch {
	case !created:
		// Another origin on this store created it meanwhile; its password
		// is in that origin's data dir (or its ORIGIN_ADMIN_PASSWORD).
		if pwFile != "" {
			_ = os.Remove(pwFile)
		}
		s.log.Info("admin user was created meanwhile by another origin sharing the store")
	case pwFile != "":
		s.log.Warn("created admin user with a random password; read it from the file", "file", pwFile)
	default:
		s.log.Info("created admin user from the configured password")
	}
	return nil
}
