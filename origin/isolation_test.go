package origin

import (
	"fmt"
	"net/http"
	"strings"
	"sync"
	"testing"

	"github.com/keymesh/keymesh/api"
	"github.com/keymesh/keymesh/event"
)

// tenants is two projects, a and b, each with a write_config key; the
// clients speak HTTP as the tenants would.
type tenants struct {
	s            *Server
	admin        *client
	a, b         *client // the projects' write_config keys
	aID, bID     string
	aName, bName string
}

func newTenants(t *testing.T, s *Server) *tenants {
	t.Helper()
	tn := &tenants{s: s, admin: newClient(t, s), aName: "tenant-a", bName: "tenant-b"}
	var pa, pb struct{ ID string }
	tn.admin.must(201, "POST", "/v1/projects", map[string]any{"name": tn.aName}, &pa)
	tn.admin.must(201, "POST", "/v1/projects", map[string]any{"name": tn.bName}, &pb)
	tn.aID, tn.bID = pa.ID, pb.ID
	perms := []string{event.PermWriteConfig, event.PermManageUsers, event.PermRunInference, event.PermReadModels, event.PermUseStreaming}
	var ka, kb keyResp
	tn.admin.must(201, "POST", "/v1/projects/"+tn.aName+"/keys", map[string]any{"permissions": perms}, &ka)
	tn.admin.must(201, "POST", "/v1/projects/"+tn.bName+"/keys", map[string]any{"permissions": perms}, &kb)
	tn.a, tn.b = keyClient(t, s, *ka.Key), keyClient(t, s, *kb.Key)
	return tn
}

func dep(name string, hosts []string, prefix string) map[string]any {
	return map[string]any{"name": name, "hosts": hosts, "path_prefix": prefix,
		"upstreams": map[string][]string{"*": {"http://127.0.0.1:9000"}}}
}

// wantNoLeak fails if an answer names the other project.
func (tn *tenants) wantNoLeak(t *testing.T, what string, body []byte) {
	t.Helper()
	for _, s := range []string{tn.bID, tn.bName} {
		if strings.Contains(string(body), s) {
			t.Errorf("%s: the answer names the other project (%q): %s", what, s, body)
		}
	}
}

// A write_config key of project A cannot claim what project B's deployments
// match — the same host, a wildcard over it, every host, a longer path
// prefix — and the refusal does not say who holds the claim.
func TestAProjectCannotClaimAnothersHostsOrPaths(t *testing.T) {
	eachStore(t, func(t *testing.T, cfg Config) {
		s := startServer(t, cfg)
		tn := newTenants(t, s)
		base := "/v1/projects/" + tn.bName + "/deployments"
		tn.b.must(201, "POST", base, dep("victim", []string{"chat.b.example"}, "/"), nil)
		tn.b.must(201, "POST", base, dep("gpus", []string{"*.gpu.b.example"}, "/"), nil)
		tn.b.must(201, "POST", base, dep("shared", []string{"api.shared.example"}, "/b"), nil)
		rev := s.Revision()

		mine := "/v1/projects/" + tn.aName + "/deployments"
		for _, tc := range []struct {
			what   string
			hosts  []string
			prefix string
		}{
			{"the same host, a longer prefix, auth off", []string{"chat.b.example"}, "/v1/chat"},
			{"the same host in capitals and with a port", []string{"CHAT.B.EXAMPLE:443"}, "/"},
			{"a wildcard over the host", []string{"*.b.example"}, "/"},
			{"a host under the other's wildcard", []string{"x.gpu.b.example"}, "/"},
			{"a deeper wildcard under the other's", []string{"*.eu.gpu.b.example"}, "/v1"},
			{"every host (no hosts)", nil, "/v1"},
			{"a prefix covering the other's on a shared host", []string{"api.shared.example"}, "/"},
			{"a prefix under the other's on a shared host", []string{"api.shared.example"}, "/b/x"},
		} {
			body := dep("grab", tc.hosts, tc.prefix)
			body["auth_enabled"] = false
			st, b := tn.a.do("POST", mine, body)
			wantError(t, tc.what, st, b, http.StatusConflict, "CONFLICT")
			tn.wantNoLeak(t, tc.what, b)
		}
		if s.Revision() != rev {
			t.Fatalf("refused claims took revisions: %d → %d", rev, s.Revision())
		}

		// What does not overlap is A's to take.
		for i, tc := range []struct {
			hosts  []string
			prefix string
		}{
			{[]string{"chat.a.example"}, "/"},
			{[]string{"gpu.b.example"}, "/"}, // *.gpu.b.example matches only names under it
			{[]string{"api.shared.example"}, "/a"},
			{[]string{"api.shared.example"}, "/bb"}, // "/b" does not cover "/bb"
		} {
			tn.a.must(201, "POST", mine, dep(fmt.Sprintf("ok%d", i), tc.hosts, tc.prefix), nil)
		}
		// Nor can A move a deployment of its own onto B's host.
		st, b := tn.a.do("PATCH", mine+"/ok0", map[string]any{"hosts": []string{"chat.b.example"}})
		wantError(t, "patch onto the other's host", st, b, http.StatusConflict, "CONFLICT")
		tn.wantNoLeak(t, "patch", b)
		// Within a project, overlap is routing's business.
		tn.b.must(201, "POST", base, dep("victim-v1", []string{"chat.b.example"}, "/v1"), nil)
		// Once B lets go, A may take it.
		tn.b.must(204, "DELETE", base+"/victim", nil, nil)
		tn.b.must(204, "DELETE", base+"/victim-v1", nil, nil)
		tn.a.must(200, "PATCH", mine+"/ok0", map[string]any{"hosts": []string{"chat.b.example"}}, nil)
	})
}

