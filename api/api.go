// Package api is the wire contract of the origin's REST admin API: one Go
// type per request and response body docs/api.md documents, shared by the
// server (origin) and its client (origin/apiclient) so the two cannot
// drift apart.
//
// It guarantees:
//   - JSON names, omitempty and null-ness exactly as the origin answers
//     today; a field without omitempty is always present in an answer (null
//     when its pointer, slice or map is nil), one with omitempty only when
//     set.
//   - Times are time.Time, so RFC 3339 with nanoseconds, as the origin
//     writes them.
//   - The OpenAPI document served at /v1/openapi.json describes exactly these
//     types (origin/openapi_test.go holds the two together by reflection).
//
// It holds no behaviour beyond encoding: no validation, no defaults, no
// I/O. Validation is the origin's; the wire shapes of the signed events
// edges receive (package event) are a separate contract and stay separate.
//
// Listings of keys, deployments, projects, users and audit records answer
// a Page; the edge listing answers a bare JSON array ([]Edge).
package api

import (
	"bytes"
	"encoding/json"
	"time"
)

// Nullable is a request member that can be absent, null or a value, for
// the members a patch may reset: the zero Nullable is absent (left out of
// the body, with the omitzero tag), Null() sends null, Value(v) sends v.
// Decoding sets Set for any present member, null included.
type Nullable[T any] struct {
	Set   bool
	Value *T // nil with Set: null
}

// Null returns a Nullable that encodes as null.
func Null[T any]() Nullable[T] { return Nullable[T]{Set: true} }

// Value returns a Nullable that encodes as v.
func Value[T any](v T) Nullable[T] { return Nullable[T]{Set: true, Value: &v} }

// IsZero reports an absent member, for omitzero.
func (n Nullable[T]) IsZero() bool { return !n.Set }

// MarshalJSON encodes the value, or null.
func (n Nullable[T]) MarshalJSON() ([]byte, error) { return json.Marshal(n.Value) }

// UnmarshalJSON records that the member was present, and its value unless
// it is null.
func (n *Nullable[T]) UnmarshalJSON(b []byte) error {
	n.Set, n.Value = true, nil
	if bytes.Equal(bytes.TrimSpace(b), []byte("null")) {
		return nil
	}
	var v T
	if err := json.Unmarshal(b, &v); err != nil {
		return err
	}
	n.Value = &v
	return nil
}

// ---- shared members ----

// RateLimit is a per-minute request limit.
type RateLimit struct {
	RequestsPerMinute int `json:"requests_per_minute"`
}

// Quota is an allowance of tokens (prompt plus completion, as metered) or
// of requests: exactly one of Tokens and Requests is set. Refill is
// "daily" or "monthly" (back to the full amount at 00:00 UTC each day, or
// on the 1st of each month), or null: never refilled.
type Quota struct {
	Tokens   *int64  `json:"tokens,omitempty"`
	Requests *int64  `json:"requests,omitempty"`
	Refill   *string `json:"refill"`
}

// Pricing is what a deployment's tokens cost, in units of Currency (an
// ISO 4217 code) per million tokens, exact to 9 decimals. CachedPerMillion
// prices the prompt tokens the upstream served from its cache (null: as
// any prompt token).
type Pricing struct {
	Currency             string       `json:"currency"`
	PromptPerMillion     json.Number  `json:"prompt_per_million"`
	CompletionPerMillion json.Number  `json:"completion_per_million"`
	CachedPerMillion     *json.Number `json:"cached_per_million"`
}

// UpstreamAuth says which credential an edge sends to the upstream.
type UpstreamAuth struct {
	Mode   string `json:"mode"` // "none", "inject" or "passthrough"
	Header string `json:"header,omitempty"`
	Prefix string `json:"prefix,omitempty"`
	Secret string `json:"secret,omitempty"` // the name of an edge-local secret, never its value
}

// Propagation is the ?wait= report: the live edges that had applied the
// mutation's revision when the answer was sent, and those that had not.
type Propagation struct {
	Applied []string `json:"applied"`
	Pending []string `json:"pending"`
	// LiveEdges counts the live edges the wait knew of (applied +
	// pending): 0 means it proved nothing reached any edge.
	LiveEdges int `json:"live_edges"`
}

// Deleted is the answer to a delete given ?wait (without it a delete
// answers 204 and no body).
type Deleted struct {
	Revision    uint64       `json:"revision"`
	Propagation *Propagation `json:"propagation"`
}

