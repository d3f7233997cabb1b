// Package stack starts keymesh in one process, for tests and bench runs: an
// origin on SQLite with its embedded NATS (JetStream, credentials required)
// on a random loopback port — or on a NATS the caller runs — and edges on
// loopback sockets that trust the origin's signing key and connect with NATS
// credentials issued for them.
//
// It guarantees that Start returns only once the origin serves and its admin
// is logged in, and once every edge it started has synchronised and
// listens (AddEdge likewise, unless told not to wait); that every edge's
// credentials are its own (for the id it will run under); and that
// Shutdown drains the edges, then the origin, and removes the temporary
// directory Start made (never a directory the caller gave).
//
// It returns errors rather than failing a test, so that cmd/bench can use
// it; ForTest is the thin wrapper tests use. Nothing a product ships
// imports it.
package stack

import (
	"context"
	"crypto/ed25519"
	"crypto/rand"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"net/url"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"time"

	"github.com/keymesh/keymesh/edge"
	"github.com/keymesh/keymesh/internal/natsauth"
	"github.com/keymesh/keymesh/internal/netcut"
	"github.com/keymesh/keymesh/origin"
	"github.com/keymesh/keymesh/origin/apiclient"
)

// DefaultAdminPassword is the admin password of a stack's origin unless
// Config says otherwise: a throwaway that guards nothing outliving the run.
const DefaultAdminPassword = "keymesh-stack-throwaway-admin"

// ErrNoNATSKeys is returned when an edge needs credentials but the stack
// does not hold the NATS trust roots (a caller's NATS without NATSKeys).
var ErrNoNATSKeys = errors.New("stack: no NATS keys to issue credentials from")

// Config describes a stack. Zero fields take DefaultConfig's values.
type Config struct {
	// Name prefixes the ids of the edges the stack names: edge n is
	// "<Name>-edge-<nn>" (its NATS credential and, with gossip, its
	// member name). Default "stack".
	Name string
	// Dir holds the origin's data dir and the credential files the stack
	// writes. Default: a new temporary directory, removed by Shutdown; a
	// Dir given is left in place.
	Dir string
	// OriginDir is the origin's data dir. Default <Dir>/origin.
	OriginDir string
	// NATSURL, if set, is a NATS server the caller runs: the origin uses
	// it instead of starting its embedded one. NATSKeys must then be the
	// trust roots that server admits (natsauth), from which the stack
	// issues the origin's and the edges' credentials; without them the
	// origin gets none (an Origin func may give one) and edges cannot be
	// added. Default "": the origin's embedded NATS, whose keys the origin
	// keeps in its data dir.
	NATSURL  string
	NATSKeys *natsauth.Keys
	// AdminPassword is the origin's admin password. Default
	// DefaultAdminPassword.
	AdminPassword string
	// Logger receives every component's logs. Default: discarded.
	Logger *slog.Logger
	// Origin, if set, adjusts the origin's Config last.
	Origin func(*origin.Config)
	// Edges is how many edges Start starts, each with the options Edge
	// (a DataDir there suits one edge only). Default 0; AddEdge adds more.
	Edges int
	Edge  EdgeOptions
	// SyncTimeout bounds how long an edge may take to synchronise. Default
	// 15s.
	SyncTimeout time.Duration
}

// DefaultConfig returns the defaults Start fills in for zero fields.
func DefaultConfig() Config {
	return Config{
		Name:          "stack",
		AdminPassword: DefaultAdminPassword,
		Logger:        slog.New(slog.DiscardHandler),
		SyncTimeout:   15 * time.Second,
	}
}

// EdgeOptions change how one edge is started. The zero value is an edge
// of edge.DefaultConfig on a random loopback port, without a data dir or
// admin listener, on the stack's NATS, out of gossip.
type EdgeOptions struct {
	// Site is the edge's site. Default edge.DefaultConfig's.
	Site string
	// DataDir persists the edge's id and state. Default: none.
	DataDir string
	// NATSURL is the NATS the edge connects to. Default the stack's.
	NATSURL string
	// CuttableNATS puts a netcut.Relay between the edge and its NATS
	// (Edge.Link), so that its link can be cut while the rest runs on.
	CuttableNATS bool
	// Gossip joins the edge to the stack's gossip ring: loopback, local
	// timings, encrypted with the stack's random key (GossipKey), joined
	// through the first edge that gossips.
	Gossip bool
	// Admin serves the edge's admin handler (/metrics, /status, /health)
	// on a loopback port of its own (Edge.AdminURL).
	Admin bool
	// Unsynced returns as soon as the edge listens, without waiting for it
	// to synchronise (its NATS may be down).
	Unsynced bool
	// Configure, if set, adjusts the edge's Config last. If it sets
	// NATSCreds, the edge keeps them; else the stack issues credentials
	// for the edge's id (Config.ID, else the id in its data dir, else one
	// the stack names).
	Configure func(*edge.Config)
}

