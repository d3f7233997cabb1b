package origin

import (
	"crypto/sha256"
	"encoding/json"
	"fmt"
	"io"
	"maps"
	"net/http"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus/testutil/promlint"
	dto "github.com/prometheus/client_model/go"
	"github.com/prometheus/common/expfmt"
	"github.com/prometheus/common/model"

	"github.com/keymesh/keymesh/apikey"
	"github.com/keymesh/keymesh/event"
)

// scrape fetches s's /metrics and parses it as Prometheus text (a parse
// error fails the test: the exposition must be well formed).
func scrape(t *testing.T, s *Server) map[string]*dto.MetricFamily {
	t.Helper()
	st, body := getText(t, s, "/metrics")
	if st != http.StatusOK {
		t.Fatalf("/metrics: %d %s", st, body)
	}
	p := expfmt.NewTextParser(model.UTF8Validation)
	mfs, err := p.TextToMetricFamilies(strings.NewReader(body))
	if err != nil {
		t.Fatalf("parsing /metrics: %v\n%s", err, body)
	}
	return mfs
}

// sample returns the value of the series of name whose labels include
// labels (name=value pairs), 0 when there is none; a histogram's value is
// its sample count.
func sample(t *testing.T, mfs map[string]*dto.MetricFamily, name string, labels ...string) float64 {
	t.Helper()
	mf := mfs[name]
	if mf == nil {
		return 0
	}
	for _, m := range mf.Metric {
		if !hasLabels(m, labels...) {
			continue
		}
		switch mf.GetType() {
		case dto.MetricType_COUNTER:
			return m.GetCounter().GetValue()
		case dto.MetricType_GAUGE:
			return m.GetGauge().GetValue()
		case dto.MetricType_HISTOGRAM:
			return float64(m.GetHistogram().GetSampleCount())
		default:
			t.Fatalf("%s: unexpected type %v", name, mf.GetType())
		}
	}
	return 0
}

func hasLabels(m *dto.Metric, labels ...string) bool {
	for i := 0; i+1 < len(labels); i += 2 {
		found := false
		for _, lp := range m.Label {
			if lp.GetName() == labels[i] && lp.GetValue() == labels[i+1] {
				found = true
			}
		}
		if !found {
			return false
		}
	}
	return true
}

