package opcli

import (
	"encoding/json"
	"flag"
	"fmt"
	"io"
	"strconv"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/keymesh/keymesh/origin/apiclient"
)

// table prints aligned columns.
type table struct{ tw *tabwriter.Writer }

func newTable(out io.Writer, cols ...string) *table {
	t := &table{tw: tabwriter.NewWriter(out, 0, 0, 2, ' ', 0)}
	t.row(cols...)
	return t
}

func (t *table) row(cells ...string) {
	for i, c := range cells {
		cells[i] = strings.NewReplacer("\t", " ", "\n", " ").Replace(orDash(c))
	}
	fmt.Fprintln(t.tw, strings.Join(cells, "\t"))
}

func (t *table) flush() error { return t.tw.Flush() }

// ---- keys ----

// keyFlags are the flags of keys create and keys update.
type keyFlags struct {
	fs                       *flag.FlagSet
	name, description        *string
	permissions, deployments listFlag
	models                   listFlag
	expires                  *string
	expiresInDays            *int
	rateLimit                *int
	maxConcurrency           *int
	tokens                   *tokenFlags
	disabled                 *bool
	wait                     *time.Duration
}

func defineKeyFlags(fs *flag.FlagSet, create bool) *keyFlags {
	k := &keyFlags{fs: fs}
	k.name = fs.String("name", "", "the key's name")
	k.description = fs.String("description", "", "free text")
	fs.Var(&k.permissions, "permissions", "comma-separated permissions (create default: run_inference,read_models,use_streaming)")
	fs.Var(&k.deployments, "deployments", "comma-separated deployment ids or names to link"+map[bool]string{true: "", false: `; replaces the links ("" unlinks all)`}[create])
	k.expires = fs.String("expires", "", `expiry: an RFC 3339 time, a YYYY-MM-DD date (00:00 UTC), or "never"`)
	if create {
		k.expiresInDays = fs.Int("expires-in-days", 0, "expire this many days from now (instead of --expires)")
	}
	k.rateLimit = fs.Int("rate-limit", 0, "requests per minute"+map[bool]string{true: " (default: no limit)", false: " (0 removes the limit)"}[create])
	fs.Var(&k.models, "models", `comma-separated model name patterns the key may use ('*' matches within a name: meta-llama/*)`+
		map[bool]string{true: " (default: any model)", false: `; replaces the list ("" allows any model)`}[create])
	k.maxConcurrency = fs.Int("max-concurrency", 0, "requests in flight at once at each edge"+map[bool]string{true: " (default: no cap)", false: " (0 removes the cap)"}[create])
	k.tokens = defineTokenFlags(fs, create, false, "the key")
	k.disabled = fs.Bool("disabled", false, "disable the key (--disabled=false enables it)")
	k.wait = waitFlag(fs)
	return k
}

func (k *keyFlags) create(name string) (apiclient.KeyCreate, error) {
	in := apiclient.KeyCreate{Name: *k.name, Description: *k.description, Disabled: *k.disabled}
	if in.Name == "" {
		in.Name = name
	}
	if k.permissions.set {
		if len(k.permissions.vals) == 0 {
			return in, badInput("--permissions is empty")
		}
		in.Permissions = k.permissions.vals
	}
	in.Deployments = k.deployments.vals
	if *k.expires != "" && *k.expires != "never" {
		in.ExpiresAt = *k.expires
	}
	if *k.expiresInDays < 0 {
		return in, badInput("--expires-in-days must be positive")
	}
	in.ExpiresInDays = *k.expiresInDays
	if *k.rateLimit < 0 {
		return in, badInput("--rate-limit must be positive")
	}
	if *k.rateLimit > 0 {
		in.RateLimit = &apiclient.RateLimit{RequestsPerMinute: *k.rateLimit}
	}
	in.Models = k.models.vals
	if *k.maxConcurrency < 0 {
		return in, badInput("--max-concurrency must be positive")
	}
	in.MaxConcurrency = *k.maxConcurrency
	t, err := k.tokens.limits()
	if err != nil {
		return in, err
	}
	if t.TokensPerMinute != nil {
		in.TokensPerMinute = *t.TokensPerMinute
	}
	if t.TokensPerDay != nil {
		in.TokensPerDay = *t.TokensPerDay
	}
	in.Quota = t.Quota
	in.MaxBudget = t.MaxBudget
	if t.BudgetRefill != nil {
		in.BudgetRefill = *t.BudgetRefill
	}
	return in, nil
}

