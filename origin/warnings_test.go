package origin

import (
	"encoding/json"
	"fmt"
	"testing"

	"github.com/keymesh/keymesh/api"
	"github.com/keymesh/keymesh/event"
)

// A deployment without an upstream for the site of a known edge, and
// without "*", is accepted, and every answer showing it — create, patch,
// get, list — carries a no_upstream_for_site warning per such site; "*"
// (or the site's own entry) clears it.
func TestDeploymentWarningsNoUpstreamForSite(t *testing.T) {
	s := startServer(t, testConfig(t.TempDir()))
	c := newClient(t, s)
	nc := connect(t, s)
	for _, e := range []struct{ id, site string }{{"edge-eu", "eu"}, {"edge-us", "us"}, {"edge-ap", "ap"}} {
		b, _ := json.Marshal(map[string]any{"id": e.id, "site": e.site, "address": "127.0.0.1:1", "applied_revision": 0})
		if err := nc.Publish(event.EdgeSubject(event.EdgeHeartbeatSubject, e.id), b); err != nil {
			t.Fatal(err)
		}
	}
	waitFor(t, "three edges", func() bool { return len(s.Edges()) == 3 })

	sites := func(ws []api.Warning) string {
		out := []string{}
		for _, w := range ws {
			if w.Code != api.WarningNoUpstreamForSite || w.Message == "" {
				t.Fatalf("warning %+v", w)
			}
			out = append(out, w.Site)
		}
		return fmt.Sprint(out)
	}
	var d api.Deployment
	c.must(201, "POST", "/v1/projects/default/deployments", map[string]any{"name": "d1",
		"upstreams": map[string][]string{"eu": {"http://127.0.0.1:1"}}}, &d)
	if got := sites(d.Warnings); got != "[ap us]" {
		t.Fatalf("create: warnings for %s, want [ap us]", got)
	}
	var g api.Deployment
	c.must(200, "GET", "/v1/projects/default/deployments/"+d.ID, nil, &g)
	if got := sites(g.Warnings); got != "[ap us]" {
		t.Fatalf("get: warnings for %s", got)
	}
	var page api.DeploymentPage
	c.must(200, "GET", "/v1/projects/default/deployments", nil, &page)
	if len(page.Items) != 1 || sites(page.Items[0].Warnings) != "[ap us]" {
		t.Fatalf("list: %+v", page.Items)
	}
	c.must(200, "PATCH", "/v1/projects/default/deployments/"+d.ID, map[string]any{
		"upstreams": map[string][]string{"eu": {"http://127.0.0.1:1"}, "us": {"http://127.0.0.1:2"}}}, &d)
	if got := sites(d.Warnings); got != "[ap]" {
		t.Fatalf("patch: warnings for %s, want [ap]", got)
	}
	// "*" covers every site; the answer still carries warnings, as [].
	st, b := c.do("PATCH", "/v1/projects/default/deployments/"+d.ID, map[string]any{
		"upstreams": map[string][]string{"eu": {"http://127.0.0.1:1"}, "*": {"http://127.0.0.1:2"}}})
	var raw map[string]json.RawMessage
	mustJSON(t, b, &raw)
	if st != 200 || string(raw["warnings"]) != "[]" {
		t.Fatalf("patch with *: %d %s", st, b)
	}
}
