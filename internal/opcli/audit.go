package opcli

import (
	"encoding/json"
	"flag"
	"fmt"
	"strconv"
	"strings"
	"time"

	"github.com/keymesh/keymesh/origin/apiclient"
)

// auditCmd is origin audit: one page of GET /v1/audit as a table, or its
// JSON; --cursor asks for the page after.
func auditCmd() *command {
	return &command{
		name: "audit", summary: "Show audit records, newest first: edges' requests with refusal reasons and admin actions (needs view_audit_logs)",
		setup: func(fs *flag.FlagSet) func(*cliEnv, []string) error {
			all := fs.Bool("all-projects", false, "every project's records (admin users), not --project's")
			key := fs.String("key", "", "only this key id")
			deployment := fs.String("deployment", "", "only this deployment (id or name)")
			source := fs.String("source", "", "only edge (requests) or admin (admin actions)")
			status := fs.String("status", "", "only this status code (401) or class (4xx)")
			reason := fs.String("reason", "", "only this refusal reason (unlinked, disabled, expired, rate_limited, ...)")
			since := fs.String("since", "", "from: an RFC 3339 time, a YYYY-MM-DD date or a duration back from now such as 24h")
			until := fs.String("until", "", "to (excluded), the same forms")
			limit := fs.Int("limit", 0, "at most this many records, 1-1000 (default 100)")
			cursor := fs.String("cursor", "", "the page after the one that printed this cursor")
			return func(e *cliEnv, _ []string) error {
				if *limit < 0 || *limit > 1000 {
					return badInput("--limit must be between 1 and 1000")
				}
				now := time.Now()
				q := apiclient.AuditQuery{KeyID: *key, Deployment: *deployment, Source: *source, Status: *status,
					Reason: *reason, Limit: *limit, Cursor: *cursor}
				var err error
				if q.Since, err = parseWhen("--since", *since, now); err != nil {
					return err
				}
				if q.Until, err = parseWhen("--until", *until, now); err != nil {
					return err
				}
				if !*all {
					q.Project = e.project
				}
				page, err := e.api.Audit(e.ctx, q)
				if err != nil {
					return err
				}
				if e.json {
					raw, err := json.Marshal(page)
					if err != nil {
						return err
					}
					return e.printJSON(raw)
				}
				return e.auditTable(page)
			}
		},
	}
}

// parseWhen reads a --since or --until value as the origin reads since=:
// an RFC 3339 time, a YYYY-MM-DD date (00:00 UTC) or a duration back from
// now. Empty is the zero time (not sent).
func parseWhen(flagName, v string, now time.Time) (time.Time, error) {
	if v == "" {
		return time.Time{}, nil
	}
	if t, err := time.Parse(time.RFC3339Nano, v); err == nil {
		return t, nil
	}
	if t, err := time.Parse(time.DateOnly, v); err == nil {
		return t, nil
	}
	if d, err := time.ParseDuration(v); err == nil && d >= 0 {
		return now.Add(-d), nil
	}
	return time.Time{}, badInput("%s must be an RFC 3339 time, a YYYY-MM-DD date or a duration such as 24h", flagName)
}

// auditTable prints one row per record: what happened, to what, and why
// it was refused (edge records) or which fields changed (admin records).
func (e *cliEnv) auditTable(page *apiclient.AuditPage) error {
	t := newTable(e.stdout, "TIME", "SOURCE", "STATUS", "REASON", "KEY", "DEPLOYMENT", "REQUEST", "BY")
	dash := func(s string) string {
		if s == "" {
			return "-"
		}
		return s
	}
	for _, r := range page.Items {
		dep := r.DeploymentName
		if dep == "" {
			dep = r.Deployment
		}
		by := strings.TrimSpace(r.Edge + " " + r.ClientIP)
		if r.Source == "admin" {
			by = strings.TrimSpace(r.Actor + " " + r.Target)
			if len(r.Changed) > 0 {
				by += " changed " + strings.Join(r.Changed, ",")
			}
		}
		t.row(fmtTime(&r.Time, "-"), r.Source, strconv.Itoa(r.Status), dash(r.Reason), dash(r.KeyID), dash(dep),
			r.Method+" "+r.Path, dash(by))
	}
	if err := t.flush(); err != nil {
		return err
	}
	if page.NextCursor != nil {
		fmt.Fprintf(e.stdout, "More records: --cursor %s\n", *page.NextCursor)
	}
	return nil
}