func (k *keyFlags) update() (apiclient.KeyUpdate, error) {
	var in apiclient.KeyUpdate
	n := 0
	k.fs.Visit(func(f *flag.Flag) {
		switch f.Name {
		case "name":
			in.Name = k.name
		case "description":
			in.Description = k.description
		case "permissions":
			in.Permissions = &k.permissions.vals
		case "deployments":
			in.Deployments = &k.deployments.vals
		case "expires":
			if *k.expires == "never" || *k.expires == "" {
				in.NeverExpires = true
			} else {
				in.ExpiresAt = k.expires
			}
		case "rate-limit":
			if *k.rateLimit > 0 {
				in.RateLimit = &apiclient.RateLimit{RequestsPerMinute: *k.rateLimit}
			} else {
				in.NoRateLimit = true
			}
		case "models":
			in.Models = &k.models.vals
		case "max-concurrency":
			if *k.maxConcurrency > 0 {
				in.MaxConcurrency = k.maxConcurrency
			} else {
				in.NoMaxConcurrency = true
			}
		case "disabled":
			in.Disabled = k.disabled
		default:
			return
		}
		n++
	})
	if k.tokens.changes() {
		n++
		var err error
		if in.Tokens, err = k.tokens.limits(); err != nil {
			return in, err
		}
	}
	if n == 0 {
		return in, badInput("nothing to change: give at least one of --name, --description, --permissions, --deployments, --expires, --rate-limit, --models, --max-concurrency, " +
			"--tokens-per-minute, --tokens-per-day, --quota-tokens, --quota-requests, --max-budget, --disabled")
	}
	if *k.rateLimit < 0 {
		return in, badInput("--rate-limit must be positive")
	}
	if *k.maxConcurrency < 0 {
		return in, badInput("--max-concurrency must be positive")
	}
	return in, nil
}

// fmtModels shows a model allow-list; none allows any model.
func fmtModels(m []string) string {
	if len(m) == 0 {
		return "any"
	}
	return strings.Join(m, ", ")
}

// fmtConcurrency shows a concurrency cap (per edge).
func fmtConcurrency(n *int) string {
	if n == nil {
		return "no cap"
	}
	return strconv.Itoa(*n) + " per edge"
}

// depNames maps deployment ids to names for display; best effort.
func (e *cliEnv) depNames() map[string]string {
	m := map[string]string{}
	if p, err := e.api.ListDeployments(e.ctx, e.project); err == nil {
		for _, d := range p.Items {
			m[d.ID] = d.Name
		}
	}
	return m
}

func namesOf(ids []string, names map[string]string) string {
	out := make([]string, 0, len(ids))
	for _, id := range ids {
		if n, ok := names[id]; ok {
			out = append(out, n)
		} else {
			out = append(out, id)
		}
	}
	return strings.Join(out, ",")
}

func keyStatus(k *apiclient.Key) string {
	switch {
	case k.Disabled:
		return "disabled"
	case k.ExpiresAt != nil && !k.ExpiresAt.After(time.Now()):
		return "expired"
	}
	return "active"
}

// showKey prints one key: its JSON, or a detail view. It never prints the
// secret; printSecret does, for create and rotate.
func (e *cliEnv) showKey(k *apiclient.Key) error {
	e.warnNoEdges(k.Propagation)
	if e.json {
		return e.printJSON(k.JSON)
	}
	names := e.depNames()
	deps := make([]string, 0, len(k.Deployments))
	for _, id := range k.Deployments {
		if n, ok := names[id]; ok {
			deps = append(deps, n+" ("+id+")")
		} else {
			deps = append(deps, id)
		}
	}
	tw := tabwriter.NewWriter(e.stdout, 0, 0, 2, ' ', 0)
	line := func(k, v string) { fmt.Fprintf(tw, "%s:\t%s\n", k, orDash(v)) }
	line("ID", k.ID)
	line("Name", k.Name)
	if k.Description != "" {
		line("Description", k.Description)
	}
	line("Prefix", k.Prefix)
	line("Status", keyStatus(k))
	line("Permissions", strings.Join(k.Permissions, ", "))
	line("Deployments", strings.Join(deps, ", "))
	line("Expires", fmtTime(k.ExpiresAt, "never"))
	line("Rate limit", fmtRate(k.RateLimit))
	line("Models", fmtModels(k.Models))
	line("Max concurrency", fmtConcurrency(k.MaxConcurrency))
	line("Tokens per minute", fmtTokens(k.TokensPerMinute, "minute"))
	line("Tokens per day", fmtTokens(k.TokensPerDay, "day"))
	line("Quota", fmtQuota(k.Quota))
	line("Budget", fmtBudget(k.MaxBudget, k.BudgetRefill))
	line("Created", fmtTime(&k.CreatedAt, "-"))
	line("Updated", fmtTime(&k.UpdatedAt, "-"))
	line("Revision", strconv.FormatUint(k.Revision, 10))
	if k.Propagation != nil {
		line("Propagation", fmtPropagation(k.Propagation))
	}
	return tw.Flush()
}

