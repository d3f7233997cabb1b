// Package cluster joins edges into a memberlist gossip ring so that key
// changes reach every edge even when its own NATS link is down, and so that
// an edge can tell it is behind its peers.
//
// What travels is the origin's sealed records, byte for byte: the cluster
// never vouches for anything. Whoever consumes Deliver must verify the
// origin's signature before acting (package cache does); a peer that lies
// can delay a change, never grant access. Gossip itself is encrypted with a
// shared AES key (plaintext only when Config.Insecure says so), so outsiders
// cannot join or listen.
//
// Guarantees: every event an edge Records is offered to every peer — by UDP
// gossip, re-broadcast by each receiver, or directly over TCP when it is too
// large for a gossip packet; each node hands an event to Deliver at most once
// per revision; a node whose peers advertise a higher applied revision asks
// the most advanced one for what it lacks (anti-entropy over TCP), from that
// peer's bounded log of recent events. All queues are bounded and count what
// they drop.
package cluster

import (
	"encoding/base64"
	"errors"
	"fmt"
	"log"
	"log/slog"
	"net"
	"os"
	"strconv"
	"strings"
	"time"

	"github.com/hashicorp/memberlist"
)

// Errors returned by Create.
var (
	ErrNoKey   = errors.New("cluster: gossip needs an encryption key (or Insecure)")
	ErrBadKey  = errors.New("cluster: gossip key must be 16, 24 or 32 bytes")
	ErrNoName  = errors.New("cluster: node name is required")
	ErrBadAddr = errors.New("cluster: bind address must be host:port")
)

// Config configures a Cluster. Zero fields take the documented defaults.
type Config struct {
	// Name identifies this node; it must be unique in the cluster. Required.
	Name string
	// BindAddr is the gossip address, host:port (port 0: any free port).
	BindAddr string
	// Join lists peers (host:port, DNS names allowed) to join at start; the
	// Cluster keeps retrying in the background until one answers.
	Join []string
	// Keys are the AES keys gossip is encrypted with: the first encrypts,
	// all are accepted, so keys can be rotated node by node.
	Keys [][]byte
	// Insecure allows gossip without encryption. Never in production.
	Insecure bool
	// Deliver receives each event (revision and sealed record) that arrives
	// from a peer, once per revision. It must not block for long.
	Deliver func(rev uint64, wire []byte)
	// Applied reports this node's applied revision; it travels in the
	// node's metadata so that peers can tell who is behind.
	Applied func() uint64
	// LogSize is how many recent events the node keeps to answer peers
	// catching up. Default 4096.
	LogSize int
	// MaxQueued bounds the gossip queue. Default 4096 messages.
	MaxQueued int
	// SyncInterval is how often the node compares revisions with its peers
	// and asks for what it lacks. Default 1s (local preset: 100ms).
	SyncInterval time.Duration
	// RetryJoinInterval is the pause between join attempts. Default 2s.
	RetryJoinInterval time.Duration
	// Memberlist is the base memberlist configuration: DefaultConfig uses
	// WAN timings, LocalConfig short ones for tests on one machine.
	Memberlist *memberlist.Config
	// Logger receives membership changes and problems.
	Logger *slog.Logger
}

// DefaultConfig returns settings for real sites: WAN timings, which
// tolerate the latency between regions.
func DefaultConfig() Config {
	return Config{Memberlist: memberlist.DefaultWANConfig(), SyncInterval: time.Second}
}

// LocalConfig returns settings for many nodes on one machine (tests):
// short intervals so that convergence takes milliseconds.
func LocalConfig() Config {
	ml := memberlist.DefaultLocalConfig()
	ml.GossipInterval = 20 * time.Millisecond
	ml.ProbeInterval = 200 * time.Millisecond
	ml.PushPullInterval = time.Second
	return Config{Memberlist: ml, SyncInterval: 100 * time.Millisecond, RetryJoinInterval: 100 * time.Millisecond}
}

// ParseKey reads a gossip key given as base64, or as "@path" naming a file
// holding the base64 text.
func ParseKey(s string) ([]byte, error) {
	if path, ok := strings.CutPrefix(s, "@"); ok {
		b, err := os.ReadFile(path)
		if err != nil {
			return nil, fmt.Errorf("reading gossip key: %w", err)
		}
		s = string(b)
	}
	k, err := base64.StdEncoding.DecodeString(strings.TrimSpace(s))
	if err != nil {
		return nil, fmt.Errorf("%w: not base64", ErrBadKey)
	}
	if l := len(k); l != 16 && l != 24 && l != 32 {
		return nil, ErrBadKey
	}
	return k, nil
}

func (c *Config) fill() (*memberlist.Config, error) {
	if c.Name == "" {
		return nil, ErrNoName
	}
	if len(c.Keys) == 0 && !c.Insecure {
		return nil, ErrNoKey
	}
	for _, k := range c.Keys {
		if l := len(k); l != 16 && l != 24 && l != 32 {
			return nil, ErrBadKey
		}
	}
	if c.Deliver == nil {
		c.Deliver = func(uint64, []byte) {}
	}
	if c.Applied == nil {
		c.Applied = func() uint64 { return 0 }
	}
	if c.LogSize <= 0 {
		c.LogSize = 4096
	}
	if c.MaxQueued <= 0 {
		c.MaxQueued = 4096
	}
	if c.SyncInterval <= 0 {
		c.SyncInterval = time.Second
	}
	if c.RetryJoinInterval <= 0 {
		c.RetryJoinInterval = 2 * time.Second
	}
	if c.Logger == nil {
		c.Logger = slog.Default()
	}
	ml := c.Memberlist
	if ml == nil {
		ml = memberlist.DefaultWANConfig()
	}
	copied := *ml
	ml = &copied
	host, portStr, err := net.SplitHostPort(c.BindAddr)
	if err != nil {
		return nil, fmt.Errorf("%w: %q", ErrBadAddr, c.BindAddr)
	}
	port, err := strconv.Atoi(portStr)
	if err != nil || port < 0 || port > 65535 {
		return nil, fmt.Errorf("%w: %q", ErrBadAddr, c.BindAddr)
	}
	ml.Name = c.Name
	ml.BindAddr, ml.BindPort = host, port
	ml.AdvertisePort = port
	if len(c.Keys) > 0 {
		kr, err := memberlist.NewKeyring(c.Keys, c.Keys[0])
		if err != nil {
			return nil, fmt.Errorf("gossip keyring: %w", err)
		}
		ml.Keyring = kr
		ml.GossipVerifyIncoming, ml.GossipVerifyOutgoing = true, true
	}
	ml.LogOutput = nil
	ml.Logger = log.New(slogWriter{c.Logger}, "", 0)
	return ml, nil
}

// slogWriter sends memberlist's own log lines to slog at debug level (its
// warnings about peers come through our delegates at the right level).
type slogWriter struct{ l *slog.Logger }

func (w slogWriter) Write(p []byte) (int, error) {
	w.l.Debug(strings.TrimSpace(string(p)), "component", "memberlist")
	return len(p), nil
}
