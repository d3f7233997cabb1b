package proxy

import (
	"bufio"
	"encoding/json"
	"log/slog"
	"net"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/valyala/fasthttp"

	"github.com/keymesh/keymesh/cache"
	"github.com/keymesh/keymesh/event"
)

const auditTestSecret = "km_auditTestSecretThatMustNeverBeRecorded"

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

func TestAuditFullBufferDropsWithoutBlocking(t *testing.T) {
	a, err := newAuditor(nil, "e1", "eu", 2, "", time.Hour, slog.New(slog.DiscardHandler))
	if err != nil {
		t.Fatal(err)
	}
	ctx := auditCtx(200)
	out := &outcome{}
	done := make(chan struct{})
	go func() {
		for range 1000 {
			a.record(ctx, out)
		}
		close(done)
	}()
	select {
	case <-done:
	case <-time.After(5 * time.Second):
		t.Fatal("record blocked on a full buffer")
	}
	if got := a.dropped.Load(); got != 998 {
		t.Fatalf("dropped %d, want 998", got)
	}
	if n := len(a.pending.ends); n != 2 {
		t.Fatalf("queued %d, want 2", n)
	}
}

func TestAuditRecordAllocations(t *testing.T) {
	a, err := newAuditor(nil, "e1", "eu", 100_000, "", time.Hour, slog.New(slog.DiscardHandler))
	if err != nil {
		t.Fatal(err)
	}
	ctx := auditCtx(200)
	out := &outcome{req: &request{path: []byte("/v1/chat/completions")}, dep: &event.Deployment{ID: "dep_1", Name: "chat", Project: "prj_1"}, key: &cache.Key{ID: "key_1", Project: "prj_1"}}
	a.record(ctx, out) // the pending batch grows once
	if n := testing.AllocsPerRun(200, func() { a.record(ctx, out) }); n != 0 {
		t.Fatalf("record allocates %v times, want 0", n)
	}
}

func TestAuditFileShippedOnShutdown(t *testing.T) {
	path := filepath.Join(t.TempDir(), "audit.jsonl")
	a, err := newAuditor(nil, "edge-7", "eu", 100, path, time.Hour, slog.New(slog.DiscardHandler))
	if err != nil {
		t.Fatal(err)
	}
	a.start()
	dep := &event.Deployment{ID: "dep_1", Name: "chat", Project: "prj_1"}
	// The path recorded is the one the edge read (never the query).
	read := &request{path: []byte("/v1/chat/completions")}
	a.record(auditCtx(200), &outcome{req: read, dep: dep, key: &cache.Key{ID: "key_1", Project: "prj_1"}})
	a.record(auditCtx(401), &outcome{req: read, dep: dep})
	a.record(auditCtx(404), &outcome{})
	// The flush interval is an hour: only shutdown writes these.
	a.shutdown(true)

	raw, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	if strings.Contains(string(raw), auditTestSecret) {
		t.Fatal("the client's key appears in the audit file")
	}
	if fi, _ := os.Stat(path); fi.Mode().Perm() != 0o600 {
		t.Fatalf("audit file mode %v", fi.Mode().Perm())
	}
	var recs []auditWire
	sc := bufio.NewScanner(strings.NewReader(string(raw)))
	for sc.Scan() {
		var w auditWire
		if err := json.Unmarshal(sc.Bytes(), &w); err != nil {
			t.Fatalf("line %q: %v", sc.Text(), err)
		}
		recs = append(recs, w)
	}
	if len(recs) != 3 {
		t.Fatalf("%d lines, want 3:\n%s", len(recs), raw)
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

func TestEdgeIDDefaults(t *testing.T) {
	dir := t.TempDir()
	cfg := Config{DataDir: dir, Listen: "127.0.0.1:0"}
	id1, err := edgeID(&cfg)
	if err != nil || id1 == "" {
		t.Fatalf("edgeID: %q %v", id1, err)
	}
	if id2, _ := edgeID(&cfg); id2 != id1 {
		t.Fatalf("persisted id changed: %q then %q", id1, id2)
	}
	cfg = Config{Listen: "127.0.0.1:0"}
	a, _ := edgeID(&cfg)
	b, _ := edgeID(&cfg)
	if a == b {
		t.Fatalf("two edges on random ports share id %q", a)
	}
	cfg = Config{Listen: "127.0.0.1:8080"}
	if id, _ := edgeID(&cfg); !strings.HasSuffix(id, "/127.0.0.1:8080") {
		t.Fatalf("id %q", id)
	}
	cfg = Config{ID: "eu-1"}
	if id, _ := edgeID(&cfg); id != "eu-1" {
		t.Fatalf("id %q", id)
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