// The metrics the origin had before its registry keep their names, types,
// help and meaning; the outbox lag is their difference; the Go and process
// collectors are there; every name passes promlint.
func TestMetricsKeepTheirNames(t *testing.T) {
	cfg := testConfig(t.TempDir())
	cfg.disablePublisher = true // committed, never published: a lag to see
	s := startServer(t, cfg)
	c := newClient(t, s)
	c.must(201, "POST", "/v1/projects/default/deployments", chatDep, nil)
	c.must(201, "POST", "/v1/projects/default/deployments", map[string]any{"name": "other", "upstreams": map[string][]string{"*": {"http://x:1"}}}, nil)
	if s.Revision() != 2 {
		t.Fatalf("revision %d, want 2", s.Revision())
	}

	mfs := scrape(t, s)
	for _, want := range []struct {
		name  string
		typ   dto.MetricType
		help  string
		value float64
	}{
		{"keymesh_origin_revision", dto.MetricType_GAUGE, "Last committed revision.", 2},
		{"keymesh_origin_published_revision", dto.MetricType_GAUGE, "Revision up to which every event is in JetStream.", 0},
		{"keymesh_origin_nats_connected", dto.MetricType_GAUGE, "1 if the NATS client is connected.", 1},
		{"keymesh_origin_stream_conflict", dto.MetricType_GAUGE, "1 while the event stream holds a message this origin did not publish (publishing is stopped).", 0},
		{"keymesh_origin_stream_conflicts_total", dto.MetricType_COUNTER, "Times the event stream was found holding a message this origin did not publish.", 0},
		{"keymesh_origin_publish_errors_total", dto.MetricType_COUNTER, "Failed attempts to publish events to JetStream.", 0},
		{"keymesh_origin_jetstream_restarts_total", dto.MetricType_COUNTER, "Restarts of the embedded JetStream after write errors or its disabling.", 0},
		{"keymesh_origin_outbox_lag", dto.MetricType_GAUGE, "", 2},
		{"keymesh_origin_nats_reconnects_total", dto.MetricType_COUNTER, "", 0},
	} {
		mf := mfs[want.name]
		if mf == nil {
			t.Errorf("%s missing", want.name)
			continue
		}
		if mf.GetType() != want.typ || len(mf.Metric) != 1 || len(mf.Metric[0].Label) != 0 {
			t.Errorf("%s: type %v with %d series, want one unlabelled %v", want.name, mf.GetType(), len(mf.Metric), want.typ)
		}
		if want.help != "" && mf.GetHelp() != want.help {
			t.Errorf("%s: help %q, want %q", want.name, mf.GetHelp(), want.help)
		}
		if v := sample(t, mfs, want.name); v != want.value {
			t.Errorf("%s = %v, want %v", want.name, v, want.value)
		}
	}
	// The text form the older tests and scripts grep for.
	if _, body := getText(t, s, "/metrics"); !strings.Contains(body, "\nkeymesh_origin_publish_errors_total 0\n") ||
		!strings.Contains(body, "\nkeymesh_origin_revision 2\n") {
		t.Errorf("exposition lines changed:\n%s", body)
	}
	for _, name := range []string{"go_goroutines", "process_start_time_seconds"} {
		if mfs[name] == nil {
			t.Errorf("%s missing (Go and process collectors)", name)
		}
	}

	_, body := getText(t, s, "/metrics")
	problems, err := promlint.New(strings.NewReader(body)).Lint()
	if err != nil {
		t.Fatal(err)
	}
	for _, p := range problems {
		if strings.HasPrefix(p.Metric, "keymesh_") {
			t.Errorf("promlint: %s: %s", p.Metric, p.Text)
		}
	}
}

// Two origins in one process have registries of their own.
func TestMetricsPerServer(t *testing.T) {
	a := startServer(t, testConfig(t.TempDir()))
	b := startServer(t, testConfig(t.TempDir()))
	newClient(t, a)
	if v := sample(t, scrape(t, a), "keymesh_origin_logins_total", "result", "ok"); v != 1 {
		t.Fatalf("a's ok logins %v, want 1", v)
	}
	if v := sample(t, scrape(t, b), "keymesh_origin_logins_total", "result", "ok"); v != 0 {
		t.Fatalf("b's ok logins %v, want 0 (a's counted)", v)
	}
}

