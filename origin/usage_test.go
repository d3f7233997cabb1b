package origin

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net/url"
	"strings"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/keymesh/keymesh/api"
	"github.com/keymesh/keymesh/event"
	"github.com/keymesh/keymesh/internal/natsauth"
	"github.com/keymesh/keymesh/internal/testutil"
)

// usageClock is the fixed clock of the usage tests: mid-month, mid-day,
// so that "today" and "this month" hold every record they publish.
var usageClock = time.Date(2026, 3, 15, 12, 30, 0, 0, time.UTC)

// edgePublisher publishes usage records as edge id does: with JetStream,
// on its own subject, with the record's id as Nats-Msg-Id. On an origin's
// embedded NATS it connects with that edge's credentials, so the edge's
// permissions are part of what is tested.
type edgePublisher struct {
	t  *testing.T
	id string
	js jetstream.JetStream
}

func newEdgePublisher(t *testing.T, natsURL string, s *Server, id string) *edgePublisher {
	t.Helper()
	opts := []nats.Option{nats.CustomInboxPrefix(event.EdgeInbox(id))}
	if s != nil && s.ns != nil {
		keys, err := natsauth.Load(s.cfg.DataDir)
		if err != nil {
			t.Fatal(err)
		}
		tok, seed, err := keys.UserJWT(natsauth.RoleEdge, id)
		if err != nil {
			t.Fatal(err)
		}
		opts = append(opts, nats.UserJWTAndSeed(tok, string(seed)))
	}
	nc, err := nats.Connect(natsURL, opts...)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(nc.Close)
	js, err := jetstream.New(nc)
	if err != nil {
		t.Fatal(err)
	}
	return &edgePublisher{t: t, id: id, js: js}
}

// publish sends raw on the edge's usage subject; msgID "" sends none (a
// copy past the stream's duplicate window looks so to the stream).
func (p *edgePublisher) publish(raw []byte, msgID string) (*jetstream.PubAck, error) {
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	var opts []jetstream.PublishOpt
	if msgID != "" {
		opts = append(opts, jetstream.WithMsgID(msgID))
	}
	return p.js.Publish(ctx, event.EdgeSubject(event.EdgeUsageSubject, p.id), raw, opts...)
}

func (p *edgePublisher) must(u event.Usage, msgID string) *jetstream.PubAck {
	p.t.Helper()
	raw, err := json.Marshal(u)
	if err != nil {
		p.t.Fatal(err)
	}
	var ack *jetstream.PubAck
	// The origin creates the stream as it starts: until then, no stream.
	waitFor(p.t, "the usage stream to take a record", func() bool {
		ack, err = p.publish(raw, msgID)
		return err == nil
	})
	return ack
}

func waitUsageStats(t *testing.T, s *Server, stored, dup, malformed uint64) {
	t.Helper()
	testutil.CheckFor(t, 15*time.Second, 10*time.Millisecond, func() error {
		if st, d, m := s.UsageStats(); st != stored || d != dup || m != malformed {
			return fmt.Errorf("usage stats stored %d duplicate %d malformed %d, want %d %d %d", st, d, m, stored, dup, malformed)
		}
		return nil
	})
}

func counts(req, prompt, completion, cached, est int64) api.UsageCounts {
	return api.UsageCounts{Requests: req, PromptTokens: prompt, CompletionTokens: completion, CachedTokens: cached, EstimatedRequests: est, Cost: "0"}
}

func usageReport(t *testing.T, c *client, query string) api.UsageReport {
	t.Helper()
	st, b := c.do("GET", "/v1/usage?"+query, nil)
	if st != 200 {
		t.Fatalf("GET /v1/usage?%s: %d %s", query, st, b)
	}
	return checkAnswer[api.UsageReport](t, "usage "+query, b)
}

func TestUsageLedger(t *testing.T) {
	eachStore(t, testUsageLedger)
}

