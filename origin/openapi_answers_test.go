package origin

import (
	"bytes"
	"encoding/json"
	"fmt"
	"net/http"
	"reflect"
	"testing"

	"github.com/keymesh/keymesh/api"
)

// checkAnswer holds an answer to wire type T: every member it sends is one
// of T's (decoding refuses any other), every member T always sends is
// there, at every depth, and so are the optional members named in also.
// It returns the decoded answer.
func checkAnswer[T any](t *testing.T, what string, body []byte, also ...string) T {
	t.Helper()
	var v T
	dec := json.NewDecoder(bytes.NewReader(body))
	dec.DisallowUnknownFields()
	if err := dec.Decode(&v); err != nil {
		t.Errorf("%s: %s does not decode as %T: %v", what, body, v, err)
		return v
	}
	var raw any
	if err := json.Unmarshal(body, &raw); err != nil {
		t.Fatal(err)
	}
	requireMembers(t, what, reflect.TypeFor[T](), raw)
	m, _ := raw.(map[string]any)
	for _, name := range also {
		if _, ok := m[name]; !ok {
			t.Errorf("%s: %q is missing from %s", what, name, body)
		}
	}
	return v
}

// requireMembers fails for each member typ always sends (no omitempty)
// that v, the decoded JSON of a typ, lacks.
func requireMembers(t *testing.T, where string, typ reflect.Type, v any) {
	t.Helper()
	for typ.Kind() == reflect.Pointer {
		typ = typ.Elem()
	}
	switch typ.Kind() {
	case reflect.Struct:
		if typ == timeType {
			return
		}
		m, ok := v.(map[string]any)
		if !ok {
			t.Errorf("%s: %v is no object (%s)", where, v, typ)
			return
		}
		for name, f := range jsonFields(typ) {
			x, present := m[name]
			if !present {
				if !f.optional {
					t.Errorf("%s: %s always has %q; the answer lacks it: %v", where, typ, name, v)
				}
				continue
			}
			if x != nil {
				requireMembers(t, where+"."+name, f.typ, x)
			}
		}
	case reflect.Slice:
		xs, _ := v.([]any)
		for i, x := range xs {
			requireMembers(t, fmt.Sprintf("%s[%d]", where, i), typ.Elem(), x)
		}
	case reflect.Map:
		m, _ := v.(map[string]any)
		for k, x := range m {
			requireMembers(t, where+"["+k+"]", typ.Elem(), x)
		}
	}
}

