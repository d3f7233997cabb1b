package origin

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"strings"
	"testing"

	"github.com/keymesh/keymesh/api"
	"github.com/keymesh/keymesh/event"
	"github.com/keymesh/keymesh/internal/modelglob"
)

// Every field a tenant sends is bounded: the attack of the issue (an
// upstream URL and an upstream_auth prefix of '<' by the hundred thousand)
// and every other over-long or over-many value is refused with the error
// body, and nothing is committed.
func TestEveryInputFieldIsBounded(t *testing.T) {
	s := startServer(t, testConfig(t.TempDir()))
	tn := newTenants(t, s)
	deps := "/v1/projects/" + tn.aName + "/deployments"
	keys := "/v1/projects/" + tn.aName + "/keys"
	tn.a.must(201, "POST", deps, dep("d", []string{"d.a.example"}, "/"), nil)
	var k keyResp
	tn.a.must(201, "POST", keys, map[string]any{}, &k)
	rev := s.Revision()
	many := func(n int, f func(i int) string) []string {
		out := make([]string, n)
		for i := range out {
			out[i] = f(i)
		}
		return out
	}
	lt := strings.Repeat("<", 400_000)
	raw := func(v any) string { // sent as is: '<' one byte each, as an attacker sends it
		b, err := event.Marshal(v)
		if err != nil {
			t.Fatal(err)
		}
		return string(b)
	}
	sites := map[string][]string{}
	for i := range maxSites + 1 {
		sites[fmt.Sprint("s", i)] = []string{"http://127.0.0.1:1"}
	}
	for _, tc := range []struct {
		what, method, path string
		body               any
		status             int
	}{
		{"the issue's upstream of '<'", "POST", deps, raw(map[string]any{"name": "x", "upstreams": map[string][]string{"*": {"http://a/" + lt}}}), 400},
		{"the issue's prefix of '<'", "POST", deps, raw(map[string]any{"name": "x", "upstreams": map[string][]string{"*": {"http://a"}},
			"upstream_auth": map[string]any{"mode": "inject", "secret": "s", "prefix": lt}}), 400},
		{"a body over 1 MiB", "POST", deps, raw(map[string]any{"name": "x", "upstreams": map[string][]string{"*": {"http://a/" + lt + lt + lt}}}), 413},
		{"too many hosts", "POST", deps, dep("x", many(maxHosts+1, func(i int) string { return fmt.Sprint("h", i, ".example") }), "/"), 400},
		{"a long host", "POST", deps, dep("x", []string{strings.Repeat("a", 250) + ".example"}, "/"), 400},
		{"a long path prefix", "POST", deps, dep("x", nil, "/"+strings.Repeat("p", maxPathPrefixLen)), 400},
		{"too many URLs a site", "POST", deps, map[string]any{"name": "x", "upstreams": map[string][]string{"*": many(maxURLsPerSite+1, func(i int) string { return fmt.Sprint("http://u", i) })}}, 400},
		{"too many sites", "POST", deps, map[string]any{"name": "x", "upstreams": sites}, 400},
		{"a long URL", "POST", deps, map[string]any{"name": "x", "upstreams": map[string][]string{"*": {"http://a/" + strings.Repeat("b", maxUpstreamURLLen)}}}, 400},
		{"a long header name", "PATCH", deps + "/d", map[string]any{"upstream_auth": map[string]any{"mode": "passthrough", "header": strings.Repeat("h", maxHeaderNameLen+1)}}, 400},
		{"a prefix with a control character", "PATCH", deps + "/d", map[string]any{"upstream_auth": map[string]any{"mode": "inject", "secret": "s", "prefix": "Bearer\x01"}}, 400},
		{"a huge rate limit", "PATCH", deps + "/d", map[string]any{"rate_limit": map[string]any{"requests_per_minute": maxRequestsPerMin + 1}}, 400},
		{"a long key name", "POST", keys, map[string]any{"name": strings.Repeat("n", maxKeyNameLen+1)}, 400},
		{"a long description", "PATCH", keys + "/" + k.ID, map[string]any{"description": strings.Repeat("d", maxDescriptionLen+1)}, 400},
		{"too many links", "PATCH", keys + "/" + k.ID, map[string]any{"deployments": many(maxDeploymentLinks+1, func(i int) string { return "d" })}, 400},
		{"a long deployment reference", "PATCH", keys + "/" + k.ID, map[string]any{"deployments": []string{strings.Repeat("r", maxRefLen+1)}}, 400},
		{"too many permissions", "PATCH", keys + "/" + k.ID, map[string]any{"permissions": many(100, func(int) string { return "read_models" })}, 400},
		{"a long expiry", "PATCH", keys + "/" + k.ID, map[string]any{"expires_at": strings.Repeat("2", maxExpiryLen+1)}, 400},
		{"a long cursor", "GET", keys + "?cursor=" + strings.Repeat("c", maxCursorLen+1), nil, 400},
		{"a long query value", "GET", "/v1/audit?key_id=" + strings.Repeat("k", maxQueryParamLen+1), nil, 400},
		{"a long path reference", "GET", keys + "/" + strings.Repeat("k", maxRefLen+1), nil, 404},
	} {
		st, b := tn.a.do(tc.method, tc.path, tc.body)
		code := "VALIDATION_ERROR"
		if tc.status == 404 {
			code = "NOT_FOUND"
		}
		wantError(t, tc.what, st, b, tc.status, code)
		if len(b) > 4096 {
			t.Errorf("%s: a %d-byte error answer", tc.what, len(b))
		}
	}
	if s.Revision() != rev {
		t.Fatalf("refused input took revisions: %d → %d", rev, s.Revision())
	}
	// At the bounds, a deployment's event stays well under MaxEventBytes.
	big := map[string]any{"name": strings.Repeat("n", 63),
		"hosts":       many(maxHosts, func(i int) string { return fmt.Sprintf("%s%02d.a.example", strings.Repeat("h", 60), i) }),
		"path_prefix": "/" + strings.Repeat("p", maxPathPrefixLen-1),
		"upstreams": map[string][]string{"*": many(maxURLsPerSite, func(i int) string {
			return fmt.Sprintf("http://u%02d.example/%s", i, strings.Repeat("<", maxUpstreamURLLen-22))
		})},
		"upstream_auth":   map[string]any{"mode": "inject", "secret": strings.Repeat("s", maxSecretNameLen), "header": strings.Repeat("h", maxHeaderNameLen), "prefix": strings.Repeat("<", maxAuthPrefixLen)},
		"models":          many(modelglob.MaxPatterns, func(i int) string { return fmt.Sprintf("%02d%s", i, strings.Repeat("<", modelglob.MaxPatternLen-2)) }),
		"max_concurrency": maxConcurrency}
	tn.a.must(201, "POST", deps, big, nil)
	// And so does a key's, its models at their bound.
	tn.a.must(201, "POST", keys, map[string]any{"name": strings.Repeat("n", maxKeyNameLen),
		"models":          many(modelglob.MaxPatterns, func(i int) string { return fmt.Sprintf("%02d%s", i, strings.Repeat("<", modelglob.MaxPatternLen-2)) }),
		"max_concurrency": maxConcurrency}, nil)
}

