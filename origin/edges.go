package origin

import (
	"context"
	"encoding/json"
	"log/slog"
	"net/http"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nkeys"

	"github.com/keymesh/keymesh/api"
	"github.com/keymesh/keymesh/event"
	"github.com/keymesh/keymesh/internal/natsauth"
)

// Edge is one edge as the registry last heard of it. GET /v1/edges answers
// it as an api.Edge (edgeAnswer), without the registry's own state.
type Edge struct {
	ID              string
	Site            string
	Address         string
	AppliedRevision uint64
	LastSeen        time.Time
	Live            bool
	// RelayedBy names the edge whose heartbeat last brought this one's,
	// when this edge reaches NATS only through gossip peers ("" when it
	// reported itself).
	RelayedBy string

	// warmUntil, for an edge restored from the store and not heard from
	// since, is when it stops counting as live (see edgeRegistry.restore).
	warmUntil time.Time
	// savedSeen is the LastSeen last handed to the flusher.
	savedSeen time.Time
	// nkey is the public key the edge's own heartbeats last gave for its
	// signed presences ("" until it reports directly: relays for it are
	// dropped); presenceMS is the time of the last relayed presence
	// accepted, or of its last own heartbeat (older ones are replays). In
	// memory only.
	nkey       string
	presenceMS int64
	// left is set by the edge's own leaving heartbeat (a graceful
	// shutdown): it is not live until it reports again itself. In memory
	// only.
	left bool
}

// edgeHeartbeat is the JSON an edge publishes on event.EdgeHeartbeatSubject
// (see edge/heartbeat.go). An edge's own heartbeat is vouched for by the
// subject; a relayed one by the edge's signed presence.
type edgeHeartbeat struct {
	ID              string `json:"id"`
	Site            string `json:"site"`
	Address         string `json:"address"`
	AppliedRevision uint64 `json:"applied_revision"`
	// NKey, on an edge's own heartbeat, is the public key it signs its
	// presences with.
	NKey string `json:"nkey,omitempty"`
	// RelayedBy is set when a gossip peer publishes the heartbeat on behalf
	// of an edge cut off from NATS (from what that edge gossips); Presence
	// is then that edge's signature over (ID, AppliedRevision, time).
	RelayedBy string `json:"relayed_by,omitempty"`
	Presence  *struct {
		TimeMS int64  `json:"time_ms"`
		Sig    []byte `json:"sig"`
	} `json:"presence,omitempty"`
	// Leaving, on an edge's own heartbeat, says it is shutting down.
	Leaving bool `json:"leaving,omitempty"`
}

// presenceFuture is how far ahead of this origin's clock a relayed
// presence may be signed (clock skew).
const presenceFuture = 5 * time.Second

const maxHeartbeatBytes = 4 << 10

// edgeRegistry is this replica's view of the edges, fed by their heartbeats.
// It is bounded: over maxEdges, heartbeats of unknown edges are ignored and
// counted. Edges silent longer than liveness are not live; longer than
// forget, they are dropped.
//
// It survives a restart: changes are handed to a flusher (takeDirty: an
// edge's row is rewritten when what it reports changes, or every saveEvery
// while it reports the same) that writes them to the store in one
// transaction per flush, and a starting
// origin restores them (restore) before it listens to heartbeats. An edge
// that was live before the restart is live, and pending for any new
// revision, until it reports or liveness passes: ?wait right after a
// restart waits for it instead of answering that no edge exists.
type edgeRegistry struct {
	now      func() time.Time
	liveness time.Duration
	forget   time.Duration
	maxEdges int

	mu      sync.Mutex
	edges   map[string]*Edge
	changed chan struct{} // closed and replaced on every heartbeat
	dirty   map[string]struct{}

	flushStop chan struct{} // closed by stopFlusher
	flushDone chan struct{} // closed when the flusher has written its last batch

	ignored  atomic.Uint64 // heartbeats from new edges over maxEdges
	rejected atomic.Uint64 // heartbeats that could not be read
}

