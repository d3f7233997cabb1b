package origin

import (
	"fmt"
	"slices"

	"github.com/keymesh/keymesh/api"
	"github.com/keymesh/keymesh/event"
	"github.com/keymesh/keymesh/internal/apierror"
	"github.com/keymesh/keymesh/internal/modelglob"
)

// The schemas of the OpenAPI document (openapi.go): one per REST body, each
// held to its type in package api by TestOpenAPIMatchesWireTypes.

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
	perPeriod := func(what string) map[string]any {
		return map[string]any{"type": []string{"integer", "null"}, "minimum": 1, "maximum": int64(maxTokensPerPeriod),
			"description": fmt.Sprintf("tokens (prompt plus completion, as metered) %s may use per %s, counted per edge in this release; null: no bound", "%s", what)}
	}
	tokenProps := func(p map[string]any, of string, view bool) {
		pm, pd := perPeriod("minute"), perPeriod("day")
		pm["description"] = fmt.Sprintf(pm["description"].(string), of)
		pd["description"] = fmt.Sprintf(pd["description"].(string), of)
		p["tokens_per_minute"], p["tokens_per_day"] = pm, pd
		p["max_budget"] = map[string]any{"type": []string{"number", "null"}, "minimum": 0, "maximum": maxBudget,
			"description": fmt.Sprintf("spend cap of %s, in units of the currency of the deployments' pricing, at most %d decimals; each request spends its cost at the pricing of the deployment it went to (unpriced: nothing); null: no cap", of, budgetDecimals)}
		refill := map[string]any{"type": []string{"string", "null"}, "enum": []any{event.QuotaRefillDaily, event.QuotaRefillMonthly, nil},
			"description": "when the spend cap is full again: daily at 00:00 UTC, monthly on the 1st at 00:00 UTC, null never"}
		if !view {
			refill["description"] = refill["description"].(string) + "; given together with max_budget (a PATCH giving only max_budget keeps it)"
		}
		p["budget_refill"] = refill
		if view {
			p["quota"] = nullable(ref("Quota"))
		} else {
			p["quota"] = nullable(ref("QuotaInput"))
		}
	}
	quotaProps := func() map[string]any {
		amount := func(what string) map[string]any {
			return map[string]any{"type": "integer", "minimum": 1, "maximum": int64(maxQuotaAmount), "description": what + "; exactly one of tokens and requests"}
		}
		return map[string]any{
			"tokens":   amount("tokens (prompt plus completion, as metered) the quota allows"),
			"requests": amount("requests the quota allows"),
			"refill": map[string]any{"type": []string{"string", "null"}, "enum": []any{event.QuotaRefillDaily, event.QuotaRefillMonthly, nil},
				"description": "daily: full again at 00:00 UTC; monthly: on the 1st at 00:00 UTC; null: never refilled"},
		}
	}
	defMaxTokens := map[string]any{"type": []string{"integer", "null"}, "minimum": 1, "maximum": maxDefaultMaxToks,
		"description": "completion tokens a request naming no max_tokens (max_completion_tokens, max_output_tokens) reserves against token bounds; null: none (admitted while any budget is left)"}
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
	tokenProps(keyProps, "the key", true)
	keyRequired := []string{"id", "project", "name", "description", "prefix", "permissions", "deployments",
		"expires_at", "rate_limit", "models", "max_concurrency", "tokens_per_minute", "tokens_per_day", "quota",
		"max_budget", "budget_refill", "disabled", "created_at", "updated_at", "revision"}
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
		tokenProps(p, "the key", false)
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
			"strip_prefix": map[string]any{"type": "boolean",
				"description": "default false: the upstream sees the path as sent; true: the edge forwards it without path_prefix (the prefix itself as /), and its permission, model and metering checks read the path so rewritten"},
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
			"default_max_tokens": defMaxTokens,
		}
		tokenProps(p, "all the deployment's keys together", view)
		p["pricing"] = nullable(ref("PricingInput"))
		if view {
			p["pricing"] = nullable(ref("Pricing"))
			p["id"], p["project"] = str("deployment id"), str("project id")
			p["upstream_auth"] = ref("UpstreamAuth")
			p["revision"] = map[string]any{"type": "integer", "minimum": 0}
			p["models"] = modelsView
			p["propagation"] = ref("Propagation")
			p["warnings"] = map[string]any{"type": "array", "items": ref("Warning"),
				"description": "misconfigurations the origin accepted; [] when none"}
		} else {
			p["hosts"] = map[string]any{"type": []string{"array", "null"}, "items": map[string]any{"type": "string"}}
			p["path_prefix"] = map[string]any{"type": []string{"string", "null"}}
		}
		return p
	}
	depView := obj([]string{"id", "project", "name", "hosts", "path_prefix", "strip_prefix", "upstreams", "auth_enabled", "invalid_key_status",
		"upstream_auth", "rate_limit", "max_body_bytes", "max_prompt_chars", "models", "max_concurrency",
		"tokens_per_minute", "tokens_per_day", "quota", "default_max_tokens", "max_budget", "budget_refill", "pricing", "revision", "warnings"}, depProps(true))
	price := func(what string) map[string]any {
		return map[string]any{"type": "number", "minimum": 0, "maximum": maxPricePerMillion,
			"description": fmt.Sprintf("units of the currency a million %s cost, at most %d decimals", what, pricingDecimals)}
	}
	pricingProps := map[string]any{
		"currency":               map[string]any{"type": "string", "pattern": currencyRE.String(), "description": `ISO 4217 code, e.g. "USD"`},
		"prompt_per_million":     price("prompt tokens (not served from the upstream's cache)"),
		"completion_per_million": price("completion tokens"),
		"cached_per_million":     nullable(price("prompt tokens the upstream served from its cache; null: as prompt_per_million")),
	}

	codes := []string{apierror.AuthenticationFailed, apierror.PermissionDenied, apierror.RateLimited, apierror.ConcurrencyLimit, apierror.QuotaExceeded, apierror.InsufficientQuota, apierror.ValidationError,
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
		"ProjectDetail": obj([]string{"id", "name", "created_at", "allowed_upstreams", "limits", "usage", "tokens_per_minute", "tokens_per_day", "quota", "max_budget", "budget_refill"}, withTokens(map[string]any{
			"id": str(""), "name": str(""), "created_at": ts,
			"allowed_upstreams": map[string]any{"type": []string{"array", "null"}, "items": map[string]any{"type": "string"},
				"description": "null: the default policy (any http(s) upstream but link-local, metadata and other reserved addresses)"},
			"limits":      ref("Limits"),
			"usage":       obj([]string{"keys", "deployments"}, map[string]any{"keys": map[string]any{"type": "integer"}, "deployments": map[string]any{"type": "integer"}}),
			"propagation": ref("Propagation")}, tokenProps, "all the project's deployments together", true)),
		"Pricing":      obj([]string{"currency", "prompt_per_million", "completion_per_million", "cached_per_million"}, pricingProps),
		"PricingInput": obj([]string{"currency", "prompt_per_million", "completion_per_million"}, pricingProps),
		"Quota":        obj([]string{"refill"}, quotaProps()),
		"QuotaInput":   obj(nil, quotaProps()),
		"ProjectUpdate": withTokens(obj(nil, map[string]any{
			"allowed_upstreams": map[string]any{"type": []string{"array", "null"}, "maxItems": maxPolicyEntries,
				"items":       map[string]any{"type": "string", "maxLength": maxPolicyEntryLen},
				"description": `URL patterns (http(s)://host[:port][/path], host may be "*" or "*.suffix", port "*") and IP addresses or CIDRs; null: back to the default`},
			"max_keys":          map[string]any{"type": []string{"integer", "null"}, "minimum": limitRanges["max_keys"][0], "maximum": limitRanges["max_keys"][1], "description": fmt.Sprintf("null: the default (%d)", DefaultLimits.MaxKeys)},
			"max_deployments":   map[string]any{"type": []string{"integer", "null"}, "minimum": limitRanges["max_deployments"][0], "maximum": limitRanges["max_deployments"][1], "description": fmt.Sprintf("null: the default (%d)", DefaultLimits.MaxDeployments)},
			"max_links_per_key": map[string]any{"type": []string{"integer", "null"}, "minimum": limitRanges["max_links_per_key"][0], "maximum": limitRanges["max_links_per_key"][1], "description": fmt.Sprintf("null: the default (%d)", DefaultLimits.MaxLinksPerKey)}}), tokenProps, "all the project's deployments together", false),
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
		"Warning": obj([]string{"code", "message"}, map[string]any{
			"code": map[string]any{"type": "string", "enum": []string{api.WarningNoUpstreamForSite},
				"description": `no_upstream_for_site: no upstream for the site of an edge the origin knows, and no "*" entry; that site's edges answer 502`},
			"site":    str("the site the warning concerns"),
			"message": str("for people")}),
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
				"reason":      map[string]any{"type": "string", "enum": event.AuditReasons, "description": "why the edge refused the request (edge records); absent for one let through"},
				"changed":     map[string]any{"type": "array", "items": str(""), "description": "the fields an admin change set, names only, never values (admin records)"},
			}},
		"AuditPage": page("AuditRecord"),
		"Health": map[string]any{"type": "object", "required": []string{"status", "revision", "published_revision", "nats_connected"}, "properties": map[string]any{
			"status": str("ok; degraded when changes do not reach the edges (see reason); store unavailable (503)"),
			"reason": str("why the status is degraded, only then"), "revision": map[string]any{"type": "integer"},
			"published_revision": map[string]any{"type": "integer"}, "nats_connected": map[string]any{"type": "boolean"}}},
		"UsageRow":      usageRowSchema(ts),
		"UsageReport":   usageReportSchema(ts),
		"UsagePeriod":   usagePeriodSchema(ts),
		"KeyDeployment": obj([]string{"id", "name"}, map[string]any{"id": str("deployment id"), "name": str("")}),
		"KeySelf": obj([]string{"id", "name", "project", "project_name", "permissions", "deployments", "expires_at", "rate_limit",
			"tokens_per_minute", "tokens_per_day", "quota", "quota_used", "max_budget", "budget_refill", "budget_spent", "usage"}, withTokens(map[string]any{
			"id": str("key id"), "name": str(""), "project": str("project id"), "project_name": str(""),
			"permissions": map[string]any{"type": "array", "items": perm},
			"deployments": map[string]any{"type": "array", "items": ref("KeyDeployment"), "description": "the linked deployments"},
			"expires_at":  nullable(ts),
			"rate_limit":  nullable(ref("RateLimit")),
			"usage":       obj([]string{"today", "month"}, map[string]any{"today": ref("UsagePeriod"), "month": ref("UsagePeriod")}),
			"quota_used": map[string]any{"type": []string{"integer", "null"}, "minimum": 0,
				"description": "what the usage ledger holds against the quota in its current period (today, this month, or ever without refill), in the quota's unit; null without a quota. Edges count their own (per edge in this release)"},
			"budget_spent": map[string]any{"type": []string{"number", "null"}, "minimum": 0,
				"description": "what the usage ledger holds against max_budget in its current period (as quota_used), in units of the pricing currency; null without a budget"},
		}, tokenProps, "the key", true)),
	}
}

// withTokens adds the token bound members to a schema's properties (p
// itself, or an object schema's "properties") with add, and returns it.
func withTokens(p map[string]any, add func(map[string]any, string, bool), of string, view bool) map[string]any {
	props := p
	if inner, ok := p["properties"].(map[string]any); ok && p["type"] == "object" {
		props = inner
	}
	add(props, of, view)
	return p
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
	props["cost"] = map[string]any{"type": "number", "minimum": 0,
		"description": "what the requests cost at their deployments' pricing when the origin stored them, in units of the pricing currency (exact to 9 decimals; 0 for unpriced deployments and for usage stored before pricing existed)"}
	return props
}

var usageCountNames = []string{"requests", "prompt_tokens", "completion_tokens", "cached_tokens", "estimated_requests", "cost"}

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
