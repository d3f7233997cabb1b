package origin

import (
	"encoding/json"
	"fmt"
	"net/http"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/keymesh/keymesh/event"
)

// The OpenAPI 3.1 document served at GET /v1/openapi.json, built from Go
// values. openapi_test.go holds it to the routes that exist: a route
// without an operation here, or an operation without a route, fails it.

// apiOp is one operation of the document.
type apiOp struct {
	method, path string
	id, tag      string
	summary      string
	perm         string // "" = open, no credentials
	params       []any  // extra parameters besides the path ones
	body         string // request body schema name; "" = none
	bodyOptional bool
	status       int    // success status
	resp         any    // success schema (nil = no body)
	mutation     bool   // X-Revision header, ?wait=
	waitStatus   int    // the success status with ?wait, if it differs (a delete's 200)
	waitResp     any    // its schema
	contentType  string // success content type; "" = application/json
	usersOnly    bool   // a project key is refused whatever it holds
	conflict     string // what a 409 means, if the operation can answer it
}

// permUser marks an operation any admin user's token may call (a project
// key may not).
const permUser = "user"

func ref(name string) map[string]any { return map[string]any{"$ref": "#/components/schemas/" + name} }

func nullable(s map[string]any) map[string]any {
	return map[string]any{"oneOf": []any{s, map[string]any{"type": "null"}}}
}

func str(desc string) map[string]any { return map[string]any{"type": "string", "description": desc} }

func strs(desc string) map[string]any {
	return map[string]any{"type": "array", "items": map[string]any{"type": "string"}, "description": desc}
}

func obj(required []string, props map[string]any) map[string]any {
	o := map[string]any{"type": "object", "properties": props, "additionalProperties": false}
	if len(required) > 0 {
		o["required"] = required
	}
	return o
}

func page(item string) map[string]any {
	return map[string]any{"type": "object", "required": []string{"items", "next_cursor"}, "properties": map[string]any{
		"items":       map[string]any{"type": "array", "items": ref(item)},
		"next_cursor": map[string]any{"type": []string{"string", "null"}, "description": "pass as ?cursor= for the next page; null at the end"},
	}}
}

func queryParam(name, desc string, schema map[string]any) map[string]any {
	return map[string]any{"name": name, "in": "query", "required": false, "description": desc, "schema": schema}
}

