package e2e

import (
	"bytes"
	"encoding/base64"
	"encoding/json"
	"fmt"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/keymesh/keymesh/apikey"
	"github.com/keymesh/keymesh/cluster"
	"github.com/keymesh/keymesh/edge"
	"github.com/keymesh/keymesh/event"
	"github.com/keymesh/keymesh/internal/natsauth"
	"github.com/keymesh/keymesh/internal/netcut"
	"github.com/keymesh/keymesh/internal/testutil"
)

var gossipKey = bytes.Repeat([]byte{42}, 32)

// gossipOpts change how gossipEdges starts its edges.
type gossipOpts struct {
	staleness time.Duration // default one minute: out of the way
	// configure, if set, adjusts edge i's Config last.
	configure func(i int, c *edge.Config)
}

// gossipEdges starts n edges, each behind its own NATS relay, all joined
// into one gossip ring.
func (s *stack) gossipEdges(n int) ([]*edge.Node, []*relay) {
	return s.gossipEdgesWith(n, gossipOpts{})
}

func (s *stack) gossipEdgesWith(n int, o gossipOpts) ([]*edge.Node, []*relay) {
	t := s.t
	if o.staleness == 0 {
		o.staleness = time.Minute
	}
	// The gossip key is a secret like any other: in no log, metric or record.
	s.secrets = append(s.secrets, string(gossipKey), base64.StdEncoding.EncodeToString(gossipKey))
	var edges []*edge.Node
	var links []*relay
	seed := ""
	for i := range n {
		link := newRelay(t, s.nats.Addr().String())
		var join []string
		if seed != "" {
			join = []string{seed}
		}
		e := s.startEdge(edgeOpts{natsURL: link.URL(), staleness: o.staleness, configure: func(c *edge.Config) {
			c.Gossip = edge.GossipConfig{Listen: "127.0.0.1:0", Keys: [][]byte{gossipKey}, Local: true,
				Name: fmt.Sprintf("edge-%02d", i), Join: join}
			c.MaxKeys = leanMaxKeys
			if o.configure != nil {
				o.configure(i, c)
			}
		}})
		if seed == "" {
			seed = e.GossipAddr()
		}
		edges = append(edges, e)
		links = append(links, link)
	}
	waitPeers(t, 20*time.Second, n-1, edges...)
	return edges, links
}

// waitPeers waits until each edge sees want peers.
func waitPeers(t testing.TB, d time.Duration, want int, edges ...*edge.Node) {
	t.Helper()
	testutil.CheckFor(t, d, 0, func() error {
		for _, e := range edges {
			if p := len(e.Peers()); p != want {
				return fmt.Errorf("edge %s sees %d peers, want %d", e.ID(), p, want)
			}
		}
		return nil
	})
}