// Records an edge publishes are summed exactly: per key, deployment, model,
// hour and day; a copy counts once, whether the stream or the store catches
// it; malformed records, records naming another edge and records moving
// usage into another project are refused and counted; /v1/usage keeps
// projects apart; /v1/key shows a key its own usage.
func testUsageLedger(t *testing.T, cfg Config) {
	clk := &fakeClock{t: usageClock}
	cfg.now = clk.now
	s := startServer(t, cfg)
	c := newClient(t, s)

	var d, d2, dOther struct{ ID string }
	c.must(201, "POST", "/v1/projects/default/deployments", dep("chat", []string{"chat.example"}, "/"), &d)
	c.must(201, "POST", "/v1/projects/default/deployments", dep("open", []string{"open.example"}, "/"), &d2)
	c.must(201, "POST", "/v1/projects", map[string]any{"name": "other"}, nil)
	c.must(201, "POST", "/v1/projects/other/deployments", dep("theirs", []string{"theirs.example"}, "/"), &dOther)
	var k, kOther, reader, noPerm struct{ ID, Project, Key string }
	c.must(201, "POST", "/v1/projects/default/keys", map[string]any{"name": "k", "deployments": []string{d.ID},
		"rate_limit": map[string]int{"requests_per_minute": 60}, "expires_at": "2027-01-01"}, &k)
	c.must(201, "POST", "/v1/projects/other/keys", map[string]any{"name": "theirs", "deployments": []string{dOther.ID}}, &kOther)
	c.must(201, "POST", "/v1/projects/default/keys", map[string]any{"name": "dashboard", "permissions": []string{"read_metrics"}}, &reader)
	c.must(201, "POST", "/v1/projects/default/keys", map[string]any{"name": "plain"}, &noPerm)

	e := newEdgePublisher(t, s.NATSURL(), s, "edge-1")
	t0 := usageClock.Add(-2 * time.Hour).Add(5 * time.Minute) // 10:35
	t1 := usageClock.Add(-time.Minute)                        // 12:29
	rec := func(id, key, deployment, project, model string, at time.Time, p, cpl, cached int64, est bool) event.Usage {
		return event.Usage{ID: id, Edge: "edge-1", KeyID: key, Project: project, Deployment: deployment, Model: model,
			PromptTokens: p, CompletionTokens: cpl, CachedTokens: cached, Estimated: est, Status: 200, DurationMS: 12, Time: at}
	}
	r1 := rec("u1", k.ID, d.ID, k.Project, "m1", t0, 10, 5, 2, false)
	e.must(r1, r1.ID)
	if ack := e.must(r1, r1.ID); !ack.Duplicate { // within the stream's window: the stream drops it
		t.Fatalf("a republished record was not a duplicate to the stream: %+v", ack)
	}
	e.must(r1, "") // past the window (no id for the stream): the store's ids catch it
	e.must(rec("u2", k.ID, d.ID, k.Project, "m2", t1, 100, 50, 0, true), "u2")
	e.must(rec("u3", k.ID, d.ID, k.Project, "m1", t1, 1, 1, 1, false), "u3")
	e.must(rec("u4", "", d2.ID, k.Project, "m1", t1, 7, 3, 0, false), "u4") // a deployment without auth
	e.must(rec("u5", kOther.ID, dOther.ID, kOther.Project, "m1", t1, 1000, 1000, 0, false), "u5")
	// Malformed: refused, acknowledged, counted.
	for _, bad := range []event.Usage{
		func() event.Usage {
			r := rec("b1", k.ID, d.ID, k.Project, "m1", t1, 1, 1, 0, false)
			r.Edge = "edge-2"
			return r
		}(), // another edge
		rec("b2", k.ID, d.ID, k.Project, "m1", t1, -1, 1, 0, false),
		rec("b3", k.ID, d.ID, k.Project, "m1", t1, 1, maxUsageTokens+1, 0, false),
		rec("b4", k.ID, dOther.ID, k.Project, "m1", t1, 1, 1, 0, false),                     // another project's deployment
		rec("b5", kOther.ID, d.ID, k.Project, "m1", t1, 1, 1, 0, false),                     // another project's key
		rec("b6", k.ID, d.ID, k.Project, "m1", usageClock.Add(2*time.Hour), 1, 1, 0, false), // the future
		rec("", k.ID, d.ID, k.Project, "m1", t1, 1, 1, 0, false),
		rec("b8", k.ID, "", k.Project, "m1", t1, 1, 1, 0, false),
	} {
		e.must(bad, "")
	}
	if _, err := e.publish([]byte("garbage"), ""); err != nil {
		t.Fatal(err)
	}
	waitUsageStats(t, s, 5, 1, 9)

	since, until := "2026-03-15T00:00:00Z", "2026-03-16T00:00:00Z"
	win := "since=" + since + "&until=" + until
	// Everything in the default project, in one row.
	r := usageReport(t, c, "project=default&"+win)
	if len(r.Items) != 1 || r.Items[0].UsageCounts != counts(4, 118, 59, 3, 1) || r.Truncated {
		t.Fatalf("default project's total: %+v", r)
	}
	// By key and model.
	r = usageReport(t, c, "project=default&group_by=key,model&"+win)
	want := []struct {
		key, model string
		c          api.UsageCounts
	}{{"", "m1", counts(1, 7, 3, 0, 0)}, {k.ID, "m1", counts(2, 11, 6, 3, 0)}, {k.ID, "m2", counts(1, 100, 50, 0, 1)}}
	if len(r.Items) != len(want) {
		t.Fatalf("by key and model: %+v", r.Items)
	}
	for i, w := range want {
		it := r.Items[i]
		if it.KeyID == nil || *it.KeyID != w.key || it.Model == nil || *it.Model != w.model || it.UsageCounts != w.c ||
			it.Deployment != nil || it.Hour != nil || it.Day != nil || it.Project != nil {
			t.Fatalf("by key and model, row %d: %+v", i, it)
		}
	}
	// By hour (the hourly table) and by day (the daily one, the window
	// being whole days), over every project, as a user sees it.
	r = usageReport(t, c, "group_by=hour&"+win)
	if len(r.Items) != 2 || !r.Items[0].Hour.Equal(t0.Truncate(time.Hour)) || r.Items[0].UsageCounts != counts(1, 10, 5, 2, 0) ||
		!r.Items[1].Hour.Equal(t1.Truncate(time.Hour)) || r.Items[1].UsageCounts != counts(4, 1108, 1054, 1, 1) {
		t.Fatalf("by hour: %+v", r.Items)
	}
	r = usageReport(t, c, "group_by=day,project&"+win)
	byProject := map[string]api.UsageCounts{}
	for _, it := range r.Items {
		if !it.Day.Equal(time.Date(2026, 3, 15, 0, 0, 0, 0, time.UTC)) {
			t.Fatalf("by day and project: %+v", r.Items)
		}
		byProject[*it.Project] = it.UsageCounts
	}
	if len(r.Items) != 2 || byProject[k.Project] != counts(4, 118, 59, 3, 1) || byProject[kOther.Project] != counts(1, 1000, 1000, 0, 0) {
		t.Fatalf("by day and project: %+v", r.Items)
	}
	// Filters: a deployment by name, the rows without a key, a model, an
	// hour's window (rounded outwards), the row limit.
	if r = usageReport(t, c, "project=default&deployment=open&"+win); len(r.Items) != 1 || r.Items[0].Requests != 1 {
		t.Fatalf("by deployment name: %+v", r.Items)
	}
	if r = usageReport(t, c, "project=default&key_id=&"+win); len(r.Items) != 1 || r.Items[0].PromptTokens != 7 {
		t.Fatalf("the auth-off rows: %+v", r.Items)
	}
	if r = usageReport(t, c, "model=m2&"+win); len(r.Items) != 1 || r.Items[0].UsageCounts != counts(1, 100, 50, 0, 1) {
		t.Fatalf("by model: %+v", r.Items)
	}
	if r = usageReport(t, c, "since="+url.QueryEscape("2026-03-15T10:59:00Z")+"&until="+url.QueryEscape("2026-03-15T11:01:00Z")); len(r.Items) != 1 ||
		r.Items[0].Requests != 1 || !r.Since.Equal(t0.Truncate(time.Hour)) || !r.Until.Equal(t0.Truncate(time.Hour).Add(2*time.Hour)) {
		t.Fatalf("an hour's window: %+v", r)
	}
	if r = usageReport(t, c, "group_by=key&limit=2&"+win); len(r.Items) != 2 || !r.Truncated {
		t.Fatalf("limit=2: %+v", r)
	}
	// The default window is the day before now: it holds everything here.
	if r = usageReport(t, c, "project=default"); len(r.Items) != 1 || r.Items[0].Requests != 4 {
		t.Fatalf("the default window: %+v", r)
	}
	for _, q := range []string{"group_by=week", "group_by=hour,day", "since=yesterday", "until=x", "since=2025-01-01&until=2026-03-15",
		"since=2026-03-15&until=2026-03-14", "limit=0", "limit=10001"} {
		st, b := c.do("GET", "/v1/usage?"+q, nil)
		var ae apiErr
		mustJSON(t, b, &ae)
		field := strings.SplitN(q, "=", 2)[0]
		if strings.HasPrefix(q, "since=20") {
			field = "since"
		}
		if st != 400 || ae.Error.Code != "VALIDATION_ERROR" || ae.Error.Details["field"] != field {
			t.Fatalf("%s: %d %s", q, st, b)
		}
	}
	st, b := c.do("GET", "/v1/usage?project=nope", nil)
	wantError(t, "an unknown project", st, b, 404, "NOT_FOUND")

	// A project key sees its own project's usage only.
	kc := keyClient(t, s, reader.Key)
	if r = usageReport(t, kc, win); len(r.Items) != 1 || r.Items[0].UsageCounts != counts(4, 118, 59, 3, 1) {
		t.Fatalf("a project key's view: %+v", r.Items)
	}
	if r = usageReport(t, kc, "group_by=project&"+win); len(r.Items) != 1 || *r.Items[0].Project != k.Project {
		t.Fatalf("a project key's view by project: %+v", r.Items)
	}
	if r = usageReport(t, kc, "key_id="+kOther.ID+"&"+win); len(r.Items) != 0 {
		t.Fatalf("a project key reads another project's key: %+v", r.Items)
	}
	for _, p := range []string{"other", kOther.Project, "nope"} {
		st, b := kc.do("GET", "/v1/usage?project="+p, nil)
		wantError(t, "a project key asking for project "+p, st, b, 403, "PERMISSION_DENIED")
	}
	st, b = keyClient(t, s, noPerm.Key).do("GET", "/v1/usage", nil)
	wantError(t, "a key without read_metrics", st, b, 403, "PERMISSION_DENIED")

	// GET /v1/key: the key itself, its usage today and this month.
	st, b = keyClient(t, s, k.Key).do("GET", "/v1/key", nil)
	if st != 200 {
		t.Fatalf("GET /v1/key: %d %s", st, b)
	}
	self := checkAnswer[api.KeySelf](t, "GET /v1/key", b)
	if self.ID != k.ID || self.Name != "k" || self.Project != k.Project || self.ProjectName != "default" ||
		len(self.Deployments) != 1 || self.Deployments[0] != (api.KeyDeployment{ID: d.ID, Name: "chat"}) ||
		self.RateLimit == nil || self.RateLimit.RequestsPerMinute != 60 || self.ExpiresAt == nil ||
		strings.Join(self.Permissions, ",") != strings.Join(event.DefaultPermissions, ",") ||
		self.Usage.Today.UsageCounts != counts(3, 111, 56, 3, 1) || !self.Usage.Today.Since.Equal(time.Date(2026, 3, 15, 0, 0, 0, 0, time.UTC)) ||
		self.Usage.Month.UsageCounts != counts(3, 111, 56, 3, 1) || !self.Usage.Month.Since.Equal(time.Date(2026, 3, 1, 0, 0, 0, 0, time.UTC)) {
		t.Fatalf("GET /v1/key: %+v", self)
	}
	if strings.Contains(string(b), k.Key) || strings.Contains(strings.ToLower(string(b)), "hash") {
		t.Fatalf("GET /v1/key shows the secret or its hash: %s", b)
	}
	// The same by X-API-Key; refused to an admin token, no key, a wrong,
	// disabled or expired key.
	st, b, _ = (&client{t: t, base: c.base}).doH("GET", "/v1/key", nil, map[string]string{"X-API-Key": kOther.Key})
	if st != 200 || checkAnswer[api.KeySelf](t, "GET /v1/key by X-API-Key", b).ID != kOther.ID {
		t.Fatalf("GET /v1/key by X-API-Key: %d %s", st, b)
	}
	st, b = c.do("GET", "/v1/key", nil)
	wantError(t, "GET /v1/key with an admin token", st, b, 401, "AUTHENTICATION_FAILED")
	st, b = (&client{t: t, base: c.base}).do("GET", "/v1/key", nil)
	wantError(t, "GET /v1/key without credentials", st, b, 401, "AUTHENTICATION_FAILED")
	st, b = keyClient(t, s, k.Key[:len(k.Key)-2]+"xx").do("GET", "/v1/key", nil)
	wantError(t, "GET /v1/key with a wrong key", st, b, 401, "AUTHENTICATION_FAILED")
	c.must(200, "PATCH", "/v1/projects/other/keys/"+kOther.ID, map[string]any{"disabled": true}, nil)
	st, b = keyClient(t, s, kOther.Key).do("GET", "/v1/key", nil)
	wantError(t, "GET /v1/key with a disabled key", st, b, 401, "AUTHENTICATION_FAILED")
	c.must(200, "PATCH", "/v1/projects/default/keys/"+noPerm.ID, map[string]any{"expires_at": "2026-03-01"}, nil)
	st, b = keyClient(t, s, noPerm.Key).do("GET", "/v1/key", nil)
	wantError(t, "GET /v1/key with an expired key", st, b, 401, "AUTHENTICATION_FAILED")

	// The counters are exported.
	_, m := c.do("GET", "/metrics", nil)
	for _, line := range []string{`keymesh_origin_usage_records_total{result="stored"} 5`, `keymesh_origin_usage_records_total{result="duplicate"} 1`,
		`keymesh_origin_usage_records_total{result="malformed"} 9`} {
		if !strings.Contains(string(m), line) {
			t.Errorf("/metrics lacks %s", line)
		}
	}
}

