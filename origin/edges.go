package origin

import (
	"context"
	"encoding/json"
	"net/http"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/nats-io/nats.go"

	"github.com/keymesh/keymesh/event"
)

// Edge is one edge as the registry last heard of it.
type Edge struct {
	ID              string    `json:"id"`
	Site            string    `json:"site"`
	Address         string    `json:"address"`
	AppliedRevision uint64    `json:"applied_revision"`
	LastSeen        time.Time `json:"last_seen"`
	Live            bool      `json:"live"`
	// RelayedBy names the edge whose heartbeat last brought this one's,
	// when this edge reaches NATS only through gossip peers ("" when it
	// reported itself).
	RelayedBy string `json:"relayed_by,omitempty"`
}

// edgeHeartbeat is the JSON an edge publishes on event.EdgeHeartbeatSubject
// (see proxy/heartbeat.go). Unsigned: it can only delay a ?wait.
type edgeHeartbeat struct {
	ID              string `json:"id"`
	Site            string `json:"site"`
	Address         string `json:"address"`
	AppliedRevision uint64 `json:"applied_revision"`
	// RelayedBy is set when a gossip peer publishes the heartbeat on behalf
	// of an edge cut off from NATS (from what that edge gossips).
	RelayedBy string `json:"relayed_by,omitempty"`
}

const maxHeartbeatBytes = 4 << 10

// edgeRegistry is this replica's view of the edges, fed by their heartbeats.
// It is bounded: over maxEdges, heartbeats of unknown edges are ignored and
// counted. Edges silent longer than liveness are not live; longer than
// forget, they are dropped.
type edgeRegistry struct {
	now      func() time.Time
	liveness time.Duration
	forget   time.Duration
	maxEdges int

	mu      sync.Mutex
	edges   map[string]*Edge
	changed chan struct{} // closed and replaced on every heartbeat

	ignored  atomic.Uint64 // heartbeats from new edges over maxEdges
	rejected atomic.Uint64 // heartbeats that could not be read
}

func newEdgeRegistry(now func() time.Time, liveness time.Duration, maxEdges int) *edgeRegistry {
	return &edgeRegistry{now: now, liveness: liveness, forget: 10 * liveness, maxEdges: maxEdges,
		edges: map[string]*Edge{}, changed: make(chan struct{})}
}

// heartbeat records one edge heartbeat (raw JSON) and wakes waiters.
func (r *edgeRegistry) heartbeat(data []byte) {
	var hb edgeHeartbeat
	if len(data) > maxHeartbeatBytes || json.Unmarshal(data, &hb) != nil || hb.ID == "" ||
		len(hb.ID) > 256 || len(hb.Site) > 256 || len(hb.Address) > 256 || len(hb.RelayedBy) > 256 {
		r.rejected.Add(1)
		return
	}
	now := r.now()
	r.mu.Lock()
	defer r.mu.Unlock()
	e, ok := r.edges[hb.ID]
	if !ok {
		if len(r.edges) >= r.maxEdges {
			r.pruneLocked(now)
		}
		if len(r.edges) >= r.maxEdges {
			r.ignored.Add(1)
			return
		}
		e = &Edge{ID: hb.ID}
		r.edges[hb.ID] = e
	}
	live := ok && now.Sub(e.LastSeen) <= r.liveness
	e.Site, e.Address, e.LastSeen, e.RelayedBy = hb.Site, hb.Address, now, hb.RelayedBy
	switch {
	case hb.RelayedBy == "" || !live:
		// Heartbeats travel over core NATS and may arrive out of order; an
		// edge that restarted without persisted state may legitimately go
		// back, so the latest heartbeat from the edge itself wins.
		e.AppliedRevision = hb.AppliedRevision
	default:
		// Relayed ones come from several peers, each with the revision the
		// edge last gossiped, possibly older than one it reported itself:
		// they only move it forward.
		e.AppliedRevision = max(e.AppliedRevision, hb.AppliedRevision)
	}
	close(r.changed)
	r.changed = make(chan struct{})
}

func (r *edgeRegistry) pruneLocked(now time.Time) {
	for id, e := range r.edges {
		if now.Sub(e.LastSeen) > r.forget {
			delete(r.edges, id)
		}
	}
}