// Each new counter moves with what it counts: requests and their latency
// by route and code, logins by result, key lookups and snapshots by
// result, audit records stored and dropped by reason. No label holds a
// secret, a user name or a path.
func TestMetricsCount(t *testing.T) {
	s := startServer(t, testConfig(t.TempDir()))
	before := scrape(t, s)
	for _, name := range []string{"keymesh_origin_logins_total", "keymesh_origin_lookups_total",
		"keymesh_origin_snapshots_total", "keymesh_origin_audit_dropped_total"} {
		if before[name] == nil {
			t.Errorf("%s missing before anything happened (its fixed labels start at 0)", name)
		}
	}
	delta := func(after map[string]*dto.MetricFamily, name string, labels ...string) float64 {
		return sample(t, after, name, labels...) - sample(t, before, name, labels...)
	}

	// Requests.
	for range 3 {
		if st, _ := getText(t, s, "/health"); st != 200 {
			t.Fatalf("/health %d", st)
		}
	}
	// Logins: one good, bad ones until throttled.
	c := newClient(t, s)
	anon := &client{t: t, base: "http://" + s.Addr()}
	failed, throttled := 0, 0
	for i := 0; throttled == 0; i++ {
		if i == 20 {
			t.Fatal("no login throttled after 20 failures")
		}
		st, body := anon.do("POST", "/v1/auth/login", map[string]string{"username": "mallory", "password": "guess"})
		switch st {
		case http.StatusUnauthorized:
			failed++
		case http.StatusTooManyRequests:
			throttled++
		default:
			t.Fatalf("bad login: %d %s", st, body)
		}
	}

	// Lookups: a key, an unknown hash, a malformed request; a snapshot.
	var dep struct{ ID string }
	c.must(201, "POST", "/v1/projects/default/deployments", chatDep, &dep)
	var k struct{ ID, Key string }
	c.must(201, "POST", "/v1/projects/default/keys", map[string]any{"deployments": []string{dep.ID}}, &k)
	nc := connect(t, s)
	h, err := apikey.ParseString(k.Key)
	if err != nil {
		t.Fatal(err)
	}
	if r := requestV(t, nc, event.LookupKeySubject, h[:], s); r.Kind != event.KindKey {
		t.Fatalf("lookup: %+v", r)
	}
	unknown := sha256.Sum256([]byte("nope"))
	for range 2 {
		if r := requestV(t, nc, event.LookupKeySubject, unknown[:], s); r.Kind != event.KindKeyNotFound {
			t.Fatalf("unknown lookup: %+v", r)
		}
	}
	if m, err := nc.Request(event.LookupKeySubject, []byte("short"), 5*time.Second); err != nil || m.Header.Get(event.ErrorHeader) == "" {
		t.Fatalf("malformed lookup: %v", err)
	}
	requestV(t, nc, event.SnapshotSubject, nil, s)

	// Audit: the two admin mutations are stored; an edge's batch with one
	// record of its own, one naming another edge, and an unreadable batch.
	batch, _ := json.Marshal([]map[string]any{
		{"edge": "edge-1", "key_id": k.ID, "method": "POST", "path": "/v1/chat/completions", "status": 200},
		{"edge": "edge-2", "key_id": k.ID, "method": "POST", "path": "/v1/chat/completions", "status": 200},
	})
	for _, b := range [][]byte{batch, []byte("garbage")} {
		if err := nc.Publish(event.EdgeSubject(event.EdgeAuditSubject, "edge-1"), b); err != nil {
			t.Fatal(err)
		}
	}
	var after map[string]*dto.MetricFamily
	waitFor(t, "audit records counted", func() bool {
		after = scrape(t, s)
		return delta(after, "keymesh_origin_audit_stored_total") >= 3 && delta(after, "keymesh_origin_audit_bad_batches_total") >= 1
	})

	for _, want := range []struct {
		name   string
		labels []string
		delta  float64
	}{
		{"keymesh_origin_http_requests_total", []string{"route", "GET /health", "code", "200"}, 3},
		{"keymesh_origin_http_request_duration_seconds", []string{"route", "GET /health"}, 3},
		{"keymesh_origin_http_requests_total", []string{"route", "POST /v1/auth/login", "code", "200"}, 1},
		{"keymesh_origin_http_requests_total", []string{"route", "POST /v1/auth/login", "code", "401"}, float64(failed)},
		{"keymesh_origin_http_requests_total", []string{"route", "POST /v1/auth/login", "code", "429"}, float64(throttled)},
		{"keymesh_origin_http_requests_total", []string{"route", "POST /v1/projects/{p}/keys", "code", "201"}, 1},
		{"keymesh_origin_logins_total", []string{"result", "ok"}, 1},
		{"keymesh_origin_logins_total", []string{"result", "failed"}, float64(failed)},
		{"keymesh_origin_logins_total", []string{"result", "throttled"}, float64(throttled)},
		{"keymesh_origin_lookups_total", []string{"result", "found"}, 1},
		{"keymesh_origin_lookups_total", []string{"result", "not_found"}, 2},
		{"keymesh_origin_lookups_total", []string{"result", "invalid"}, 1},
		{"keymesh_origin_lookups_total", []string{"result", "error"}, 0},
		{"keymesh_origin_snapshots_total", []string{"result", "ok"}, 1},
		{"keymesh_origin_audit_stored_total", nil, 3},
		{"keymesh_origin_audit_dropped_total", []string{"reason", "wrong_edge"}, 1},
		{"keymesh_origin_audit_dropped_total", []string{"reason", "queue_full"}, 0},
		{"keymesh_origin_audit_bad_batches_total", nil, 1},
	} {
		if d := delta(after, want.name, want.labels...); d != want.delta {
			t.Errorf("%s%v moved by %v, want %v", want.name, want.labels, d, want.delta)
		}
	}
	if stored, dropped, bad := s.AuditStats(); stored != 3 || dropped != 1 || bad != 1 {
		t.Errorf("AuditStats %d %d %d, want 3 1 1", stored, dropped, bad)
	}

	// No label carries a secret, a password, a user name or an id.
	for name, mf := range after {
		for _, m := range mf.Metric {
			for _, lp := range m.Label {
				for _, bad := range []string{k.Key, k.ID, dep.ID, testPassword, "guess", "mallory", "admin"} {
					if strings.Contains(lp.GetValue(), bad) {
						t.Errorf("%s{%s=%q} holds %q", name, lp.GetName(), lp.GetValue(), bad)
					}
				}
			}
		}
	}
}

