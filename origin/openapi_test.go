package origin

import (
	"bytes"
	"encoding/json"
	"fmt"
	"maps"
	"net/http"
	"reflect"
	"slices"
	"sort"
	"strings"
	"testing"
	"time"

	"github.com/keymesh/keymesh/api"
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
}

// wireSchemas names the Go type of package api each component schema of
// the document describes. A schema missing here, or named here but not in
// the document, fails TestOpenAPIMatchesWireTypes.
var wireSchemas = map[string]struct {
	typ     any
	request bool     // a request body: required-ness and null are not compared
	omit    []string // JSON fields of the type this schema leaves out
	require []string // fields the schema requires although the type omits them when empty
}{
	"Error":            {typ: api.ErrorBody{}},
	"RateLimit":        {typ: api.RateLimit{}},
	"Deleted":          {typ: api.Deleted{}},
	"Propagation":      {typ: api.Propagation{}},
	"UpstreamAuth":     {typ: api.UpstreamAuth{}},
	"LoginRequest":     {typ: api.LoginRequest{}, request: true},
	"LoginResponse":    {typ: api.LoginResponse{}},
	"SigningKey":       {typ: api.SigningKey{}},
	"ProjectCreate":    {typ: api.ProjectCreate{}, request: true},
	"Project":          {typ: api.Project{}},
	"ProjectCreated":   {typ: api.ProjectCreated{}},
	"ProjectPage":      {typ: api.ProjectPage{}},
	"Limits":           {typ: api.Limits{}},
	"ProjectDetail":    {typ: api.ProjectDetail{}},
	"ProjectUpdate":    {typ: api.ProjectPatch{}, request: true},
	"User":             {typ: api.User{}},
	"UserPage":         {typ: api.UserPage{}},
	"UserCreate":       {typ: api.UserCreate{}, request: true},
	"PasswordChange":   {typ: api.PasswordChange{}, request: true},
	"Key":              {typ: api.Key{}, omit: []string{"key"}},
	"KeyWithSecret":    {typ: api.Key{}, require: []string{"key"}},
	"KeyCreate":        {typ: api.KeyCreate{}, request: true},
	"KeyUpdate":        {typ: api.KeyPatch{}, request: true},
	"KeyRotate":        {typ: api.KeyRotate{}, request: true},
	"KeyPage":          {typ: api.KeyPage{}},
	"Deployment":       {typ: api.Deployment{}},
	"DeploymentCreate": {typ: api.DeploymentInput{}, request: true},
	"DeploymentUpdate": {typ: api.DeploymentInput{}, request: true},
	"DeploymentPage":   {typ: api.DeploymentPage{}},
	"Edge":             {typ: api.Edge{}},
	"AuditRecord":      {typ: api.AuditRecord{}},
	"Health":           {typ: api.Health{}},
	"UsageRow":         {typ: api.UsageRow{}},
	"UsageReport":      {typ: api.UsageReport{}},
	"UsagePeriod":      {typ: api.UsagePeriod{}},
	"KeyDeployment":    {typ: api.KeyDeployment{}},
	"KeySelf":          {typ: api.KeySelf{}},
}

// notWire are component schemas that are no body of their own.
var notWire = []string{"Permission"} // a string enum, the items of permissions

// jsonField is one JSON member of a struct, as encoding/json sees it.
type jsonField struct {
	typ      reflect.Type
	optional bool // omitempty or omitzero
}

// jsonFields lists t's JSON members (exported, not "-", embedded structs
// flattened).
func jsonFields(t reflect.Type) map[string]jsonField {
	out := map[string]jsonField{}
	for i := range t.NumField() {
		f := t.Field(i)
		tag := f.Tag.Get("json")
		if !f.IsExported() || tag == "-" {
			continue
		}
		name, opts, _ := strings.Cut(tag, ",")
		if f.Anonymous && name == "" && f.Type.Kind() == reflect.Struct {
			for k, v := range jsonFields(f.Type) {
				out[k] = v
			}
			continue
		}
		if name == "" {
			name = f.Name
		}
		out[name] = jsonField{typ: f.Type, optional: strings.Contains(","+opts+",", ",omitempty,") || strings.Contains(","+opts+",", ",omitzero,")}
	}
	return out
}

var timeType = reflect.TypeFor[time.Time]()

// wireType is the JSON type a Go type encodes as, whether it can be null,
// and for a Nullable its value's type.
func wireType(t reflect.Type) (jsonType string, null bool, inner reflect.Type) {
	if t.Kind() == reflect.Struct && strings.HasPrefix(t.Name(), "Nullable[") {
		v, _ := t.FieldByName("Value")
		j, _, in := wireType(v.Type.Elem())
		return j, true, in
	}
	switch t.Kind() {
	case reflect.Pointer:
		j, _, in := wireType(t.Elem())
		return j, true, in
	case reflect.String:
		return "string", false, t
	case reflect.Bool:
		return "boolean", false, t
	case reflect.Int, reflect.Int64, reflect.Int32, reflect.Uint, reflect.Uint64, reflect.Uint32:
		return "integer", false, t
	case reflect.Float64, reflect.Float32:
		return "number", false, t
	case reflect.Slice:
		return "array", true, t
	case reflect.Map:
		return "object", true, t
	case reflect.Interface:
		return "", true, t
	case reflect.Struct:
		if t == timeType {
			return "string", false, t
		}
		return "object", false, t
	}
	return "?" + t.Kind().String(), false, t
}

