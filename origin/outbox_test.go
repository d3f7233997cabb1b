package origin

import (
	"bytes"
	"context"
	"fmt"
	"slices"
	"strconv"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/keymesh/keymesh/apikey"
	"github.com/keymesh/keymesh/event"
)

func TestMutationsPublishGapFreeSignedEvents(t *testing.T) {
	s := startServer(t, testConfig(t.TempDir()))
	c := newClient(t, s)

	var dep, dep2 depResp
	c.must(201, "POST", "/v1/projects/default/deployments", chatDep, &dep) // rev 1
	if dep.Revision != 1 || !dep.AuthEnabled || dep.InvalidKeyStatus != 401 || dep.UpstreamAuth.Mode != "none" ||
		dep.PathPrefix != "/" || dep.MaxBodyBytes != 10<<20 || dep.MaxPromptChars != 10000 {
		t.Fatalf("deployment defaults: %+v", dep)
	}
	c.must(201, "POST", "/v1/projects/default/deployments", map[string]any{ // rev 2
		"name": "embed", "path_prefix": "/v1/embeddings", "invalid_key_status": 403,
		"upstreams": map[string][]string{"eu": {"https://gpu-eu:8000"}, "*": {"http://gpu:8000"}},
	}, &dep2)

	var k keyResp
	st, body, hdr := c.doH("POST", "/v1/projects/default/keys", map[string]any{"name": "ci", "deployments": []string{"chat"}}, nil) // rev 3
	if st != 201 {
		t.Fatalf("create key: %d %s", st, body)
	}
	mustJSON(t, body, &k)
	if hdr.Get("X-Revision") != "3" || k.Revision != 3 {
		t.Fatalf("create key revision: header %q body %d", hdr.Get("X-Revision"), k.Revision)
	}
	if k.Key == nil || !slices.Equal(k.Deployments, []string{dep.ID}) || !slices.Equal(k.Permissions, event.DefaultPermissions) {
		t.Fatalf("created key %+v", k)
	}
	hash, err := apikey.ParseString(*k.Key)
	if err != nil || k.Prefix != apikey.Display(*k.Key) {
		t.Fatalf("secret %v, prefix %q", err, k.Prefix)
	}
	var got keyResp
	c.must(200, "GET", "/v1/projects/default/keys/"+k.ID, nil, &got)
	if got.Key != nil {
		t.Fatal("GET returned the secret")
	}
	if st, b := c.do("GET", "/v1/projects/default/keys/"+k.ID, nil); bytes.Contains(b, []byte(*k.Key)) || st != 200 {
		t.Fatal("GET body contains the secret")
	}

	var linked keyResp
	c.must(200, "PUT", "/v1/projects/default/deployments/embed/keys/"+k.ID, nil, &linked) // rev 4
	if linked.Revision != 4 || len(linked.Deployments) != 2 {
		t.Fatalf("link: %+v", linked)
	}
	c.must(200, "DELETE", "/v1/projects/default/deployments/"+dep.ID+"/keys/"+k.ID, nil, &linked) // rev 5
	if !slices.Equal(linked.Deployments, []string{dep2.ID}) {
		t.Fatalf("unlink: %+v", linked)
	}
	var patched keyResp
	c.must(200, "PATCH", "/v1/projects/default/keys/"+k.ID, map[string]any{"disabled": true, "expires_at": "2099-01-02", "rate_limit": map[string]int{"requests_per_minute": 60}}, &patched) // rev 6
	if !patched.Disabled || patched.ExpiresAt == nil || !patched.ExpiresAt.Equal(time.Date(2099, 1, 2, 0, 0, 0, 0, time.UTC)) || patched.RateLimit.RequestsPerMinute != 60 {
		t.Fatalf("patch: %+v", patched)
	}
	var dk struct{ Items []keyResp }
	c.must(200, "GET", "/v1/projects/default/deployments/embed/keys", nil, &dk)
	if len(dk.Items) != 1 || dk.Items[0].ID != k.ID {
		t.Fatalf("deployment keys: %+v", dk)
	}
	c.must(200, "PATCH", "/v1/projects/default/deployments/embed", map[string]any{"auth_enabled": false}, nil) // rev 7
	st, _, hdr = c.doH("DELETE", "/v1/projects/default/deployments/embed", nil, nil)                           // rev 8
	if st != 204 || hdr.Get("X-Revision") != "8" {
		t.Fatalf("delete deployment: %d %q", st, hdr.Get("X-Revision"))
	}
	c.must(200, "GET", "/v1/projects/default/keys/"+k.ID, nil, &got)
	if len(got.Deployments) != 0 {
		t.Fatalf("links survive deployment deletion: %+v", got)
	}
	if st, _ := c.do("DELETE", "/v1/projects/default/keys/"+k.ID, nil); st != 204 { // rev 9
		t.Fatalf("delete key: %d", st)
	}
	if st, _ := c.do("GET", "/v1/projects/default/keys/"+k.ID, nil); st != 404 {
		t.Fatalf("deleted key: %d", st)
	}
	if s.Revision() != 9 {
		t.Fatalf("Revision() = %d", s.Revision())
	}

	recs := streamRecords(t, s, 9)
	kinds := ""
	for _, r := range recs {
		kinds += string(r.Kind)[:1]
	}
	if kinds != "ddkkkkddk" {
		t.Fatalf("event kinds %q", kinds)
	}
	if d := recs[0].Deployment; d.ID != dep.ID || d.Revision != 1 || d.Upstreams["*"][0] != "http://127.0.0.1:9000" {
		t.Errorf("deployment event %+v", d)
	}
	if k3 := recs[2].Key; k3.ID != k.ID || len(k3.Secrets) != 1 || !k3.Secrets[0].Hash.Equal(hash) || !slices.Equal(k3.Deployments, []string{dep.ID}) {
		t.Errorf("create event %+v", k3)
	}
	if k4 := recs[3].Key; !slices.Contains(k4.Deployments, dep2.ID) || !slices.Contains(k4.Deployments, dep.ID) {
		t.Errorf("link event %+v", k4)
	}
	if k5 := recs[4].Key; slices.Contains(k5.Deployments, dep.ID) {
		t.Errorf("unlink event still links: %+v", k5)
	}
	if k6 := recs[5].Key; !k6.Disabled || k6.RateLimit == nil || k6.ExpiresAt == nil {
		t.Errorf("patch event %+v", k6)
	}
	if d := recs[6].Deployment; d.AuthEnabled || d.InvalidKeyStatus != 403 {
		t.Errorf("deployment patch event %+v", d)
	}
	if d := recs[7].Deployment; !d.Deleted || d.ID != dep2.ID {
		t.Errorf("deployment delete event %+v", d)
	}
	if k9 := recs[8].Key; !k9.Deleted || k9.ID != k.ID || !k9.Secrets[0].Hash.Equal(hash) {
		t.Errorf("key delete event %+v", k9)
	}
	waitFor(t, "outbox to be marked published", func() bool { return s.PublishedRevision() == 9 })
}