// A change whose sealed event would exceed MaxEventBytes is refused inside
// the transaction, before commit: no revision, no row, no event. (The API's
// bounds keep every deployment and key under it; this is the backstop for
// whatever they miss.)
func TestOversizedEventRefusedBeforeCommit(t *testing.T) {
	eachStore(t, func(t *testing.T, cfg Config) {
		s := startServer(t, cfg)
		c := newClient(t, s)
		st := s.store
		ctx := context.Background()
		p, err := st.project(ctx, "default")
		if err != nil {
			t.Fatal(err)
		}
		rev := s.Revision()
		d := defaultDeployment()
		d.ID, d.Project, d.Name = newID("dep"), p.ID, "huge"
		d.Upstreams = map[string][]string{}
		// Within every per-URL bound, past the API's count bound.
		for i := range 200 {
			d.Upstreams["*"] = append(d.Upstreams["*"], fmt.Sprintf("http://u%d.example/%s", i, strings.Repeat("x", 400)))
		}
		_, err = st.createDeployment(ctx, d)
		var de *DetailedError
		if !errors.Is(err, ErrTooLarge) || !errors.As(err, &de) || de.Details["max_event_bytes"] != MaxEventBytes {
			t.Fatalf("oversized deployment: %v", err)
		}
		if s.Revision() != rev {
			t.Fatalf("revision moved: %d → %d", rev, s.Revision())
		}
		if n, _ := st.unpublished(ctx, 10); len(n) != 0 {
			// (the publisher may have published earlier events; none is new)
			for _, e := range n {
				if e.Revision > rev {
					t.Fatalf("an event was written at %d", e.Revision)
				}
			}
		}
		st2, b := c.do("GET", "/v1/projects/default/deployments/huge", nil)
		wantError(t, "the refused deployment", st2, b, http.StatusNotFound, "NOT_FOUND")
		// The API renders it as 413 with the documented body.
		ae := detailedAPIError(de)
		if ae.Status != http.StatusRequestEntityTooLarge || ae.Code != "VALIDATION_ERROR" {
			t.Fatalf("rendered as %d %s", ae.Status, ae.Code)
		}
	})
}

