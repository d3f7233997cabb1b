package opcli

import (
	"flag"
	"fmt"
	"strconv"
	"strings"

	"github.com/keymesh/keymesh/origin/apiclient"
)

// usageCmd is origin usage: GET /v1/usage's sums as a table, or its JSON.
func usageCmd() *command {
	return &command{
		name: "usage", summary: "Show the usage edges metered (requests, tokens and their cost at the deployments' pricing), summed per group (needs read_metrics)",
		setup: func(fs *flag.FlagSet) func(*cliEnv, []string) error {
			all := fs.Bool("all-projects", false, "every project's usage (admin users), not --project's")
			key := fs.String("key", "", "only this key id")
			noKey := fs.Bool("no-key", false, "only the requests of deployments without auth")
			deployment := fs.String("deployment", "", "only this deployment (id, or name within --project)")
			model := fs.String("model", "", "only this model")
			since := fs.String("since", "", "from: an RFC 3339 time, a YYYY-MM-DD date or a duration back from now such as 168h (default: until - 24h)")
			until := fs.String("until", "", "to (excluded), the same forms (default: now)")
			var groupBy listFlag
			fs.Var(&groupBy, "group-by", "comma-separated: project, key, deployment, model, hour, day (default: one total row)")
			limit := fs.Int("limit", 0, "at most this many rows, 1-10000 (default 1000)")
			return func(e *cliEnv, _ []string) error {
				if *noKey && *key != "" {
					return badInput("--key and --no-key exclude each other")
				}
				if *limit < 0 {
					return badInput("--limit must be positive")
				}
				q := apiclient.UsageQuery{KeyID: *key, NoKey: *noKey, Deployment: *deployment, Model: *model,
					Since: *since, Until: *until, GroupBy: groupBy.vals, Limit: *limit}
				if !*all {
					q.Project = e.project
				}
				r, err := e.api.Usage(e.ctx, q)
				if err != nil {
					return err
				}
				if e.json {
					return e.printJSON(r.JSON)
				}
				return e.usageTable(r)
			}
		},
	}
}

// usageTable prints the grouped columns, then the sums.
func (e *cliEnv) usageTable(r *apiclient.UsageReport) error {
	grouped := map[string]bool{}
	for _, g := range r.GroupBy {
		grouped[g] = true
	}
	var cols []string
	for _, g := range []string{"hour", "day", "project", "key", "deployment", "model"} {
		if grouped[g] {
			cols = append(cols, strings.ToUpper(g))
		}
	}
	var names map[string]string
	if grouped["deployment"] {
		names = e.depNames()
	}
	t := newTable(e.stdout, append(cols, "REQUESTS", "PROMPT", "COMPLETION", "CACHED", "ESTIMATED", "COST")...)
	n := func(v int64) string { return strconv.FormatInt(v, 10) }
	for _, it := range r.Items {
		var cells []string
		if it.Hour != nil {
			cells = append(cells, fmtTime(it.Hour, "-"))
		}
		if it.Day != nil {
			cells = append(cells, it.Day.UTC().Format("2006-01-02"))
		}
		if it.Project != nil {
			cells = append(cells, *it.Project)
		}
		if it.KeyID != nil {
			k := *it.KeyID
			if k == "" {
				k = "(no auth)"
			}
			cells = append(cells, k)
		}
		if it.Deployment != nil {
			d := *it.Deployment
			if name, ok := names[d]; ok {
				d = name
			}
			cells = append(cells, d)
		}
		if it.Model != nil {
			cells = append(cells, *it.Model)
		}
		t.row(append(cells, n(it.Requests), n(it.PromptTokens), n(it.CompletionTokens), n(it.CachedTokens), n(it.EstimatedRequests), it.Cost.String())...)
	}
	if err := t.flush(); err != nil {
		return err
	}
	fmt.Fprintf(e.stdout, "From %s to %s (UTC hours)", fmtTime(&r.Since, "-"), fmtTime(&r.Until, "-"))
	if r.Truncated {
		fmt.Fprintf(e.stdout, "; truncated at %d rows: narrow the query or raise --limit", len(r.Items))
	}
	fmt.Fprintln(e.stdout)
	return nil
}
