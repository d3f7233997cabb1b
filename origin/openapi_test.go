package origin

import (
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
	"Warning":          {typ: api.Warning{}},
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
	"AuditPage":        {typ: api.AuditPage{}},
	"Health":           {typ: api.Health{}},
	"UsageRow":         {typ: api.UsageRow{}},
	"UsageReport":      {typ: api.UsageReport{}},
	"UsagePeriod":      {typ: api.UsagePeriod{}},
	"KeyDeployment":    {typ: api.KeyDeployment{}},
	"KeySelf":          {typ: api.KeySelf{}},
	"Quota":            {typ: api.Quota{}},
	"QuotaInput":       {typ: api.Quota{}, request: true},
	"Pricing":          {typ: api.Pricing{}},
	"PricingInput":     {typ: api.Pricing{}, request: true},
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
	if t == reflect.TypeOf(json.Number("")) {
		return "number", false, t
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