// A record's id is kept for the dedup retention after its time; a copy
// arriving once it is pruned is refused by its age, never counted again.
func TestUsageCopiesPastTheRetentionAreRefused(t *testing.T) {
	cfg := testConfig(t.TempDir())
	clk := &fakeClock{t: usageClock}
	cfg.now = clk.now
	cfg.UsagePruneInterval = 20 * time.Millisecond
	s := startServer(t, cfg)
	c := newClient(t, s)
	var d struct{ ID string }
	c.must(201, "POST", "/v1/projects/default/deployments", dep("chat", nil, "/"), &d)
	e := newEdgePublisher(t, s.NATSURL(), s, "edge-1")
	old := event.Usage{ID: "late", Edge: "edge-1", Project: "default", Deployment: d.ID, PromptTokens: 3, CompletionTokens: 4,
		Time: usageClock.Add(-DefaultConfig().UsageDedupRetention).Add(time.Hour)}
	var proj struct{ ID string }
	c.must(200, "GET", "/v1/projects/default", nil, &proj)
	old.Project = proj.ID
	e.must(old, "")
	waitUsageStats(t, s, 1, 0, 0)
	seen := func() bool {
		var n int
		if err := s.store.db.QueryRow(s.store.q(`SELECT COUNT(*) FROM usage_seen WHERE id = ?`), "late").Scan(&n); err != nil {
			t.Fatal(err)
		}
		return n == 1
	}
	if !seen() {
		t.Fatal("the stored record's id is not kept")
	}
	clk.add(2 * time.Hour) // its time is now past the retention
	waitFor(t, "the id to be pruned", func() bool { return !seen() })
	e.must(old, "")
	waitUsageStats(t, s, 1, 0, 1)
	r := usageReport(t, c, "since="+url.QueryEscape(old.Time.Add(-time.Hour).Format(time.RFC3339))+"&until=2026-03-16")
	if len(r.Items) != 1 || r.Items[0].UsageCounts != counts(1, 3, 4, 0, 0) {
		t.Fatalf("the late copy counted: %+v", r.Items)
	}
}