// A route label is a registered pattern or "unmatched", whatever the path:
// 50 ids make one series, as do 50 unknown paths, a wrong method and a
// path ServeMux redirects.
func TestMetricsRouteLabelsBounded(t *testing.T) {
	s := startServer(t, testConfig(t.TempDir()))
	c := newClient(t, s)
	for i := range 50 {
		st, b := c.do("GET", fmt.Sprintf("/v1/projects/default/keys/key_%d", i), nil)
		wantError(t, "unknown key", st, b, 404, "NOT_FOUND")
		st, _ = c.do("GET", fmt.Sprintf("/nothing/here/%d", i), nil)
		if st != 404 {
			t.Fatalf("unknown path: %d", st)
		}
	}
	if st, _ := c.do("PUT", "/health", nil); st != 405 {
		t.Fatalf("PUT /health: %d", st)
	}
	// ServeMux answers an unclean path with a redirect, named by the
	// pattern the clean path matches, never by the path.
	req, _ := http.NewRequest("GET", "http://"+s.Addr()+"/v1/projects/default/../default/keys/key_x", nil)
	noFollow := &http.Client{CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse }}
	resp, err := noFollow.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	_, _ = io.Copy(io.Discard, resp.Body)
	resp.Body.Close()
	if resp.StatusCode/100 != 3 {
		t.Fatalf("unclean path: %d, want a redirect", resp.StatusCode)
	}

	mfs := scrape(t, s)
	if v := sample(t, mfs, "keymesh_origin_http_requests_total", "route", "GET /v1/projects/{p}/keys/{id}", "code", "404"); v != 50 {
		t.Errorf("GET key 404s: %v, want 50 in one series", v)
	}
	if v := sample(t, mfs, "keymesh_origin_http_requests_total", "route", routeUnmatched, "code", "404"); v != 50 {
		t.Errorf("unmatched 404s: %v, want 50 in one series", v)
	}
	if v := sample(t, mfs, "keymesh_origin_http_requests_total", "route", routeUnmatched, "code", "405"); v != 1 {
		t.Errorf("unmatched 405s: %v, want 1", v)
	}
	if v := sample(t, mfs, "keymesh_origin_http_requests_total", "route", "GET /v1/projects/{p}/keys/{id}", "code", strconv.Itoa(resp.StatusCode)); v != 1 {
		t.Errorf("redirect: %v, want 1", v)
	}
	allowed := append(slices.Clone(s.patterns), routeUnmatched)
	want := []string{"GET /v1/projects/{p}/keys/{id}", "POST /v1/auth/login", routeUnmatched}
	for _, name := range []string{"keymesh_origin_http_requests_total", "keymesh_origin_http_request_duration_seconds"} {
		routes := map[string]bool{}
		for _, m := range mfs[name].GetMetric() {
			for _, lp := range m.Label {
				if lp.GetName() != "route" {
					continue
				}
				routes[lp.GetValue()] = true
				if !slices.Contains(allowed, lp.GetValue()) {
					t.Errorf("%s: route label %q is not a registered pattern", name, lp.GetValue())
				}
			}
		}
		if got := slices.Sorted(maps.Keys(routes)); !slices.Equal(got, want) {
			t.Errorf("%s: route values %q, want %q", name, got, want)
		}
	}
}