// Page is one page of a listing. NextCursor is null at the end; listings
// that are never paged (deployments, projects, users, a deployment's keys)
// always answer null.
type Page[T any] struct {
	Items      []T     `json:"items"`
	NextCursor *string `json:"next_cursor"`
}

// The pages the API answers.
type (
	KeyPage        = Page[Key]
	DeploymentPage = Page[Deployment]
	ProjectPage    = Page[Project]
	UserPage       = Page[User]
	AuditPage      = Page[AuditRecord]
)

// ErrorBody is every error answer: {"error": {...}}.
type ErrorBody struct {
	Error ErrorDetail `json:"error"`
}

// ErrorDetail is the error member of an ErrorBody.
type ErrorDetail struct {
	Code    string `json:"code"` // e.g. NOT_FOUND, VALIDATION_ERROR
	Message string `json:"message"`
	Type    string `json:"type"` // OpenAI-style, e.g. invalid_request_error
	// Details is null, or more about the error: a validation error names
	// {"field", "reason"}.
	Details any `json:"details"`
}

// ---- open endpoints ----

// Health is the answer of GET /health.
type Health struct {
	Status            string `json:"status"`           // ok, degraded, store unavailable
	Reason            string `json:"reason,omitempty"` // only when degraded
	Revision          uint64 `json:"revision"`
	PublishedRevision uint64 `json:"published_revision"`
	NATSConnected     bool   `json:"nats_connected"`
}

// LoginRequest is the body of POST /v1/auth/login.
type LoginRequest struct {
	Username string `json:"username"`
	Password string `json:"password"`
}

// LoginResponse is the answer of POST /v1/auth/login.
type LoginResponse struct {
	Token     string    `json:"token"`
	ExpiresAt time.Time `json:"expires_at"`
	TokenType string    `json:"token_type"` // Bearer
}

// SigningKey is the answer of GET /v1/signing-key.
type SigningKey struct {
	PublicKey string `json:"public_key"` // base64 Ed25519
}

// ---- users ----

// User is an admin user.
type User struct {
	ID        string    `json:"id"`
	Username  string    `json:"username"`
	CreatedAt time.Time `json:"created_at"`
}

// UserCreate is the body of POST /v1/users.
type UserCreate struct {
	Username string `json:"username"`
	Password string `json:"password"`
}

// PasswordChange is the body of PUT /v1/users/{u}/password; OldPassword is
// required to change one's own.
type PasswordChange struct {
	Password    string `json:"password"`
	OldPassword string `json:"old_password,omitempty"`
}

// ---- projects ----

// Project is a project as listed.
type Project struct {
	ID        string    `json:"id"`
	Name      string    `json:"name"`
	CreatedAt time.Time `json:"created_at"`
}

// ProjectCreate is the body of POST /v1/projects.
type ProjectCreate struct {
	Name string `json:"name"`
}

// ProjectCreated is the answer of POST /v1/projects. A project is no event
// (edges never see projects): Revision is the store's when it was created.
type ProjectCreated struct {
	ID          string       `json:"id"`
	Name        string       `json:"name"`
	CreatedAt   time.Time    `json:"created_at"`
	Revision    uint64       `json:"revision"`
	Propagation *Propagation `json:"propagation,omitempty"`
}

// Limits are a project's quotas, defaults filled in.
type Limits struct {
	MaxKeys        int `json:"max_keys"`
	MaxDeployments int `json:"max_deployments"`
	MaxLinksPerKey int `json:"max_links_per_key"`
}

// ProjectUsage is what a project holds against its Limits.
type ProjectUsage struct {
	Keys        int `json:"keys"`
	Deployments int `json:"deployments"`
}

// ProjectDetail is a project with its upstream policy, quotas and usage
// (GET and PATCH /v1/projects/{p}).
type ProjectDetail struct {
	ID        string    `json:"id"`
	Name      string    `json:"name"`
	CreatedAt time.Time `json:"created_at"`
	// AllowedUpstreams is null for the default policy.
	AllowedUpstreams []string     `json:"allowed_upstreams"`
	Limits           Limits       `json:"limits"`
	Usage            ProjectUsage `json:"usage"`
	// TokensPerMinute, TokensPerDay and Quota bound the tokens of all the
	// project's deployments together (null: no bound).
	TokensPerMinute *int64 `json:"tokens_per_minute"`
	TokensPerDay    *int64 `json:"tokens_per_day"`
	Quota           *Quota `json:"quota"`
	// MaxBudget caps the spend (in units of the deployments' pricing
	// currency), refilled BudgetRefill ("daily", "monthly", null: never);
	// null: no cap.
	MaxBudget    *json.Number `json:"max_budget"`
	BudgetRefill *string      `json:"budget_refill"`
	// Propagation is only in a PATCH's answer given ?wait: a change of the
	// token bounds re-sends every deployment of the project.
	Propagation *Propagation `json:"propagation,omitempty"`
}