func TestOutboxPublishesAfterRestart(t *testing.T) {
	dir := t.TempDir()
	cfg := testConfig(dir)
	cfg.disablePublisher = true
	s1 := startServer(t, cfg)
	c := newClient(t, s1)
	c.must(201, "POST", "/v1/projects/default/deployments", chatDep, nil)
	c.must(201, "POST", "/v1/projects/default/keys", map[string]any{"deployments": []string{"chat"}}, nil)
	if s1.PublishedRevision() != 0 {
		t.Fatalf("published %d with the publisher off", s1.PublishedRevision())
	}
	// Simulate a crash after publishing revision 1 but before marking it,
	// long enough ago that JetStream's duplicate window no longer knows its
	// message id: put it on the stream by hand, without an id.
	nc, err := nats.Connect(s1.NATSURL(), natsAuth(t, s1)...)
	if err != nil {
		t.Fatal(err)
	}
	js, _ := jetstream.New(nc)
	ctx := context.Background()
	if _, err := js.CreateStream(ctx, jetstream.StreamConfig{Name: event.StreamName, Subjects: []string{event.StreamSubjects}, Storage: jetstream.FileStorage}); err != nil {
		t.Fatal(err)
	}
	evs, err := s1.store.unpublished(ctx, 10)
	if err != nil || len(evs) != 2 {
		t.Fatalf("unpublished: %v %d", err, len(evs))
	}
	if _, err := js.PublishMsg(ctx, &nats.Msg{Subject: evs[0].Subject, Data: evs[0].Payload}); err != nil {
		t.Fatal(err)
	}
	nc.Close()
	if err := s1.Shutdown(ctx); err != nil {
		t.Fatal(err)
	}

	s2 := startServer(t, testConfig(dir))
	recs := streamRecords(t, s2, 2) // exactly once each: Msgs == LastSeq == 2
	if recs[1].Kind != event.KindKey {
		t.Fatalf("revision 2 is %s", recs[1].Kind)
	}
	waitFor(t, "both events marked published", func() bool { return s2.PublishedRevision() == 2 })
	c2 := newClient(t, s2)
	c2.must(200, "PATCH", "/v1/projects/default/deployments/chat", map[string]any{"max_prompt_chars": 5}, nil)
	streamRecords(t, s2, 3)
}

