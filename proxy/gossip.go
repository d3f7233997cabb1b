package proxy

import (
	"fmt"
	"os"
	"sync/atomic"
	"time"

	"github.com/keymesh/keymesh/cache"
	"github.com/keymesh/keymesh/cluster"
)

// GossipConfig joins the edge to its peers (package cluster). Gossip is off
// when Keys is empty and Insecure is false.
type GossipConfig struct {
	// Listen is the memberlist bind address. Default 127.0.0.1:7946.
	Listen string
	// Join lists peers to join (host:port, DNS names allowed).
	Join []string
	// Keys encrypt gossip: the first is used to send, all are accepted.
	Keys [][]byte
	// Insecure allows plaintext gossip (tests and labs only).
	Insecure bool
	// Name is this edge's node name. Default hostname-listen-address.
	Name string
	// Local selects short intervals for many edges on one machine (tests).
	Local bool
}

func (g GossipConfig) enabled() bool { return len(g.Keys) > 0 || g.Insecure }

// gossipHook passes records the feed has verified to the cluster, once
// the cluster exists (it is created after the feed, which it feeds).
type gossipHook struct {
	c atomic.Pointer[cluster.Cluster]
}

func (h *gossipHook) record(rev uint64, wire []byte) {
	if c := h.c.Load(); c != nil {
		c.Record(rev, wire)
	}
}

// startGossip joins the cluster: records from peers go to the feed, which
// verifies and orders them; what the feed verifies goes back to the peers.
func (s *Server) startGossip(feed *cache.Feed, view *cache.View) error {
	g := s.cfg.Gossip
	if !g.enabled() {
		if len(g.Join) > 0 {
			return fmt.Errorf("gossip: --join needs --gossip-key (or --gossip-insecure)")
		}
		return nil
	}
	cfg := cluster.DefaultConfig()
	if g.Local {
		cfg = cluster.LocalConfig()
	}
	cfg.Name = g.Name
	if cfg.Name == "" {
		host, _ := os.Hostname()
		cfg.Name = host + "-" + s.cfg.Listen
	}
	cfg.BindAddr = g.Listen
	if cfg.BindAddr == "" {
		cfg.BindAddr = "127.0.0.1:7946"
	}
	cfg.Join, cfg.Keys, cfg.Insecure = g.Join, g.Keys, g.Insecure
	cfg.Deliver = feed.Offer
	cfg.Applied = view.AppliedRevision
	cfg.Logger = s.log
	c, err := cluster.Create(cfg)
	if err != nil {
		return err
	}
	s.gossip = c
	s.gossipHook.c.Store(c)
	return nil
}

func (s *Server) stopGossip() error {
	if s.gossip == nil {
		return nil
	}
	return s.gossip.Leave(2 * time.Second)
}

// Peers lists the gossip peers with their applied revisions (none without
// gossip).
func (s *Server) Peers() []cluster.Peer {
	if s.gossip == nil {
		return nil
	}
	return s.gossip.Peers()
}

// GossipAddr is the address this edge gossips on ("" without gossip).
func (s *Server) GossipAddr() string {
	if s.gossip == nil {
		return ""
	}
	return s.gossip.Addr()
}

// GossipStats reports records peers offered that failed verification, and
// verified ones dropped while waiting for an earlier revision.
func (s *Server) GossipStats() (rejected, dropped uint64) { return s.feed.GossipStats() }