// ProjectPatch is the body of PATCH /v1/projects/{p}; absent members are
// left as they are, null ones go back to the default.
type ProjectPatch struct {
	AllowedUpstreams Nullable[[]string] `json:"allowed_upstreams,omitzero"`
	MaxKeys          Nullable[int]      `json:"max_keys,omitzero"`
	MaxDeployments   Nullable[int]      `json:"max_deployments,omitzero"`
	MaxLinksPerKey   Nullable[int]      `json:"max_links_per_key,omitzero"`
	// Token bounds: null removes one.
	TokensPerMinute Nullable[int64] `json:"tokens_per_minute,omitzero"`
	TokensPerDay    Nullable[int64] `json:"tokens_per_day,omitzero"`
	Quota           Nullable[Quota] `json:"quota,omitzero"`
	// MaxBudget: null removes the spend cap; BudgetRefill is given with
	// it (absent: kept).
	MaxBudget    Nullable[json.Number] `json:"max_budget,omitzero"`
	BudgetRefill Nullable[string]      `json:"budget_refill,omitzero"`
}

// ---- keys ----

// Key is an API key as the origin shows it. Secret is only in the answers
// of create and rotate, the only times it is ever returned; Propagation
// only in a mutation's answer given ?wait.
type Key struct {
	ID          string     `json:"id"`
	Project     string     `json:"project"`
	Name        string     `json:"name"`
	Description string     `json:"description"`
	Prefix      string     `json:"prefix"`
	Permissions []string   `json:"permissions"`
	Deployments []string   `json:"deployments"` // ids of the linked deployments
	ExpiresAt   *time.Time `json:"expires_at"`
	RateLimit   *RateLimit `json:"rate_limit"`
	// Models is the model allow-list ([] allows any model the linked
	// deployments allow); MaxConcurrency the cap on requests in flight at
	// one edge (null: none).
	Models         []string `json:"models"`
	MaxConcurrency *int     `json:"max_concurrency"`
	// TokensPerMinute, TokensPerDay and Quota bound the key's tokens (null:
	// no bound).
	TokensPerMinute *int64 `json:"tokens_per_minute"`
	TokensPerDay    *int64 `json:"tokens_per_day"`
	Quota           *Quota `json:"quota"`
	// MaxBudget caps the spend (in units of the deployments' pricing
	// currency), refilled BudgetRefill ("daily", "monthly", null: never);
	// null: no cap.
	MaxBudget    *json.Number `json:"max_budget"`
	BudgetRefill *string      `json:"budget_refill"`
	Disabled     bool         `json:"disabled"`
	CreatedAt    time.Time    `json:"created_at"`
	UpdatedAt    time.Time    `json:"updated_at"`
	Revision     uint64       `json:"revision"`
	Secret       string       `json:"key,omitempty"`
	Propagation  *Propagation `json:"propagation,omitempty"`
}

// KeyCreate is the body of POST /v1/projects/{p}/keys. Zero members are
// left out, so the origin's defaults apply (permissions run_inference,
// read_models, use_streaming; never expires; no rate limit).
type KeyCreate struct {
	Name          string     `json:"name,omitempty"`
	Description   string     `json:"description,omitempty"`
	Permissions   []string   `json:"permissions,omitempty"`
	Deployments   []string   `json:"deployments,omitempty"` // ids or names
	ExpiresAt     string     `json:"expires_at,omitempty"`  // RFC 3339 or YYYY-MM-DD
	ExpiresInDays int        `json:"expires_in_days,omitempty"`
	RateLimit     *RateLimit `json:"rate_limit,omitempty"`
	// Models are model name patterns ("*" within a name); none: any model.
	Models          []string `json:"models,omitempty"`
	MaxConcurrency  int      `json:"max_concurrency,omitempty"`
	TokensPerMinute int64    `json:"tokens_per_minute,omitempty"`
	TokensPerDay    int64    `json:"tokens_per_day,omitempty"`
	Quota           *Quota   `json:"quota,omitempty"`
	// MaxBudget caps the key's spend; BudgetRefill is "daily", "monthly"
	// or "" (never).
	MaxBudget    *json.Number `json:"max_budget,omitempty"`
	BudgetRefill string       `json:"budget_refill,omitempty"`
	Disabled     bool         `json:"disabled,omitempty"`
}

