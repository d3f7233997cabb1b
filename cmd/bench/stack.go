package main

import (
	"context"
	"crypto/rand"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"net/url"
	"os"
	"path/filepath"
	"sync"
	"time"

	"github.com/keymesh/keymesh/bench"
	"github.com/keymesh/keymesh/edge"
	"github.com/keymesh/keymesh/internal/natsauth"
	"github.com/keymesh/keymesh/internal/netcut"
	"github.com/keymesh/keymesh/origin"
	"github.com/keymesh/keymesh/origin/apiclient"
)

// The in-process stack a bench command starts when it is not pointed at a
// running one: an origin with its embedded NATS (JetStream) and SQLite in a
// temporary directory, a mock upstream, and N edges, all on free loopback
// ports. With gossip, the edges form one gossip ring (local timings) and
// each reaches NATS through a relay the stack can cut, so that changes
// reach those edges by gossip alone. Everything stops in close.

const (
	benchProject    = "default"
	benchDeployment = "bench"
	// benchPassword is the throwaway admin password of an in-process
	// origin; it guards nothing that outlives the run.
	benchPassword = "keymesh-bench-throwaway-admin"
)

type stackOpts struct {
	edges int
	// maxKeys bounds each edge's key cache (0: the edge's default).
	maxKeys int64
	// logger gets every component's logs (nil: discarded).
	logger *slog.Logger
	// binDir, if set, holds the edge and origin binaries: the stack then
	// runs as separate processes (see procstack.go).
	binDir string
	// gossip joins the edges into one gossip ring, each behind a NATS relay
	// that cutNATS can sever.
	gossip bool
}

type edgeNode struct {
	srv      *edge.Node // nil when the edge is a process
	url      string     // proxy
	adminURL string     // /metrics, /status
	admin    *http.Server
	link     *netcut.Relay // nil without gossip
}

type stack struct {
	dir      string
	origin   *origin.Server
	api      *bench.OriginClient
	upstream *bench.Upstream
	edges    []*edgeNode
	dep      *bench.Deployment
	closed   sync.Once

	procs  []*process // a process stack's children
	upURL  string     // a process stack's upstream
	onStop []func(context.Context)
	// gossipKey encrypts the edges' gossip (random per stack).
	gossipKey []byte
}

func startStack(ctx context.Context, o stackOpts) (_ *stack, err error) {
	if o.edges <= 0 {
		o.edges = 1
	}
	log := o.logger
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	dir, err := os.MkdirTemp("", "keymesh-bench-")
	if err != nil {
		return nil, err
	}
	s := &stack{dir: dir}
	defer func() {
		if err != nil {
			s.close()
		}
	}()
	if o.binDir != "" {
		self, err := os.Executable()
		if err != nil {
			return nil, err
		}
		return s, s.startProcesses(ctx, o, self)
	}
	cfg := origin.DefaultConfig()
	cfg.DataDir = dir + "/origin"
	cfg.Listen = "127.0.0.1:0"
	cfg.NATSListen = "127.0.0.1:-1"
	cfg.AdminPassword = benchPassword
	cfg.PasswordCost = 4
	cfg.Logger = log
	if s.origin, err = origin.New(cfg); err != nil {
		return nil, fmt.Errorf("starting origin: %w", err)
	}
	if err = s.origin.Start(); err != nil {
		return nil, fmt.Errorf("starting origin: %w", err)
	}
	s.api = &bench.OriginClient{BaseURL: "http://" + s.origin.Addr()}
	if err = s.api.Login(ctx, "admin", benchPassword); err != nil {
		return nil, err
	}
	if s.upstream, err = bench.StartUpstream(bench.UpstreamConfig{Logger: log}, "127.0.0.1:0"); err != nil {
		return nil, err
	}
	if s.dep, err = s.api.EnsureDeployment(ctx, benchProject, benchDeployment, []string{s.upstream.URL()}); err != nil {
		return nil, err
	}
	if o.gossip {
		s.gossipKey = make([]byte, 32)
		if _, err = rand.Read(s.gossipKey); err != nil {
			return nil, err
		}
	}
	for i := range o.edges {
		e, err := s.startEdge(i, o, log)
		if err != nil {
			return nil, fmt.Errorf("starting edge %d: %w", i, err)
		}
		s.edges = append(s.edges, e)
	}
	if err = s.waitApplied(ctx, s.dep.Revision); err != nil {
		return nil, err
	}
	if o.gossip {
		if err = s.waitRing(ctx); err != nil {
			return nil, err
		}
	}
	return s, nil
}