// Edge is one edge of a stack.
type Edge struct {
	*edge.Node
	// URL is the proxy's base URL, http://127.0.0.1:port.
	URL string
	// AdminURL is the admin handler's base URL with EdgeOptions.Admin,
	// else "".
	AdminURL string
	// Link is the relay to NATS with EdgeOptions.CuttableNATS, else nil.
	Link *netcut.Relay

	admin *http.Server
}

// Stack is a running origin and its edges.
type Stack struct {
	// Origin is the running origin (a new one after RestartOrigin).
	Origin *origin.Server
	// OriginURL is the origin's base URL, http://127.0.0.1:port.
	OriginURL string
	// API is logged in to the origin as admin.
	API *apiclient.Client

	cfg       Config
	dir       string
	ownDir    bool // dir is ours to remove
	keys      *natsauth.Keys
	gossipKey []byte

	mu    sync.Mutex
	edges []*Edge
	n     int // edges named so far
	seed  string
}

// Start starts an origin, logs in as admin, and starts cfg.Edges edges,
// waiting for each to synchronise. On error, what it started is stopped.
func Start(ctx context.Context, cfg Config) (_ *Stack, err error) {
	def := DefaultConfig()
	if cfg.Name == "" {
		cfg.Name = def.Name
	}
	if cfg.AdminPassword == "" {
		cfg.AdminPassword = def.AdminPassword
	}
	if cfg.Logger == nil {
		cfg.Logger = def.Logger
	}
	if cfg.SyncTimeout <= 0 {
		cfg.SyncTimeout = def.SyncTimeout
	}
	s := &Stack{cfg: cfg, dir: cfg.Dir, keys: cfg.NATSKeys}
	if s.dir == "" {
		if s.dir, err = os.MkdirTemp("", "keymesh-stack-"); err != nil {
			return nil, err
		}
		s.ownDir = true
	}
	if s.cfg.OriginDir == "" {
		s.cfg.OriginDir = filepath.Join(s.dir, "origin")
	}
	defer func() {
		if err != nil {
			ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
			defer cancel()
			_ = s.Shutdown(ctx)
		}
	}()
	s.gossipKey = make([]byte, 32)
	if _, err = rand.Read(s.gossipKey); err != nil {
		return nil, err
	}
	if err = s.startOrigin(ctx); err != nil {
		return nil, err
	}
	if s.keys == nil && cfg.NATSURL == "" {
		// The embedded NATS trusts the keys the origin keeps in its data dir.
		if s.keys, err = natsauth.Load(s.cfg.OriginDir); err != nil {
			return nil, err
		}
	}
	for i := range cfg.Edges {
		if _, err = s.AddEdge(ctx, cfg.Edge); err != nil {
			return nil, fmt.Errorf("starting edge %d: %w", i, err)
		}
	}
	return s, nil
}

// startOrigin starts an origin on the stack's data dir and NATS and logs in.
func (s *Stack) startOrigin(ctx context.Context) error {
	cfg := origin.DefaultConfig()
	cfg.DataDir = s.cfg.OriginDir
	cfg.Listen = "127.0.0.1:0"
	if s.cfg.NATSURL == "" {
		cfg.NATSListen = "127.0.0.1:-1"
	} else {
		cfg.NATSURL = s.cfg.NATSURL
		if s.keys != nil {
			creds, err := s.Creds(natsauth.RoleOrigin, "origin")
			if err != nil {
				return err
			}
			cfg.NATSCreds = creds
		}
	}
	cfg.AdminPassword = s.cfg.AdminPassword
	cfg.PasswordCost = 4 // bcrypt's minimum: logins are not what is measured
	cfg.Logger = s.cfg.Logger
	if s.cfg.Origin != nil {
		s.cfg.Origin(&cfg)
	}
	o, err := origin.New(cfg)
	if err != nil {
		return fmt.Errorf("starting origin: %w", err)
	}
	if err := o.Start(); err != nil {
		_ = o.Shutdown(ctx)
		return fmt.Errorf("starting origin: %w", err)
	}
	s.Origin = o
	s.OriginURL = "http://" + o.Addr()
	s.API = &apiclient.Client{BaseURL: s.OriginURL}
	if _, err := s.API.Login(ctx, "admin", s.cfg.AdminPassword); err != nil {
		return fmt.Errorf("logging in to the origin: %w", err)
	}
	return nil
}

