package proxy

import (
	"encoding/json"
	"net"
	"strings"
	"sync"
	"testing"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/valyala/fasthttp"

	"github.com/keymesh/keymesh/cache"
	"github.com/keymesh/keymesh/event"
)

const auditTestSecret = "km_auditTestSecretThatMustNeverBeRecorded"

// testMetrics returns the data plane's metrics in a registry of their own.
func testMetrics(tb testing.TB) *metrics {
	tb.Helper()
	m, err := newMetrics(prometheus.NewRegistry(), newLimiter(nil, 1))
	if err != nil {
		tb.Fatal(err)
	}
	return m
}

// memorySink is an AuditSink that keeps every record, copied.
type memorySink struct {
	mu   sync.Mutex
	recs [][]byte
}

func (s *memorySink) Record(rec []byte) {
	s.mu.Lock()
	s.recs = append(s.recs, append([]byte(nil), rec...))
	s.mu.Unlock()
}

// records decodes what the sink holds.
func (s *memorySink) records(t *testing.T) []auditWire {
	t.Helper()
	s.mu.Lock()
	defer s.mu.Unlock()
	var out []auditWire
	for _, r := range s.recs {
		var w auditWire
		if err := json.Unmarshal(r, &w); err != nil {
			t.Fatalf("record %s: %v", r, err)
		}
		out = append(out, w)
	}
	return out
}

// countSink counts records and keeps none.
type countSink struct{ n, bytes int }

func (s *countSink) Record(rec []byte) { s.n++; s.bytes += len(rec) }

func auditCtx(status int) *fasthttp.RequestCtx {
	var req fasthttp.Request
	req.Header.SetMethod(fasthttp.MethodPost)
	req.SetRequestURI("/v1/chat/completions?api_key=" + auditTestSecret)
	req.Header.Set("X-API-Key", auditTestSecret)
	req.Header.Set("Authorization", "Bearer "+auditTestSecret)
	ctx := &fasthttp.RequestCtx{}
	ctx.Init(&req, &net.TCPAddr{IP: net.ParseIP("192.0.2.1"), Port: 4321}, nil)
	ctx.Response.Header.Set("X-Request-Id", "rid-1")
	ctx.SetStatusCode(status)
	return ctx
}

func TestAuditRecordAllocations(t *testing.T) {
	sink := &countSink{}
	a := newAuditRecorder(sink, "e1", "eu")
	ctx := auditCtx(200)
	out := &outcome{req: &request{path: []byte("/v1/chat/completions")}, dep: &event.Deployment{ID: "dep_1", Name: "chat", Project: "prj_1"}, key: &cache.Key{ID: "key_1", Project: "prj_1"}}
	a.record(ctx, out) // the buffer pool fills once
	if n := testing.AllocsPerRun(200, func() { a.record(ctx, out) }); n != 0 {
		t.Fatalf("record allocates %v times, want 0", n)
	}
	if sink.n != 202 {
		t.Fatalf("%d records, want 202", sink.n)
	}
}

// The record names the edge, the request and its outcome — the path the
// edge read, never its query — and holds no credential.
func TestAuditRecordFields(t *testing.T) {
	sink := &memorySink{}
	a := newAuditRecorder(sink, "edge-7", "eu")
	dep := &event.Deployment{ID: "dep_1", Name: "chat", Project: "prj_1"}
	read := &request{path: []byte("/v1/chat/completions")}
	a.record(auditCtx(200), &outcome{req: read, dep: dep, key: &cache.Key{ID: "key_1", Project: "prj_1"}})
	a.record(auditCtx(401), &outcome{req: read, dep: dep})
	a.record(auditCtx(404), &outcome{})
	for _, r := range sink.recs {
		if strings.Contains(string(r), auditTestSecret) {
			t.Fatalf("the client's key appears in the audit record %s", r)
		}
	}
	recs := sink.records(t)
	if len(recs) != 3 {
		t.Fatalf("%d records, want 3", len(recs))
	}
	r := recs[0]
	if r.Edge != "edge-7" || r.Site != "eu" || r.ClientIP != "192.0.2.1" || r.KeyID != "key_1" || r.Project != "prj_1" ||
		r.Deployment != "dep_1" || r.DeploymentName != "chat" || r.Method != "POST" || r.Path != "/v1/chat/completions" ||
		r.Status != 200 || r.RequestID != "rid-1" || r.Time.IsZero() || r.DurationMS < 0 {
		t.Fatalf("record %+v", r)
	}
	if recs[1].KeyID != "" || recs[1].Status != 401 || recs[2].Deployment != "" || recs[2].Status != 404 {
		t.Fatalf("records %+v", recs[1:])
	}
}

// FuzzAuditString: a string the edge writes into an audit record reads back
// as encoding/json would have written it, whatever bytes a client sent.
func FuzzAuditString(f *testing.F) {
	for _, s := range []string{"/v1/chat/completions", "quote\" back\\slash", "ctl\x00\x1f\n\t", "bad \xff utf-8 \xe2\x82", "é\u2028"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		enc := appendJSONString(nil, []byte(s))
		var got string
		if err := json.Unmarshal(enc, &got); err != nil {
			t.Fatalf("%q encoded as %s: %v", s, enc, err)
		}
		want, _ := json.Marshal(s)
		var wantS string
		_ = json.Unmarshal(want, &wantS)
		if got != wantS {
			t.Fatalf("%q reads back as %q, encoding/json as %q", s, got, wantS)
		}
	})
}
