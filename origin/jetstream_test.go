package origin

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"strings"
	"testing"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/keymesh/keymesh/event"
)

// getText GETs an open endpoint of s.
func getText(t *testing.T, s *Server, path string) (int, string) {
	t.Helper()
	resp, err := http.Get("http://" + s.Addr() + path)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, string(b)
}

// metricValue returns the value of an unlabelled metric ("" if absent).
func metricValue(t *testing.T, s *Server, name string) string {
	_, body := getText(t, s, "/metrics")
	for _, line := range strings.Split(body, "\n") {
		if v, ok := strings.CutPrefix(line, name+" "); ok {
			return v
		}
	}
	return ""
}

type healthBody struct {
	Status string `json:"status"`
	Reason string `json:"reason"`
}

func health(t *testing.T, s *Server) healthBody {
	t.Helper()
	st, body := getText(t, s, "/health")
	var h healthBody
	if err := json.Unmarshal([]byte(body), &h); err != nil || st != 200 {
		t.Fatalf("/health: %d %s %v", st, body, err)
	}
	return h
}

// Issue 11.3: the stream takes only the subjects the origin publishes on,
// and a foreign message that still lands at a revision (on one of those
// subjects) is an alarm: the metric keymesh_origin_stream_conflict, /health
// degraded with the reason, and one log line however often the publisher
// retries. Repairing the stream (here: deleting it) clears the alarm and the
// publisher republishes everything.
func TestForeignStreamMessageRaisesAlarm(t *testing.T) {
	logs := &syncBuffer{}
	cfg := testConfig(t.TempDir())
	cfg.Logger = slog.New(slog.NewTextHandler(logs, nil))
	s := startServer(t, cfg)
	c := newClient(t, s)
	c.must(201, "POST", "/v1/projects/default/deployments", chatDep, nil)
	waitFor(t, "deployment published", func() bool { return s.PublishedRevision() == s.Revision() })
	streamRecords(t, s, s.Revision())
	rev := s.Revision()

	nc := connect(t, s)
	js, _ := jetstream.New(nc)
	ctx := context.Background()
	// Outside the origin's subjects: not stored.
	if _, err := js.Publish(ctx, "keymesh.events.x", []byte("junk")); err == nil {
		t.Fatal("the stream stored a message on keymesh.events.x")
	}
	st, err := js.Stream(ctx, event.StreamName)
	if err != nil {
		t.Fatal(err)
	}
	if err := st.DeleteMsg(ctx, rev); err == nil {
		t.Fatal("a client deleted an event from the stream")
	}
	// On a subject the origin uses: it takes the next sequence.
	if _, err := js.Publish(ctx, event.Subject(event.KindKey, rev+1), []byte("not an event")); err != nil {
		t.Fatal(err)
	}
	if h := health(t, s); h.Status != "ok" {
		t.Fatalf("health before the conflict: %+v", h)
	}
	c.must(201, "POST", "/v1/projects/default/keys", map[string]any{"deployments": []string{"chat"}}, nil)
	waitFor(t, "conflict alarm", func() bool { return metricValue(t, s, "keymesh_origin_stream_conflict") == "1" })
	if h := health(t, s); h.Status != "degraded" || !strings.Contains(h.Reason, "did not publish") {
		t.Fatalf("health during the conflict: %+v", h)
	}
	// Several retries, one line.
	waitFor(t, "retries", func() bool {
		var n int
		fmt.Sscan(metricValue(t, s, "keymesh_origin_publish_errors_total"), &n)
		return n >= 5
	})
	if n := strings.Count(string(logs.Bytes()), "publishing stopped"); n != 1 {
		t.Fatalf("%d conflict log lines, want 1:\n%s", n, logs.Bytes())
	}
	if s.PublishedRevision() != rev {
		t.Fatalf("published %d past the conflict at %d", s.PublishedRevision(), rev+1)
	}

	// The operator repairs the stream: the publisher recreates it and
	// republishes; the alarm clears.
	if err := js.DeleteStream(ctx, event.StreamName); err != nil {
		t.Fatal(err)
	}
	defer func() {
		if t.Failed() {
			t.Logf("logs:\n%s", logs.Bytes())
		}
	}()
	waitFor(t, "republished", func() bool { return s.PublishedRevision() == s.Revision() })
	streamRecords(t, s, s.Revision())
	waitFor(t, "alarm cleared", func() bool { return metricValue(t, s, "keymesh_origin_stream_conflict") == "0" })
	if h := health(t, s); h.Status != "ok" || h.Reason != "" {
		t.Fatalf("health after the repair: %+v", h)
	}
	if v := metricValue(t, s, "keymesh_origin_stream_conflicts_total"); v != "1" {
		t.Fatalf("conflicts_total %q", v)
	}
}
