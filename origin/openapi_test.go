package origin

import (
	"encoding/json"
	"fmt"
	"net/http"
	"slices"
	"sort"
	"strings"
	"testing"
)

func fetchOpenAPI(t *testing.T, s *Server) map[string]any {
	t.Helper()
	resp, err := http.Get("http://" + s.Addr() + "/v1/openapi.json")
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	if resp.StatusCode != 200 || resp.Header.Get("Content-Type") != "application/json" {
		t.Fatalf("GET /v1/openapi.json: %d %q", resp.StatusCode, resp.Header.Get("Content-Type"))
	}
	var doc map[string]any
	if err := json.NewDecoder(resp.Body).Decode(&doc); err != nil {
		t.Fatalf("decoding the document: %v", err)
	}
	return doc
}

// Every route is in the document, and the document lists only routes.
func TestOpenAPIDescribesEveryRoute(t *testing.T) {
	s := startServer(t, testConfig(t.TempDir()))
	doc := fetchOpenAPI(t, s)
	if v, _ := doc["openapi"].(string); !strings.HasPrefix(v, "3.") {
		t.Fatalf("openapi version %q", v)
	}
	paths, _ := doc["paths"].(map[string]any)
	documented := map[string]bool{}
	for path, item := range paths {
		for method := range item.(map[string]any) {
			documented[strings.ToUpper(method)+" "+path] = true
		}
	}
	routes := map[string]bool{}
	for _, p := range s.patterns {
		method, path, ok := strings.Cut(p, " ")
		if !ok || path == "/" { // the catch-all 404
			continue
		}
		routes[method+" "+path] = true
		if !documented[method+" "+path] {
			t.Errorf("route %s is missing from /v1/openapi.json", p)
		}
	}
	if !routes["GET /v1/openapi.json"] {
		t.Error("the document's own route is not registered")
	}
	var extra []string
	for op := range documented {
		if !routes[op] {
			extra = append(extra, op)
		}
	}
	sort.Strings(extra)
	for _, op := range extra {
		t.Errorf("/v1/openapi.json lists %s, which is not a route", op)
	}
}

// The document holds together: path parameters declared, every $ref
// resolving, security on every admin operation, bodies naming exactly the
// fields the handlers accept.
func TestOpenAPIIsConsistent(t *testing.T) {
	s := startServer(t, testConfig(t.TempDir()))
	doc := fetchOpenAPI(t, s)
	comps := doc["components"].(map[string]any)
	schemas := comps["schemas"].(map[string]any)
	for _, name := range []string{"bearerAuth", "apiKeyHeader"} {
		if comps["securitySchemes"].(map[string]any)[name] == nil {
			t.Errorf("security scheme %s missing", name)
		}
	}
	var walk func(v any)
	walk = func(v any) {
		switch v := v.(type) {
		case map[string]any:
			if r, ok := v["$ref"].(string); ok {
				name, found := strings.CutPrefix(r, "#/components/schemas/")
				if !found || schemas[name] == nil {
					t.Errorf("$ref %q does not resolve", r)
				}
			}
			for _, x := range v {
				walk(x)
			}
		case []any:
			for _, x := range v {
				walk(x)
			}
		}
	}
	walk(doc)

	open := []string{"POST /v1/auth/login", "GET /v1/signing-key", "GET /v1/openapi.json", "GET /health", "GET /metrics"}
	for path, item := range doc["paths"].(map[string]any) {
		for method, raw := range item.(map[string]any) {
			op := raw.(map[string]any)
			name := strings.ToUpper(method) + " " + path
			declared := map[string]bool{}
			params, _ := op["parameters"].([]any)
			for _, p := range params {
				p := p.(map[string]any)
				if p["in"] == "path" {
					declared[p["name"].(string)] = true
				}
			}
			for _, seg := range strings.Split(path, "/") {
				if strings.HasPrefix(seg, "{") && !declared[strings.Trim(seg, "{}")] {
					t.Errorf("%s: path parameter %s not declared", name, seg)
				}
			}
			sec, hasSec := op["security"].([]any)
			isOpen := hasSec && len(sec) == 0
			if isOpen != slices.Contains(open, name) {
				t.Errorf("%s: open in the document = %v", name, isOpen)
			}
			if len(op["responses"].(map[string]any)) == 0 {
				t.Errorf("%s: no responses", name)
			}
		}
	}

	// A delete answers 204, or 200 with the propagation report under ?wait.
	for _, path := range []string{"/v1/projects/{p}/keys/{id}", "/v1/projects/{p}/deployments/{id}"} {
		resp := doc["paths"].(map[string]any)[path].(map[string]any)["delete"].(map[string]any)["responses"].(map[string]any)
		ok, _ := resp["200"].(map[string]any)
		if resp["204"] == nil || ok == nil || !strings.Contains(fmt.Sprint(ok["content"]), "#/components/schemas/Deleted") {
			t.Errorf("DELETE %s documents %v", path, resp)
		}
	}

	props := func(schema string) []string {
		var out []string
		for k := range schemas[schema].(map[string]any)["properties"].(map[string]any) {
			out = append(out, k)
		}
		sort.Strings(out)
		return out
	}
	sorted := func(s ...string) []string { s = slices.Clone(s); sort.Strings(s); return s }
	for schema, want := range map[string][]string{
		"KeyCreate":        sorted(append(slices.Clone(keyFields), "expires_in_days")...),
		"KeyUpdate":        sorted(keyFields...),
		"DeploymentCreate": sorted(deploymentFields...),
		"DeploymentUpdate": sorted(deploymentFields...),
		"KeyRotate":        {"grace_seconds"},
		"LoginRequest":     {"password", "username"},
		"ProjectCreate":    {"name"},
		"ProjectUpdate":    sorted(projectFields...),
		"UserCreate":       sorted(userCreateFields...),
		"PasswordChange":   sorted(passwordChangeFields...),
	} {
		if got := props(schema); !slices.Equal(got, want) {
			t.Errorf("%s documents %v; the handler accepts %v", schema, got, want)
		}
	}
	// The views the handlers answer with carry what the document says.
	for schema, v := range map[string]any{"Key": keyView{}, "Deployment": deploymentView{}, "ProjectDetail": projectView{}, "User": User{}} {
		b, _ := json.Marshal(v)
		var m map[string]any
		_ = json.Unmarshal(b, &m)
		var got []string
		for k := range m {
			got = append(got, k)
		}
		want := slices.DeleteFunc(props(schema), func(s string) bool { return s == "propagation" })
		if sort.Strings(got); !slices.Equal(got, want) {
			t.Errorf("%s documents %v; the handler answers %v", schema, want, got)
		}
	}
}
