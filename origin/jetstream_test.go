package origin

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/keymesh/keymesh/event"
	"github.com/keymesh/keymesh/internal/testutil"
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
	logs := &testutil.Buffer{}
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

// Issue 12.4: the embedded JetStream store on a full filesystem. The store
// keeps committing; publishing fails while the disk is full, and once space
// is back it catches up by itself (the publisher restarts the embedded
// JetStream, whose streams otherwise keep their first write error for
// good), with every event at its revision. A real tmpfs, filled for real.
func TestPublishingRecoversFromAFullJetStreamDisk(t *testing.T) {
	logs := &testutil.Buffer{}
	cfg := testConfig(t.TempDir())
	cfg.Logger = slog.New(slog.NewTextHandler(logs, nil))
	natsDir := filepath.Join(cfg.DataDir, "nats")
	testutil.SmallDisk(t, natsDir, "4m")
	s := startServer(t, cfg)
	defer func() {
		if t.Failed() {
			t.Logf("logs:\n%s", logs.Bytes())
		}
	}()
	c := newClient(t, s)
	c.must(201, "POST", "/v1/projects/default/deployments", chatDep, nil)
	waitFor(t, "first event published", func() bool { return s.PublishedRevision() == s.Revision() })
	before := s.Revision()

	// Fill the filesystem.
	freeDisk := testutil.FillDisk(t, natsDir)

	// Changes keep committing; publishing them fails.
	for i := range 20 {
		c.must(201, "POST", "/v1/projects/default/keys", map[string]any{"name": fmt.Sprintf("k%d-%s", i, strings.Repeat("x", 150)), "deployments": []string{"chat"}}, nil)
	}
	testutil.CheckFor(t, 90*time.Second, 50*time.Millisecond, func() error {
		var n int
		fmt.Sscan(metricValue(t, s, "keymesh_origin_publish_errors_total"), &n)
		if n < 3 {
			return fmt.Errorf("%d publish errors on the full disk", n)
		}
		return nil
	})
	if s.PublishedRevision() == s.Revision() {
		t.Fatalf("every event published on a full disk (revision %d)", s.Revision())
	}
	t.Logf("disk full: committed %d, published %d (before: %d)", s.Revision(), s.PublishedRevision(), before)

	// Space is back: publishing catches up without a restart.
	freeDisk()
	freed := time.Now()
	testutil.CheckFor(t, 60*time.Second, 50*time.Millisecond, func() error {
		if p, r := s.PublishedRevision(), s.Revision(); p != r {
			return fmt.Errorf("published %d of %d", p, r)
		}
		return nil
	})
	t.Logf("caught up %v after space was freed; jetstream restarts %s", time.Since(freed).Round(time.Millisecond),
		metricValue(t, s, "keymesh_origin_jetstream_restarts_total"))
	streamRecords(t, s, s.Revision())
	// And keeps publishing.
	c.must(200, "PATCH", "/v1/projects/default/deployments/chat", map[string]any{"max_prompt_chars": 5}, nil)
	waitFor(t, "next event published", func() bool { return s.PublishedRevision() == s.Revision() })
	if h := health(t, s); h.Status != "ok" {
		t.Fatalf("health after recovery: %+v", h)
	}
}
