// Package event owns the signed change record that is the only thing an edge
// acts on, and its wire format.
//
// Every record — a change published on the event stream, an answer to a
// cache-miss lookup, a deployment snapshot, and (later) a record relayed by a
// gossip peer — is a Record sealed by the origin's Ed25519 key. Records carry
// the full state of what they describe at their Revision, never a delta, so
// applying one twice or out of order can be detected and is harmless. A
// Verifier refuses anything not signed by the configured origin key; a
// compromised relay can therefore delay state, never grant it.
package event

import (
	"time"

	"github.com/keymesh/keymesh/apikey"
)

// Kind says what a Record describes.
type Kind string

const (
	// KindKey carries a key's full state; Key.Deleted marks its removal.
	KindKey Kind = "key"
	// KindDeployment carries a deployment's full state; Deployment.Deleted
	// marks its removal.
	KindDeployment Kind = "deployment"
	// KindKeyNotFound answers a lookup for a hash no key has (Hash is set).
	KindKeyNotFound Kind = "key_not_found"
	// KindSnapshot carries every live deployment at Revision.
	KindSnapshot Kind = "snapshot"
	// KindSnapshotChunk carries part of the live deployments at Revision;
	// Chunk says which part. The chunks of one answer share Revision and
	// Chunk.ID, and only all Chunk.Count of them together are a snapshot.
	KindSnapshotChunk Kind = "snapshot_chunk"
	// KindHeartbeat says the origin is alive and, as of Time, has
	// committed (acknowledged) every change up to Revision — its committed
	// head, which may be ahead of what the event stream holds yet. An edge
	// is current only once it has applied that revision; one that stops
	// hearing heartbeats cannot prove it is current.
	KindHeartbeat Kind = "heartbeat"
	// KindBalance carries what the origin's usage ledger says some
	// long-period counters have used in their current period, as of Time
	// (Balances; see balance.go). Revision is 0: balances are no change.
	KindBalance Kind = "balance"
)

// Record is one signed statement of the origin: the state of one thing (or,
// for a snapshot, of all deployments) as of Revision, the position in the
// global, gap-free order of changes. For a published change, Revision is the
// change's own position; for a lookup or snapshot answer, it is the last
// revision the answer's read had seen.
type Record struct {
	Revision    uint64       `json:"revision"`
	Kind        Kind         `json:"kind"`
	Time        time.Time    `json:"time"`
	Key         *Key         `json:"key,omitempty"`
	Deployment  *Deployment  `json:"deployment,omitempty"`
	Deployments []Deployment `json:"deployments,omitempty"`
	Hash        *apikey.Hash `json:"hash,omitempty"`
	Chunk       *Chunk       `json:"chunk,omitempty"`
	Balances    []Balance    `json:"balances,omitempty"`
}

// Chunk places a KindSnapshotChunk record in its snapshot: part Index
// (from 0) of Count, of the answer ID (random, one per answer, so chunks
// of two answers, even at one revision, are never taken for one set).
type Chunk struct {
	ID    string `json:"id"`
	Index int    `json:"index"`
	Count int    `json:"count"`
}

// MaxSnapshotChunks bounds the chunks an edge accepts for one snapshot.
const MaxSnapshotChunks = 4096

// Key is what an edge needs to authorize a request with a key. It never holds
// the secret, only hashes of it.
type Key struct {
	ID      string `json:"id"`
	Project string `json:"project"`
	// Name is the key's name, for the edge's GET /v1/key. Empty in records
	// of origins older than the field.
	Name string `json:"name,omitempty"`
	// Secrets lists the hashes that authenticate as this key: the current one
	// and, after a rotation with a grace period, the previous one with its
	// NotAfter.
	Secrets     []Secret   `json:"secrets"`
	Permissions []string   `json:"permissions"`
	Deployments []string   `json:"deployments"`
	ExpiresAt   *time.Time `json:"expires_at,omitempty"`
	RateLimit   *RateLimit `json:"rate_limit,omitempty"`
	// Models is the key's model allow-list (see package modelglob); empty
	// allows every model the linked deployments allow.
	Models []string `json:"models,omitempty"`
	// MaxConcurrency bounds the key's requests in flight at one edge; 0
	// is no bound.
	MaxConcurrency int `json:"max_concurrency,omitempty"`
	// Tokens bounds the key's tokens and credits; nil is no bound.
	Tokens   *TokenLimits `json:"tokens,omitempty"`
	Disabled bool         `json:"disabled,omitempty"`
	Deleted  bool         `json:"deleted,omitempty"`
}

// Secret is one accepted hash of a key. A zero NotAfter means no end other
// than the key's own expiry.
type Secret struct {
	Hash     apikey.Hash `json:"hash"`
	NotAfter *time.Time  `json:"not_after,omitempty"`
}

// RateLimit is a request budget.
type RateLimit struct {
	RequestsPerMinute int `json:"requests_per_minute"`
}

// TokenLimits bound the tokens (prompt plus completion, as metered) and the
// credits of a key, a deployment or a project. Zero fields are no bound.
type TokenLimits struct {
	// TokensPerMinute and TokensPerDay are rolling budgets (token buckets
	// refilled evenly over a minute and a day).
	TokensPerMinute int64 `json:"tokens_per_minute,omitempty"`
	TokensPerDay    int64 `json:"tokens_per_day,omitempty"`
	// Quota is an allowance of credits that refills on a calendar schedule,
	// or never.
	Quota *Quota `json:"quota,omitempty"`
	// Budget caps the spend (priced at the deployment a request went to:
	// Deployment.Pricing); a request to a deployment without pricing
	// spends nothing.
	Budget *Budget `json:"budget,omitempty"`
}