func newEdgeRegistry(now func() time.Time, liveness time.Duration, maxEdges int) *edgeRegistry {
	return &edgeRegistry{now: now, liveness: liveness, forget: 10 * liveness, maxEdges: maxEdges,
		edges: map[string]*Edge{}, changed: make(chan struct{}), dirty: map[string]struct{}{}}
}

// saveEvery is how stale a stored last_seen may get while an edge keeps
// reporting the same thing: heartbeats in between are not written.
func (r *edgeRegistry) saveEvery() time.Duration { return r.liveness / 4 }

// expiresLocked is when e stops being live; the zero time for an edge that
// left.
func (r *edgeRegistry) expiresLocked(e *Edge) time.Time {
	if e.left {
		return time.Time{}
	}
	exp := e.LastSeen.Add(r.liveness)
	if e.warmUntil.After(exp) {
		exp = e.warmUntil
	}
	return exp
}

// restore adds edges read from the store (newest first, as loadEdges
// returns them) that the registry does not know yet. Those last seen within
// liveness (plus the store's lag, see saveEvery and edgeFlushInterval) of
// the newest one were live when the registry was last written: they stay
// live until liveness passes from now or they report, so a ?wait counts
// them as pending meanwhile. It returns how many are warming up.
func (r *edgeRegistry) restore(edges []Edge) int {
	if len(edges) == 0 {
		return 0
	}
	now := r.now()
	newest := edges[0].LastSeen
	for _, e := range edges {
		if e.LastSeen.After(newest) {
			newest = e.LastSeen
		}
	}
	lag := r.liveness + r.saveEvery() + r.flushInterval()
	warm := 0
	r.mu.Lock()
	defer r.mu.Unlock()
	for _, e := range edges {
		if _, ok := r.edges[e.ID]; ok || len(r.edges) >= r.maxEdges || e.ID == "" {
			continue
		}
		c := e
		c.Live, c.savedSeen = false, e.LastSeen
		if newest.Sub(e.LastSeen) <= lag {
			c.warmUntil = now.Add(r.liveness)
			warm++
		}
		r.edges[c.ID] = &c
	}
	close(r.changed)
	r.changed = make(chan struct{})
	return warm
}

// flushInterval is how often the flusher writes changed edges.
func (r *edgeRegistry) flushInterval() time.Duration { return min(edgeFlushInterval, r.liveness/2) }

const edgeFlushInterval = time.Second

// takeDirty returns copies of the edges changed since the last call.
func (r *edgeRegistry) takeDirty() []Edge {
	r.mu.Lock()
	defer r.mu.Unlock()
	out := make([]Edge, 0, len(r.dirty))
	for id := range r.dirty {
		if e, ok := r.edges[id]; ok {
			e.savedSeen = e.LastSeen
			out = append(out, *e)
		}
		delete(r.dirty, id)
	}
	return out
}

