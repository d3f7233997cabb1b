package origin

import (
	"encoding/json"
	"fmt"
	"net/http"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/keymesh/keymesh/event"
	"github.com/keymesh/keymesh/internal/apierror"
	"github.com/keymesh/keymesh/internal/modelglob"
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

func apiSchemas() map[string]any {
	perm := map[string]any{"type": "string", "enum": event.Permissions}
	ts := map[string]any{"type": "string", "format": "date-time"}
	expiry := map[string]any{"type": []string{"string", "null"},
		"description": "an RFC 3339 time, a YYYY-MM-DD date meaning 00:00 UTC that day, or null for never"}
	modelsView := map[string]any{"type": "array", "items": map[string]any{"type": "string"},
		"description": `model name patterns a request's "model" must match ('*' matches any run of characters but '/'); [] allows any model`}
	modelsInput := map[string]any{"type": []string{"array", "null"}, "maxItems": modelglob.MaxPatterns,
		"items":       map[string]any{"type": "string", "minLength": 1, "maxLength": modelglob.MaxPatternLen},
		"description": `model name patterns ('*' matches any run of characters but '/'; '?', '[', ']' and '' are refused); [] or null allows any model`}
	maxConc := map[string]any{"type": "integer", "minimum": 1, "maximum": maxConcurrency,
		"description": "requests in flight at once at one edge; null for no cap"}
	keyProps := map[string]any{
		"id":              str("key id"),
		"project":         str("project id"),
		"name":            str(""),
		"description":     str(""),
		"prefix":          str("the first characters of the secret, to recognise it in a list"),
		"permissions":     map[string]any{"type": "array", "items": perm},
		"deployments":     strs("ids of the linked deployments"),
		"expires_at":      nullable(ts),
		"rate_limit":      nullable(ref("RateLimit")),
		"models":          modelsView,
		"max_concurrency": nullable(maxConc),
		"disabled":        map[string]any{"type": "boolean"},
		"created_at":      ts,
		"updated_at":      ts,
		"revision":        map[string]any{"type": "integer", "minimum": 0, "description": "revision of the key's last change"},
		"propagation":     ref("Propagation"),
	}
	keyRequired := []string{"id", "project", "name", "description", "prefix", "permissions", "deployments",
		"expires_at", "rate_limit", "models", "max_concurrency", "disabled", "created_at", "updated_at", "revision"}
	withSecret := map[string]any{}
	for k, v := range keyProps {
		withSecret[k] = v
	}
	withSecret["key"] = str("the secret: returned by create and rotate only, never again")

	keyInput := func(create bool) map[string]any {
		p := map[string]any{
			"name":        map[string]any{"type": "string", "maxLength": maxKeyNameLen},
			"description": map[string]any{"type": "string", "maxLength": maxDescriptionLen},
			"permissions": map[string]any{"type": "array", "items": perm, "maxItems": 4 * len(event.Permissions),
				"description": "default on create: run_inference, read_models, use_streaming"},
			"deployments": map[string]any{"type": "array", "items": map[string]any{"type": "string", "maxLength": maxRefLen}, "maxItems": maxDeploymentLinks,
				"description": "ids or names of deployments to link; replaces the links on update; at most the project's max_links_per_key"},
			"expires_at":      expiry,
			"rate_limit":      nullable(ref("RateLimit")),
			"models":          modelsInput,
			"max_concurrency": nullable(maxConc),
			"disabled":        map[string]any{"type": "boolean"},
		}
		if create {
			p["permissions"] = nullable(p["permissions"].(map[string]any))
			p["expires_in_days"] = map[string]any{"type": []string{"integer", "null"}, "minimum": 1, "maximum": 36500,
				"description": "instead of expires_at"}
		}
		return obj(nil, p)
	}

	depProps := func(view bool) map[string]any {
		p := map[string]any{
			"name": map[string]any{"type": "string", "pattern": nameRE.String()},
			"hosts": map[string]any{"type": "array", "maxItems": maxHosts, "items": map[string]any{"type": "string", "maxLength": maxHostLen},
				"description": "Host header values matched exactly, or *.suffix; none matches every host. Hosts and paths belong to one project: they may not overlap another project's deployments"},
			"path_prefix": map[string]any{"type": "string", "maxLength": maxPathPrefixLen, "description": "longest matching prefix wins; default /"},
			"upstreams": map[string]any{"type": "object", "maxProperties": maxSites,
				"description": fmt.Sprintf(`site (or "*") to upstream base URLs, at most %d in all; each must be allowed by the project's allowed_upstreams`, maxUpstreamURLs),
				"additionalProperties": map[string]any{"type": "array", "minItems": 1, "maxItems": maxURLsPerSite,
					"items": map[string]any{"type": "string", "format": "uri", "maxLength": maxUpstreamURLLen}}},
			"auth_enabled":       map[string]any{"type": "boolean", "description": "default true; false forwards every request without a key"},
			"invalid_key_status": map[string]any{"type": "integer", "enum": []int{401, 403}, "description": "default 401"},
			"upstream_auth":      nullable(ref("UpstreamAuth")),
			"rate_limit":         nullable(ref("RateLimit")),
			"max_body_bytes":     map[string]any{"type": "integer", "minimum": 1, "maximum": 1 << 30, "description": "default 10 MiB"},
			"max_prompt_chars":   map[string]any{"type": "integer", "minimum": 1, "maximum": 100_000_000, "description": "default 10000"},
			"models":             modelsInput,
			"max_concurrency":    nullable(maxConc),
		}
		if view {
			p["id"], p["project"] = str("deployment id"), str("project id")
			p["upstream_auth"] = ref("UpstreamAuth")
			p["revision"] = map[string]any{"type": "integer", "minimum": 0}
			p["models"] = modelsView
			p["propagation"] = ref("Propagation")
		} else {
			p["hosts"] = map[string]any{"type": []string{"array", "null"}, "items": map[string]any{"type": "string"}}
			p["path_prefix"] = map[string]any{"type": []string{"string", "null"}}
		}
		return p
	}
	depView := obj([]string{"id", "project", "name", "hosts", "path_prefix", "upstreams", "auth_enabled", "invalid_key_status",
		"upstream_auth", "rate_limit", "max_body_bytes", "max_prompt_chars", "models", "max_concurrency", "revision"}, depProps(true))

	codes := []string{apierror.AuthenticationFailed, apierror.PermissionDenied, apierror.RateLimited, apierror.ConcurrencyLimit, apierror.ValidationError,
		apierror.NotFound, apierror.MethodNotAllowed, apierror.Conflict, apierror.Unavailable, apierror.UpstreamError, apierror.InternalError}
	return map[string]any{
		"Error": map[string]any{"type": "object", "required": []string{"error"}, "properties": map[string]any{
			"error": map[string]any{"type": "object", "required": []string{"code", "message", "type", "details"}, "properties": map[string]any{
				"code":    map[string]any{"type": "string", "enum": codes},
				"message": str("for people; never contains a secret"),
				"type":    str("OpenAI-style error type, e.g. invalid_request_error"),
				"details": map[string]any{"description": `null, or more about the error: a validation error names {"field", "reason"}`},
			}},
		}},
		"Permission": perm,
		"RateLimit":  obj([]string{"requests_per_minute"}, map[string]any{"requests_per_minute": map[string]any{"type": "integer", "minimum": 1, "maximum": maxRequestsPerMin}}),
		"Deleted": obj([]string{"revision", "propagation"}, map[string]any{"revision": map[string]any{"type": "integer", "minimum": 0},
			"propagation": ref("Propagation")}),
		"Propagation": obj([]string{"applied", "pending", "live_edges"}, map[string]any{"applied": strs("live edges that applied the revision"), "pending": strs("live edges that had not when the wait ended"),
			"live_edges": map[string]any{"type": "integer", "minimum": 0, "description": "live edges the wait knew of; 0 means it proved nothing"}}),
		"UpstreamAuth": obj([]string{"mode"}, map[string]any{"mode": map[string]any{"type": "string", "enum": []string{event.UpstreamAuthNone, event.UpstreamAuthInject, event.UpstreamAuthPassthrough}}, "header": map[string]any{"type": "string", "maxLength": maxHeaderNameLen, "description": "default Authorization"},
			"prefix": map[string]any{"type": "string", "maxLength": maxAuthPrefixLen, "description": `printable ASCII; default "Bearer " for inject`},
			"secret": map[string]any{"type": "string", "maxLength": maxSecretNameLen, "pattern": secretNameRE.String(),
				"description": "inject: the name of one of this project's edge-local secrets (never its value); edges look it up under the deployment's project"}}),
		"LoginRequest": obj([]string{"username", "password"}, map[string]any{"username": map[string]any{"type": "string", "maxLength": maxUsernameLen}, "password": map[string]any{"type": "string", "format": "password", "maxLength": maxPasswordLen}}),
		"LoginResponse": obj([]string{"token", "expires_at", "token_type"}, map[string]any{
			"token": str("JWT for Authorization: Bearer"), "expires_at": ts, "token_type": map[string]any{"type": "string", "enum": []string{"Bearer"}}}),
		"SigningKey":    obj([]string{"public_key"}, map[string]any{"public_key": str("base64 Ed25519 public key every event and record is signed with")}),
		"ProjectCreate": obj([]string{"name"}, map[string]any{"name": map[string]any{"type": "string", "pattern": nameRE.String()}}),
		"Project":       obj([]string{"id", "name", "created_at"}, map[string]any{"id": str(""), "name": str(""), "created_at": ts}),
		"ProjectCreated": obj([]string{"id", "name", "created_at", "revision"}, map[string]any{"id": str(""), "name": str(""), "created_at": ts,
			"revision":    map[string]any{"type": "integer", "minimum": 0, "description": "a project is no event (edges never see projects): the store's revision when it was created; ?wait waits for edges to reach it"},
			"propagation": ref("Propagation")}),
		"ProjectPage": page("Project"),
		"Limits": obj([]string{"max_keys", "max_deployments", "max_links_per_key"}, map[string]any{
			"max_keys":          map[string]any{"type": "integer", "minimum": 1},
			"max_deployments":   map[string]any{"type": "integer", "minimum": 1},
			"max_links_per_key": map[string]any{"type": "integer", "minimum": 1}}),
		"ProjectDetail": obj([]string{"id", "name", "created_at", "allowed_upstreams", "limits", "usage"}, map[string]any{
			"id": str(""), "name": str(""), "created_at": ts,
			"allowed_upstreams": map[string]any{"type": []string{"array", "null"}, "items": map[string]any{"type": "string"},
				"description": "null: the default policy (any http(s) upstream but link-local, metadata and other reserved addresses)"},
			"limits": ref("Limits"),
			"usage":  obj([]string{"keys", "deployments"}, map[string]any{"keys": map[string]any{"type": "integer"}, "deployments": map[string]any{"type": "integer"}})}),
		"ProjectUpdate": obj(nil, map[string]any{
			"allowed_upstreams": map[string]any{"type": []string{"array", "null"}, "maxItems": maxPolicyEntries,
				"items":       map[string]any{"type": "string", "maxLength": maxPolicyEntryLen},
				"description": `URL patterns (http(s)://host[:port][/path], host may be "*" or "*.suffix", port "*") and IP addresses or CIDRs; null: back to the default`},
			"max_keys":          map[string]any{"type": []string{"integer", "null"}, "minimum": limitRanges["max_keys"][0], "maximum": limitRanges["max_keys"][1], "description": fmt.Sprintf("null: the default (%d)", DefaultLimits.MaxKeys)},
			"max_deployments":   map[string]any{"type": []string{"integer", "null"}, "minimum": limitRanges["max_deployments"][0], "maximum": limitRanges["max_deployments"][1], "description": fmt.Sprintf("null: the default (%d)", DefaultLimits.MaxDeployments)},
			"max_links_per_key": map[string]any{"type": []string{"integer", "null"}, "minimum": limitRanges["max_links_per_key"][0], "maximum": limitRanges["max_links_per_key"][1], "description": fmt.Sprintf("null: the default (%d)", DefaultLimits.MaxLinksPerKey)}}),
		"User":     obj([]string{"id", "username", "created_at"}, map[string]any{"id": str(""), "username": str(""), "created_at": ts}),
		"UserPage": page("User"),
		"UserCreate": obj([]string{"username", "password"}, map[string]any{
			"username": map[string]any{"type": "string", "pattern": nameRE.String()},
			"password": map[string]any{"type": "string", "format": "password", "minLength": minPasswordLen, "maxLength": maxPasswordLen}}),
		"PasswordChange": obj([]string{"password"}, map[string]any{
			"password":     map[string]any{"type": "string", "format": "password", "minLength": minPasswordLen, "maxLength": maxPasswordLen},
			"old_password": map[string]any{"type": "string", "format": "password", "description": "required to change one's own password"}}),
		"Key":              obj(keyRequired, keyProps),
		"KeyWithSecret":    obj(append(slices.Clone(keyRequired), "key"), withSecret),
		"KeyCreate":        keyInput(true),
		"KeyUpdate":        keyInput(false),
		"KeyRotate":        obj(nil, map[string]any{"grace_seconds": map[string]any{"type": []string{"integer", "null"}, "minimum": 0, "maximum": 2592000, "description": "how long the old secret keeps working; default 0"}}),
		"KeyPage":          page("Key"),
		"Deployment":       depView,
		"DeploymentCreate": obj([]string{"name", "upstreams"}, depProps(false)),
		"DeploymentUpdate": obj(nil, depProps(false)),
		"DeploymentPage":   page("Deployment"),
		"Edge": map[string]any{"type": "object", "required": []string{"id", "site", "address", "applied_revision", "last_seen", "live"}, "properties": map[string]any{
			"id": str(""), "site": str(""), "address": str(""), "applied_revision": map[string]any{"type": "integer", "minimum": 0}, "last_seen": ts,
			"live":       map[string]any{"type": "boolean", "description": "heard from within the edge liveness (or restored from the store and not yet expired); ?wait counts live edges only"},
			"relayed_by": str("the edge whose heartbeat carried this one's, for an edge reachable only through gossip")}},
		"AuditRecord": map[string]any{"type": "object", "description": "one request handled by an edge (source edge), or one admin action of the origin (source admin); never holds a secret",
			"additionalProperties": true,
			"required":             []string{"id", "time", "source", "client_ip", "method", "path", "status", "duration_ms"},
			"properties": map[string]any{
				"id": str(""), "time": ts,
				"source":          map[string]any{"type": "string", "enum": []string{"edge", "admin"}},
				"edge":            str("edge id (edge records)"),
				"site":            str("edge site (edge records)"),
				"client_ip":       str(""),
				"actor":           str(`who acted (admin records): "user:<username>" or "key:<key id>"`),
				"key_id":          str("the key the request authenticated with"),
				"project":         str("project id"),
				"deployment":      str("deployment id"),
				"deployment_name": str(""),
				"method":          str(""), "path": str(""),
				"action":      str("the route pattern of the admin action, e.g. \"POST /v1/projects/{p}/keys\" (admin records)"),
				"target":      str("the id it acted on (admin records)"),
				"status":      map[string]any{"type": "integer"},
				"duration_ms": map[string]any{"type": "number"},
				"request_id":  str("the request's X-Request-Id"),
			}},
		"Health": map[string]any{"type": "object", "required": []string{"status", "revision", "published_revision", "nats_connected"}, "properties": map[string]any{
			"status": str("ok; degraded when changes do not reach the edges (see reason); store unavailable (503)"),
			"reason": str("why the status is degraded, only then"), "revision": map[string]any{"type": "integer"},
			"published_revision": map[string]any{"type": "integer"}, "nats_connected": map[string]any{"type": "boolean"}}},
		"UsageRow":      usageRowSchema(ts),
		"UsageReport":   usageReportSchema(ts),
		"UsagePeriod":   usagePeriodSchema(ts),
		"KeyDeployment": obj([]string{"id", "name"}, map[string]any{"id": str("deployment id"), "name": str("")}),
		"KeySelf": obj([]string{"id", "name", "project", "project_name", "permissions", "deployments", "expires_at", "rate_limit", "usage"}, map[string]any{
			"id": str("key id"), "name": str(""), "project": str("project id"), "project_name": str(""),
			"permissions": map[string]any{"type": "array", "items": perm},
			"deployments": map[string]any{"type": "array", "items": ref("KeyDeployment"), "description": "the linked deployments"},
			"expires_at":  nullable(ts),
			"rate_limit":  nullable(ref("RateLimit")),
			"usage":       obj([]string{"today", "month"}, map[string]any{"today": ref("UsagePeriod"), "month": ref("UsagePeriod")}),
		}),
	}
}

// usageCountProps are the sums of every usage answer.
func usageCountProps(props map[string]any) map[string]any {
	n := func(desc string) map[string]any {
		return map[string]any{"type": "integer", "minimum": 0, "description": desc}
	}
	props["requests"] = n("metered requests")
	props["prompt_tokens"] = n("")
	props["completion_tokens"] = n("")
	props["cached_tokens"] = n("prompt tokens the upstream served from its cache")
	props["estimated_requests"] = n("requests whose tokens the edge counted from what it relayed (a cut stream, an upstream that reported none)")
	return props
}

var usageCountNames = []string{"requests", "prompt_tokens", "completion_tokens", "cached_tokens", "estimated_requests"}

func usageRowSchema(ts map[string]any) map[string]any {
	return obj(usageCountNames, usageCountProps(map[string]any{
		"project":    str("project id (group_by project)"),
		"key_id":     str(`key id (group_by key); "" for deployments without auth`),
		"deployment": str("deployment id (group_by deployment)"),
		"model":      str("model as the request named it (group_by model)"),
		"hour":       map[string]any{"type": "string", "format": "date-time", "description": "the UTC hour's start (group_by hour)"},
		"day":        map[string]any{"type": "string", "format": "date-time", "description": "the UTC day's start (group_by day)"},
	}))
}

func usageReportSchema(ts map[string]any) map[string]any {
	return obj([]string{"items", "since", "until", "group_by", "truncated"}, map[string]any{
		"items":     map[string]any{"type": "array", "items": ref("UsageRow"), "description": "ordered by time, project, key, deployment, model"},
		"since":     ts,
		"until":     ts,
		"group_by":  map[string]any{"type": "array", "items": map[string]any{"type": "string", "enum": usageGroups}},
		"truncated": map[string]any{"type": "boolean", "description": "the rows were cut at limit"},
	})
}

func usagePeriodSchema(ts map[string]any) map[string]any {
	return obj(append([]string{"since"}, usageCountNames...), usageCountProps(map[string]any{"since": ts}))
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
				queryParam("since", "RFC 3339 time", map[string]any{"type": "string", "format": "date-time"}),
				queryParam("limit", "", map[string]any{"type": "integer", "minimum": 1}),
			},
			resp: map[string]any{"type": "array", "items": ref("AuditRecord")}},
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
