package e2e

import (
	"bytes"
	"fmt"
	"net/http"
	"sync"
	"testing"
	"time"

	"github.com/keymesh/keymesh/apikey"
	"github.com/keymesh/keymesh/cluster"
	"github.com/keymesh/keymesh/event"
	"github.com/keymesh/keymesh/proxy"
)

var gossipKey = bytes.Repeat([]byte{42}, 32)

// gossipEdges starts n edges, each behind its own NATS relay, all joined
// into one gossip ring.
func (s *stack) gossipEdges(n int) ([]*proxy.Server, []*relay) {
	t := s.t
	var edges []*proxy.Server
	var links []*relay
	seed := ""
	for i := range n {
		link := newRelay(t, s.nats.Addr().String())
		var join []string
		if seed != "" {
			join = []string{seed}
		}
		e := s.startEdge(edgeOpts{natsURL: link.URL(), staleness: time.Minute, configure: func(c *proxy.Config) {
			c.Gossip = proxy.GossipConfig{Listen: "127.0.0.1:0", Keys: [][]byte{gossipKey}, Local: true,
				Name: fmt.Sprintf("edge-%02d", i), Join: join}
		}})
		if seed == "" {
			seed = e.GossipAddr()
		}
		edges = append(edges, e)
		links = append(links, link)
	}
	checkFor(t, 20*time.Second, func() error {
		for i, e := range edges {
			if p := len(e.Peers()); p != n-1 {
				return fmt.Errorf("edge %d sees %d peers", i, p)
			}
		}
		return nil
	})
	return edges, links
}

// everyEdge polls until every edge answers the key with status, and
// returns how long the slowest took.
func everyEdge(t *testing.T, edges []*proxy.Server, key string, status int) time.Duration {
	t.Helper()
	start := time.Now()
	var mu sync.Mutex
	done := make([]bool, len(edges))
	var slowest time.Duration
	checkFor(t, 20*time.Second, func() error {
		var wg sync.WaitGroup
		for i, e := range edges {
			mu.Lock()
			skip := done[i]
			mu.Unlock()
			if skip {
				continue
			}
			wg.Go(func() {
				if st, _ := chat(t, e, map[string]string{"X-API-Key": key}); st == status {
					mu.Lock()
					done[i] = true
					slowest = max(slowest, time.Since(start))
					mu.Unlock()
				}
			})
		}
		wg.Wait()
		mu.Lock()
		defer mu.Unlock()
		for i, d := range done {
			if !d {
				return fmt.Errorf("edge %d does not answer %d yet", i, status)
			}
		}
		return nil
	})
	return slowest
}

// 16 edges, 12 of them cut off from NATS after warm-up: an unlink and a
// relink reach every edge by gossip; when NATS returns, nothing is lost or
// applied twice.
func TestGossipCarriesChangesPastCutNATSLinks(t *testing.T) {
	s := newStack(t)
	d := s.deployment("demo", nil)
	k := s.key(d.ID)
	edges, links := s.gossipEdges(16)
	everyEdge(t, edges, k.Secret, 200) // every edge has the key cached

	for _, l := range links[4:] {
		l.Cut()
	}
	path := "/v1/projects/" + project + "/deployments/" + d.ID + "/keys/" + k.ID
	s.call(http.MethodDelete, path, nil, nil)
	t.Logf("unlink refused at all 16 edges after %v", everyEdge(t, edges, k.Secret, 401))
	rev := s.call(http.MethodPut, path, nil, nil)
	t.Logf("relink accepted at all 16 edges after %v", everyEdge(t, edges, k.Secret, 200))
	waitApplied(t, rev, edges...)

	for _, l := range links[4:] {
		l.Heal()
	}
	rev = s.call(http.MethodPatch, "/v1/projects/"+project+"/keys/"+k.ID, map[string]any{"name": "after"}, nil)
	waitApplied(t, rev, edges...)
	for i, e := range edges {
		if st := e.View().Stats(); st.Resyncs != 1 {
			t.Errorf("edge %d resynchronised %d times", i, st.Resyncs)
		}
	}
}

// A node that knows the gossip key but not the origin's signing key cannot
// grant anything: its forged link is dropped and counted everywhere.
func TestForgedGossipIsDropped(t *testing.T) {
	s := newStack(t)
	d := s.deployment("demo", nil)
	k := s.key() // not linked
	edges, _ := s.gossipEdges(3)
	for _, e := range edges {
		expect(t, e, withKey(k), 401, "")
	}
	cfg := cluster.LocalConfig()
	cfg.Name, cfg.BindAddr, cfg.Keys, cfg.Join = "rogue", "127.0.0.1:0", [][]byte{gossipKey}, []string{edges[0].GossipAddr()}
	cfg.Logger = s.logs.logger()
	rogue, err := cluster.Create(cfg)
	if err != nil {
		t.Fatal(err)
	}
	defer rogue.Shutdown()
	priv, _ := event.GenerateKey()
	forger, _ := event.NewSigner(priv)
	h, err := apikey.ParseString(k.Secret)
	if err != nil {
		t.Fatal(err)
	}
	next := edges[0].View().AppliedRevision() + 1
	wire, _ := forger.Seal(&event.Record{Revision: next, Kind: event.KindKey, Key: &event.Key{
		ID: k.ID, Project: d.ID, Secrets: []event.Secret{{Hash: h}}, Permissions: event.DefaultPermissions, Deployments: []string{d.ID}}})
	rogue.Record(next, wire)
	// The rogue's few transmissions reach some edges; edges pass on only
	// what they have verified, so the forgery travels no further.
	checkFor(t, 20*time.Second, func() error {
		var seen uint64
		for _, e := range edges {
			rejected, _ := e.GossipStats()
			seen += rejected
		}
		if seen == 0 {
			return fmt.Errorf("no edge has received the forgery yet")
		}
		return nil
	})
	for _, e := range edges {
		expect(t, e, withKey(k), 401, "AUTHENTICATION_FAILED")
	}
	// The real next revision still lands everywhere.
	rev := s.call(http.MethodPut, "/v1/projects/"+project+"/deployments/"+d.ID+"/keys/"+k.ID, nil, nil)
	waitApplied(t, rev, edges...)
	for _, e := range edges {
		expect(t, e, withKey(k), 200, "")
	}
}

func TestGossipWithoutKeyRefused(t *testing.T) {
	s := newStack(t)
	cfg := proxy.DefaultConfig()
	cfg.Listen, cfg.AdminListen, cfg.DataDir = "127.0.0.1:0", "", ""
	cfg.NATSURL = s.nats.ClientURL()
	cfg.OriginPublicKey = s.origin.PublicKey()
	cfg.Gossip = proxy.GossipConfig{Listen: "127.0.0.1:0", Join: []string{"127.0.0.1:1"}}
	if _, err := proxy.NewServer(cfg); err == nil {
		t.Fatal("an edge joined gossip in plaintext without --gossip-insecure")
	}
}
