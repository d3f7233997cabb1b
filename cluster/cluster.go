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
// gossip in the cluster's own rounds (gossip.go: events first, never behind
// memberlist's own messages or limit reports), re-broadcast by each
// receiver, or directly over TCP when it is too large for a gossip packet; each node hands an event to Deliver at most once
// per revision. The origin's signed heartbeats travel the same way
// (RecordHeartbeat / DeliverHeartbeat), so that an edge cut off from NATS can
// still prove it is current. Edges' limit reports (RecordLimits /
// DeliverLimits) travel too, unsigned: one queued per origin edge, relayed
// once by each receiver (limits.go).
//
// Anti-entropy: each node's applied revision travels in its node metadata,
// with what the edge tells its peers about itself (Info: id, site, address,
// whether it reaches NATS). A node that stays behind a peer for a whole
// SyncInterval first asks its own source (Config.Fetch: JetStream), and
// failing that asks up to CatchUpPeers peers that are ahead, over TCP, for
// what their bounded logs of recent events hold. Peers whose answers do not
// move the applied revision forward (silent, forged, or useless) are backed
// off and others asked instead, so a peer advertising a revision it cannot
// deliver delays nothing.
//
// Membership heals itself: while a peer this node knew has failed (not
// left), or no peer is known, the node joins again every RetryJoinInterval,
// using Config.Join and the last addresses of the failed peers, so that both
// sides of a healed partition find each other. Two nodes with one name are
// detected (a node whose own name is taken refuses to start, or leaves the
// ring when it learns so later); peers can also ask each other for one
// sealed record (Ask), which the edge uses on a cache miss the origin cannot
// answer.
//
// All queues are bounded and count what they drop.
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

// Errors returned by Create and Ask.
var (
	ErrNoKey   = errors.New("cluster: gossip needs an encryption key (or Insecure)")
	ErrBadKey  = errors.New("cluster: gossip key must be 16, 24 or 32 bytes")
	ErrNoName  = errors.New("cluster: node name is required")
	ErrBadAddr = errors.New("cluster: bind address must be host:port")
	// ErrNameConflict: another live node already uses this node's name.
	ErrNameConflict = errors.New("cluster: another node already uses this name")
	// ErrNoAnswer: no peer answered an Ask with something accepted in time.
	ErrNoAnswer = errors.New("cluster: no peer answered")
	// ErrShutdown: the node has stopped.
	ErrShutdown = errors.New("cluster: node is shut down")
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
	// from a peer, once per revision. It must not block for long. The
	// consumer verifies it and, if it is genuine, calls Record so that it
	// travels on. Nil: events are dropped.
	Deliver func(rev uint64, wire []byte)
	// DeliverHeartbeat receives each sealed origin heartbeat a peer passes
	// on. The consumer verifies it and, if it is genuine and newer than
	// any it has seen, calls RecordHeartbeat. Nil: heartbeats are dropped.
	DeliverHeartbeat func(wire []byte)
	// DeliverLimits receives each edge limit report a peer passes on
	// (RecordLimits' opaque bytes), once per report; the cluster relays it
	// itself, so the consumer must only ever let it raise counts. It must
	// not block for long nor keep or modify wire. Nil: reports are dropped.
	DeliverLimits func(wire []byte)
	// Applied reports this node's applied revision; it travels in the
	// node's metadata so that peers can tell who is behind. Nil: always 0.
	Applied func() uint64
	// Info reports what peers learn about this node besides its revision
	// (node metadata, read every SyncInterval). Nil: nothing.
	Info func() Info
	// Sign, if set, signs this node's presence at applied revision rev (the
	// value Applied just returned): it returns the time signed (unix ms)
	// and the signature, which travel with Info in the node metadata
	// (Info.SignedAt, Info.Signature) when Info's strings fit. It is called
	// every SyncInterval: it should return the same signature until rev
	// changes or the signature needs refreshing, or the metadata changes
	// every time. Nil: presences are not signed.
	Sign func(rev uint64) (unixMS int64, sig []byte)
	// Fetch, if set, is this node's own source of missed events (the edge:
	// JetStream). When the node is behind a peer it calls Fetch(from, to)
	// first and asks peers only if that fails or does not help.
	Fetch func(from, to uint64) error
	// Answer, if set, answers a peer's Ask for key with a sealed record, or
	// nil when it holds none. It must not block for long. Nil: this node
	// answers no Ask.
	Answer func(key []byte) []byte
	// LogSize is how many recent events the node keeps to answer peers
	// catching up. Default 4096.
	LogSize int
	// MaxQueued bounds each gossip queue (events and heartbeats; limit
	// reports). Default 4096 messages.
	MaxQueued int
	// SyncInterval is how often the node advertises its revision and
	// compares it with its peers'. Default 1s (local preset: 100ms).
	SyncInterval time.Duration
	// CatchUpPeers is how many peers that are ahead are asked at once for
	// missed events. Default 2.
	CatchUpPeers int
	// RetryJoinInterval is the pause between join attempts, at start and
	// whenever a known peer has failed. Default 2s.
	RetryJoinInterval time.Duration
	// ReconnectTimeout is how long a failed peer's address is kept to join
	// again. Default 24h.
	ReconnectTimeout time.Duration
	// StartJoinTimeout bounds how long Create waits for its first join
	// attempt (a name conflict found then makes Create fail). Default 5s;
	// negative: Create does not wait.
	StartJoinTimeout time.Duration
	// Memberlist is the base memberlist configuration: DefaultConfig uses
	// WAN timings, LANConfig LAN ones, LocalConfig short ones for tests on
	// one machine.
	Memberlist *memberlist.Config
	// Transport, if set, carries memberlist's packets and streams instead
	// of sockets bound to BindAddr (tests use it to cut links).
	Transport memberlist.Transport
	// Logger receives membership changes and problems.
	Logger *slog.Logger
}