// apiOps lists every operation; the order is the document's.
func apiOps() []apiOp {
	const p = "/v1/projects/{p}"
	limitCursor := []any{
		queryParam("limit", "page size, 1-1000 (default 100)", map[string]any{"type": "integer", "minimum": 1, "maximum": 1000}),
		queryParam("cursor", "next_cursor of the previous page", map[string]any{"type": "string"}),
	}
	w := event.PermWriteConfig
	return []apiOp{
		{method: "GET", path: "/health", id: "health", tag: "operations", summary: "Liveness and store health (503 when the store is unreachable)", status: 200, resp: ref("Health")},
		{method: "GET", path: "/metrics", id: "metrics", tag: "operations", summary: "Prometheus metrics", status: 200, resp: map[string]any{"type": "string"}, contentType: "text/plain"},
		{method: "GET", path: "/v1/openapi.json", id: "openapi", tag: "operations", summary: "This document", status: 200, resp: map[string]any{"type": "object"}},
		{method: "POST", path: "/v1/auth/login", id: "login", tag: "auth", summary: "Exchange a user's credentials for a JWT (401 when wrong; 429 after repeated failures from one address, for one username, or over all)", body: "LoginRequest", status: 200, resp: ref("LoginResponse")},
		{method: "POST", path: "/v1/auth/logout", id: "logout", tag: "auth", summary: "End every session of the calling user: all their tokens are refused by every replica once this answers", perm: permUser, usersOnly: true, status: 204},

		{method: "GET", path: "/v1/users", id: "listUsers", tag: "users", summary: "List admin users (users only)", perm: event.PermManageUsers, usersOnly: true, status: 200, resp: ref("UserPage")},
		{method: "POST", path: "/v1/users", id: "createUser", tag: "users", summary: "Create an admin user (users only)", perm: event.PermManageUsers, usersOnly: true, body: "UserCreate", status: 201, resp: ref("User"), conflict: "the username is taken"},
		{method: "DELETE", path: "/v1/users/{u}", id: "deleteUser", tag: "users", summary: "Delete an admin user and end their sessions (users only)", perm: event.PermManageUsers, usersOnly: true, status: 204, conflict: "the last user cannot be deleted"},
		{method: "PUT", path: "/v1/users/{u}/password", id: "changePassword", tag: "users", summary: "Set a user's password and end their sessions; one's own needs old_password (users only)", perm: event.PermManageUsers, usersOnly: true, body: "PasswordChange", status: 204},
		{method: "GET", path: "/v1/signing-key", id: "signingKey", tag: "auth", summary: "The origin's Ed25519 public key", status: 200, resp: ref("SigningKey")},

		{method: "POST", path: "/v1/projects", id: "createProject", tag: "projects", summary: "Create a project (users only: a project key cannot, whatever it holds)", perm: event.PermManageUsers, body: "ProjectCreate", status: 201, resp: ref("ProjectCreated"), mutation: true},
		{method: "GET", path: "/v1/projects", id: "listProjects", tag: "projects", summary: "List projects (a project key sees its own only)", perm: w, status: 200, resp: ref("ProjectPage")},
		{method: "GET", path: p, id: "getProject", tag: "projects", summary: "A project with its upstream policy, quotas and usage", perm: w, status: 200, resp: ref("ProjectDetail")},
		{method: "PATCH", path: p, id: "updateProject", tag: "projects", summary: "Set a project's allowed_upstreams and quotas (users only: never a project key)", perm: event.PermManageUsers, usersOnly: true, body: "ProjectUpdate", status: 200, resp: ref("ProjectDetail"),
			conflict: "some of the project's deployments have upstreams the new policy does not allow (details: conflicting_deployments, deployments)"},

		{method: "POST", path: p + "/keys", id: "createKey", tag: "keys", summary: "Create a key; the answer carries the secret, the only time it is returned", perm: w, body: "KeyCreate", bodyOptional: true, status: 201, resp: ref("KeyWithSecret"), mutation: true,
			conflict: "a quota (max_keys, max_links_per_key) is reached; details name it"},
		{method: "GET", path: p + "/keys", id: "listKeys", tag: "keys", summary: "List keys, a page at a time", perm: w, params: limitCursor, status: 200, resp: ref("KeyPage")},
		{method: "GET", path: p + "/keys/{id}", id: "getKey", tag: "keys", summary: "Get a key (never its secret)", perm: w, status: 200, resp: ref("Key")},
		{method: "PATCH", path: p + "/keys/{id}", id: "updateKey", tag: "keys", summary: "Change any of a key's fields", perm: w, body: "KeyUpdate", status: 200, resp: ref("Key"), mutation: true,
			conflict: "the max_links_per_key quota is reached"},
		{method: "DELETE", path: p + "/keys/{id}", id: "deleteKey", tag: "keys", summary: "Delete a key: 204, or with ?wait 200 and the propagation report", perm: w, status: 204, mutation: true,
			waitStatus: 200, waitResp: ref("Deleted")},
		{method: "POST", path: p + "/keys/{id}/rotate", id: "rotateKey", tag: "keys", summary: "Give a key a new secret; the old one keeps working for grace_seconds", perm: w, body: "KeyRotate", bodyOptional: true, status: 200, resp: ref("KeyWithSecret"), mutation: true,
			conflict: fmt.Sprintf("the key already has %d secrets within their grace period", maxLiveKeySecrets)},

		{method: "POST", path: p + "/deployments", id: "createDeployment", tag: "deployments", summary: "Create a deployment", perm: w, body: "DeploymentCreate", status: 201, resp: ref("Deployment"), mutation: true,
			conflict: "the name is taken, the hosts and path_prefix overlap another project's deployment (which one is never said), or the max_deployments quota is reached"},
		{method: "GET", path: p + "/deployments", id: "listDeployments", tag: "deployments", summary: "List deployments", perm: w, status: 200, resp: ref("DeploymentPage")},
		{method: "GET", path: p + "/deployments/{id}", id: "getDeployment", tag: "deployments", summary: "Get a deployment by id or name", perm: w, status: 200, resp: ref("Deployment")},
		{method: "PATCH", path: p + "/deployments/{id}", id: "updateDeployment", tag: "deployments", summary: "Change any of a deployment's fields", perm: w, body: "DeploymentUpdate", status: 200, resp: ref("Deployment"), mutation: true,
			conflict: "the name is taken, or the hosts and path_prefix overlap another project's deployment (which one is never said)"},
		{method: "DELETE", path: p + "/deployments/{id}", id: "deleteDeployment", tag: "deployments", summary: "Delete a deployment: 204, or with ?wait 200 and the propagation report", perm: w, status: 204, mutation: true,
			waitStatus: 200, waitResp: ref("Deleted")},
		{method: "GET", path: p + "/deployments/{id}/keys", id: "deploymentKeys", tag: "deployments", summary: "Keys linked to a deployment", perm: w, status: 200, resp: ref("KeyPage")},
		{method: "PUT", path: p + "/deployments/{id}/keys/{key_id}", id: "linkKey", tag: "deployments", summary: "Link a key to a deployment", perm: w, status: 200, resp: ref("Key"), mutation: true,
			conflict: "the max_links_per_key quota is reached"},
		{method: "DELETE", path: p + "/deployments/{id}/keys/{key_id}", id: "unlinkKey", tag: "deployments", summary: "Unlink a key from a deployment", perm: w, status: 200, resp: ref("Key"), mutation: true},

		{method: "GET", path: "/v1/edges", id: "listEdges", tag: "edges", summary: "Edges and the revision each has applied", perm: event.PermReadMetrics, status: 200,
			resp: map[string]any{"type": "array", "items": ref("Edge")}},
		{method: "GET", path: "/v1/audit", id: "listAudit", tag: "audit", summary: "Audit records: edges' per-request records and the origin's admin actions", perm: event.PermViewAuditLogs, status: 200,
			params: []any{
				queryParam("project", "project id or name", map[string]any{"type": "string"}),
				queryParam("key_id", "", map[string]any{"type": "string"}),
				queryParam("deployment", "deployment id or name", map[string]any{"type": "string"}),
				queryParam("source", "edge (requests edges handled) or admin (the origin's admin actions)", map[string]any{"type": "string", "enum": []string{"edge", "admin"}}),
				queryParam("status", "a status code (401) or a class (4xx)", map[string]any{"type": "string", "pattern": "^([1-5][0-9][0-9]|[1-5][xX][xX])$"}),
				queryParam("reason", "an edge's refusal reason (docs/api.md, \"Audit log\")", map[string]any{"type": "string", "enum": event.AuditReasons}),
				queryParam("since", "an RFC 3339 time, a YYYY-MM-DD date (00:00 UTC) or a duration back from now (1h)", map[string]any{"type": "string"}),
				queryParam("until", "as since; records before it", map[string]any{"type": "string"}),
				queryParam("limit", "", map[string]any{"type": "integer", "minimum": 1, "maximum": 1000}),
				queryParam("cursor", "next_cursor of the page before", map[string]any{"type": "string"}),
			},
			resp: ref("AuditPage")},
		{method: "GET", path: "/v1/usage", id: "getUsage", tag: "usage", summary: "Usage the edges metered, summed per group over [since, until) (a project key sees its own project's only)", perm: event.PermReadMetrics, status: 200,
			params: []any{
				queryParam("project", "project id or name (a project key: its own, the default)", map[string]any{"type": "string"}),
				queryParam("key_id", `key id; given empty, the requests of deployments without auth`, map[string]any{"type": "string"}),
				queryParam("deployment", "deployment id, or name within the project", map[string]any{"type": "string"}),
				queryParam("model", "", map[string]any{"type": "string"}),
				queryParam("since", "RFC 3339 time, YYYY-MM-DD or a duration back from now; rounded down to the hour; default until - 24h", map[string]any{"type": "string"}),
				queryParam("until", fmt.Sprintf("the same forms, rounded up to the hour; default now; until - since at most %d days", maxUsageSpan/(24*time.Hour)), map[string]any{"type": "string"}),
				queryParam("group_by", "comma-separated: "+strings.Join(usageGroups, ", ")+" (hour and day exclude each other); none: one total row", map[string]any{"type": "string"}),
				queryParam("limit", fmt.Sprintf("rows, 1-%d (default %d); truncated says rows were cut", maxUsageRows, defaultUsageRows), map[string]any{"type": "integer", "minimum": 1, "maximum": maxUsageRows}),
			},
			resp: ref("UsageReport")},
		{method: "GET", path: "/v1/key", id: "getOwnKey", tag: "keys", summary: "The calling API key: id, name, project, expiry, permissions, rate limit, linked deployments and usage today and this month (never the secret)", perm: permKeySelf, status: 200, resp: ref("KeySelf")},
	}
}