// RestartOrigin shuts the origin down (if it is not already) and starts a
// new one on the same data dir and NATS, with the same credential, and
// logs in again. With the embedded NATS the new one listens on a new port:
// edges started before keep the old URL.
func (s *Stack) RestartOrigin(ctx context.Context) error {
	if s.Origin != nil {
		if err := s.Origin.Shutdown(ctx); err != nil {
			return err
		}
	}
	return s.startOrigin(ctx)
}

// Dir is the directory holding the stack's files.
func (s *Stack) Dir() string { return s.dir }

// OriginDir is the origin's data dir.
func (s *Stack) OriginDir() string { return s.cfg.OriginDir }

// NATSURL is the NATS the origin uses: the caller's or its embedded one.
func (s *Stack) NATSURL() string { return s.Origin.NATSURL() }

// PublicKey is the key the origin signs every record with.
func (s *Stack) PublicKey() ed25519.PublicKey { return s.Origin.PublicKey() }

// Token is the admin JWT API sends.
func (s *Stack) Token() string { return s.API.Token }

// AdminPassword is the origin's admin password.
func (s *Stack) AdminPassword() string { return s.cfg.AdminPassword }

// GossipKey is the key the stack's gossip ring is encrypted with.
func (s *Stack) GossipKey() []byte { return s.gossipKey }

// Edges returns the edges started so far, in order.
func (s *Stack) Edges() []*Edge {
	s.mu.Lock()
	defer s.mu.Unlock()
	return append([]*Edge(nil), s.edges...)
}

// Creds writes a NATS .creds file for role (and edge id) into a directory
// of its own under Dir, and returns its path.
func (s *Stack) Creds(role natsauth.Role, id string) (string, error) {
	if s.keys == nil {
		return "", ErrNoNATSKeys
	}
	b, err := s.keys.Creds(role, id)
	if err != nil {
		return "", err
	}
	dir, err := os.MkdirTemp(s.dir, "creds-")
	if err != nil {
		return "", err
	}
	path := filepath.Join(dir, "nats.creds")
	return path, os.WriteFile(path, b, 0o600)
}

// nextName names the stack's next edge.
func (s *Stack) nextName() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	name := fmt.Sprintf("%s-edge-%02d", s.cfg.Name, s.n)
	s.n++
	return name
}

// edgeID is the id the edge cfg describes will run under: cfg.ID, else
// the id kept in its data dir (created there as the edge would), else name.
func edgeID(cfg *edge.Config, name string) (string, error) {
	if cfg.ID != "" {
		return cfg.ID, nil
	}
	if cfg.DataDir == "" {
		return name, nil
	}
	path := filepath.Join(cfg.DataDir, "edge-id")
	if b, err := os.ReadFile(path); err == nil {
		return strings.TrimSpace(string(b)), nil
	}
	if err := os.MkdirAll(cfg.DataDir, 0o700); err != nil {
		return "", err
	}
	return name, os.WriteFile(path, []byte(name+"\n"), 0o600)
}

