package e2e

import (
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
)

func TestMetricsAndStatus(t *testing.T) {
	s := newStack(t)
	d := s.deployment("demo", nil)
	k := s.key(d.ID)
	e := s.startEdge(edgeOpts{})
	expect(t, e, withKey(k), 200, "")
	expect(t, e, withKey(k), 200, "")
	expect(t, e, map[string]string{"X-API-Key": "km_malformed"}, 401, "")
	expect(t, e, nil, 401, "")

	scrape := func(path string) string {
		rec := httptest.NewRecorder()
		e.AdminHandler().ServeHTTP(rec, httptest.NewRequest(http.MethodGet, path, nil))
		if rec.Code != 200 {
			t.Fatalf("%s: %d", path, rec.Code)
		}
		return rec.Body.String()
	}
	m := scrape("/metrics")
	for _, want := range []string{
		`keymesh_edge_requests_total{code="200",deployment="demo"} 2`,
		`keymesh_edge_requests_total{code="401",deployment="demo"} 2`,
		`keymesh_edge_auth_decisions_total{reason="allowed"} 2`,
		`keymesh_edge_auth_decisions_total{reason="malformed"} 1`,
		`keymesh_edge_auth_decisions_total{reason="no_credential"} 1`,
		`keymesh_edge_cache_misses_total 1`,
		`keymesh_edge_cache_hits_total`,
		`keymesh_edge_lookup_seconds_count 1`,
		`keymesh_edge_upstream_seconds_count{deployment="demo"} 2`,
		`keymesh_edge_applied_revision`,
		`keymesh_edge_streams 0`,
		`keymesh_edge_audit_dropped_total 0`,
		`keymesh_edge_audit_shipped_total`,
		`keymesh_edge_upstream_pool_full_total 0`,
		`keymesh_edge_ratelimit_untracked_total 0`,
		`keymesh_edge_heartbeats_ignored_total`,
		`keymesh_edge_lookups_shed_total 0`,
	} {
		if !strings.Contains(m, want) {
			t.Errorf("metrics lack %s", want)
		}
	}
	st := scrape("/status")
	if !strings.Contains(st, `"applied_revision"`) || !strings.Contains(st, `"current":true`) {
		t.Errorf("status: %s", st)
	}
	if !strings.Contains(scrape("/debug/pprof/"), "goroutine") {
		t.Error("no pprof index")
	}
}
