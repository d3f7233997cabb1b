package event

import "time"

const (
	// UsageStreamName is the JetStream stream edges publish their usage
	// records into (on EdgeSubject(EdgeUsageSubject, edge)), so that none is
	// lost while the origins are down; the origins read it with a durable
	// consumer.
	UsageStreamName = "KEYMESH_USAGE"
	// UsageStreamSubjects covers every edge's usage subject.
	UsageStreamSubjects = EdgeUsageSubject + ".*"
)

// Usage is one metered request as an edge reports it. It is not signed:
// the subject it arrives on names the edge that sent it (the NATS
// credentials of an edge allow only its own), and it moves counters, never
// access. ID is unique per record and is the deduplication key: the
// origin stores each id once, so a record published twice counts once (the
// stream's Nats-Msg-Id is the id for a message of one record, and a hash of
// the ids for a batch of several, one record a line).
type Usage struct {
	ID         string `json:"id"`
	Edge       string `json:"edge"`
	KeyID      string `json:"key_id,omitempty"` // empty for a deployment without auth
	Project    string `json:"project"`
	Deployment string `json:"deployment"` // the deployment's id
	Model      string `json:"model,omitempty"`
	// Tokens as the upstream reported them; Estimated when they were
	// counted from what was relayed instead (a cut stream, an upstream
	// that sent no usage).
	PromptTokens     int64     `json:"prompt_tokens"`
	CompletionTokens int64     `json:"completion_tokens"`
	CachedTokens     int64     `json:"cached_tokens,omitempty"`
	Estimated        bool      `json:"estimated,omitempty"`
	Status           int       `json:"status"`
	DurationMS       int64     `json:"duration_ms"`
	Time             time.Time `json:"time"`
}