func TestOutboxSurvivesNATSOutage(t *testing.T) {
	// An external NATS server the origin connects to by URL.
	nsDir := t.TempDir()
	ns1 := startExternalNATS(t, nsDir, -1)
	port := ns1.port
	cfg := testConfig(t.TempDir())
	cfg.NATSURL = ns1.url
	s := startServer(t, cfg)
	c := newClient(t, s)
	c.must(201, "POST", "/v1/projects/default/deployments", chatDep, nil)
	streamRecords(t, s, 1)

	ns1.stop()
	c.must(201, "POST", "/v1/projects/default/keys", map[string]any{"deployments": []string{"chat"}}, nil)
	c.must(200, "PATCH", "/v1/projects/default/deployments/chat", map[string]any{"auth_enabled": false}, nil)
	if s.PublishedRevision() != 1 {
		t.Fatalf("published %d while NATS is down", s.PublishedRevision())
	}
	startExternalNATS(t, nsDir, port)
	waitFor(t, "publisher to catch up", func() bool { return s.PublishedRevision() == 3 })
	streamRecords(t, s, 3)
}

func TestConcurrentMutationsGapFree(t *testing.T) {
	s := startServer(t, testConfig(t.TempDir()))
	c := newClient(t, s)
	const n = 20
	errs := make(chan error, n)
	for i := 0; i < n; i++ {
		go func(i int) {
			st, b := c.do("POST", "/v1/projects/default/keys", map[string]any{"name": strconv.Itoa(i)})
			if st != 201 {
				errs <- fmt.Errorf("%d: %s", st, b)
				return
			}
			errs <- nil
		}(i)
	}
	for i := 0; i < n; i++ {
		if err := <-errs; err != nil {
			t.Fatal(err)
		}
	}
	recs := streamRecords(t, s, n)
	ids := map[string]bool{}
	for _, r := range recs {
		ids[r.Key.ID] = true
	}
	if len(ids) != n {
		t.Fatalf("%d distinct keys in %d events", len(ids), n)
	}
}

func TestOutboxRepublishesToARecreatedStream(t *testing.T) {
	s := startServer(t, testConfig(t.TempDir()))
	c := newClient(t, s)
	c.must(201, "POST", "/v1/projects/default/deployments", chatDep, nil)
	c.must(201, "POST", "/v1/projects/default/keys", map[string]any{}, nil)
	streamRecords(t, s, 2)
	nc := connect(t, s)
	js, _ := jetstream.New(nc)
	if err := js.DeleteStream(context.Background(), event.StreamName); err != nil {
		t.Fatal(err)
	}
	c.must(201, "POST", "/v1/projects/default/keys", map[string]any{}, nil)
	recs := streamRecords(t, s, 3)
	if recs[0].Kind != event.KindDeployment {
		t.Fatalf("revision 1 is %s", recs[0].Kind)
	}
	waitFor(t, "all marked published", func() bool { return s.PublishedRevision() == 3 })
}