// heartbeat records one edge heartbeat (raw JSON) that arrived on edge
// from's own subject, and wakes waiters. The subject is the identity (NATS
// credentials let an edge publish on its own only): a heartbeat naming
// another edge is dropped, unless it relays (RelayedBy == from) for a peer
// already registered, so a relay never creates an edge. A relay speaks for
// the peer only through the peer's signed presence: it must verify with the
// key the peer's own heartbeats gave, over exactly (id, applied revision,
// time), be signed within liveness (and at most presenceFuture ahead), and
// be no older than the last one accepted; else it is dropped (rejected).
//
// An edge's own heartbeat marked leaving (its Shutdown) takes it out of the
// live set at once and wakes waiters, so a ?wait stops waiting for it; only
// its own next heartbeat brings it back, never a relay.
func (r *edgeRegistry) heartbeat(from string, data []byte) {
	var hb edgeHeartbeat
	if len(data) > maxHeartbeatBytes || json.Unmarshal(data, &hb) != nil || hb.ID == "" ||
		len(hb.ID) > 256 || len(hb.Site) > 256 || len(hb.Address) > 256 || len(hb.RelayedBy) > 256 ||
		hb.ID == from && hb.RelayedBy != "" || hb.ID != from && hb.RelayedBy != from ||
		hb.Leaving && hb.RelayedBy != "" {
		r.rejected.Add(1)
		return
	}
	now := r.now()
	r.mu.Lock()
	defer r.mu.Unlock()
	e, ok := r.edges[hb.ID]
	if hb.RelayedBy != "" && (!ok || e.left || !r.presenceOKLocked(e, &hb, now)) {
		r.rejected.Add(1)
		return
	}
	if hb.Leaving {
		if ok && !e.left {
			// Relayed presences signed before now are older than the
			// leaving: replays.
			e.left, e.warmUntil, e.presenceMS = true, time.Time{}, now.UnixMilli()
			close(r.changed)
			r.changed = make(chan struct{})
		}
		return
	}
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
	live := ok && !now.After(r.expiresLocked(e))
	before := *e
	e.Site, e.Address, e.LastSeen, e.RelayedBy, e.warmUntil, e.left = hb.Site, hb.Address, now, hb.RelayedBy, time.Time{}, false
	if hb.RelayedBy == "" {
		// Presences signed before the edge's own latest heartbeat are
		// older than what it said there: replays.
		e.nkey, e.presenceMS = "", now.UnixMilli()
		if nkeys.IsValidPublicUserKey(hb.NKey) {
			e.nkey = hb.NKey
		}
	} else {
		e.presenceMS = hb.Presence.TimeMS
		// Live from when it signed, not from when a relay passed it on.
		if at := time.UnixMilli(hb.Presence.TimeMS); at.Before(now) {
			e.LastSeen = at
			if before.LastSeen.After(at) {
				e.LastSeen = before.LastSeen
			}
		}
	}
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
	if !ok || e.Site != before.Site || e.Address != before.Address || e.RelayedBy != before.RelayedBy ||
		e.AppliedRevision != before.AppliedRevision || now.Sub(e.savedSeen) >= r.saveEvery() {
		r.dirty[e.ID] = struct{}{}
	}
	close(r.changed)
	r.changed = make(chan struct{})
}

// presenceOKLocked reports whether relayed heartbeat hb carries e's own
// signed presence for the revision it claims, fresh and not a replay.
func (r *edgeRegistry) presenceOKLocked(e *Edge, hb *edgeHeartbeat, now time.Time) bool {
	p := hb.Presence
	if e.nkey == "" || p == nil || p.TimeMS < e.presenceMS {
		return false
	}
	at := time.UnixMilli(p.TimeMS)
	if now.Sub(at) > r.liveness || at.Sub(now) > presenceFuture {
		return false
	}
	return natsauth.VerifyPresence(e.nkey, hb.ID, hb.AppliedRevision, p.TimeMS, p.Sig)
}