// The handlers answer exactly package api's types: each answer of a live
// origin, of every resource, decoded into its api type refusing unknown
// members, with every member the type always sends present (and the
// secret and propagation report where they belong).
func TestHandlersAnswerWireTypes(t *testing.T) {
	s := startServer(t, testConfig(t.TempDir()))
	c := newClient(t, s)
	anon := &client{t: t, base: c.base}
	// A live edge that has applied everything, so ?wait answers at once
	// with a propagation report naming it.
	s.edges.heartbeat("edge-1", hbJSON("edge-1", 1<<40))

	do := func(want int, method, path string, body any) []byte {
		t.Helper()
		st, b := c.do(method, path, body)
		if st != want {
			t.Fatalf("%s %s: %d, want %d: %s", method, path, st, want, b)
		}
		return b
	}

	_, b := anon.do("GET", "/health", nil)
	checkAnswer[api.Health](t, "health", b)
	st, b := anon.do("POST", "/v1/auth/login", map[string]string{"username": "admin", "password": testPassword})
	if st != 200 {
		t.Fatalf("login: %d %s", st, b)
	}
	if lr := checkAnswer[api.LoginResponse](t, "login", b); lr.TokenType != "Bearer" || lr.Token == "" || lr.ExpiresAt.IsZero() {
		t.Fatalf("login answered %s", b)
	}
	_, b = anon.do("GET", "/v1/signing-key", nil)
	checkAnswer[api.SigningKey](t, "signing key", b)
	st, b = anon.do("GET", "/v1/users", nil)
	if st != http.StatusUnauthorized {
		t.Fatalf("users without a token: %d", st)
	}
	checkAnswer[api.ErrorBody](t, "an error", b)

	checkAnswer[api.User](t, "create user", do(201, "POST", "/v1/users", map[string]any{"username": "ops", "password": "a good long one"}))
	checkAnswer[api.UserPage](t, "list users", do(200, "GET", "/v1/users", nil))

	checkAnswer[api.ProjectCreated](t, "create project", do(201, "POST", "/v1/projects", map[string]any{"name": "p1"}))
	pc := checkAnswer[api.ProjectCreated](t, "create project ?wait", do(201, "POST", "/v1/projects?wait=5s", map[string]any{"name": "p2"}), "propagation")
	if pc.Propagation == nil || len(pc.Propagation.Applied) != 1 {
		t.Fatalf("create project ?wait: propagation %+v", pc.Propagation)
	}
	checkAnswer[api.ProjectPage](t, "list projects", do(200, "GET", "/v1/projects", nil))
	proj := "/v1/projects/p2"
	checkAnswer[api.ProjectDetail](t, "get project", do(200, "GET", proj, nil))
	checkAnswer[api.ProjectDetail](t, "patch project", do(200, "PATCH", proj, map[string]any{"max_keys": 10, "allowed_upstreams": []string{"http://127.0.0.1:9000"}}))

	k := checkAnswer[api.Key](t, "create key", do(201, "POST", proj+"/keys", map[string]any{"name": "k1", "rate_limit": map[string]int{"requests_per_minute": 60}}), "key")
	checkAnswer[api.Key](t, "create key ?wait", do(201, "POST", proj+"/keys?wait=5s", map[string]any{"name": "k2", "expires_in_days": 1}), "key", "propagation")
	page := checkAnswer[api.KeyPage](t, "list keys", do(200, "GET", proj+"/keys?limit=1", nil))
	if page.NextCursor == nil || len(page.Items) != 1 {
		t.Fatalf("a first page of one key: %+v", page)
	}
	checkAnswer[api.KeyPage](t, "list keys, last page", do(200, "GET", proj+"/keys?cursor="+*page.NextCursor, nil))
	checkAnswer[api.Key](t, "get key", do(200, "GET", proj+"/keys/"+k.ID, nil))
	checkAnswer[api.Key](t, "patch key ?wait", do(200, "PATCH", proj+"/keys/"+k.ID+"?wait=5s", map[string]any{"description": "d"}), "propagation")
	checkAnswer[api.Key](t, "rotate key", do(200, "POST", proj+"/keys/"+k.ID+"/rotate", nil), "key")

	d := checkAnswer[api.Deployment](t, "create deployment ?wait", do(201, "POST", proj+"/deployments?wait=5s", dep("chat", []string{"chat.example"}, "/")), "propagation")
	if d.UpstreamAuth == nil {
		t.Fatalf("create deployment: upstream_auth is null")
	}
	checkAnswer[api.Deployment](t, "patch deployment", do(200, "PATCH", proj+"/deployments/"+d.ID, map[string]any{"rate_limit": map[string]int{"requests_per_minute": 5}}))
	checkAnswer[api.Deployment](t, "get deployment", do(200, "GET", proj+"/deployments/"+d.ID, nil))
	checkAnswer[api.DeploymentPage](t, "list deployments", do(200, "GET", proj+"/deployments", nil))
	checkAnswer[api.Key](t, "link key", do(200, "PUT", proj+"/deployments/"+d.ID+"/keys/"+k.ID, nil))
	checkAnswer[api.KeyPage](t, "deployment keys", do(200, "GET", proj+"/deployments/"+d.ID+"/keys", nil))
	checkAnswer[api.Key](t, "unlink key ?wait", do(200, "DELETE", proj+"/deployments/"+d.ID+"/keys/"+k.ID+"?wait=5s", nil), "propagation")
	checkAnswer[api.Deleted](t, "delete key ?wait", do(200, "DELETE", proj+"/keys/"+k.ID+"?wait=5s", nil))
	if b := do(204, "DELETE", proj+"/deployments/"+d.ID, nil); len(b) != 0 {
		t.Fatalf("delete deployment without ?wait answered %s", b)
	}

	edges := checkAnswer[[]api.Edge](t, "list edges", do(200, "GET", "/v1/edges", nil))
	if len(edges) != 1 || !edges[0].Live {
		t.Fatalf("edges %+v", edges)
	}
	waitFor(t, "the last admin action in the audit log", func() bool {
		_, b := c.do("GET", "/v1/audit?source=admin&limit=1", nil)
		var pg struct{ Items []struct{ Action string } }
		return json.Unmarshal(b, &pg) == nil && len(pg.Items) == 1 && pg.Items[0].Action == "DELETE /v1/projects/{p}/deployments/{id}"
	})
	recs := checkAnswer[api.AuditPage](t, "list audit", do(200, "GET", "/v1/audit?source=admin&limit=1000", nil)).Items
	if recs[0].Action == "" || recs[0].Actor == "" {
		t.Fatalf("newest audit record %+v", recs[0])
	}
}
