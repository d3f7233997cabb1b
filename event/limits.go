package event

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
)

// LimitReport is what one edge run tells the others of its use of the
// global limit counters (issue 15; docs/design.md, "Edge: limits across
// edges"). It is not signed: over NATS the subject names the sender (an
// edge's credentials publish only on its own
// EdgeSubject(EdgeLimitsSubject, id)), and whoever sends it, it can only
// raise counts — every entry is a G-counter: the largest value its writer
// ever had for (counter, window), merged by taking the maximum. A lost,
// repeated, reordered or forged report therefore never grants anything: at
// worst it delays or refuses.
//
// A run is (Edge, Boot): Boot is drawn at random when the edge starts, so
// that a restarted edge, which has forgotten its counts, writes new
// entries instead of lowering the old ones.
type LimitReport struct {
	// Edge is the sender's edge id; Boot its run's random id.
	Edge string `json:"edge"`
	Boot string `json:"boot"`
	// TimeMS is when the report was made, in unix milliseconds (the
	// sender's clock; used for staleness, never for windows).
	TimeMS int64 `json:"t"`
	// Full says Entries hold every entry of the sender's current windows,
	// not only those changed since its last report.
	Full bool `json:"full,omitempty"`
	// Entries are the counters' values; at most MaxLimitEntries.
	Entries []LimitEntry `json:"e"`
}

// LimitEntry is one G-counter value: what the sender had used of counter
// (Scope, ID, Kind) in window Window.
type LimitEntry struct {
	Scope LimitScope `json:"s"`
	ID    string     `json:"i"`
	Kind  LimitKind  `json:"k"`
	// Window is the window's index: for rpm and tpm unix time / 10 s, for
	// tpd unix time / 1 h (LimitWindow), for quotas and budgets the refill
	// period's index (0 for one that never refills).
	Window int64 `json:"w"`
	// Used is the largest settled-plus-held value the sender ever had in
	// Window: requests for rpm and quota_requests, tokens for tpm, tpd and
	// quota_tokens, nano-units of the currency for budget.
	Used int64 `json:"u"`
}

// LimitScope is whose bound a counter is.
type LimitScope string

// Limit scopes. A project's bounds ride on its deployments and count under
// the project's id.
const (
	LimitScopeKey        LimitScope = "key"
	LimitScopeDeployment LimitScope = "deployment"
	LimitScopeProject    LimitScope = "project"
)

// LimitKind is what a counter counts.
type LimitKind string

// Limit kinds.
const (
	LimitRPM           LimitKind = "rpm"            // requests per minute (rate_limit)
	LimitTPM           LimitKind = "tpm"            // tokens_per_minute
	LimitTPD           LimitKind = "tpd"            // tokens_per_day
	LimitQuotaTokens   LimitKind = "quota_tokens"   // a quota of tokens
	LimitQuotaRequests LimitKind = "quota_requests" // a quota of requests
	LimitBudget        LimitKind = "budget"         // a spend cap, in nano-units of the currency
)

// Bounds of a LimitReport an edge accepts.
const (
	// MaxLimitEntries bounds a report's entries: a sender with more sends
	// several reports (LimitReport.Split).
	MaxLimitEntries = 4096
	// MaxLimitIDBytes bounds the edge, boot and counter ids.
	MaxLimitIDBytes = 128
	// MaxLimitReportBytes bounds an encoded report UnmarshalLimitReport
	// reads: MaxLimitEntries entries of the longest ids fit.
	MaxLimitReportBytes = 1 << 20
)

// Sub-window lengths of the sliding windows, in milliseconds: rpm and tpm
// count over 60 s in six 10 s sub-windows (plus the part of a seventh still
// inside), tpd over 24 h in 1 h sub-windows.
const (
	LimitMinuteSubWindowMS = 10_000
	LimitDaySubWindowMS    = 3_600_000
)

// ErrLimitReport is returned (wrapped) for a report that is malformed or
// out of bounds.
var ErrLimitReport = errors.New("event: bad limit report")

