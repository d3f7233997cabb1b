package proxy

import (
	"context"
	"encoding/json"
	"log/slog"
	"strings"
	"sync"
	"testing"

	"github.com/keymesh/keymesh/apikey"
	"github.com/keymesh/keymesh/cache"
	"github.com/keymesh/keymesh/event"
)

// countingHandler counts the log records whose message holds a substring.
type countingHandler struct {
	mu   sync.Mutex
	msgs []string
}

func (h *countingHandler) Enabled(context.Context, slog.Level) bool { return true }
func (h *countingHandler) Handle(_ context.Context, r slog.Record) error {
	h.mu.Lock()
	defer h.mu.Unlock()
	h.msgs = append(h.msgs, r.Message)
	return nil
}
func (h *countingHandler) WithAttrs([]slog.Attr) slog.Handler { return h }
func (h *countingHandler) WithGroup(string) slog.Handler      { return h }

func (h *countingHandler) count(sub string) int {
	h.mu.Lock()
	defer h.mu.Unlock()
	n := 0
	for _, m := range h.msgs {
		if strings.Contains(m, sub) {
			n++
		}
	}
	return n
}

// A deployment with no upstream for the edge's site and no "*" is a
// misconfiguration: 502 "no upstream configured for site eu" — not the
// unreachable upstream's message — counted per request in
// keymesh_edge_no_upstream_total and logged once, not per request.
func TestHandlerNoUpstreamForSite(t *testing.T) {
	up := newUpstream(t, nil)
	d := deployment("dep_1", up.URL, false)
	d.Upstreams = map[string][]string{"us": {up.URL}}
	down := deployment("dep_2", "http://127.0.0.1:1", false) // nothing listens on port 1
	down.PathPrefix = "/down"
	st := &fakeState{deps: cache.NewDeployments([]event.Deployment{d, down}, 1)}
	logs := &countingHandler{}
	p := startProxyConfig(t, st, func(c *Config) { c.Logger = slog.New(logs) })
	c := client(t)
	for range 3 {
		resp, body := do(t, c, "POST", p.url+"/v1/chat/completions", `{}`, nil)
		wantError(t, resp, body, 502, "UPSTREAM_ERROR")
		var e struct{ Error struct{ Message string } }
		_ = json.Unmarshal([]byte(body), &e)
		if e.Error.Message != "no upstream configured for site eu" {
			t.Fatalf("message %q", e.Error.Message)
		}
	}
	if n := len(up.requests()); n != 0 {
		t.Fatalf("the upstream of another site got %d requests", n)
	}
	if n := p.counter(t, "keymesh_edge_no_upstream_total", "deployment", "dep_1"); n != 3 {
		t.Fatalf("keymesh_edge_no_upstream_total = %v, want 3", n)
	}
	if n := logs.count("no upstream for this edge's site"); n != 1 {
		t.Fatalf("logged %d times, want once", n)
	}

	// An unreachable upstream keeps its own 502, and is not counted as
	// missing.
	resp, body := do(t, c, "POST", p.url+"/down/x", `{}`, nil)
	wantError(t, resp, body, 502, "UPSTREAM_ERROR")
	if strings.Contains(body, "no upstream configured") {
		t.Fatalf("an unreachable upstream answered as a missing one: %s", body)
	}
	if n := p.counter(t, "keymesh_edge_no_upstream_total", "deployment", "dep_2"); n != 0 {
		t.Fatalf("unreachable upstream counted as missing: %v", n)
	}
	recs := p.audit.records(t)
	if len(recs) != 4 {
		t.Fatalf("%d audit records, want 4", len(recs))
	}
	for i, r := range recs {
		// The misconfiguration says so in the audit log too; an
		// unreachable upstream is no refusal.
		want := "no_upstream"
		if i == 3 {
			want = ""
		}
		if r.Status != 502 || r.Reason != want {
			t.Fatalf("audit record %d: %+v, want 502 and reason %q", i, r, want)
		}
	}
}

// A request a misconfigured deployment cannot forward spends none of the
// key's budgets: it is answered before any slot, reservation or quota unit
// is taken.
func TestNoUpstreamSpendsNoQuota(t *testing.T) {
	up := newUpstream(t, nil)
	secret, h, key := testKey(t, "key_1", "dep_1")
	key.Tokens = &event.TokenLimits{Quota: &event.Quota{Requests: 1}}
	d := deployment("dep_1", up.URL, true)
	d.Upstreams = map[string][]string{"us": {up.URL}}
	st := &fakeState{deps: cache.NewDeployments([]event.Deployment{d}, 1), keys: map[apikey.Hash]*cache.Key{h: key}}
	p := startProxyConfig(t, st, func(c *Config) {})
	c := client(t)
	for range 3 {
		resp, body := do(t, c, "POST", p.url+"/v1/chat/completions", `{}`, map[string]string{"X-API-Key": secret})
		wantError(t, resp, body, 502, "UPSTREAM_ERROR")
	}
	resp, body := do(t, c, "GET", p.url+"/v1/key", "", map[string]string{"X-API-Key": secret})
	var info struct{ Remaining struct{ Quota *int64 } }
	if err := json.Unmarshal([]byte(body), &info); resp.StatusCode != 200 || err != nil ||
		info.Remaining.Quota == nil || *info.Remaining.Quota != 1 {
		t.Fatalf("GET /v1/key after three 502s: %d %s, want the request quota whole (1)", resp.StatusCode, body)
	}
}
