package main

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net/http"
	"os"
	"sync"
	"time"

	"github.com/keymesh/keymesh/bench"
	"github.com/keymesh/keymesh/edge"
	"github.com/keymesh/keymesh/internal/netcut"
	kmstack "github.com/keymesh/keymesh/internal/stack"
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
	// Process stacks only (bench compare's fair run): upstream, if set, is
	// the deployment's upstream instead of a mock the stack starts; wrap,
	// if set, rewrites each child's command line and adds to its
	// environment (pinning to a core, GOMAXPROCS).
	upstream string
	wrap     func(name string, args []string) ([]string, []string)
	// originAtNormalPriority: a process stack's origin is not put at idle
	// priority (bench wan, where every change measured waits on the
	// origin's publishing).
	originAtNormalPriority bool
}

type edgeNode struct {
	srv      *edge.Node    // nil when the edge is a process
	url      string        // proxy
	adminURL string        // /metrics, /status
	link     *netcut.Relay // nil without gossip
	client   *http.Client  // reaches adminURL; nil: http.DefaultClient
}

type stack struct {
	dir      string
	inproc   *kmstack.Stack // origin and edges of an in-process stack
	api      *bench.OriginClient
	upstream *bench.Upstream
	edges    []*edgeNode
	dep      *bench.Deployment
	closed   sync.Once

	procs  []*process // a process stack's children
	upURL  string     // a process stack's upstream
	onStop []func(context.Context)
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
	// The origin's data dir is <dir>/origin, as in a process stack.
	if s.inproc, err = kmstack.Start(ctx, kmstack.Config{Name: "bench", Dir: dir, AdminPassword: benchPassword, Logger: log}); err != nil {
		return nil, err
	}
	s.api = &bench.OriginClient{BaseURL: s.inproc.OriginURL, Token: s.inproc.Token()}
	if s.upstream, err = bench.StartUpstream(bench.UpstreamConfig{Logger: log}, "127.0.0.1:0"); err != nil {
		return nil, err
	}
	if s.dep, err = s.api.EnsureDeployment(ctx, benchProject, benchDeployment, []string{s.upstream.URL()}); err != nil {
		return nil, err
	}
	for i := range o.edges {
		// With gossip, each edge reaches NATS through a relay cutNATS can sever.
		e, err := s.inproc.AddEdge(ctx, kmstack.EdgeOptions{Site: "bench", Admin: true, Gossip: o.gossip, CuttableNATS: o.gossip,
			Configure: func(c *edge.Config) { c.MaxKeys = o.maxKeys }})
		if err != nil {
			return nil, fmt.Errorf("starting edge %d: %w", i, err)
		}
		s.edges = append(s.edges, &edgeNode{srv: e.Node, url: e.URL, adminURL: e.AdminURL, link: e.Link})
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
	if s.inproc != nil {
		_ = s.inproc.Shutdown(ctx) // the edges, then the origin
	}
	for _, f := range s.onStop {
		f(ctx)
	}
	s.stopProcesses()
	if s.upstream != nil {
		_ = s.upstream.Shutdown(ctx)
	}
	if s.dir != "" {
		_ = os.RemoveAll(s.dir)
	}
}