// Valid reports whether s is a known scope.
func (s LimitScope) Valid() bool {
	return s == LimitScopeKey || s == LimitScopeDeployment || s == LimitScopeProject
}

// Valid reports whether k is a known kind.
func (k LimitKind) Valid() bool {
	switch k {
	case LimitRPM, LimitTPM, LimitTPD, LimitQuotaTokens, LimitQuotaRequests, LimitBudget:
		return true
	}
	return false
}

// Validate checks r's bounds: ids non-empty and at most MaxLimitIDBytes,
// at most MaxLimitEntries entries, each of a known scope and kind with a
// non-empty id and a non-negative window and value.
func (r *LimitReport) Validate() error {
	switch {
	case r == nil:
		return fmt.Errorf("%w: nil", ErrLimitReport)
	case r.Edge == "" || len(r.Edge) > MaxLimitIDBytes:
		return fmt.Errorf("%w: edge id of %d bytes", ErrLimitReport, len(r.Edge))
	case r.Boot == "" || len(r.Boot) > MaxLimitIDBytes:
		return fmt.Errorf("%w: boot id of %d bytes", ErrLimitReport, len(r.Boot))
	case r.TimeMS < 0:
		return fmt.Errorf("%w: negative time", ErrLimitReport)
	case len(r.Entries) > MaxLimitEntries:
		return fmt.Errorf("%w: %d entries (at most %d)", ErrLimitReport, len(r.Entries), MaxLimitEntries)
	}
	for i := range r.Entries {
		e := &r.Entries[i]
		switch {
		case !e.Scope.Valid():
			return fmt.Errorf("%w: entry %d: unknown scope", ErrLimitReport, i)
		case !e.Kind.Valid():
			return fmt.Errorf("%w: entry %d: unknown kind", ErrLimitReport, i)
		case e.ID == "" || len(e.ID) > MaxLimitIDBytes:
			return fmt.Errorf("%w: entry %d: id of %d bytes", ErrLimitReport, i, len(e.ID))
		case e.Window < 0 || e.Used < 0:
			return fmt.Errorf("%w: entry %d: negative window or value", ErrLimitReport, i)
		}
	}
	return nil
}

// Marshal encodes a valid report as compact JSON (one-letter member names:
// an entry of a 30-byte id is about 60 bytes).
func (r *LimitReport) Marshal() ([]byte, error) {
	if err := r.Validate(); err != nil {
		return nil, err
	}
	return json.Marshal(r)
}

// UnmarshalLimitReport decodes and validates a report Marshal made. It
// refuses more than MaxLimitReportBytes, unknown members, trailing data and
// anything Validate refuses.
func UnmarshalLimitReport(b []byte) (*LimitReport, error) {
	if len(b) > MaxLimitReportBytes {
		return nil, fmt.Errorf("%w: %d bytes", ErrLimitReport, len(b))
	}
	dec := json.NewDecoder(bytes.NewReader(b))
	dec.DisallowUnknownFields()
	var r LimitReport
	if err := dec.Decode(&r); err != nil {
		return nil, fmt.Errorf("%w: %w", ErrLimitReport, err)
	}
	if dec.More() {
		return nil, fmt.Errorf("%w: trailing data", ErrLimitReport)
	}
	if err := r.Validate(); err != nil {
		return nil, err
	}
	return &r, nil
}

// Split returns r as reports of at most n entries each (n < 1: one
// each), sharing r's edge, boot, time and Full, so that each fits a
// transport's message size (a gossip packet, say). A report of no entries
// is returned as itself.
func (r *LimitReport) Split(n int) []*LimitReport {
	n = max(n, 1)
	if len(r.Entries) <= n {
		return []*LimitReport{r}
	}
	out := make([]*LimitReport, 0, (len(r.Entries)+n-1)/n)
	for i := 0; i < len(r.Entries); i += n {
		part := *r
		part.Entries = r.Entries[i:min(i+n, len(r.Entries))]
		out = append(out, &part)
	}
	return out
}