// waitRing waits (at most 20s) until every edge sees all the others.
func (s *stack) waitRing(ctx context.Context) error {
	deadline := time.Now().Add(20 * time.Second)
	for _, e := range s.edges {
		for len(e.srv.Peers()) != len(s.edges)-1 {
			if time.Now().After(deadline) {
				return fmt.Errorf("the gossip ring did not form within 20s")
			}
			select {
			case <-ctx.Done():
				return ctx.Err()
			case <-time.After(5 * time.Millisecond):
			}
		}
	}
	return nil
}

// cutNATS severs the NATS link of the last k edges (gossip stacks only),
// waits (at most 20s) until they notice, and returns their indexes.
func (s *stack) cutNATS(ctx context.Context, k int) ([]int, error) {
	if k > len(s.edges) {
		return nil, fmt.Errorf("cannot cut NATS for %d of %d edges", k, len(s.edges))
	}
	var cut []int
	for i := len(s.edges) - k; i < len(s.edges); i++ {
		if s.edges[i].link == nil {
			return nil, errors.New("cutting NATS needs a gossip stack")
		}
		s.edges[i].link.Cut()
		cut = append(cut, i)
	}
	deadline := time.Now().Add(20 * time.Second)
	for _, i := range cut {
		for s.edges[i].srv.NATSConnected() {
			if time.Now().After(deadline) {
				return nil, fmt.Errorf("edge %d still on NATS 20s after its link was cut", i)
			}
			select {
			case <-ctx.Done():
				return nil, ctx.Err()
			case <-time.After(5 * time.Millisecond):
			}
		}
	}
	return cut, nil
}

func (s *stack) startEdge(i int, o stackOpts, log *slog.Logger) (*edgeNode, error) {
	cfg := edge.DefaultConfig()
	cfg.Listen = "127.0.0.1:0"
	cfg.AdminListen = ""
	cfg.DataDir = ""
	cfg.NATSURL = s.origin.NATSURL()
	creds, err := writeEdgeCreds(filepath.Join(s.dir, "origin"), s.dir, fmt.Sprintf("bench-edge-%02d", i))
	if err != nil {
		return nil, err
	}
	cfg.NATSCreds = creds
	cfg.Site = "bench"
	cfg.OriginPublicKey = s.origin.PublicKey()
	cfg.MaxKeys = o.maxKeys
	cfg.Logger = log.With("edge", i)
	var link *netcut.Relay
	if o.gossip {
		var err error
		if link, err = startNATSRelay(s.origin.NATSURL()); err != nil {
			return nil, err
		}
		cfg.NATSURL = "nats://" + link.Addr()
		cfg.Gossip = edge.GossipConfig{Listen: "127.0.0.1:0", Keys: [][]byte{s.gossipKey}, Local: true,
			Name: fmt.Sprintf("bench-edge-%02d", i)}
		if i > 0 {
			cfg.Gossip.Join = []string{s.edges[0].srv.GossipAddr()}
		}
	}
	srv, err := edge.New(cfg)
	if err != nil {
		if link != nil {
			link.Close()
		}
		return nil, err
	}
	e := &edgeNode{srv: srv, link: link}
	ln, err := net.Listen("tcp", cfg.Listen)
	if err != nil {
		_ = srv.Shutdown(context.Background())
		return nil, err
	}
	go func() { _ = srv.Serve(ln) }()
	e.url = "http://" + ln.Addr().String()
	aln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		_ = srv.Shutdown(context.Background())
		return nil, err
	}
	e.admin = &http.Server{Handler: srv.AdminHandler(), ReadHeaderTimeout: 5 * time.Second}
	go func() { _ = e.admin.Serve(aln) }()
	e.adminURL = "http://" + aln.Addr().String()
	select {
	case <-srv.Synced():
	case <-time.After(15 * time.Second):
		e.stop()
		return nil, errors.New("edge did not synchronise within 15s")
	}
	return e, nil
}

