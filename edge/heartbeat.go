package edge

import (
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"time"

	"github.com/nats-io/nkeys"

	"github.com/keymesh/keymesh/event"
	"github.com/keymesh/keymesh/internal/natsauth"
)

// heartbeatCoalesce is how soon after applying new revisions an edge tells
// the origins; revisions applied within it share one heartbeat.
const heartbeatCoalesce = 20 * time.Millisecond

// edgeHeartbeat is what an edge publishes on event.EdgeHeartbeatSubject.
// Its own heartbeats are vouched for by the subject (its NATS credential
// publishes on no other); a relayed one by the peer's signed presence.
type edgeHeartbeat struct {
	ID              string    `json:"id"`
	Site            string    `json:"site"`
	Address         string    `json:"address"`
	AppliedRevision uint64    `json:"applied_revision"`
	Time            time.Time `json:"time"`
	// NKey, on the edge's own heartbeats, is the public key its presences
	// are signed with.
	NKey string `json:"nkey,omitempty"`
	// RelayedBy is set on a heartbeat this edge publishes for a gossip peer
	// whose NATS link is down, from what that peer gossips about itself;
	// Presence is then the peer's signature over (ID, AppliedRevision,
	// Presence.TimeMS).
	RelayedBy string          `json:"relayed_by,omitempty"`
	Presence  *signedPresence `json:"presence,omitempty"`
	// Leaving, on the edge's own last heartbeat (Shutdown), says it is
	// going away: the origins drop it from the live set at once, so a
	// ?wait does not wait for it until its liveness runs out.
	Leaving bool `json:"leaving,omitempty"`
}

// signedPresence is a peer's signed presence as a relayed heartbeat carries it.
type signedPresence struct {
	TimeMS int64  `json:"time_ms"`
	Sig    []byte `json:"sig"`
}

// heartbeater publishes the edge's heartbeats until stopped.
type heartbeater struct {
	stop chan struct{}
	done chan struct{}
}

// ID returns the id this edge reports in heartbeats and audit records.
func (n *Node) ID() string { return n.id }

// startHeartbeat publishes a heartbeat now, every HeartbeatInterval, and
// within heartbeatCoalesce of the applied revision changing; and the same
// for each gossip peer it relays for (see relayed), within
// heartbeatCoalesce of that peer's gossiped revision changing.
func (n *Node) startHeartbeat() {
	hb := &heartbeater{stop: make(chan struct{}), done: make(chan struct{})}
	n.hb = hb
	go func() {
		defer close(hb.done)
		every := time.NewTicker(n.cfg.HeartbeatInterval)
		defer every.Stop()
		// Checking an atomic every 20 ms is what coalescing costs; the View
		// offers no notification of applied revisions.
		check := time.NewTicker(heartbeatCoalesce)
		defer check.Stop()
		sent := n.publishHeartbeat()
		relayed := n.publishRelayed(nil)
		var peersV uint64
		for {
			select {
			case <-hb.stop:
				return
			case <-every.C:
				sent = n.publishHeartbeat()
				relayed = n.publishRelayed(nil)
			case <-check.C:
				if n.view.AppliedRevision() != sent {
					sent = n.publishHeartbeat()
				}
				if v := n.peersVersion(); v != peersV { // what peers advertise changed
					peersV = v
					relayed = n.publishRelayed(relayed)
				}
			}
		}
	}()
}

// publishHeartbeat sends one heartbeat and returns the revision it carried.
func (n *Node) publishHeartbeat() uint64 { return n.sendHeartbeat(false) }

// leaveTimeout bounds how long Shutdown waits for the leaving heartbeat to
// reach the NATS server.
const leaveTimeout = 2 * time.Second

// announceLeaving tells the origins, once heartbeats have stopped, that
// this edge is leaving, and flushes it out before the connection closes.
// Best effort: without it the edge leaves the live set when its liveness
// runs out.
func (n *Node) announceLeaving() {
	if n.hb == nil {
		return
	}
	n.sendHeartbeat(true)
	if err := n.nc.FlushTimeout(leaveTimeout); err != nil {
		n.log.Debug("leaving heartbeat not flushed", "err", err)
	}
}

func (n *Node) sendHeartbeat(leaving bool) uint64 {
	hb := edgeHeartbeat{ID: n.id, Site: n.cfg.Site, Address: n.Addr(),
		AppliedRevision: n.view.AppliedRevision(), Time: time.Now().UTC(), NKey: n.pres.pub, Leaving: leaving}
	if hb.Address == "" {
		hb.Address = n.cfg.Listen
	}
	b, err := json.Marshal(hb)
	if err != nil {
		return hb.AppliedRevision
	}
	if err := n.nc.Publish(event.EdgeSubject(event.EdgeHeartbeatSubject, n.id), b); err != nil {
		n.log.Debug("edge heartbeat not sent", "err", err)
	}
	return hb.AppliedRevision
}