// KeyPatch is the body of PATCH /v1/projects/{p}/keys/{id}: absent members
// are left as they are; expires_at and rate_limit may be null (never
// expires; no limit).
type KeyPatch struct {
	Name        *string             `json:"name,omitempty"`
	Description *string             `json:"description,omitempty"`
	Permissions *[]string           `json:"permissions,omitempty"`
	Deployments *[]string           `json:"deployments,omitempty"` // replaces the links (ids or names)
	ExpiresAt   Nullable[string]    `json:"expires_at,omitzero"`   // RFC 3339 or YYYY-MM-DD
	RateLimit   Nullable[RateLimit] `json:"rate_limit,omitzero"`
	// Models replaces the model allow-list; [] or null: any model.
	Models Nullable[[]string] `json:"models,omitzero"`
	// MaxConcurrency: null removes the cap.
	MaxConcurrency Nullable[int] `json:"max_concurrency,omitzero"`
	// Token bounds: null removes one.
	TokensPerMinute Nullable[int64] `json:"tokens_per_minute,omitzero"`
	TokensPerDay    Nullable[int64] `json:"tokens_per_day,omitzero"`
	Quota           Nullable[Quota] `json:"quota,omitzero"`
	// MaxBudget: null removes the spend cap; BudgetRefill is given with
	// it (absent: kept).
	MaxBudget    Nullable[json.Number] `json:"max_budget,omitzero"`
	BudgetRefill Nullable[string]      `json:"budget_refill,omitzero"`
	Disabled     *bool                 `json:"disabled,omitempty"`
}

// KeyRotate is the body of POST /v1/projects/{p}/keys/{id}/rotate: how
// long the old secret keeps working (default 0).
type KeyRotate struct {
	GraceSeconds int64 `json:"grace_seconds,omitempty"`
}

// ---- deployments ----

// Deployment is a deployment as the origin shows it. Propagation is only
// in a mutation's answer given ?wait.
type Deployment struct {
	ID         string   `json:"id"`
	Project    string   `json:"project"`
	Name       string   `json:"name"`
	Hosts      []string `json:"hosts"`
	PathPrefix string   `json:"path_prefix"`
	// StripPrefix: the edge removes PathPrefix from the path it forwards
	// (false: the upstream sees the path as the client sent it).
	StripPrefix      bool                `json:"strip_prefix"`
	Upstreams        map[string][]string `json:"upstreams"`
	AuthEnabled      bool                `json:"auth_enabled"`
	InvalidKeyStatus int                 `json:"invalid_key_status"`
	UpstreamAuth     *UpstreamAuth       `json:"upstream_auth"`
	RateLimit        *RateLimit          `json:"rate_limit"`
	MaxBodyBytes     int64               `json:"max_body_bytes"`
	MaxPromptChars   int                 `json:"max_prompt_chars"`
	// Models bounds the models of every key on the deployment ([]: any);
	// MaxConcurrency its requests in flight at one edge (null: no cap).
	Models         []string `json:"models"`
	MaxConcurrency *int     `json:"max_concurrency"`
	// TokensPerMinute, TokensPerDay and Quota bound the tokens of all the
	// deployment's keys together (null: no bound); DefaultMaxTokens is
	// what a request naming no max_tokens reserves (null: none).
	TokensPerMinute  *int64 `json:"tokens_per_minute"`
	TokensPerDay     *int64 `json:"tokens_per_day"`
	Quota            *Quota `json:"quota"`
	DefaultMaxTokens *int64 `json:"default_max_tokens"`
	// MaxBudget caps the spend (in units of the deployments' pricing
	// currency), refilled BudgetRefill ("daily", "monthly", null: never);
	// null: no cap.
	MaxBudget    *json.Number `json:"max_budget"`
	BudgetRefill *string      `json:"budget_refill"`
	// Pricing is what the deployment's tokens cost (null: nothing).
	Pricing  *Pricing `json:"pricing"`
	Revision uint64   `json:"revision"`
	// Warnings is what the origin accepted but will not work as probably
	// meant ([] when nothing): see Warning.
	Warnings    []Warning    `json:"warnings"`
	Propagation *Propagation `json:"propagation,omitempty"`
}

