package e2e

import (
	"context"
	"encoding/json"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/keymesh/keymesh/edge"
	"github.com/keymesh/keymesh/event"
	"github.com/keymesh/keymesh/internal/testutil"
)

// currencyStatus is the part of an edge's /status that says whether, and
// why not, it is current.
type currencyStatus struct {
	Current       bool    `json:"current"`
	AppliedRev    uint64  `json:"applied_revision"`
	CommittedHead uint64  `json:"committed_head"`
	Behind        uint64  `json:"behind_committed_head"`
	Staleness     float64 `json:"staleness_seconds"`
	StaleReason   string  `json:"stale_reason"`
	Restored      bool    `json:"restored_state"`
	FailMode      string  `json:"fail_mode"`
}

func currencyOf(t testing.TB, e *edge.Node) currencyStatus {
	t.Helper()
	var st currencyStatus
	if err := json.Unmarshal([]byte(scrape(t, e, "/status")), &st); err != nil {
		t.Fatal(err)
	}
	return st
}

// blockStream publishes a message no origin signed on a subject the event
// stream holds: it takes the next stream sequence, the revision the
// publisher expects to write next, so the publisher can publish nothing
// more while the store keeps committing. With NATS authentication only an
// origin credential may publish there, so this is what a second, misbehaving
// writer holding one does (a real fault: a stale replica, an operator's
// stray tool).
func blockStream(t testing.TB, s *stack) {
	t.Helper()
	nc, err := s.natsConn()
	if err != nil {
		t.Fatal(err)
	}
	defer nc.Close()
	js, _ := jetstream.New(nc)
	if _, err := js.Publish(context.Background(), event.SubjectPrefix+"key.foreign", []byte("not an origin record")); err != nil {
		t.Fatal(err)
	}
}

// Issue 12, item 1: heartbeats name the committed head. With the publisher
// stuck (the stream blocked by a foreign message) and the store still
// committing, a key disabled at the origin is refused by an edge once
// --max-staleness has passed — the edge falls behind the committed head,
// stops being current, re-validates the cached key and is told it is
// disabled — and /status says why. Heartbeats naming the published
// revision kept the edge current, serving the disabled key, forever.
func TestStuckPublisherMakesEdgesStale(t *testing.T) {
	const staleness = time.Second
	s := newStack(t)
	d := s.deployment("demo", nil)
	k := s.key(d.ID)
	e := s.startEdge(edgeOpts{staleness: staleness})
	expect(t, e, withKey(k), 200, "") // cached
	waitApplied(t, s.origin.Revision(), e)
	testutil.CheckFor(t, 10*time.Second, 0, func() error {
		if st := currencyOf(t, e); !st.Current || st.CommittedHead != st.AppliedRev || st.StaleReason != "" {
			return errorf("not current at the committed head yet: %+v", st)
		}
		return nil
	})

	blockStream(t, s)
	rev := s.call(http.MethodPatch, "/v1/projects/"+project+"/keys/"+k.ID, map[string]any{"disabled": true}, nil)
	if pub := s.origin.PublishedRevision(); pub >= rev {
		t.Fatalf("the disable was published (%d >= %d): the stream is not blocked", pub, rev)
	}
	disabledAt := time.Now()
	testutil.CheckFor(t, 20*time.Second, 0, func() error {
		if st, body := chat(t, e, withKey(k)); st != 401 && st != 503 {
			return errorf("%v after the disable, the edge answered %d: %s", time.Since(disabledAt), st, body)
		}
		return nil
	})
	if pub := s.origin.PublishedRevision(); pub >= rev {
		t.Fatalf("the disable got published meanwhile (%d): the test proved nothing", pub)
	}
	if got := e.View().AppliedRevision(); got >= rev {
		t.Fatalf("the edge applied %d: the test proved nothing", got)
	}
	st := currencyOf(t, e)
	if st.Current || st.CommittedHead < rev || st.Behind == 0 ||
		!strings.Contains(st.StaleReason, "behind committed head") || st.FailMode != "closed" {
		t.Fatalf("/status of an edge behind the committed head: %+v", st)
	}
	// And it stays refused: the re-validated entry is what the origin said.
	for range 5 {
		if code, body := chat(t, e, withKey(k)); code == 200 {
			t.Fatalf("served a disabled key again: %s", body)
		}
	}
}