// list returns every known edge, sorted by id, with Live set.
func (r *edgeRegistry) list() []Edge {
	now := r.now()
	r.mu.Lock()
	r.pruneLocked(now)
	out := make([]Edge, 0, len(r.edges))
	for _, e := range r.edges {
		c := *e
		c.Live = now.Sub(e.LastSeen) <= r.liveness
		out = append(out, c)
	}
	r.mu.Unlock()
	slices.SortFunc(out, func(a, b Edge) int { return strings.Compare(a.ID, b.ID) })
	return out
}

// check reports which live edges have applied rev and which have not, the
// channel closed by the next heartbeat, and when the next pending edge stops
// being live (zero if none is pending).
func (r *edgeRegistry) check(rev uint64) (applied, pending []string, changed <-chan struct{}, nextExpiry time.Time) {
	now := r.now()
	applied, pending = []string{}, []string{}
	r.mu.Lock()
	defer r.mu.Unlock()
	for _, e := range r.edges {
		expires := e.LastSeen.Add(r.liveness)
		if now.After(expires) {
			continue
		}
		if e.AppliedRevision >= rev {
			applied = append(applied, e.ID)
			continue
		}
		pending = append(pending, e.ID)
		if nextExpiry.IsZero() || expires.Before(nextExpiry) {
			nextExpiry = expires
		}
	}
	return applied, pending, r.changed, nextExpiry
}

// wait blocks until every live edge has applied rev, d passes or ctx ends,
// and reports the edges that had and had not. It is woken by heartbeats and
// by a pending edge ceasing to be live; it never polls.
func (r *edgeRegistry) wait(ctx context.Context, rev uint64, d time.Duration) *propagation {
	deadline := time.NewTimer(d)
	defer deadline.Stop()
	var expiry *time.Timer
	defer func() {
		if expiry != nil {
			expiry.Stop()
		}
	}()
	for {
		applied, pending, changed, next := r.check(rev)
		if len(pending) == 0 {
			return newPropagation(applied, pending)
		}
		var expired <-chan time.Time
		if !next.IsZero() {
			// r.now may be a test clock; the timer runs on the real one.
			wait := next.Sub(r.now()) + time.Millisecond
			if expiry == nil {
				expiry = time.NewTimer(wait)
			} else {
				expiry.Reset(wait)
			}
			expired = expiry.C
		}
		select {
		case <-changed:
		case <-expired:
		case <-deadline.C:
			applied, pending, _, _ = r.check(rev)
			return newPropagation(applied, pending)
		case <-ctx.Done():
			applied, pending, _, _ = r.check(rev)
			return newPropagation(applied, pending)
		}
	}
}

func newPropagation(applied, pending []string) *propagation {
	slices.Sort(applied)
	slices.Sort(pending)
	return &propagation{Applied: applied, Pending: pending, LiveEdges: len(applied) + len(pending)}
}

// startEdgeRegistry subscribes this replica to every edge heartbeat (no
// queue group: each replica needs the full view).
func (s *Server) startEdgeRegistry() error {
	sub, err := s.nc.Subscribe(event.EdgeHeartbeatSubject, func(m *nats.Msg) { s.edges.heartbeat(m.Data) })
	if err != nil {
		return err
	}
	_ = sub.SetPendingLimits(65536, 16<<20)
	s.subs = append(s.subs, sub)
	return nil
}

// Edges returns the edges this replica has heard from, sorted by id.
func (s *Server) Edges() []Edge { return s.edges.list() }

// listEdges serves GET /v1/edges.
func (s *Server) listEdges(c *call) error {
	writeJSON(c.w, http.StatusOK, s.edges.list())
	return nil
}

// maxPropagationWait bounds ?wait (waitParam already refuses more); the response's write
// deadline is extended to cover it.
const maxPropagationWait = 5 * time.Minute

// awaitPropagation holds a mutation's response until every live edge has
// applied rev or d passes (at most maxPropagationWait).
func (s *Server) awaitPropagation(c *call, rev uint64, d time.Duration) *propagation {
	if d > maxPropagationWait {
		d = maxPropagationWait
	}
	if err := http.NewResponseController(c.w).SetWriteDeadline(time.Now().Add(d + 30*time.Second)); err != nil && d > 30*time.Second {
		d = 30 * time.Second // the server's own write timeout must not cut the answer
	}
	return s.edges.wait(c.ctx(), rev, d)
}