// DefaultConfig returns settings for real sites: WAN timings, which
// tolerate the latency between regions.
func DefaultConfig() Config {
	return Config{Memberlist: memberlist.DefaultWANConfig(), SyncInterval: time.Second}
}

// LANConfig returns settings for edges of one site on one network.
func LANConfig() Config {
	return Config{Memberlist: memberlist.DefaultLANConfig(), SyncInterval: 500 * time.Millisecond,
		RetryJoinInterval: time.Second}
}

// LocalConfig returns settings for many nodes on one machine (tests):
// short intervals so that convergence takes milliseconds, and a failed
// node is declared dead within a second or two.
func LocalConfig() Config {
	ml := memberlist.DefaultLocalConfig()
	ml.GossipInterval = 20 * time.Millisecond
	ml.ProbeInterval = 200 * time.Millisecond
	ml.PushPullInterval = time.Second
	// Memberlist keeps gossiping to a dead node for this long, which heals
	// short partitions by itself; past it, only the rejoin loop does.
	ml.GossipToTheDeadTime = time.Second
	// Loopback has bandwidth to spare; compressing every packet costs CPU
	// that many nodes on one machine do not.
	ml.EnableCompression = false
	return Config{Memberlist: ml, SyncInterval: 100 * time.Millisecond, RetryJoinInterval: 100 * time.Millisecond,
		StartJoinTimeout: 2 * time.Second}
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
	if c.DeliverHeartbeat == nil {
		c.DeliverHeartbeat = func([]byte) {}
	}
	if c.DeliverLimits == nil {
		c.DeliverLimits = func([]byte) {}
	}
	if c.Applied == nil {
		c.Applied = func() uint64 { return 0 }
	}
	if c.Info == nil {
		c.Info = func() Info { return Info{} }
	}
	if c.CatchUpPeers <= 0 {
		c.CatchUpPeers = 2
	}
	if c.ReconnectTimeout <= 0 {
		c.ReconnectTimeout = 24 * time.Hour
	}
	if c.StartJoinTimeout == 0 {
		c.StartJoinTimeout = 5 * time.Second
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
	if c.Transport != nil {
		ml.Transport = c.Transport // it advertises the address it is bound to
	}
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