// WarningNoUpstreamForSite: the deployment lists no upstream for Site, the
// site of an edge the origin knows, and no "*" entry, so that site's edges
// answer its requests 502 "no upstream configured for site Site".
const WarningNoUpstreamForSite = "no_upstream_for_site"

// Warning is a misconfiguration the origin accepted (it is not an error:
// an edge of the site may come later, or the gap may be meant) but reports
// on every answer that shows the deployment.
type Warning struct {
	Code    string `json:"code"`           // WarningNoUpstreamForSite
	Site    string `json:"site,omitempty"` // the site it concerns
	Message string `json:"message"`        // for people
}

// DeploymentInput is the body of a deployment's creation (name and
// upstreams required; absent members take the defaults) or of its patch
// (absent members are left as they are). Null resets hosts, path_prefix,
// upstream_auth and rate_limit to their defaults.
type DeploymentInput struct {
	Name             *string                `json:"name,omitempty"`
	Hosts            Nullable[[]string]     `json:"hosts,omitzero"`
	PathPrefix       Nullable[string]       `json:"path_prefix,omitzero"`
	StripPrefix      *bool                  `json:"strip_prefix,omitempty"`
	Upstreams        map[string][]string    `json:"upstreams,omitempty"` // site (or "*") to base URLs
	AuthEnabled      *bool                  `json:"auth_enabled,omitempty"`
	InvalidKeyStatus *int                   `json:"invalid_key_status,omitempty"`
	UpstreamAuth     Nullable[UpstreamAuth] `json:"upstream_auth,omitzero"`
	RateLimit        Nullable[RateLimit]    `json:"rate_limit,omitzero"`
	MaxBodyBytes     *int64                 `json:"max_body_bytes,omitempty"`
	MaxPromptChars   *int                   `json:"max_prompt_chars,omitempty"`
	// Models: [] or null allows any model; MaxConcurrency: null removes
	// the cap.
	Models         Nullable[[]string] `json:"models,omitzero"`
	MaxConcurrency Nullable[int]      `json:"max_concurrency,omitzero"`
	// Token bounds and the default reservation: null removes one.
	TokensPerMinute  Nullable[int64] `json:"tokens_per_minute,omitzero"`
	TokensPerDay     Nullable[int64] `json:"tokens_per_day,omitzero"`
	Quota            Nullable[Quota] `json:"quota,omitzero"`
	DefaultMaxTokens Nullable[int64] `json:"default_max_tokens,omitzero"`
	// MaxBudget: null removes the spend cap; BudgetRefill is given with
	// it (absent: kept).
	MaxBudget    Nullable[json.Number] `json:"max_budget,omitzero"`
	BudgetRefill Nullable[string]      `json:"budget_refill,omitzero"`
	// Pricing: null removes it.
	Pricing Nullable[Pricing] `json:"pricing,omitzero"`
}

// ---- edges and audit ----

// Edge is one edge as the origin's registry last heard of it (GET
// /v1/edges answers []Edge).
type Edge struct {
	ID              string    `json:"id"`
	Site            string    `json:"site"`
	Address         string    `json:"address"`
	AppliedRevision uint64    `json:"applied_revision"`
	LastSeen        time.Time `json:"last_seen"`
	Live            bool      `json:"live"`
	// RelayedBy names the edge whose heartbeat last carried this one's,
	// for an edge reachable only through gossip.
	RelayedBy string `json:"relayed_by,omitempty"`
}

// AuditRecord is one audit record: a request an edge handled (source
// "edge") or an admin action of the origin (source "admin"). It never
// holds a secret. GET /v1/audit answers an AuditPage, newest first.
type AuditRecord struct {
	ID             string    `json:"id"`
	Time           time.Time `json:"time"`
	Source         string    `json:"source"`
	Edge           string    `json:"edge,omitempty"`
	Site           string    `json:"site,omitempty"`
	ClientIP       string    `json:"client_ip"`
	Actor          string    `json:"actor,omitempty"`
	KeyID          string    `json:"key_id,omitempty"`
	Project        string    `json:"project,omitempty"`
	Deployment     string    `json:"deployment,omitempty"`
	DeploymentName string    `json:"deployment_name,omitempty"`
	Method         string    `json:"method"`
	Path           string    `json:"path"`
	Action         string    `json:"action,omitempty"`
	Target         string    `json:"target,omitempty"`
	Status         int       `json:"status"`
	DurationMS     float64   `json:"duration_ms"`
	RequestID      string    `json:"request_id,omitempty"`
	// Reason is why an edge refused the request (docs/api.md, "Audit
	// log"); absent for a request let through and for admin records.
	Reason string `json:"reason,omitempty"`
	// Changed names the fields an admin change set, never their values.
	Changed []string `json:"changed,omitempty"`
}