// Two replicas sharing PostgreSQL, asked at once to give one host to two
// projects, give it to exactly one: the check runs inside the write
// transaction, ordered by the revision row lock.
func TestConcurrentClaimsOnReplicasGoToOneProject(t *testing.T) {
	cfg := testConfig(t.TempDir())
	cfg.Store = postgresDSN(t)
	s1 := startServer(t, cfg)
	s2 := startReplica(t, s1)
	tn := newTenants(t, s1)
	b2 := &client{t: t, base: "http://" + s2.Addr(), token: tn.b.token}
	for i := range 15 {
		host := fmt.Sprintf("race%d.example", i)
		var wg sync.WaitGroup
		var sa, sb int
		start := make(chan struct{})
		wg.Add(2)
		go func() {
			defer wg.Done()
			<-start
			sa, _ = tn.a.do("POST", "/v1/projects/"+tn.aName+"/deployments", dep(fmt.Sprintf("a%d", i), []string{host}, "/"))
		}()
		go func() {
			defer wg.Done()
			<-start
			sb, _ = b2.do("POST", "/v1/projects/"+tn.bName+"/deployments", dep(fmt.Sprintf("b%d", i), []string{"*.example"}, "/"))
		}()
		close(start)
		wg.Wait()
		if (sa == 201) == (sb == 201) || (sa != 201 && sa != 409) || (sb != 201 && sb != 409) {
			t.Fatalf("round %d: project a got %d, project b got %d; want one 201 and one 409", i, sa, sb)
		}
		// Clean up so the next round races afresh.
		if sa == 201 {
			tn.a.must(204, "DELETE", fmt.Sprintf("/v1/projects/%s/deployments/a%d", tn.aName, i), nil, nil)
		} else {
			tn.b.must(204, "DELETE", fmt.Sprintf("/v1/projects/%s/deployments/b%d", tn.bName, i), nil, nil)
		}
	}
}

// A deployment names an edge-local secret by a plain name only: no path,
// no "__" (the project separator of EDGE_SECRET_<PROJECT>__<NAME>), no dot
// segments, so it can never name another project's secret.
func TestSecretNamesCannotReachAnotherProject(t *testing.T) {
	s := startServer(t, testConfig(t.TempDir()))
	tn := newTenants(t, s)
	mine := "/v1/projects/" + tn.aName + "/deployments"
	rev := s.Revision()
	for _, name := range []string{
		tn.bName + "/openai", "../" + tn.bName + "/openai", tn.bID + "__openai", "TENANT_B__OPENAI",
		"a..b", ".hidden", "openai.", "open ai", `b\openai`, "openai/", strings.Repeat("a", maxSecretNameLen+1),
	} {
		body := dep("inject", []string{"inject.a.example"}, "/")
		body["upstream_auth"] = map[string]any{"mode": "inject", "secret": name}
		st, b := tn.a.do("POST", mine, body)
		wantError(t, fmt.Sprintf("secret %q", name), st, b, http.StatusBadRequest, "VALIDATION_ERROR")
	}
	if s.Revision() != rev {
		t.Fatal("a refused secret name took a revision")
	}
	for i, name := range []string{"openai", "openai-prod", "openai_prod", "azure.eu-1"} {
		slug := fmt.Sprint("s", i)
		body := dep("inject-"+slug, []string{slug + ".a.example"}, "/")
		body["upstream_auth"] = map[string]any{"mode": "inject", "secret": name}
		tn.a.must(201, "POST", mine, body, nil)
	}
}