// printSecret shows a new secret, the only time it is ever available.
func (e *cliEnv) printSecret(k *apiclient.Key) {
	fmt.Fprintf(e.stdout, "\nSecret (shown only this once; the origin keeps only a hash, so it cannot be shown again — store it now):\n\n  %s\n\n", k.Secret)
}

func keysCreateCmd() *command {
	return &command{
		name: "keys create", args: "[name]", nargs: [2]int{0, 1}, summary: "Create a key and print its secret (only this once)",
		setup: func(fs *flag.FlagSet) func(*cliEnv, []string) error {
			kf := defineKeyFlags(fs, true)
			return func(e *cliEnv, args []string) error {
				name := ""
				if len(args) > 0 {
					name = args[0]
				}
				in, err := kf.create(name)
				if err != nil {
					return err
				}
				opts, err := waitOpts(*kf.wait)
				if err != nil {
					return err
				}
				k, err := e.api.CreateKey(e.ctx, e.project, in, opts...)
				if err != nil {
					return err
				}
				if e.json {
					return e.printJSON(k.JSON)
				}
				fmt.Fprintf(e.stdout, "Created key %s in project %s (revision %d)\n\n", k.ID, e.project, k.Revision)
				if err := e.showKey(k); err != nil {
					return err
				}
				e.printSecret(k)
				return nil
			}
		},
	}
}

func keysListCmd() *command {
	return &command{
		name: "keys list", summary: "List the project's keys (every page unless --limit or --cursor is given)",
		setup: func(fs *flag.FlagSet) func(*cliEnv, []string) error {
			limit := fs.Int("limit", 0, "one page of at most this many keys (1-1000)")
			cursor := fs.String("cursor", "", "continue after this next_cursor")
			return func(e *cliEnv, _ []string) error {
				if *limit < 0 || *limit > 1000 {
					return badInput("--limit must be between 1 and 1000")
				}
				onePage := *limit > 0 || *cursor != ""
				var keys []*apiclient.Key
				var raws []json.RawMessage
				next, cur := "", *cursor
				for {
					p, err := e.api.ListKeys(e.ctx, e.project, *limit, cur)
					if err != nil {
						return err
					}
					if onePage && e.json {
						return e.printJSON(p.JSON)
					}
					var rp struct{ Items []json.RawMessage }
					if err := json.Unmarshal(p.JSON, &rp); err != nil {
						return err
					}
					keys, raws = append(keys, p.Items...), append(raws, rp.Items...)
					next = p.NextCursor
					if onePage || next == "" || len(p.Items) == 0 {
						break
					}
					cur = next
				}
				if e.json {
					if raws == nil {
						raws = []json.RawMessage{}
					}
					return e.printValue(map[string]any{"items": raws, "next_cursor": nil})
				}
				e.keyTable(keys)
				if onePage && next != "" {
					fmt.Fprintf(e.stdout, "\nMore: --cursor %s\n", next)
				}
				return nil
			}
		},
	}
}

func (e *cliEnv) keyTable(keys []*apiclient.Key) {
	names := map[string]string{}
	if len(keys) > 0 {
		names = e.depNames()
	}
	t := newTable(e.stdout, "ID", "NAME", "PREFIX", "STATUS", "PERMISSIONS", "DEPLOYMENTS", "EXPIRES", "RATE LIMIT", "TOKEN LIMITS")
	for _, k := range keys {
		t.row(k.ID, k.Name, k.Prefix, keyStatus(k), strings.Join(k.Permissions, ","), namesOf(k.Deployments, names),
			fmtTime(k.ExpiresAt, "never"), fmtRate(k.RateLimit), withBudget(fmtTokenLimits(k.TokensPerMinute, k.TokensPerDay, k.Quota), k.MaxBudget))
	}
	_ = t.flush()
}

func keysGetCmd() *command {
	return &command{
		name: "keys get", args: "<key_id>", nargs: [2]int{1, 1}, summary: "Show one key (never its secret)",
		setup: func(fs *flag.FlagSet) func(*cliEnv, []string) error {
			return func(e *cliEnv, args []string) error {
				k, err := e.api.GetKey(e.ctx, e.project, args[0])
				if err != nil {
					return err
				}
				return e.showKey(k)
			}
		},
	}
}