// everyEdge polls until every edge answers the key with status, and
// returns how long after start the slowest did.
func everyEdge(t testing.TB, edges []*edge.Node, key string, status int, start time.Time) time.Duration {
	t.Helper()
	var mu sync.Mutex
	done := make([]bool, len(edges))
	var slowest time.Duration
	testutil.CheckFor(t, 20*time.Second, 0, func() error {
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
// relink reach every edge by gossip alone; peers with NATS relay the
// cut edges' heartbeats, so ?wait= covers them; when NATS returns, nothing
// is lost or applied twice.
func TestGossipCarriesChangesPastCutNATSLinks(t *testing.T) {
	s := newStack(t)
	d := s.deployment("demo", nil)
	k := s.key(d.ID)
	edges, links := s.gossipEdges(16)
	everyEdge(t, edges, k.Secret, 200, time.Now()) // every edge has the key cached
	startRev, startApplied := make([]uint64, len(edges)), make([]uint64, len(edges))
	for i, e := range edges {
		startRev[i], startApplied[i] = e.View().AppliedRevision(), e.View().Stats().Applied
	}

	for _, l := range links[4:] {
		l.Cut()
	}
	testutil.CheckFor(t, 20*time.Second, 0, func() error {
		reg := s.edgeRegistry()
		for _, e := range edges[4:] {
			if r := reg[e.ID()]; r.RelayedBy == "" || !r.Live {
				return errorf("cut edge %s registered as %+v", e.ID(), r)
			}
		}
		return nil
	})

	path := "/v1/projects/" + project + "/deployments/" + d.ID + "/keys/" + k.ID
	start := time.Now()
	s.call(http.MethodDelete, path, nil, nil)
	took := everyEdge(t, edges, k.Secret, 401, start)
	// How fast is measured, not asserted here: the 2 s target is
	// BenchmarkPropagation16Edges' and bench propagation --cut-nats'.
	t.Logf("unlink refused at all 16 edges after %v", took)

	start = time.Now()
	rev := s.call(http.MethodPut, path, nil, nil)
	took = everyEdge(t, edges, k.Secret, 200, start)
	t.Logf("relink accepted at all 16 edges after %v", took)
	waitApplied(t, rev, edges...)

	// ?wait= covers the edges that only gossip: their relays report them.
	var rep propagationReport
	s.call(http.MethodPatch, "/v1/projects/"+project+"/keys/"+k.ID+"?wait=2s", map[string]any{"name": "waited"}, &rep)
	if rep.Propagation == nil || len(rep.Propagation.Applied) != len(edges) || len(rep.Propagation.Pending) != 0 {
		t.Errorf("?wait=2s with 12 edges on gossip only: %+v", rep.Propagation)
	}

	for _, l := range links[4:] {
		l.Heal()
	}
	testutil.CheckFor(t, 20*time.Second, 0, func() error {
		for _, e := range edges {
			if !statusOf(t, e).NATSConnected {
				return errorf("edge %s not back on NATS", e.ID())
			}
		}
		return nil
	})
	rev = s.call(http.MethodPatch, "/v1/projects/"+project+"/keys/"+k.ID, map[string]any{"name": "after"}, nil)
	waitApplied(t, rev, edges...)
	for i, e := range edges {
		st := e.View().Stats()
		revs := e.View().AppliedRevision() - startRev[i]
		if st.Resyncs != 1 || st.Applied-startApplied[i] != revs {
			t.Errorf("edge %d: %d resyncs, %d records applied for %d revisions", i, st.Resyncs, st.Applied-startApplied[i], revs)
		}
		if _, held := e.GossipStats(); held != 0 {
			t.Errorf("edge %d dropped %d held records", i, held)
		}
	}
}

// An edge whose NATS link is cut keeps up through its peers: with the
// default configuration's proportions (--max-staleness 10× the origin's
// heartbeat interval; here 1s and 100ms), the origin's heartbeats reach it
// by gossip, so it stays current and serves cached keys without
// re-validating them, well past the staleness bound. A miss it cannot ask
// the origin about is answered by a peer holding the signed record; a
// forged answer is refused. Its cluster view shows on /status and
// /metrics.
func TestGossipOnlyEdge(t *testing.T) {
	const staleness = time.Second
	s := newStack(t)
	d := s.deployment("demo", nil)
	k := s.key(d.ID)
	elsewhere := s.key(d.ID) // used only through edge 0 before the cut
	edges, links := s.gossipEdgesWith(3, gossipOpts{staleness: staleness})
	everyEdge(t, edges, k.Secret, 200, time.Now())
	expect(t, edges[0], withKey(elsewhere), 200, "")
	cut := edges[2]
	links[2].Cut()
	testutil.CheckFor(t, 10*time.Second, 0, func() error {
		if statusOf(t, cut).NATSConnected {
			return errorf("still connected")
		}
		return nil
	})

	before := cut.View().Stats().Revalidations
	since := time.Now()
	testutil.CheckFor(t, 30*time.Second, 0, func() error {
		if ok, at := cut.View().Current(); !ok {
			t.Fatalf("the cut edge went stale %v after the cut (last proof %v ago)", time.Since(since), time.Since(at))
		}
		if st, body := chat(t, cut, withKey(k)); st != 200 {
			t.Fatalf("the cut edge answered %d: %s", st, body)
		}
		if time.Since(since) < 3*staleness {
			return errorf("not past the staleness bound yet")
		}
		return nil
	})
	if n := cut.View().Stats().Revalidations - before; n != 0 {
		t.Fatalf("the cut edge re-validated %d times: it could not prove it was current", n)
	}

	// A key only edge 0 has looked up: the cut edge asks its peers.
	expect(t, cut, withKey(elsewhere), 200, "")
	cs := statusOf(t, cut)
	if cs.Gossip.PeerAnswers == 0 {
		t.Fatalf("authorized without a peer's answer: %+v", cs.Gossip)
	}

	// A rogue member answers every ask with a forged record for an unseen
	// key: refused and counted, the request gets 503 (nobody could prove
	// anything), never 200.
	unseen := s.key(d.ID)
	rogue := startRogue(t, s, edges[0].GossipAddr(), func(key []byte) []byte {
		if len(key) != 32 {
			return nil
		}
		return forgedKeyRecord(t, apikey.Hash(key), unseen.ID, d.ID, 1_000_000)
	})
	defer rogue.Shutdown()
	waitPeers(t, 10*time.Second, 3, edges...)
	waitApplied(t, s.origin.Revision(), edges...)
	expect(t, cut, withKey(unseen), http.StatusServiceUnavailable, "UNAVAILABLE")
	if cs := statusOf(t, cut); cs.Gossip.Stats.AnswersRefused == 0 {
		t.Fatalf("forged answer not counted: %+v", cs.Gossip.Stats)
	}

	// A revocation reaches the cut edge by gossip, and a peer's answer
	// cannot bring the key back.
	rev := s.call(http.MethodDelete, "/v1/projects/"+project+"/deployments/"+d.ID+"/keys/"+elsewhere.ID, nil, nil)
	waitApplied(t, rev, edges...)
	expect(t, cut, withKey(elsewhere), 401, "AUTHENTICATION_FAILED")

	// The cluster view: members, peers with what they say of themselves,
	// the relay publishing the cut edge's heartbeats.
	var relaying []string
	for _, e := range edges[:2] {
		relaying = append(relaying, statusOf(t, e).Gossip.Relaying...)
	}
	if len(relaying) != 1 || relaying[0] != "edge-02" {
		t.Errorf("relays: %v, want edge-02 relayed once", relaying)
	}
	testutil.CheckFor(t, 10*time.Second, 0, func() error { // peers advertise within a SyncInterval
		cs := statusOf(t, cut)
		if cs.Gossip.Members != 4 || len(cs.Gossip.Peers) != 3 {
			return errorf("cut edge's cluster view: %+v", cs.Gossip)
		}
		for _, p := range cs.Gossip.Peers {
			if p.Name == "rogue" {
				continue
			}
			if p.ID == "" || !p.NATSConnected || p.AppliedRevision != rev || p.Lag != 0 {
				return errorf("peer as the cut edge sees it: %+v", p)
			}
		}
		return nil
	})
	m := scrape(t, cut, "/metrics")
	for _, want := range []string{
		`keymesh_edge_gossip_members 4`,
		`keymesh_edge_gossip_behind_revisions 0`,
		`keymesh_edge_gossip_peer_lag_revisions{peer="edge-00"} 0`,
		`keymesh_edge_gossip_rejected_total{kind="lookup_answer"} `,
		`keymesh_edge_gossip_dropped_total{queue="inbox"} 0`,
		`keymesh_edge_gossip_catch_ups_total{result="asked"}`,
		`keymesh_edge_gossip_heartbeats_total{dir="new"}`,
	} {
		if !strings.Contains(m, want) {
			t.Errorf("metrics lack %s", want)
		}
	}
	for _, zero := range []string{`keymesh_edge_gossip_rejected_total{kind="lookup_answer"} 0`,
		`keymesh_edge_gossip_peer_lookups_total{result="answered"} 0`, `keymesh_edge_gossip_heartbeats_total{dir="new"} 0`} {
		if strings.Contains(m, zero+"\n") {
			t.Errorf("metrics show %s", zero)
		}
	}
}

// An edge partitioned from everything (NATS and gossip) long enough that
// its peers declare it dead and stop gossiping to it rejoins once the
// gossip link heals — its NATS link still cut — converges to the latest
// revision, and refuses a key revoked while it was away.
func TestPartitionedEdgeRejoins(t *testing.T) {
	s := newStack(t)
	d := s.deployment("demo", nil)
	k := s.key(d.ID)
	tr, err := netcut.New()
	if err != nil {
		t.Fatal(err)
	}
	edges, links := s.gossipEdgesWith(3, gossipOpts{configure: func(i int, c *edge.Config) {
		if i == 2 {
			c.Gossip.Configure = func(cc *cluster.Config) { cc.Transport, cc.BindAddr = tr, tr.Addr() }
		}
	}})
	everyEdge(t, edges, k.Secret, 200, time.Now())
	away := edges[2]
	links[2].Cut()
	tr.Cut()
	waitPeers(t, 20*time.Second, 1, edges[:2]...)
	waitPeers(t, 20*time.Second, 0, away)
	rev := s.call(http.MethodDelete, "/v1/projects/"+project+"/deployments/"+d.ID+"/keys/"+k.ID, nil, nil)
	everyEdge(t, edges[:2], k.Secret, 401, time.Now())
	// Memberlist gossips to dead nodes for a while, which would heal a
	// short partition by itself: outlast that.
	deadline := time.Now().Add(cluster.LocalConfig().Memberlist.GossipToTheDeadTime)
	testutil.CheckFor(t, 20*time.Second, 0, func() error {
		if time.Now().Before(deadline) {
			return errorf("partition not old enough yet")
		}
		return nil
	})
	if away.View().AppliedRevision() >= rev {
		t.Fatal("the partitioned edge heard of the unlink")
	}

	tr.Heal()
	waitPeers(t, 20*time.Second, 2, edges...)
	testutil.CheckFor(t, 20*time.Second, 0, func() error {
		if got, want := away.View().AppliedRevision(), s.origin.Revision(); got != want {
			return errorf("rejoined edge at %d, origin at %d", got, want)
		}
		return nil
	})
	for range 20 {
		expect(t, away, withKey(k), 401, "AUTHENTICATION_FAILED")
	}
}

// startRogue joins a memberlist node that knows the gossip key but not the
// origin's signing key; answer, if set, answers peers' lookups.
func startRogue(t testing.TB, s *stack, join string, answer func([]byte) []byte) *cluster.Cluster {
	t.Helper()
	cfg := cluster.LocalConfig()
	cfg.Name, cfg.BindAddr, cfg.Keys, cfg.Join = "rogue", "127.0.0.1:0", [][]byte{gossipKey}, []string{join}
	cfg.Answer = answer
	cfg.Logger = s.logs.logger()
	rogue, err := cluster.Create(cfg)
	if err != nil {
		t.Fatal(err)
	}
	return rogue
}

// forgedKeyRecord is a key record linking secret h to deployment dep at
// rev, signed by a key that is not the origin's.
func forgedKeyRecord(t testing.TB, h apikey.Hash, keyID, dep string, rev uint64) []byte {
	priv, _ := event.GenerateKey()
	forger, _ := event.NewSigner(priv)
	wire, err := forger.Seal(&event.Record{Revision: rev, Kind: event.KindKey, Key: &event.Key{
		ID: keyID, Project: project, Secrets: []event.Secret{{Hash: h}}, Permissions: event.DefaultPermissions,
		Deployments: []string{dep}}})
	if err != nil {
		t.Fatal(err)
	}
	return wire
}

// edgeStatus is the part of an edge's /status the gossip tests read.
type edgeStatus struct {
	NATSConnected bool `json:"nats_connected"`
	Current       bool `json:"current"`
	Gossip        struct {
		Members  int      `json:"members"`
		Relaying []string `json:"relaying"`
		Peers    []struct {
			Name            string `json:"name"`
			ID              string `json:"id"`
			AppliedRevision uint64 `json:"applied_revision"`
			Lag             int64  `json:"lag"`
			NATSConnected   bool   `json:"nats_connected"`
		} `json:"peers"`
		PeerAnswers uint64        `json:"peer_answers"`
		Stats       cluster.Stats `json:"stats"`
	} `json:"gossip"`
}

func scrape(t testing.TB, e *edge.Node, path string) string {
	t.Helper()
	rec := httptest.NewRecorder()
	e.AdminHandler().ServeHTTP(rec, httptest.NewRequest(http.MethodGet, path, nil))
	if rec.Code != 200 {
		t.Fatalf("%s: %d", path, rec.Code)
	}
	return rec.Body.String()
}

func statusOf(t testing.TB, e *edge.Node) edgeStatus {
	t.Helper()
	var st edgeStatus
	if err := json.Unmarshal([]byte(scrape(t, e, "/status")), &st); err != nil {
		t.Fatal(err)
	}
	return st
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
	rogue := startRogue(t, s, edges[0].GossipAddr(), nil)
	defer rogue.Shutdown()
	h, err := apikey.ParseString(k.Secret)
	if err != nil {
		t.Fatal(err)
	}
	next := edges[0].View().AppliedRevision() + 1
	rogue.Record(next, forgedKeyRecord(t, h, k.ID, d.ID, next))
	// The rogue's few transmissions reach some edges; edges pass on only
	// what they have verified, so the forgery travels no further.
	testutil.CheckFor(t, 20*time.Second, 0, func() error {
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
	cfg := edge.DefaultConfig()
	cfg.Listen, cfg.AdminListen, cfg.DataDir = "127.0.0.1:0", "", ""
	cfg.NATSURL = s.nats.ClientURL()
	cfg.NATSCreds = s.natsCreds(natsauth.RoleEdge, "gossip-edge")
	cfg.OriginPublicKey = s.origin.PublicKey()
	cfg.Gossip = edge.GossipConfig{Listen: "127.0.0.1:0", Join: []string{"127.0.0.1:1"}}
	if _, err := edge.New(cfg); err == nil {
		t.Fatal("an edge joined gossip in plaintext without --gossip-insecure")
	}
}