// The usage stream is a bounded work queue that refuses publishes when
// full, never evicting unread records: records published while no origin
// runs wait in it, and the origin stores every one it accepted after a
// restart; records it refused stay with the edge (which retries).
func TestUsageWaitsInTheStreamWhileTheOriginIsDown(t *testing.T) {
	ext := startExternalNATS(t, t.TempDir(), -1)
	cfg := testConfig(t.TempDir())
	cfg.NATSURL = ext.url
	cfg.UsageStreamMaxBytes = 16 << 10
	s := startServer(t, cfg)
	c := newClient(t, s)
	var d struct{ ID string }
	c.must(201, "POST", "/v1/projects/default/deployments", dep("chat", nil, "/"), &d)
	var proj struct{ ID string }
	c.must(200, "GET", "/v1/projects/default", nil, &proj)

	nc, err := nats.Connect(ext.url)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(nc.Close)
	js, _ := jetstream.New(nc)
	ctx := context.Background()
	var st jetstream.Stream
	waitFor(t, "the usage stream", func() bool { st, err = js.Stream(ctx, event.UsageStreamName); return err == nil })
	info, err := st.Info(ctx)
	if err != nil {
		t.Fatal(err)
	}
	sc := info.Config
	if sc.Retention != jetstream.WorkQueuePolicy || sc.Discard != jetstream.DiscardNew || sc.MaxBytes != 16<<10 ||
		sc.MaxAge != DefaultConfig().UsageStreamMaxAge || sc.Duplicates != usageStreamDuplicates || sc.Storage != jetstream.FileStorage ||
		!sc.DenyDelete || !sc.DenyPurge || len(sc.Subjects) != 1 || sc.Subjects[0] != event.UsageStreamSubjects {
		t.Fatalf("usage stream config %+v", sc)
	}
	if err := s.Shutdown(ctx); err != nil {
		t.Fatal(err)
	}

	e := newEdgePublisher(t, ext.url, nil, "edge-1")
	accepted := 0
	var full error
	for i := 0; i < 1000 && full == nil; i++ {
		raw, _ := json.Marshal(event.Usage{ID: fmt.Sprintf("r%04d", i), Edge: "edge-1", Project: proj.ID, Deployment: d.ID,
			Model: strings.Repeat("m", 100), PromptTokens: 2, CompletionTokens: 1, Time: time.Now()})
		if _, full = e.publish(raw, fmt.Sprintf("r%04d", i)); full == nil {
			accepted++
		}
	}
	if full == nil || !strings.Contains(strings.ToLower(full.Error()), "maximum bytes") || accepted < 10 {
		t.Fatalf("a full usage stream: %d accepted, then %v", accepted, full)
	}
	if info, err = st.Info(ctx); err != nil || info.State.Msgs != uint64(accepted) || info.State.FirstSeq != 1 {
		t.Fatalf("the stream holds %+v (%v), want the %d accepted from the first", info.State, err, accepted)
	}

	s2 := startServer(t, cfg) // the same data dir and store
	waitUsageStats(t, s2, uint64(accepted), 0, 0)
	r := usageReport(t, newClient(t, s2), "")
	if len(r.Items) != 1 || r.Items[0].UsageCounts != counts(int64(accepted), 2*int64(accepted), int64(accepted), 0, 0) {
		t.Fatalf("after the restart: %+v, want %d requests", r.Items, accepted)
	}
	waitFor(t, "the stored records to leave the stream", func() bool {
		info, err := st.Info(ctx)
		return err == nil && info.State.Msgs == 0
	})
	if _, err := e.publish([]byte(`{}`), ""); err != nil { // room again
		t.Fatalf("publishing after the stream drained: %v", err)
	}
}