// schemaTypes is the set of JSON types a schema admits, and the schema
// names it refers to ($ref, directly or in a oneOf).
func schemaTypes(s map[string]any) (types map[string]bool, refs []string) {
	types = map[string]bool{}
	switch v := s["type"].(type) {
	case string:
		types[v] = true
	case []any:
		for _, x := range v {
			types[x.(string)] = true
		}
	}
	if r, ok := s["$ref"].(string); ok {
		refs = append(refs, strings.TrimPrefix(r, "#/components/schemas/"))
		types["object"] = true
	}
	for _, alt := range asSlice(s["oneOf"]) {
		t, r := schemaTypes(alt.(map[string]any))
		for k := range t {
			types[k] = true
		}
		refs = append(refs, r...)
	}
	return types, refs
}

// compareSchema holds schema (an object schema) to t: the same member
// names both ways, each member's JSON type one the schema admits, a $ref
// naming the schema of the member's Go type; for responses, required
// exactly when the type always sends the member, and null admitted only
// when the type can send it. It recurses into inline object schemas.
func compareSchema(t *testing.T, where string, schema map[string]any, typ reflect.Type, request bool, omit, require []string) {
	t.Helper()
	props, _ := schema["properties"].(map[string]any)
	if props == nil {
		t.Errorf("%s: the schema lists no properties; %s has %d", where, typ, len(jsonFields(typ)))
		return
	}
	required := map[string]bool{}
	for _, r := range asSlice(schema["required"]) {
		required[r.(string)] = true
	}
	fields := jsonFields(typ)
	for _, name := range omit {
		delete(fields, name)
	}
	for name := range props {
		if _, ok := fields[name]; !ok {
			t.Errorf("%s documents %q, which %s does not have", where, name, typ)
		}
	}
	for name, f := range fields {
		p, ok := props[name].(map[string]any)
		if !ok {
			t.Errorf("%s: %s has %q, which the document does not", where, typ, name)
			continue
		}
		jt, null, inner := wireType(f.typ)
		types, refs := schemaTypes(p)
		if jt != "" && len(types) > 0 && !types[jt] {
			t.Errorf("%s.%s: the document says %v; %s encodes %s", where, name, keys(types), f.typ, jt)
		}
		if !request && types["null"] && !null {
			t.Errorf("%s.%s: the document admits null; %s never sends it", where, name, f.typ)
		}
		elem := inner
		for elem.Kind() == reflect.Slice || elem.Kind() == reflect.Map || elem.Kind() == reflect.Pointer {
			elem = elem.Elem()
		}
		if items, ok := p["items"].(map[string]any); ok {
			_, r := schemaTypes(items)
			refs = append(refs, r...)
		}
		for _, r := range refs {
			if w, ok := wireSchemas[r]; ok && reflect.TypeOf(w.typ) != elem {
				t.Errorf("%s.%s refers to %s (%T); the field holds %s", where, name, r, w.typ, elem)
			}
		}
		if _, inline := p["properties"]; inline && elem.Kind() == reflect.Struct {
			compareSchema(t, where+"."+name, p, elem, request, nil, nil)
		}
		if request {
			continue
		}
		if want := !f.optional || slices.Contains(require, name); required[name] != want {
			t.Errorf("%s.%s: required in the document = %v; %s always sends it = %v", where, name, required[name], typ, !f.optional)
		}
	}
}

func asSlice(v any) []any {
	s, _ := v.([]any)
	return s
}

func keys(m map[string]bool) []string {
	out := slices.Collect(maps.Keys(m))
	sort.Strings(out)
	return out
}

// The document and package api describe one wire contract: every object
// schema is a type of package api, field for field, both ways.
func TestOpenAPIMatchesWireTypes(t *testing.T) {
	b, err := openAPIJSON()
	if err != nil {
		t.Fatal(err)
	}
	var doc map[string]any
	if err := json.Unmarshal(b, &doc); err != nil {
		t.Fatal(err)
	}
	schemas := doc["components"].(map[string]any)["schemas"].(map[string]any)
	for name, raw := range schemas {
		w, ok := wireSchemas[name]
		if !ok {
			if !slices.Contains(notWire, name) {
				t.Errorf("schema %s has no type in package api (add it to wireSchemas)", name)
			}
			continue
		}
		compareSchema(t, name, raw.(map[string]any), reflect.TypeOf(w.typ), w.request, w.omit, w.require)
	}
	for name := range wireSchemas {
		if schemas[name] == nil {
			t.Errorf("wireSchemas names %s, which the document does not define", name)
		}
	}
}

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
		var recs []struct{ Action string }
		return json.Unmarshal(b, &recs) == nil && len(recs) == 1 && recs[0].Action == "DELETE /v1/projects/{p}/deployments/{id}"
	})
	recs := checkAnswer[[]api.AuditRecord](t, "list audit", do(200, "GET", "/v1/audit?source=admin&limit=1000", nil))
	if recs[0].Action == "" || recs[0].Actor == "" {
		t.Fatalf("newest audit record %+v", recs[0])
	}
}