// The stream and the outbox are bounded by StreamMaxAge: the stream has
// that MaxAge, published events older than it leave the store, unpublished
// ones stay, and a stream that lost events the store no longer holds skips
// past them rather than wait for them forever.
func TestStreamAndOutboxBoundedByAge(t *testing.T) {
	eachStore(t, func(t *testing.T, cfg Config) {
		cfg.StreamMaxAge = 48 * time.Hour
		s := startServer(t, cfg)
		c := newClient(t, s)
		c.must(201, "POST", "/v1/projects/default/deployments", chatDep, nil)
		c.must(201, "POST", "/v1/projects/default/keys", map[string]any{}, nil)
		c.must(201, "POST", "/v1/projects/default/keys", map[string]any{}, nil)
		streamRecords(t, s, 3)
		waitFor(t, "all published", func() bool { return s.PublishedRevision() == 3 })
		nc := connect(t, s)
		js, _ := jetstream.New(nc)
		ctx := context.Background()
		st, err := js.Stream(ctx, event.StreamName)
		if err != nil {
			t.Fatal(err)
		}
		if info, err := st.Info(ctx); err != nil || info.Config.MaxAge != 48*time.Hour {
			t.Fatalf("stream MaxAge %v (%v), want 48h", info.Config.MaxAge, err)
		}

		if n, err := s.pruneOutbox(time.Now()); err != nil || n != 0 {
			t.Fatalf("pruned %d fresh events (%v)", n, err)
		}
		// 48 hours after revision 3 was committed, 1 and 2 are past the
		// age and go; 3 is not, and stays. (Unpublished events never go:
		// see the store suite.)
		var created3 string
		if err := s.store.db.QueryRow(`SELECT created_at FROM events WHERE revision = 3`).Scan(&created3); err != nil {
			t.Fatal(err)
		}
		t3, err := parseTS(created3)
		if err != nil {
			t.Fatal(err)
		}
		if n, err := s.pruneOutbox(t3.Add(48 * time.Hour)); err != nil || n != 2 {
			t.Fatalf("pruned %d (%v), want 2", n, err)
		}
		if first, _ := s.store.firstEventRevision(ctx); first != 3 {
			t.Fatalf("oldest event left %d, want 3", first)
		}

		// The stream is lost (e.g. a new NATS cluster): revisions 1 and 2 are
		// gone from the store, so the new stream starts at 3.
		if err := js.DeleteStream(ctx, event.StreamName); err != nil {
			t.Fatal(err)
		}
		c.must(201, "POST", "/v1/projects/default/keys", map[string]any{}, nil) // revision 4
		waitFor(t, "publisher to catch up", func() bool { return s.PublishedRevision() == 4 })
		st, err = js.Stream(ctx, event.StreamName)
		if err != nil {
			t.Fatal(err)
		}
		info, err := st.Info(ctx)
		if err != nil || info.State.FirstSeq != 3 || info.State.LastSeq != 4 || info.State.Msgs != 2 {
			t.Fatalf("recreated stream %+v (%v), want revisions 3 and 4", info.State, err)
		}
	})
}

// Each event the stream acknowledges goes out once more over core NATS on
// its live subject, the same sealed bytes (edges apply the next revision
// from there without waiting for their stream consumer), and the stream
// holds only the events: the live copies are not stored in it.
func TestPublishedEventsGoOutLive(t *testing.T) {
	s := startServer(t, testConfig(t.TempDir()))
	nc := connect(t, s)
	sub, err := nc.SubscribeSync(event.LiveSubjects)
	if err != nil {
		t.Fatal(err)
	}
	if err := nc.Flush(); err != nil {
		t.Fatal(err)
	}
	c := newClient(t, s)
	c.must(201, "POST", "/v1/projects/default/deployments", chatDep, nil)                                                // rev 1
	c.must(201, "POST", "/v1/projects/default/keys", map[string]any{"name": "ci", "deployments": []string{"chat"}}, nil) // rev 2
	recs := streamRecords(t, s, 2)
	ver, err := event.NewVerifier(s.PublicKey())
	if err != nil {
		t.Fatal(err)
	}
	for rev := uint64(1); rev <= 2; rev++ {
		m, err := sub.NextMsg(5 * time.Second)
		if err != nil {
			t.Fatalf("live copy of revision %d: %v", rev, err)
		}
		if m.Subject != event.LiveSubject(rev) {
			t.Fatalf("live copy on %q, want %q", m.Subject, event.LiveSubject(rev))
		}
		got, err := ver.Open(m.Data)
		if err != nil || got.Revision != rev || got.Kind != recs[rev-1].Kind {
			t.Fatalf("live copy of revision %d: %v %+v", rev, err, got)
		}
	}
	if rev := s.PublishedRevision(); rev != 2 {
		t.Fatalf("published revision %d, want 2", rev)
	}
}
