package event

// AuditReasons are the reasons an edge's audit record of a refused request
// may carry (docs/api.md, "Audit log"): what the edge writes and what the
// origin accepts as a filter. A request let through has none, but for
// stream_cut: a stream the edge ended when its token budget ran out.
var AuditReasons = []string{"no_credential", "malformed", "unknown", "unlinked", "disabled", "expired",
	"permission", "model_not_allowed", "rate_limited", "concurrency", "token_limit", "quota", "too_large",
	"prompt_too_long", "bad_body", "bad_request", "no_deployment", "no_upstream", "unavailable",
	"stream_cut"}
