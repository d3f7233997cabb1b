package origin

import (
	"testing"
	"time"

	"github.com/nats-io/nats.go"

	"github.com/keymesh/keymesh/event"
)

// Heartbeats name the committed head, not the published revision: with
// the publisher not running, a commit shows in the next heartbeat while
// nothing is published, so an edge that has not applied it cannot claim
// to be current. The signed time is no later than the read of the head.
func TestHeartbeatNamesCommittedHead(t *testing.T) {
	cfg := testConfig(t.TempDir())
	cfg.disablePublisher = true
	cfg.HeartbeatInterval = 20 * time.Millisecond
	s := startServer(t, cfg)
	nc := connect(t, s)
	beats := make(chan *nats.Msg, 64)
	sub, err := nc.ChanSubscribe(event.OriginHeartbeatSubject, beats)
	if err != nil {
		t.Fatal(err)
	}
	defer sub.Unsubscribe()
	ver, err := event.NewVerifier(s.PublicKey())
	if err != nil {
		t.Fatal(err)
	}
	c := newClient(t, s)
	c.must(201, "POST", "/v1/projects/default/deployments", chatDep, nil)
	acked := time.Now()
	rev := s.Revision()
	if rev == 0 || s.PublishedRevision() != 0 {
		t.Fatalf("committed %d, published %d: want a commit and nothing published", rev, s.PublishedRevision())
	}
	deadline := time.After(10 * time.Second)
	for {
		select {
		case m := <-beats:
			rec, err := ver.Open(m.Data)
			if err != nil || rec.Kind != event.KindHeartbeat {
				t.Fatalf("heartbeat: %v %+v", err, rec)
			}
			if rec.Time.Before(acked) {
				continue // sealed before the change was acknowledged
			}
			if rec.Revision != rev {
				t.Fatalf("heartbeat after the commit names %d, want the committed head %d (published: %d)", rec.Revision, rev, s.PublishedRevision())
			}
			return
		case <-deadline:
			t.Fatal("no heartbeat after the commit")
		}
	}
}