func (e *edgeNode) stop() {
	if e.srv == nil {
		return // a process: stopProcesses ends it
	}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	_ = e.admin.Shutdown(ctx)
	_ = e.srv.Shutdown(ctx)
	if e.link != nil {
		e.link.Close()
	}
}

// waitApplied waits (at most 10s) until every edge has applied rev.
func (s *stack) waitApplied(ctx context.Context, rev uint64) error {
	deadline := time.Now().Add(10 * time.Second)
	for _, e := range s.edges {
		for {
			applied, err := e.appliedRevision(ctx)
			if err == nil && applied >= rev {
				break
			}
			if time.Now().After(deadline) {
				return fmt.Errorf("an edge did not apply revision %d within 10s", rev)
			}
			select {
			case <-ctx.Done():
				return ctx.Err()
			case <-time.After(2 * time.Millisecond):
			}
		}
	}
	return nil
}

// keys creates n keys linked to the bench deployment, and waits until
// every edge has applied them.
func (s *stack) keys(ctx context.Context, n int, name string) ([]*bench.Key, error) {
	out := make([]*bench.Key, 0, n)
	var last uint64
	for i := range n {
		k, err := s.api.CreateKey(ctx, benchProject, fmt.Sprintf("%s-%d", name, i), s.dep.ID)
		if err != nil {
			return nil, err
		}
		out = append(out, k)
		last = max(last, k.Revision)
	}
	return out, s.waitApplied(ctx, last)
}

func secrets(keys []*bench.Key) []string {
	out := make([]string, len(keys))
	for i, k := range keys {
		out[i] = k.Secret
	}
	return out
}

// unlinker returns the load run's Revoke: it unlinks keys and returns once
// every edge has applied the unlinks, so that a request sent after it is
// one the edges must refuse.
func (s *stack) unlinker(keys []*bench.Key) func(ctx context.Context) error {
	return func(ctx context.Context) error {
		for _, k := range keys {
			if _, err := s.api.Link(ctx, benchProject, s.dep.ID, k.ID, false, apiclient.Wait(10*time.Second)); err != nil {
				return err
			}
		}
		return nil
	}
}

func (s *stack) edgeURLs() []string {
	out := make([]string, len(s.edges))
	for i, e := range s.edges {
		out[i] = e.url
	}
	return out
}

func (s *stack) close() { s.closed.Do(s.stop) }

func (s *stack) stop() {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	var wg sync.WaitGroup // a gossiping edge's leave takes a moment: all at once
	for _, e := range s.edges {
		wg.Go(e.stop)
	}
	wg.Wait()
	for _, f := range s.onStop {
		f(ctx)
	}
	s.stopProcesses()
	if s.upstream != nil {
		_ = s.upstream.Shutdown(ctx)
	}
	if s.origin != nil {
		_ = s.origin.Shutdown(ctx)
	}
	if s.dir != "" {
		_ = os.RemoveAll(s.dir)
	}
}

// startNATSRelay starts a netcut.Relay between one edge and the NATS at
// natsURL, so that the edge's NATS link can be cut while everything else
// runs on.
func startNATSRelay(natsURL string) (*netcut.Relay, error) {
	u, err := url.Parse(natsURL)
	if err != nil {
		return nil, fmt.Errorf("nats url %q: %w", natsURL, err)
	}
	return netcut.NewRelay(u.Host)
}

// writeEdgeCreds writes into dir the NATS credentials of edge id, issued
// from the keys in the origin's data dir, and returns the file's path.
func writeEdgeCreds(originDir, dir, id string) (string, error) {
	keys, err := natsauth.Load(originDir)
	if err != nil {
		return "", err
	}
	b, err := keys.Creds(natsauth.RoleEdge, id)
	if err != nil {
		return "", err
	}
	path := filepath.Join(dir, id+".creds")
	return path, os.WriteFile(path, b, 0o600)
}