// Replicas sharing a store and NATS share the consumer: each record is
// stored by one of them, and the sums are exact.
func TestUsageReplicasPostgres(t *testing.T) {
	ext := startExternalNATS(t, t.TempDir(), -1)
	cfg := testConfig(t.TempDir())
	cfg.Store, cfg.NATSURL = postgresDSN(t), ext.url
	a := startServer(t, cfg)
	cfg2 := testConfig(t.TempDir())
	cfg2.Store, cfg2.NATSURL = cfg.Store, ext.url
	copyIdentity(t, cfg.DataDir, cfg2.DataDir)
	b := startServer(t, cfg2)
	c := newClient(t, a)
	var d struct{ ID string }
	c.must(201, "POST", "/v1/projects/default/deployments", dep("chat", nil, "/"), &d)
	var proj struct{ ID string }
	c.must(200, "GET", "/v1/projects/default", nil, &proj)
	e := newEdgePublisher(t, ext.url, nil, "edge-1")
	const n = 300
	for i := range n {
		u := event.Usage{ID: fmt.Sprintf("r%d", i), Edge: "edge-1", Project: proj.ID, Deployment: d.ID, PromptTokens: 1, CompletionTokens: 2, Time: time.Now()}
		e.must(u, u.ID)
		if i%3 == 0 {
			e.must(u, "") // a copy the stream lets through
		}
	}
	waitFor(t, "every record stored once", func() bool {
		sa, da, _ := a.UsageStats()
		sb, db, _ := b.UsageStats()
		return sa+sb == n && da+db == n/3
	})
	r := usageReport(t, c, "")
	if len(r.Items) != 1 || r.Items[0].UsageCounts != counts(n, n, 2*n, 0, 0) {
		t.Fatalf("sums over two replicas: %+v", r.Items)
	}
}

