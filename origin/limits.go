package origin

// Bounds on what a tenant can make the origin store and send. Every field
// of every REST input has one (docs/api.md lists them), so that no change's
// event can grow past MaxEventBytes by accident; the size of the sealed
// event is then checked anyway, inside the write transaction, before
// commit (Store.mutate). One tenant's input can never produce an event NATS
// refuses (its default max_payload is 1 MiB) and so stall every other
// tenant's changes behind it.

// MaxEventBytes is the largest sealed event (signature included) a change
// may produce; a change whose event would be larger is refused with 413
// before anything is committed.
const MaxEventBytes = 64 << 10

// Field bounds of the REST API.
const (
	maxRefLen          = 128  // a project, key, deployment or user id or name given as a reference
	maxKeyNameLen      = 200  // key name, bytes
	maxDescriptionLen  = 2000 // key description, bytes
	maxHosts           = 32   // hosts of one deployment
	maxHostLen         = 253  // one host name
	maxPathPrefixLen   = 256  // a deployment's path_prefix, bytes
	maxSites           = 32   // sites (and "*") in upstreams
	maxUpstreamURLs    = 64   // upstream URLs of a deployment, over all sites
	maxURLsPerSite     = 16   // upstream URLs of one site
	maxUpstreamURLLen  = 512  // one upstream URL, bytes
	maxHeaderNameLen   = 64   // upstream_auth.header
	maxAuthPrefixLen   = 64   // upstream_auth.prefix
	maxSecretNameLen   = 128  // upstream_auth.secret
	maxRequestsPerMin  = 10_000_000
	maxExpiryLen       = 64 // the expires_at string
	maxCursorLen       = 256
	maxPolicyEntries   = 64  // allowed_upstreams entries
	maxPolicyEntryLen  = 256 // one allowed_upstreams entry
	maxUsernameLen     = 63  // as nameRE
	maxPasswordLen     = 72  // bcrypt reads no further; longer ones are refused, not cut
	minPasswordLen     = 12  // for passwords set through the API
	maxLiveKeySecrets  = 8   // secrets of one key valid at once (rotations within their grace)
	maxQueryParamLen   = 256 // any other query parameter, bytes
	maxGraceSeconds    = 30 * 24 * 3600
	maxExpiresInDays   = 36500
	maxDeploymentLinks = 1000                  // the most max_links_per_key may be set to: a key's event lists its links
	maxConcurrency     = 100_000               // a key's or deployment's max_concurrency
	maxTokensPerPeriod = 1_000_000_000_000     // tokens_per_minute and tokens_per_day
	maxQuotaAmount     = 1_000_000_000_000_000 // a quota's tokens or requests
	maxDefaultMaxToks  = 10_000_000            // a deployment's default_max_tokens
	maxBudget          = 1_000_000_000         // a max_budget, in units of the currency (10^18 nano-units: fits int64)
	maxPricePerMillion = 1_000_000             // a pricing's price per million tokens, in units of the currency
)

// Limits are a project's quotas. Zero fields mean the default (see
// DefaultLimits); the store keeps NULL for them, so that a project that
// never had a quota set follows the default of the running version.
type Limits struct {
	MaxKeys        int
	MaxDeployments int
	MaxLinksPerKey int
}

// DefaultLimits are the quotas of a project no admin has set any for.
var DefaultLimits = Limits{MaxKeys: 100_000, MaxDeployments: 10_000, MaxLinksPerKey: 100}

// limitRanges are the values an admin may set each quota to.
var limitRanges = map[string][2]int{
	"max_keys":          {1, 10_000_000},
	"max_deployments":   {1, 100_000},
	"max_links_per_key": {1, maxDeploymentLinks},
}

// withDefaults fills zero fields from DefaultLimits.
func (l Limits) withDefaults() Limits {
	if l.MaxKeys == 0 {
		l.MaxKeys = DefaultLimits.MaxKeys
	}
	if l.MaxDeployments == 0 {
		l.MaxDeployments = DefaultLimits.MaxDeployments
	}
	if l.MaxLinksPerKey == 0 {
		l.MaxLinksPerKey = DefaultLimits.MaxLinksPerKey
	}
	return l
}