// ---- usage ----

// UsageCounts are the sums of metered requests: how many, their tokens as
// the upstreams reported them, and how many of them were estimated (the
// edge counted what it relayed: a cut stream, an upstream without usage).
type UsageCounts struct {
	Requests          int64 `json:"requests"`
	PromptTokens      int64 `json:"prompt_tokens"`
	CompletionTokens  int64 `json:"completion_tokens"`
	CachedTokens      int64 `json:"cached_tokens"`
	EstimatedRequests int64 `json:"estimated_requests"`
	// Cost is what the requests cost at their deployments' pricing when
	// the origin stored them, in units of the pricing currency (exact to
	// 9 decimals; 0 for unpriced deployments).
	Cost json.Number `json:"cost"`
}

// UsageRow is one row of a UsageReport: the sums of one group. Only the
// members group_by names are present; key_id is "" for the requests of
// deployments without auth.
type UsageRow struct {
	Project    *string    `json:"project,omitempty"` // project id
	KeyID      *string    `json:"key_id,omitempty"`
	Deployment *string    `json:"deployment,omitempty"` // deployment id
	Model      *string    `json:"model,omitempty"`
	Hour       *time.Time `json:"hour,omitempty"` // the UTC hour's start
	Day        *time.Time `json:"day,omitempty"`  // the UTC day's start
	UsageCounts
}

// UsageReport is the answer of GET /v1/usage: the rows of [since, until),
// ordered by time, then project, key, deployment and model. Truncated says
// the rows were cut at the row limit.
type UsageReport struct {
	Items     []UsageRow `json:"items"`
	Since     time.Time  `json:"since"`
	Until     time.Time  `json:"until"`
	GroupBy   []string   `json:"group_by"`
	Truncated bool       `json:"truncated"`
}

// UsagePeriod is a key's usage since a time (GET /v1/key).
type UsagePeriod struct {
	Since time.Time `json:"since"`
	UsageCounts
}

// KeyUsage is a key's usage today and this month (UTC).
type KeyUsage struct {
	Today UsagePeriod `json:"today"`
	Month UsagePeriod `json:"month"`
}

// KeyDeployment is a deployment a key is linked to.
type KeyDeployment struct {
	ID   string `json:"id"`
	Name string `json:"name"`
}

// KeySelf is the answer of GET /v1/key: the calling API key as it may see
// itself. It never holds the secret or its hash.
type KeySelf struct {
	ID          string          `json:"id"`
	Name        string          `json:"name"`
	Project     string          `json:"project"` // project id
	ProjectName string          `json:"project_name"`
	Permissions []string        `json:"permissions"`
	Deployments []KeyDeployment `json:"deployments"`
	ExpiresAt   *time.Time      `json:"expires_at"`
	RateLimit   *RateLimit      `json:"rate_limit"`
	// The key's own token bounds (null: none; its deployments' and
	// project's apply too).
	TokensPerMinute *int64 `json:"tokens_per_minute"`
	TokensPerDay    *int64 `json:"tokens_per_day"`
	Quota           *Quota `json:"quota"`
	// QuotaUsed is what the usage ledger holds against the quota in its
	// current period (today, this month, or ever for a quota that never
	// refills): tokens or requests as the quota counts; null without a
	// quota. Edges enforce their own counters (see docs/api.md).
	QuotaUsed *int64 `json:"quota_used"`
	// MaxBudget and BudgetRefill are the key's spend cap (null: none);
	// BudgetSpent what the usage ledger holds against it in its current
	// period (as QuotaUsed), in units of the pricing currency.
	MaxBudget    *json.Number `json:"max_budget"`
	BudgetRefill *string      `json:"budget_refill"`
	BudgetSpent  *json.Number `json:"budget_spent"`
	Usage        KeyUsage     `json:"usage"`
}