func TestUsageConfigBounds(t *testing.T) {
	for _, cfg := range []Config{
		{UsageStreamMaxAge: time.Minute},
		{UsageStreamMaxAge: 40 * 24 * time.Hour},
		{UsageDedupRetention: time.Hour},
		{UsageStreamMaxBytes: -1},
	} {
		cfg.DataDir = t.TempDir()
		if err := cfg.fill(); !errors.Is(err, ErrInvalidConfig) {
			t.Errorf("%+v: %v, want ErrInvalidConfig", cfg, err)
		}
	}
}

func TestUsageBatchMessage(t *testing.T) {
	eachStore(t, testUsageBatchMessage)
}

// A message holding several records (one a line, as edges batch them)
// has each record checked and stored or refused on its own: a malformed
// line is counted malformed and the others are stored; a record twice in
// one message, or again in another, counts once.
func testUsageBatchMessage(t *testing.T, cfg Config) {
	clk := &fakeClock{t: usageClock}
	cfg.now = clk.now
	s := startServer(t, cfg)
	c := newClient(t, s)
	var d struct{ ID string }
	c.must(201, "POST", "/v1/projects/default/deployments", dep("chat", []string{"chat.example"}, "/"), &d)
	var k struct{ ID, Project, Key string }
	c.must(201, "POST", "/v1/projects/default/keys", map[string]any{"name": "k", "deployments": []string{d.ID}}, &k)

	e := newEdgePublisher(t, s.NATSURL(), s, "edge-1")
	t1 := usageClock.Add(-time.Minute)
	line := func(id string, prompt int64) []byte {
		raw, err := json.Marshal(event.Usage{ID: id, Edge: "edge-1", KeyID: k.ID, Project: k.Project, Deployment: d.ID,
			Model: "m1", PromptTokens: prompt, CompletionTokens: 1, Status: 200, DurationMS: 3, Time: t1})
		if err != nil {
			t.Fatal(err)
		}
		return raw
	}
	msg := bytes.Join([][]byte{line("a1", 10), []byte("garbage"), line("a2", 20), line("a3", -1), line("a1", 10), line("a4", 40)}, []byte{'\n'})
	waitFor(t, "the usage stream to take a batch", func() bool {
		_, err := e.publish(msg, "batch-1")
		return err == nil
	})
	waitUsageStats(t, s, 3, 1, 2)
	// The next message repeats a record of the first: counted once.
	if _, err := e.publish(bytes.Join([][]byte{line("a4", 40), line("a5", 50)}, []byte{'\n'}), "batch-2"); err != nil {
		t.Fatal(err)
	}
	// And an old edge's message, one record.
	if _, err := e.publish(line("a6", 60), "a6"); err != nil {
		t.Fatal(err)
	}
	waitUsageStats(t, s, 5, 2, 2)
	r := usageReport(t, c, "project=default&since=2026-03-15T00:00:00Z&until=2026-03-16T00:00:00Z")
	if len(r.Items) != 1 || r.Items[0].UsageCounts != counts(5, 180, 5, 0, 0) {
		t.Fatalf("the batches' total: %+v", r)
	}
}