// Quota is an allowance of tokens or of requests (exactly one is set),
// refilled to its full amount at each start of a UTC day or month, or
// never.
type Quota struct {
	Tokens   int64  `json:"tokens,omitempty"`
	Requests int64  `json:"requests,omitempty"`
	Refill   string `json:"refill,omitempty"` // QuotaRefillDaily, QuotaRefillMonthly or "" (never)
}

// Quota refill schedules.
const (
	QuotaRefillDaily   = "daily"
	QuotaRefillMonthly = "monthly"
)

// Empty reports whether t bounds nothing.
func (t *TokenLimits) Empty() bool {
	return t == nil || t.TokensPerMinute == 0 && t.TokensPerDay == 0 && t.Quota == nil && t.Budget == nil
}

// UpstreamAuth says which credential the edge sends to the upstream.
type UpstreamAuth struct {
	Mode   string `json:"mode"` // "none", "inject" or "passthrough"
	Header string `json:"header,omitempty"`
	Prefix string `json:"prefix,omitempty"`
	Secret string `json:"secret,omitempty"` // name of the edge-local secret, never its value
}

// Upstream auth modes.
const (
	UpstreamAuthNone        = "none"
	UpstreamAuthInject      = "inject"
	UpstreamAuthPassthrough = "passthrough"
)

// Deployment is an inference endpoint behind the edges.
type Deployment struct {
	ID      string `json:"id"`
	Project string `json:"project"`
	// ProjectName is the project's name, unique and never changed: edges
	// scope their local upstream secrets by it (the operator knows names,
	// not ids). Empty in records of origins older than the field.
	ProjectName string   `json:"project_name,omitempty"`
	Name        string   `json:"name"`
	Hosts       []string `json:"hosts"`
	PathPrefix  string   `json:"path_prefix"`
	// StripPrefix: edges forward the path without PathPrefix (a path
	// equal to it as "/"); the edge's own checks of the path (permissions,
	// model routes, metering) read the path as forwarded.
	StripPrefix bool `json:"strip_prefix,omitempty"`
	// Upstreams maps a site name, or "*" for any other site, to base URLs.
	Upstreams        map[string][]string `json:"upstreams"`
	AuthEnabled      bool                `json:"auth_enabled"`
	InvalidKeyStatus int                 `json:"invalid_key_status"`
	UpstreamAuth     *UpstreamAuth       `json:"upstream_auth,omitempty"`
	RateLimit        *RateLimit          `json:"rate_limit,omitempty"`
	MaxBodyBytes     int64               `json:"max_body_bytes"`
	MaxPromptChars   int                 `json:"max_prompt_chars"`
	// Models bounds the models of every key on the deployment (see package
	// modelglob); empty allows every model.
	Models []string `json:"models,omitempty"`
	// MaxConcurrency bounds the deployment's requests in flight at one
	// edge (a site's slots); 0 is no bound.
	MaxConcurrency int `json:"max_concurrency,omitempty"`
	// Tokens bounds the deployment's tokens and credits over all its keys;
	// ProjectTokens the project's over all its deployments (a project is no
	// record of its own: its bounds travel with each of its deployments,
	// and every deployment of the project is re-sent when they change).
	// Nil is no bound.
	Tokens        *TokenLimits `json:"tokens,omitempty"`
	ProjectTokens *TokenLimits `json:"project_tokens,omitempty"`
	// DefaultMaxTokens is the completion tokens a request that names no
	// max_tokens reserves against token bounds; 0 reserves none (such a
	// request is admitted while any budget is left).
	DefaultMaxTokens int64 `json:"default_max_tokens,omitempty"`
	// Pricing is what the deployment's tokens cost (nil: nothing), which
	// the spend caps (TokenLimits.Budget) of its keys, of itself and of
	// its project count.
	Pricing  *Pricing `json:"pricing,omitempty"`
	Revision uint64   `json:"revision"`
	Deleted  bool     `json:"deleted,omitempty"`
}

// Permission names, as in the external API.
const (
	PermReadModels    = "read_models"
	PermWriteModels   = "write_models"
	PermDeleteModels  = "delete_models"
	PermRunInference  = "run_inference"
	PermManageCache   = "manage_cache"
	PermReadMetrics   = "read_metrics"
	PermWriteConfig   = "write_config"
	PermManageUsers   = "manage_users"
	PermViewAuditLogs = "view_audit_logs"
	PermUseStreaming  = "use_streaming"
	PermManageQueue   = "manage_queue"
)

// Permissions lists every permission a key may hold.
var Permissions = []string{
	PermReadModels, PermWriteModels, PermDeleteModels, PermRunInference, PermManageCache,
	PermReadMetrics, PermWriteConfig, PermManageUsers, PermViewAuditLogs, PermUseStreaming,
	PermManageQueue,
}

// DefaultPermissions are given to a key created without a list.
var DefaultPermissions = []string{PermRunInference, PermReadModels, PermUseStreaming}

// ValidPermission reports whether p is a known permission.
func ValidPermission(p string) bool {
	for _, q := range Permissions {
		if p == q {
			return true
		}
	}
	return false
}