// permKeySelf marks an operation any enabled, unexpired API key may call
// about itself, whatever it holds (an admin token may not).
const permKeySelf = "key"

var pathParams = map[string]map[string]any{
	"p":      {"name": "p", "in": "path", "required": true, "description": "project id or name", "schema": map[string]any{"type": "string"}},
	"id":     {"name": "id", "in": "path", "required": true, "description": "key id (keys) or deployment id or name (deployments)", "schema": map[string]any{"type": "string"}},
	"key_id": {"name": "key_id", "in": "path", "required": true, "description": "key id", "schema": map[string]any{"type": "string"}},
	"u":      {"name": "u", "in": "path", "required": true, "description": "user id or username", "schema": map[string]any{"type": "string"}},
}

func errResp(desc string) map[string]any {
	return map[string]any{"description": desc, "content": map[string]any{"application/json": map[string]any{"schema": ref("Error")}}}
}

// openAPIDocument builds the document.
func openAPIDocument() map[string]any {
	paths := map[string]any{}
	revHeader := map[string]any{"X-Revision": map[string]any{"description": "the change's revision", "schema": map[string]any{"type": "integer"}}}
	for _, o := range apiOps() {
		var params []any
		for _, seg := range strings.Split(o.path, "/") {
			if strings.HasPrefix(seg, "{") {
				params = append(params, pathParams[strings.Trim(seg, "{}")])
			}
		}
		params = append(params, o.params...)
		if o.mutation {
			params = append(params, queryParam("wait", "hold the answer until every live edge has applied the change or this duration (e.g. 2s, at most 5m) passes; the body then reports propagation",
				map[string]any{"type": "string", "example": "2s"}))
		}
		ok := map[string]any{"description": http.StatusText(o.status)}
		if o.resp != nil {
			ct := o.contentType
			if ct == "" {
				ct = "application/json"
			}
			ok["content"] = map[string]any{ct: map[string]any{"schema": o.resp}}
		}
		if o.mutation {
			ok["headers"] = revHeader
		}
		responses := map[string]any{strconv.Itoa(o.status): ok}
		if o.waitStatus != 0 {
			responses[strconv.Itoa(o.waitStatus)] = map[string]any{"description": "with ?wait: the revision and which edges applied it",
				"headers": revHeader, "content": map[string]any{"application/json": map[string]any{"schema": o.waitResp}}}
		}
		if o.body != "" || len(o.params) > 0 || o.mutation {
			responses["400"] = errResp("validation error; details names the field")
		}
		if o.body != "" {
			responses["413"] = errResp("body too large")
		}
		if o.mutation && strings.Contains(o.path, "/projects/{p}/") {
			responses["413"] = errResp(fmt.Sprintf("body too large, or the change's signed event would exceed %d bytes (details: event_bytes, max_event_bytes); nothing was committed", MaxEventBytes))
		}
		if o.perm != "" {
			responses["401"] = errResp("missing or invalid credentials")
			responses["403"] = errResp("the key lacks " + o.perm + ", belongs to another project, or would grant or act on a permission it does not hold")
			if o.perm == permKeySelf {
				responses["401"] = errResp("no key, or an unknown, disabled or expired one, or an admin token instead of a key")
				delete(responses, "403")
			}
			if o.usersOnly {
				responses["403"] = errResp("a project key, whatever it holds: only admin users may")
			}
			if o.id == "createDeployment" || o.id == "updateDeployment" {
				responses["403"] = errResp("the key lacks " + o.perm + " or belongs to another project, or an upstream is outside the project's allowed_upstreams (details: field, site, url)")
			}
			if o.id == "changePassword" {
				responses["403"] = errResp("a project key, or old_password is wrong")
				responses["429"] = errResp("too many wrong old passwords")
			}
		}
		if o.conflict != "" {
			responses["409"] = errResp(o.conflict)
		}
		if strings.Contains(o.path, "{") {
			responses["404"] = errResp("no such project, key, deployment or user")
		}
		if o.id == "login" {
			responses["401"] = errResp("wrong username or password")
			responses["429"] = errResp("too many failed logins from this address, for this username, or over all; Retry-After says when to try again")
		}
		if o.id == "createProject" {
			responses["409"] = errResp("the name is taken")
		}
		op := map[string]any{"operationId": o.id, "summary": o.summary, "tags": []string{o.tag}, "responses": responses}
		if len(params) > 0 {
			op["parameters"] = params
		}
		switch {
		case o.perm == "":
			op["security"] = []any{}
		case o.perm == permKeySelf:
			op["description"] = "Needs an API key (X-API-Key or Authorization: Bearer), any permissions; answers about that key only. An admin token is refused."
		case o.perm == permUser:
			op["description"] = "Needs an admin user's token; a project key is refused."
		case o.usersOnly:
			op["description"] = "Needs an admin user's token (a user holds every permission, " + o.perm + " included); a project key is refused whatever it holds."
		default:
			op["description"] = "Needs permission " + o.perm + " (an admin user has all)."
		}
		if o.body != "" {
			op["requestBody"] = map[string]any{"required": !o.bodyOptional,
				"content": map[string]any{"application/json": map[string]any{"schema": ref(o.body)}}}
		}
		item, _ := paths[o.path].(map[string]any)
		if item == nil {
			item = map[string]any{}
			paths[o.path] = item
		}
		item[strings.ToLower(o.method)] = op
	}
	return map[string]any{
		"openapi": "3.1.0",
		"info": map[string]any{
			"title":   "keymesh origin admin API",
			"version": "1",
			"description": "The control plane of keymesh: projects, API keys and deployments. Every mutation answers with its revision " +
				`("revision" in the body and header X-Revision) and accepts ?wait=<duration>. Errors share one shape: {"error": {code, message, type, details}}.`,
		},
		"servers": []any{map[string]any{"url": "/"}},
		"security": []any{
			map[string]any{"bearerAuth": []string{}},
			map[string]any{"apiKeyHeader": []string{}},
		},
		"tags": []any{
			map[string]any{"name": "auth"}, map[string]any{"name": "users"}, map[string]any{"name": "projects"}, map[string]any{"name": "keys"},
			map[string]any{"name": "deployments"}, map[string]any{"name": "edges"}, map[string]any{"name": "audit"}, map[string]any{"name": "usage"},
			map[string]any{"name": "operations"},
		},
		"paths": paths,
		"components": map[string]any{
			"securitySchemes": map[string]any{
				"bearerAuth": map[string]any{"type": "http", "scheme": "bearer", "bearerFormat": "JWT",
					"description": "a JWT from POST /v1/auth/login, or a project API key holding the operation's permission"},
				"apiKeyHeader": map[string]any{"type": "apiKey", "in": "header", "name": "X-API-Key",
					"description": "a project API key holding the operation's permission; confined to its own project"},
			},
			"schemas": apiSchemas(),
		},
	}
}

var openAPIJSON = sync.OnceValues(func() ([]byte, error) { return json.Marshal(openAPIDocument()) })

// handleOpenAPI serves GET /v1/openapi.json.
func (s *Server) handleOpenAPI(c *call) error {
	b, err := openAPIJSON()
	if err != nil {
		return err
	}
	c.w.Header().Set("Content-Type", "application/json")
	c.w.Header().Set("Cache-Control", "public, max-age=300")
	_, err = c.w.Write(b)
	return err
}