// By default a tenant may point upstreams anywhere over http(s) but at
// link-local and metadata addresses, in whatever spelling; only an admin
// user may narrow (or widen) a project's policy; a narrowed policy that
// existing deployments would break is refused until they are changed.
func TestUpstreamPolicyIsTheOperatorsAlone(t *testing.T) {
	eachStore(t, func(t *testing.T, cfg Config) {
		s := startServer(t, cfg)
		tn := newTenants(t, s)
		mine := "/v1/projects/" + tn.aName + "/deployments"
		withUpstream := func(name, u string) map[string]any {
			d := dep(name, []string{name + ".a.example"}, "/")
			d["upstreams"] = map[string][]string{"*": {u}}
			return d
		}
		rev := s.Revision()
		for _, u := range []string{
			"http://169.254.169.254/latest/meta-data/", "http://169.254.170.2/v2/credentials", "http://[fe80::1]:8080",
			"http://[::ffff:169.254.169.254]/", "http://[64:ff9b::a9fe:a9fe]/", "http://[fd00:ec2::254]/",
			"http://metadata.google.internal/computeMetadata/v1/", "http://METADATA/", "http://100.100.100.200/",
			"http://0.0.0.0:9090/", "http://224.0.0.1/",
		} {
			st, b := tn.a.do("POST", mine, withUpstream("meta", u))
			wantError(t, u, st, b, http.StatusForbidden, "PERMISSION_DENIED")
		}
		for _, u := range []string{ // addresses in spellings a resolver might read
			"http://2852039166/", "http://0xa9fea9fe/", "http://0251.0376.0251.0376/", "http://169.254.43518/",
			"http://metadata.google.internal./", "http://a%2f@evil/", "http://user:pw@x.example/", "http://x.example:0/",
			"http://x.example/a/../../admin", "gopher://x.example/", "http://x.example/?q", "http://x.example/#f",
			"http://[fe80::1%25eth0]/", "http://" + strings.Repeat("a", 600) + ".example/",
		} {
			st, b := tn.a.do("POST", mine, withUpstream("odd", u))
			wantError(t, u, st, b, http.StatusBadRequest, "VALIDATION_ERROR")
		}
		if s.Revision() != rev {
			t.Fatal("a refused upstream took a revision")
		}
		// make run's demo: a loopback upstream is fine by default.
		tn.a.must(201, "POST", mine, withUpstream("local", "http://127.0.0.1:8000"), nil)

		// A project key cannot set its project's policy, whatever it holds.
		policy := map[string]any{"allowed_upstreams": []string{"https://*.openai.com", "10.0.0.0/8", "http://gpu.internal:*"}}
		for _, kc := range []*client{tn.a, tn.b} {
			st, b := kc.do("PATCH", "/v1/projects/"+tn.aName, map[string]any{"allowed_upstreams": nil})
			wantError(t, "a key setting a policy", st, b, http.StatusForbidden, "PERMISSION_DENIED")
		}
		// The admin's narrowing conflicts with "local": refused, counted.
		st, b := tn.admin.do("PATCH", "/v1/projects/"+tn.aName, policy)
		wantError(t, "narrowing under a deployment", st, b, http.StatusConflict, "CONFLICT")
		var e apiErr
		mustJSON(t, b, &e)
		if e.Error.Details["conflicting_deployments"] != float64(1) {
			t.Fatalf("conflict details %v", e.Error.Details)
		}
		tn.a.must(200, "PATCH", mine+"/local", map[string]any{"upstreams": map[string][]string{"*": {"http://10.1.2.3:8000"}}}, nil)
		var pv api.ProjectDetail
		tn.admin.must(200, "PATCH", "/v1/projects/"+tn.aName, policy, &pv)
		if len(pv.AllowedUpstreams) != 3 {
			t.Fatalf("policy answer %+v", pv)
		}
		// The tenant sees its own policy, and is held to it.
		tn.a.must(200, "GET", "/v1/projects/"+tn.aName, nil, &pv)
		if len(pv.AllowedUpstreams) != 3 {
			t.Fatalf("policy as the tenant sees it: %+v", pv)
		}
		for u, want := range map[string]int{
			"http://127.0.0.1:8000":           403,
			"https://api.openai.com":          201,
			"https://api.openai.com:8443":     403, // port: the scheme's default unless the entry says
			"http://api.openai.com":           403,
			"https://api.openai.com.evil.com": 403,
			"https://openai.com":              403, // *.openai.com: names under it only
			"http://10.200.0.1:1234/v1":       201,
			"http://11.0.0.1":                 403,
			"http://gpu.internal:7000":        201,
			"http://169.254.169.254":          403,
		} {
			st, b := tn.a.do("POST", mine, withUpstream("p"+fmt.Sprint(len(u)), u))
			if st != want {
				t.Errorf("%s under the policy: %d, want %d: %s", u, st, want, b)
			}
			if st == 201 {
				tn.a.must(204, "DELETE", mine+"/p"+fmt.Sprint(len(u)), nil, nil)
			}
		}
		// Other projects keep the default.
		tn.b.must(201, "POST", "/v1/projects/"+tn.bName+"/deployments", withUpstream("bl", "http://127.0.0.1:8000"), nil)
		// Only an entry naming a denied address reaches it; 0.0.0.0/0 does not.
		tn.admin.must(200, "PATCH", "/v1/projects/"+tn.aName, map[string]any{"allowed_upstreams": []string{"0.0.0.0/0", "http://*:*"}}, nil)
		st, b = tn.a.do("POST", mine, withUpstream("meta", "http://169.254.169.254/"))
		wantError(t, "metadata under 0.0.0.0/0", st, b, http.StatusForbidden, "PERMISSION_DENIED")
		tn.admin.must(200, "PATCH", "/v1/projects/"+tn.aName, map[string]any{"allowed_upstreams": []string{"0.0.0.0/0", "169.254.169.254/32"}}, nil)
		tn.a.must(201, "POST", mine, withUpstream("meta", "http://169.254.169.254/"), nil)
		// Back to the default.
		tn.a.must(204, "DELETE", mine+"/meta", nil, nil)
		tn.admin.must(200, "PATCH", "/v1/projects/"+tn.aName, map[string]any{"allowed_upstreams": nil}, &pv)
		if pv.AllowedUpstreams != nil {
			t.Fatalf("reset policy: %+v", pv)
		}
		for _, bad := range []any{[]string{"ftp://x"}, []string{"10.0.0.1/8"}, []string{"http://*.*.x"}, []string{""}, "x",
			[]string{strings.Repeat("a", 300)}, make([]string, maxPolicyEntries+1)} {
			st, b := tn.admin.do("PATCH", "/v1/projects/"+tn.aName, map[string]any{"allowed_upstreams": bad})
			wantError(t, fmt.Sprintf("policy %v", bad), st, b, http.StatusBadRequest, "VALIDATION_ERROR")
		}
	})
}

// Edges scope secrets by project name (EDGE_SECRET_<PROJECT>__<NAME>,
// <secrets-dir>/<project>/<name>): no new project may take a name that
// another's scope would read the same, nor one with "__".
func TestProjectNamesCannotShareASecretScope(t *testing.T) {
	eachStore(t, func(t *testing.T, cfg Config) {
		s := startServer(t, cfg)
		c := newClient(t, s)
		c.must(201, "POST", "/v1/projects", map[string]any{"name": "team-a"}, nil)
		for _, name := range []string{"team_a", "Team-A", "TEAM.A"} {
			st, b := c.do("POST", "/v1/projects", map[string]any{"name": name})
			wantError(t, name, st, b, http.StatusConflict, "CONFLICT")
		}
		for _, name := range []string{"team__a", "team-", "a_-b", "x..y"} {
			st, b := c.do("POST", "/v1/projects", map[string]any{"name": name})
			wantError(t, name, st, b, http.StatusBadRequest, "VALIDATION_ERROR")
		}
		c.must(201, "POST", "/v1/projects", map[string]any{"name": "team-b"}, nil)
	})
}