func (r *edgeRegistry) pruneLocked(now time.Time) {
	for id, e := range r.edges {
		if now.Sub(e.LastSeen) > r.forget && !e.warmUntil.After(now) {
			delete(r.edges, id)
			delete(r.dirty, id)
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
		c.Live = !now.After(r.expiresLocked(e))
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
		expires := r.expiresLocked(e)
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
func (r *edgeRegistry) wait(ctx context.Context, rev uint64, d time.Duration) *api.Propagation {
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

func newPropagation(applied, pending []string) *api.Propagation {
	slices.Sort(applied)
	slices.Sort(pending)
	return &api.Propagation{Applied: applied, Pending: pending, LiveEdges: len(applied) + len(pending)}
}

// startEdgeRegistry subscribes this replica to every edge heartbeat (no
// queue group: each replica needs the full view).
func (s *Server) startEdgeRegistry() error {
	sub, err := s.nc.Subscribe(event.EdgeHeartbeatSubject+".*", func(m *nats.Msg) {
		if from, ok := event.EdgeFromSubject(event.EdgeHeartbeatSubject, m.Subject); ok {
			s.edges.heartbeat(from, m.Data)
		} else {
			s.edges.rejected.Add(1)
		}
	})
	if err != nil {
		return err
	}
	_ = sub.SetPendingLimits(65536, 16<<20)
	s.subs = append(s.subs, sub)
	return nil
}

// restoreEdges loads the registry the store holds (written by this origin
// before a restart, or by other replicas) and starts the flusher that keeps
// it there. Called before the heartbeat subscription.
func (s *Server) restoreEdges(ctx context.Context) error {
	r := s.edges
	edges, err := s.store.loadEdges(ctx, r.now().Add(-r.forget), r.maxEdges)
	if err != nil {
		return err
	}
	if warm := r.restore(edges); warm > 0 {
		s.log.Info("edge registry restored; edges live before the restart count as pending until they report",
			"edges", len(edges), "warming", warm, "for", r.liveness)
	}
	r.flushStop, r.flushDone = make(chan struct{}), make(chan struct{})
	go r.flusher(s.store, s.log)
	return nil
}

// flusher writes changed edges every flushInterval, and the last ones when
// stopped; every minute it deletes rows older than forget.
func (r *edgeRegistry) flusher(st *Store, log *slog.Logger) {
	defer close(r.flushDone)
	t := time.NewTicker(r.flushInterval())
	defer t.Stop()
	failing := false
	lastForget := time.Now()
	flush := func() {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		batch := r.takeDirty()
		err := st.saveEdges(ctx, batch)
		if err == nil && time.Since(lastForget) > time.Minute {
			lastForget = time.Now()
			err = st.forgetEdges(ctx, r.now().Add(-r.forget))
		}
		switch {
		case err != nil:
			// Put the batch back for the next flush (a newer heartbeat
			// of the same edge is dirty anyway).
			r.mu.Lock()
			for _, e := range batch {
				r.dirty[e.ID] = struct{}{}
			}
			r.mu.Unlock()
			if !failing {
				log.Warn("saving the edge registry failed; retrying (a restart meanwhile forgets recent edges)", "err", err)
			}
			failing = true
		case failing:
			log.Info("saving the edge registry works again")
			failing = false
		}
	}
	for {
		select {
		case <-t.C:
			flush()
		case <-r.flushStop:
			flush()
			return
		}
	}
}

// stopFlusher writes the last changes and stops the flusher (before the
// store closes).
func (r *edgeRegistry) stopFlusher() {
	if r == nil || r.flushStop == nil {
		return
	}
	close(r.flushStop)
	<-r.flushDone
	r.flushStop = nil
}

// Edges returns the edges this replica has heard from, sorted by id.
func (s *Server) Edges() []Edge { return s.edges.list() }

// edgeAnswer is e as GET /v1/edges shows it.
func edgeAnswer(e *Edge) api.Edge {
	return api.Edge{ID: e.ID, Site: e.Site, Address: e.Address, AppliedRevision: e.AppliedRevision,
		LastSeen: e.LastSeen, Live: e.Live, RelayedBy: e.RelayedBy}
}

// edgeAnswers is the answer of GET /v1/edges: every edge in es, [] for none.
func edgeAnswers(es []Edge) []api.Edge {
	out := make([]api.Edge, 0, len(es))
	for i := range es {
		out = append(out, edgeAnswer(&es[i]))
	}
	return out
}

// listEdges serves GET /v1/edges.
func (s *Server) listEdges(c *call) error {
	writeJSON(c.w, http.StatusOK, edgeAnswers(s.edges.list()))
	return nil
}

// maxPropagationWait bounds ?wait (waitParam already refuses more); the response's write
// deadline is extended to cover it.
const maxPropagationWait = 5 * time.Minute

// awaitPropagation holds a mutation's response until every live edge has
// applied rev or d passes (at most maxPropagationWait).
func (s *Server) awaitPropagation(c *call, rev uint64, d time.Duration) *api.Propagation {
	if d > maxPropagationWait {
		d = maxPropagationWait
	}
	if err := http.NewResponseController(c.w).SetWriteDeadline(time.Now().Add(d + 30*time.Second)); err != nil && d > 30*time.Second {
		d = 30 * time.Second // the server's own write timeout must not cut the answer
	}
	return s.edges.wait(c.ctx(), rev, d)
}