// AddEdge starts an edge with o and, unless o.Unsynced, waits (at most
// SyncTimeout) until it has synchronised. Shutdown stops it.
func (s *Stack) AddEdge(ctx context.Context, o EdgeOptions) (_ *Edge, err error) {
	name := s.nextName()
	cfg := edge.DefaultConfig()
	cfg.Listen = "127.0.0.1:0"
	cfg.AdminListen = ""
	cfg.DataDir = o.DataDir
	cfg.NATSURL = o.NATSURL
	if cfg.NATSURL == "" {
		cfg.NATSURL = s.NATSURL()
	}
	if o.Site != "" {
		cfg.Site = o.Site
	}
	cfg.OriginPublicKey = s.PublicKey()
	cfg.Logger = s.cfg.Logger.With("edge", name)
	e := &Edge{}
	defer func() {
		if err != nil {
			e.stop(context.Background())
		}
	}()
	if o.CuttableNATS {
		u, err := url.Parse(cfg.NATSURL)
		if err != nil {
			return nil, fmt.Errorf("nats url %q: %w", cfg.NATSURL, err)
		}
		if e.Link, err = netcut.NewRelay(u.Host); err != nil {
			return nil, err
		}
		cfg.NATSURL = "nats://" + e.Link.Addr()
	}
	if o.Gossip {
		s.mu.Lock()
		var join []string
		if s.seed != "" {
			join = []string{s.seed}
		}
		s.mu.Unlock()
		cfg.Gossip = edge.GossipConfig{Listen: "127.0.0.1:0", Keys: [][]byte{s.gossipKey}, Local: true, Name: name, Join: join}
	}
	if o.Configure != nil {
		o.Configure(&cfg)
	}
	if cfg.NATSCreds == "" {
		id, err := edgeID(&cfg, name)
		if err != nil {
			return nil, err
		}
		if cfg.NATSCreds, err = s.Creds(natsauth.RoleEdge, id); err != nil {
			return nil, err
		}
	}
	if e.Node, err = edge.New(cfg); err != nil {
		return nil, err
	}
	ln, err := net.Listen("tcp", cfg.Listen)
	if err != nil {
		return nil, err
	}
	go func() { _ = e.Serve(ln) }()
	e.URL = "http://" + ln.Addr().String()
	if o.Admin {
		aln, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			return nil, err
		}
		e.admin = &http.Server{Handler: e.AdminHandler(), ReadHeaderTimeout: 5 * time.Second}
		go func() { _ = e.admin.Serve(aln) }()
		e.AdminURL = "http://" + aln.Addr().String()
	}
	s.mu.Lock()
	s.edges = append(s.edges, e)
	if o.Gossip && s.seed == "" {
		s.seed = e.GossipAddr()
	}
	s.mu.Unlock()
	if !o.Unsynced {
		t := time.NewTimer(s.cfg.SyncTimeout)
		defer t.Stop()
		select {
		case <-e.Synced():
		case <-t.C:
			return nil, fmt.Errorf("edge %s did not synchronise within %v", name, s.cfg.SyncTimeout)
		case <-ctx.Done():
			return nil, ctx.Err()
		}
	}
	// Serve sets the address the edge reports (Addr) once it runs.
	deadline := time.Now().Add(s.cfg.SyncTimeout)
	for e.Addr() == "" {
		if time.Now().After(deadline) {
			return nil, fmt.Errorf("edge %s not listening after %v", name, s.cfg.SyncTimeout)
		}
		select {
		case <-ctx.Done():
			return nil, ctx.Err()
		case <-time.After(time.Millisecond):
		}
	}
	return e, nil
}

// stop shuts the edge down; safe to call twice.
func (e *Edge) stop(ctx context.Context) error {
	var errs []error
	if e.admin != nil {
		errs = append(errs, e.admin.Shutdown(ctx))
	}
	if e.Node != nil {
		errs = append(errs, e.Node.Shutdown(ctx))
	}
	if e.Link != nil {
		e.Link.Close()
	}
	return errors.Join(errs...)
}

// Shutdown drains every edge, then the origin, and removes the directory Start made. It is
// safe to call twice.
func (s *Stack) Shutdown(ctx context.Context) error {
	// All edges but the first at once, then the first: a gossiping edge's
	// leave takes a moment, and is announced only while a peer is up to
	// hear it (the first edge, the ring's seed), so that no leave times out.
	edges := s.Edges()
	errs := make([]error, len(edges))
	var wg sync.WaitGroup
	for i := 1; i < len(edges); i++ {
		wg.Go(func() { errs[i] = edges[i].stop(ctx) })
	}
	wg.Wait()
	if len(edges) > 0 {
		errs[0] = edges[0].stop(ctx)
	}
	if s.Origin != nil {
		errs = append(errs, s.Origin.Shutdown(ctx))
	}
	if s.ownDir {
		errs = append(errs, os.RemoveAll(s.dir))
	}
	return errors.Join(errs...)
}

// T is the part of testing.TB ForTest uses.
type T interface {
	Helper()
	Fatalf(format string, args ...any)
	Errorf(format string, args ...any)
	Cleanup(func())
}

// ForTest starts a stack for a test: it fails t on error, and shuts the
// stack down when t ends (failing t if that fails).
func ForTest(t T, cfg Config) *Stack {
	t.Helper()
	s, err := Start(context.Background(), cfg)
	if err != nil {
		t.Fatalf("starting the stack: %v", err)
	}
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		if err := s.Shutdown(ctx); err != nil {
			t.Errorf("stopping the stack: %v", err)
		}
	})
	return s
}