// Per-project quotas, set by admin users: keys, deployments, links per
// key; creations past them get 409 naming the quota, deletions free room.
func TestProjectQuotas(t *testing.T) {
	eachStore(t, func(t *testing.T, cfg Config) {
		s := startServer(t, cfg)
		tn := newTenants(t, s) // project a holds one key already: tn.a's
		proj := "/v1/projects/" + tn.aName
		st, b := tn.a.do("PATCH", proj, map[string]any{"max_keys": 1000})
		wantError(t, "a key raising its quota", st, b, http.StatusForbidden, "PERMISSION_DENIED")
		var pv api.ProjectDetail
		tn.admin.must(200, "PATCH", proj, map[string]any{"max_keys": 3, "max_deployments": 2, "max_links_per_key": 1}, &pv)
		if pv.Limits != (api.Limits{MaxKeys: 3, MaxDeployments: 2, MaxLinksPerKey: 1}) || pv.Usage.Keys != 1 {
			t.Fatalf("project %+v", pv)
		}
		wantQuota := func(what string, st int, b []byte, quota string) {
			t.Helper()
			wantError(t, what, st, b, http.StatusConflict, "CONFLICT")
			var e apiErr
			mustJSON(t, b, &e)
			if e.Error.Details["quota"] != quota {
				t.Fatalf("%s: details %v", what, e.Error.Details)
			}
		}
		tn.a.must(201, "POST", proj+"/deployments", dep("d1", []string{"d1.a.example"}, "/"), nil)
		tn.a.must(201, "POST", proj+"/deployments", dep("d2", []string{"d2.a.example"}, "/"), nil)
		st, b = tn.a.do("POST", proj+"/deployments", dep("d3", []string{"d3.a.example"}, "/"))
		wantQuota("a third deployment", st, b, "max_deployments")

		var k1 keyResp
		tn.a.must(201, "POST", proj+"/keys", map[string]any{"deployments": []string{"d1"}}, &k1)
		st, b = tn.a.do("POST", proj+"/keys", map[string]any{"deployments": []string{"d1", "d2"}})
		wantQuota("a key with two links", st, b, "max_links_per_key")
		st, b = tn.a.do("PUT", proj+"/deployments/d2/keys/"+k1.ID, nil)
		wantQuota("a second link", st, b, "max_links_per_key")
		st, b = tn.a.do("PATCH", proj+"/keys/"+k1.ID, map[string]any{"deployments": []string{"d1", "d2"}})
		wantQuota("two links by patch", st, b, "max_links_per_key")
		tn.a.must(200, "PATCH", proj+"/keys/"+k1.ID, map[string]any{"deployments": []string{"d2"}}, nil)

		var k2 keyResp
		tn.a.must(201, "POST", proj+"/keys", map[string]any{}, &k2)
		st, b = tn.a.do("POST", proj+"/keys", map[string]any{})
		wantQuota("a fourth key", st, b, "max_keys")
		tn.a.must(204, "DELETE", proj+"/keys/"+k2.ID, nil, nil)
		tn.a.must(201, "POST", proj+"/keys", map[string]any{}, nil)
		tn.a.must(204, "DELETE", proj+"/deployments/d1", nil, nil)
		tn.a.must(201, "POST", proj+"/deployments", dep("d3", []string{"d3.a.example"}, "/"), nil)

		// Other projects keep the defaults; null goes back to them.
		tn.b.must(200, "GET", "/v1/projects/"+tn.bName, nil, &pv)
		if pv.Limits != api.Limits(DefaultLimits) {
			t.Fatalf("project b %+v", pv)
		}
		tn.admin.must(200, "PATCH", proj, map[string]any{"max_keys": nil, "max_deployments": nil, "max_links_per_key": nil}, &pv)
		if pv.Limits != api.Limits(DefaultLimits) || pv.Usage.Keys != 3 || pv.Usage.Deployments != 2 {
			t.Fatalf("reset %+v", pv)
		}
		for _, bad := range []map[string]any{{"max_keys": 0}, {"max_links_per_key": maxDeploymentLinks + 1}, {"max_deployments": "many"}, {"quota": 1}} {
			st, b := tn.admin.do("PATCH", proj, bad)
			wantError(t, fmt.Sprint(bad), st, b, http.StatusBadRequest, "VALIDATION_ERROR")
		}
	})
}

// A key holds at most maxLiveKeySecrets secrets at once: rotations within
// their grace cannot grow its event without bound.
func TestRotationsWithinGraceAreBounded(t *testing.T) {
	s := startServer(t, testConfig(t.TempDir()))
	c := newClient(t, s)
	var k keyResp
	c.must(201, "POST", "/v1/projects/default/keys", map[string]any{"permissions": []string{event.PermRunInference}}, &k)
	path := "/v1/projects/default/keys/" + k.ID + "/rotate"
	for i := 1; i < maxLiveKeySecrets; i++ {
		c.must(200, "POST", path, map[string]any{"grace_seconds": 3600}, nil)
	}
	st, b := c.do("POST", path, map[string]any{"grace_seconds": 3600})
	wantError(t, "one rotation too many", st, b, http.StatusConflict, "CONFLICT")
	c.must(200, "POST", path, map[string]any{"grace_seconds": 0}, nil) // ends the others at once
	c.must(200, "POST", path, map[string]any{"grace_seconds": 3600}, nil)
}