// publishRelayed publishes the heartbeats of the peers this edge relays
// for — all of them when sent is nil, else those whose revision differs
// from sent — and returns what it relays now.
func (n *Node) publishRelayed(sent map[string]uint64) map[string]uint64 {
	peers := n.relayed()
	if len(peers) == 0 {
		return nil
	}
	now := map[string]uint64{}
	for _, p := range peers {
		if len(p.Signature) == 0 { // the origin would drop it
			continue
		}
		now[p.Name] = p.Revision
		if prev, ok := sent[p.Name]; sent != nil && ok && prev == p.Revision {
			continue
		}
		b, err := json.Marshal(edgeHeartbeat{ID: p.ID, Site: p.Site, Address: p.Address,
			AppliedRevision: p.Revision, Time: time.Now().UTC(), RelayedBy: n.id,
			Presence: &signedPresence{TimeMS: p.SignedAt, Sig: p.Signature}})
		if err != nil {
			continue
		}
		// On this edge's own subject: its credentials allow no other, and
		// the origin accepts it only for a peer it already knows.
		if err := n.nc.Publish(event.EdgeSubject(event.EdgeHeartbeatSubject, n.id), b); err != nil {
			n.log.Debug("relayed edge heartbeat not sent", "peer", p.Name, "err", err)
		}
	}
	return now
}

func (n *Node) stopHeartbeat() {
	if n.hb == nil {
		return
	}
	close(n.hb.stop)
	<-n.hb.done
}

// edgeID returns cfg.ID; else an id persisted in <DataDir>/edge-id (created
// at random); else hostname/listen-address when the port is fixed; else
// hostname plus a random suffix.
func edgeID(cfg *Config) (string, error) {
	if cfg.ID != "" {
		if len(cfg.ID) > 200 || strings.ContainsAny(cfg.ID, " \t\r\n") {
			return "", errors.New("edge id: at most 200 characters, no spaces")
		}
		return cfg.ID, nil
	}
	host, _ := os.Hostname()
	if host == "" {
		host = "edge"
	}
	if cfg.DataDir != "" {
		path := filepath.Join(cfg.DataDir, "edge-id")
		b, err := os.ReadFile(path)
		if err == nil {
			if id := strings.TrimSpace(string(b)); id != "" {
				return id, nil
			}
		} else if !errors.Is(err, os.ErrNotExist) {
			return "", fmt.Errorf("reading edge id: %w", err)
		}
		id := host + "-" + randomHex(6)
		if err := os.WriteFile(path, []byte(id+"\n"), 0o600); err != nil {
			return "", fmt.Errorf("writing edge id: %w", err)
		}
		return id, nil
	}
	if _, port, err := net.SplitHostPort(cfg.Listen); err == nil && port != "0" && port != "" {
		return host + "/" + cfg.Listen, nil
	}
	return host + "-" + randomHex(6), nil
}

func randomHex(n int) string {
	b := make([]byte, n)
	_, _ = rand.Read(b)
	return hex.EncodeToString(b)
}

// presence signs this edge's presence (id, applied revision, time) for the
// gossip peers to relay while its NATS link is down (cluster.Config.Sign;
// natsauth.SignPresence), with the nkey of its NATS credential, or a key
// made at start without one. The origin learns the public key from the
// edge's own heartbeats and checks relayed presences against it.
type presence struct {
	kp    nkeys.KeyPair
	pub   string
	id    string
	every time.Duration // how old a signature may get before it is renewed

	mu  sync.Mutex
	rev uint64
	at  int64 // unix ms signed; 0 before the first signature
	sig []byte
}

func newPresence(kp nkeys.KeyPair, id string, heartbeat time.Duration) (*presence, error) {
	if kp == nil {
		var err error
		if kp, err = nkeys.CreateUser(); err != nil {
			return nil, fmt.Errorf("presence key: %w", err)
		}
	}
	pub, err := kp.PublicKey()
	if err != nil {
		return nil, fmt.Errorf("presence key: %w", err)
	}
	return &presence{kp: kp, pub: pub, id: id, every: 2 * heartbeat}, nil
}

// sign returns the presence signed for rev: the last one while rev is the
// same and, when the edge has no NATS (connected false: peers relay it
// then), the signature is younger than every; else a new one. Reusing it
// keeps the node metadata, and so gossip, quiet.
func (p *presence) sign(rev uint64, connected bool) (int64, []byte) {
	p.mu.Lock()
	defer p.mu.Unlock()
	now := time.Now().UnixMilli()
	if p.at != 0 && p.rev == rev && (connected || now-p.at < p.every.Milliseconds()) {
		return p.at, p.sig
	}
	sig, err := natsauth.SignPresence(p.kp, p.id, rev, now)
	if err != nil {
		return 0, nil
	}
	p.rev, p.at, p.sig = rev, now, sig
	return now, sig
}