func keysUpdateCmd() *command {
	return &command{
		name: "keys update", args: "<key_id>", nargs: [2]int{1, 1}, summary: "Change a key: only the flags given are changed",
		setup: func(fs *flag.FlagSet) func(*cliEnv, []string) error {
			kf := defineKeyFlags(fs, false)
			return func(e *cliEnv, args []string) error {
				in, err := kf.update()
				if err != nil {
					return err
				}
				opts, err := waitOpts(*kf.wait)
				if err != nil {
					return err
				}
				k, err := e.api.UpdateKey(e.ctx, e.project, args[0], in, opts...)
				if err != nil {
					return err
				}
				if !e.json {
					fmt.Fprintf(e.stdout, "Updated key %s (revision %d)\n\n", k.ID, k.Revision)
				}
				return e.showKey(k)
			}
		},
	}
}

func keysDeleteCmd() *command {
	return &command{
		name: "keys delete", args: "<key_id>", nargs: [2]int{1, 1}, summary: "Delete a key",
		setup: func(fs *flag.FlagSet) func(*cliEnv, []string) error {
			wait := waitFlag(fs)
			return func(e *cliEnv, args []string) error {
				opts, err := waitOpts(*wait)
				if err != nil {
					return err
				}
				del, err := e.api.DeleteKey(e.ctx, e.project, args[0], opts...)
				if err != nil {
					return err
				}
				e.warnNoEdges(del.Propagation)
				if e.json {
					out := map[string]any{"id": args[0], "deleted": true, "revision": del.Revision}
					if del.Propagation != nil {
						out["propagation"] = del.Propagation
					}
					return e.printValue(out)
				}
				fmt.Fprintf(e.stdout, "Deleted key %s (revision %d)\n", args[0], del.Revision)
				if del.Propagation != nil {
					fmt.Fprintf(e.stdout, "Propagation: %s\n", fmtPropagation(del.Propagation))
				}
				return nil
			}
		},
	}
}

func keysRotateCmd() *command {
	return &command{
		name: "keys rotate", args: "<key_id>", nargs: [2]int{1, 1}, summary: "Give a key a new secret and print it (only this once)",
		setup: func(fs *flag.FlagSet) func(*cliEnv, []string) error {
			grace := fs.Duration("grace", 0, "how long the old secret keeps working (e.g. 1h; whole seconds, at most 720h)")
			wait := waitFlag(fs)
			return func(e *cliEnv, args []string) error {
				if *grace < 0 || *grace > 30*24*time.Hour {
					return badInput("--grace must be between 0 and 720h")
				}
				opts, err := waitOpts(*wait)
				if err != nil {
					return err
				}
				k, err := e.api.RotateKey(e.ctx, e.project, args[0], *grace, opts...)
				if err != nil {
					return err
				}
				if e.json {
					return e.printJSON(k.JSON)
				}
				fmt.Fprintf(e.stdout, "Rotated key %s (revision %d); the old secret works for %s more\n", k.ID, k.Revision, grace.Truncate(time.Second))
				e.printSecret(k)
				return nil
			}
		},
	}
}

// ---- link ----

func linkCmd(on bool) *command {
	verb, summary := "link", "Link a key to a deployment"
	if !on {
		verb, summary = "unlink", "Unlink a key from a deployment"
	}
	return &command{
		name: verb, args: "<deployment> <key_id>", nargs: [2]int{2, 2}, summary: summary,
		setup: func(fs *flag.FlagSet) func(*cliEnv, []string) error {
			wait := waitFlag(fs)
			return func(e *cliEnv, args []string) error {
				opts, err := waitOpts(*wait)
				if err != nil {
					return err
				}
				op := e.api.Link
				if !on {
					op = e.api.Unlink
				}
				k, err := op(e.ctx, e.project, args[0], args[1], opts...)
				if err != nil {
					return err
				}
				e.warnNoEdges(k.Propagation)
				if e.json {
					return e.printJSON(k.JSON)
				}
				past := map[bool]string{true: "Linked key %s to deployment %s (revision %d)\n", false: "Unlinked key %s from deployment %s (revision %d)\n"}[on]
				fmt.Fprintf(e.stdout, past, k.ID, args[0], k.Revision)
				if k.Propagation != nil {
					fmt.Fprintf(e.stdout, "Propagation: %s\n", fmtPropagation(k.Propagation))
				}
				return nil
			}
		},
	}
}