// Issue 12, item 3: two closed-mode edges joined by gossip, the origin down.
// Neither can prove it is current once --max-staleness has passed, and a
// peer's record is only as fresh as the origin's signature on it: a cached
// key is refused (503) on both for the rest of the outage, and a key
// cached only at one edge is not served by the other on its first
// request. (A peer's answer used to be stamped with the time it arrived,
// so the two vouched for each other: 200 for the whole outage.)
func TestStalePeersCannotVouchForEachOther(t *testing.T) {
	const staleness = time.Second
	s := newStack(t)
	d := s.deployment("demo", nil)
	both := s.key(d.ID)
	only := s.key(d.ID) // looked up at edge 0 only
	edges, _ := s.gossipEdgesWith(2, gossipOpts{staleness: staleness})
	everyEdge(t, edges, both.Secret, 200, time.Now())
	expect(t, edges[0], withKey(only), 200, "")
	if err := s.origin.Shutdown(context.Background()); err != nil {
		t.Fatal(err)
	}
	down := time.Now()
	testutil.CheckFor(t, 20*time.Second, 0, func() error {
		for i, e := range edges {
			if ok, _ := e.View().Current(); ok {
				return errorf("edge %d still current %v after the origin went down", i, time.Since(down))
			}
		}
		if time.Since(down) <= staleness { // every record was signed before
			return errorf("the records the origin signed are not older than the bound yet")
		}
		return nil
	})
	// The first request for it at edge 1: only edge 0's record could answer.
	if code, body := chat(t, edges[1], withKey(only)); code != http.StatusServiceUnavailable {
		t.Fatalf("edge 1 answered %d for a key only its stale peer had looked up: %s\n%+v\n%+v", code, body, edges[1].View().Stats(), edges[1].View().Currency())
	}
	for round := range 10 {
		for i, e := range edges {
			if code, body := chat(t, e, withKey(both)); code != http.StatusServiceUnavailable {
				t.Fatalf("round %d, %v into the outage: edge %d answered %d: %s", round, time.Since(down), i, code, body)
			}
		}
	}
	if st := edges[1].View().Stats(); st.StaleAnswers == 0 && st.LookupErrors == 0 {
		t.Fatalf("no peer answer was refused nor lookup failed: %+v", st)
	}
}

// Issue 12, item 5: an edge restarted from its data dir while the origin
// and NATS are unreachable has only its saved deployments, which say auth
// is off — but auth was turned on while it was down. The saved state is as
// stale as the newest record the origin signed in it; in closed mode,
// past --max-staleness, the keyless request is refused (503), not
// forwarded, and /status says the edge runs on restored state.
func TestRestartedEdgeDistrustsSavedDeployments(t *testing.T) {
	for _, failOpen := range []bool{false, true} {
		name := "closed"
		if failOpen {
			name = "open-cached"
		}
		t.Run(name, func(t *testing.T) {
			const staleness = 500 * time.Millisecond
			s := newStack(t)
			d := s.deployment("demo", map[string]any{"auth_enabled": false})
			dir := t.TempDir()
			e := s.startEdge(edgeOpts{dataDir: dir, staleness: staleness, failOpen: failOpen})
			expect(t, e, nil, 200, "")
			if err := e.Shutdown(context.Background()); err != nil {
				t.Fatal(err)
			}
			s.call(http.MethodPatch, "/v1/projects/"+project+"/deployments/"+d.ID, map[string]any{"auth_enabled": true}, nil)
			if err := s.origin.Shutdown(context.Background()); err != nil {
				t.Fatal(err)
			}
			url := s.nats.ClientURL()
			s.nats.Shutdown()

			e2 := s.startEdge(edgeOpts{natsURL: url, dataDir: dir, staleness: staleness, failOpen: failOpen, unsynced: true})
			if !failOpen {
				// Refused once the saved state is older than the bound (the
				// origin signed its newest record before the edge stopped).
				testutil.CheckFor(t, 10*time.Second, 0, func() error {
					if code, body := chat(t, e2, nil); code != http.StatusServiceUnavailable {
						return errorf("keyless request to the restored edge: %d %s", code, body)
					}
					return nil
				})
			}
			testutil.CheckFor(t, 10*time.Second, 0, func() error {
				if st := currencyOf(t, e2); st.Current || !st.Restored || !strings.Contains(st.StaleReason, "restored") {
					return errorf("/status of the restored edge: %+v", st)
				}
				return nil
			})
			for range 5 {
				code, body := chat(t, e2, nil)
				if !failOpen && code != http.StatusServiceUnavailable {
					t.Fatalf("a keyless request on saved deployments the edge could not prove current: %d %s", code, body)
				}
				if failOpen && code != 200 {
					t.Fatalf("open-cached refused what it has: %d %s", code, body) // as documented
				}
			}
		})
	}
}
