package opcli

import (
	"flag"
	"fmt"
	"sort"
	"strconv"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/keymesh/keymesh/origin/apiclient"
)

// depFlags are the flags of deployments create and deployments update.
type depFlags struct {
	fs                                   *flag.FlagSet
	name, pathPrefix                     *string
	stripPrefix                          *bool
	hosts, upstreams, models             listFlag
	auth                                 *bool
	invalidKeyStatus                     *int
	uaMode, uaHeader, uaPrefix, uaSecret *string
	rateLimit, maxPromptChars            *int
	maxConcurrency                       *int
	tokens                               *tokenFlags
	maxBodyBytes                         *int64
	wait                                 *time.Duration
}

func defineDepFlags(fs *flag.FlagSet, create bool) *depFlags {
	d := &depFlags{fs: fs}
	d.name = fs.String("name", "", "the deployment's name (letters, digits, '.', '_', '-')")
	fs.Var(&d.hosts, "hosts", "comma-separated Host values to match (exact, or *.suffix); repeatable"+map[bool]string{true: "", false: `; replaces the list ("" clears it)`}[create])
	d.pathPrefix = fs.String("path-prefix", "", "path prefix to match (default /)")
	d.stripPrefix = fs.Bool("strip-prefix", false, "forward the path without the path prefix (default: as sent)")
	fs.Var(&d.upstreams, "upstream", `upstream base URL, or site=URL for one site's list; repeatable (a bare URL is for every site, "*")`+map[bool]string{true: "; required", false: "; replaces all upstreams"}[create])
	d.auth = fs.Bool("auth", true, "require a key (--auth=false forwards every request without one)")
	d.invalidKeyStatus = fs.Int("invalid-key-status", 0, "status for an unknown, expired, disabled or unlinked key: 401 or 403 (default 401)")
	d.uaMode = fs.String("upstream-auth", "", `credential sent upstream: none, inject or passthrough (default none)`)
	d.uaHeader = fs.String("upstream-auth-header", "", "header for inject/passthrough (default Authorization)")
	d.uaPrefix = fs.String("upstream-auth-prefix", "", `value prefix for inject (default "Bearer ")`)
	d.uaSecret = fs.String("upstream-auth-secret", "", "inject: the name of the edge-local secret (never its value)")
	d.rateLimit = fs.Int("rate-limit", 0, "requests per minute for the whole deployment"+map[bool]string{true: " (default: no limit)", false: " (0 removes the limit)"}[create])
	d.maxBodyBytes = fs.Int64("max-body-bytes", 0, "largest request body (default 10 MiB)")
	d.maxPromptChars = fs.Int("max-prompt-chars", 0, "longest prompt (default 10000)")
	fs.Var(&d.models, "models", `comma-separated model name patterns every key on the deployment is bounded by ('*' matches within a name)`+
		map[bool]string{true: " (default: any model)", false: `; replaces the list ("" allows any model)`}[create])
	d.maxConcurrency = fs.Int("max-concurrency", 0, "requests in flight at once at each edge, over all keys"+map[bool]string{true: " (default: no cap)", false: " (0 removes the cap)"}[create])
	d.tokens = defineTokenFlags(fs, create, true, "all the deployment's keys together")
	d.wait = waitFlag(fs)
	return d
}

func parseUpstreams(vals []string) (map[string][]string, error) {
	m := map[string][]string{}
	for _, v := range vals {
		site, u := "*", v
		if before, after, ok := strings.Cut(v, "="); ok && !strings.Contains(before, "://") {
			site, u = strings.TrimSpace(before), strings.TrimSpace(after)
		}
		if site == "" || u == "" {
			return nil, badInput("--upstream %q: want URL or site=URL", v)
		}
		m[site] = append(m[site], u)
	}
	return m, nil
}

// input builds the body from the flags given (all of them on create, where
// unset ones are left to the origin's defaults).
func (d *depFlags) input(create bool, name string) (apiclient.DeploymentInput, error) {
	var in apiclient.DeploymentInput
	n := 0
	var err error
	ua := false
	d.fs.Visit(func(f *flag.Flag) {
		n++
		switch f.Name {
		case "name":
			in.Name = d.name
		case "hosts":
			in.Hosts = &d.hosts.vals
		case "path-prefix":
			in.PathPrefix = d.pathPrefix
		case "strip-prefix":
			in.StripPrefix = d.stripPrefix
		case "upstream":
			if in.Upstreams, err = parseUpstreams(d.upstreams.vals); err == nil && len(in.Upstreams) == 0 {
				err = badInput("--upstream is empty")
			}
		case "auth":
			in.AuthEnabled = d.auth
		case "invalid-key-status":
			in.InvalidKeyStatus = d.invalidKeyStatus
		case "upstream-auth", "upstream-auth-header", "upstream-auth-prefix", "upstream-auth-secret":
			ua = true
		case "rate-limit":
			if *d.rateLimit > 0 {
				in.RateLimit = &apiclient.RateLimit{RequestsPerMinute: *d.rateLimit}
			} else if *d.rateLimit == 0 && !create {
				in.NoRateLimit = true
			} else if *d.rateLimit < 0 {
				err = badInput("--rate-limit must be positive")
			}
		case "max-body-bytes":
			in.MaxBodyBytes = d.maxBodyBytes
		case "max-prompt-chars":
			in.MaxPromptChars = d.maxPromptChars
		case "models":
			in.Models = &d.models.vals
		case "max-concurrency":
			switch {
			case *d.maxConcurrency > 0:
				in.MaxConcurrency = d.maxConcurrency
			case *d.maxConcurrency == 0 && !create:
				in.NoMaxConcurrency = true
			case *d.maxConcurrency < 0:
				err = badInput("--max-concurrency must be positive")
			}
		default:
			n--
		}
	})
	if err != nil {
		return in, err
	}
	if d.tokens.changes() {
		n++
		if in.Tokens, err = d.tokens.limits(); err != nil {
			return in, err
		}
		if in.DefaultMaxTokens, err = d.tokens.defaultMax(); err != nil {
			return in, err
		}
		if in.Pricing, in.NoPricing, err = d.tokens.pricingFlag(); err != nil {
			return in, err
		}
	}
	if ua {
		if *d.uaMode == "" {
			return in, badInput("--upstream-auth-header, -prefix and -secret need --upstream-auth (none, inject or passthrough)")
		}
		in.UpstreamAuth = &apiclient.UpstreamAuth{Mode: *d.uaMode, Header: *d.uaHeader, Prefix: *d.uaPrefix, Secret: *d.uaSecret}
	}
	if create {
		if in.Name == nil && name != "" {
			in.Name = &name
		}
		if in.Name == nil || *in.Name == "" {
			return in, badInput("give the deployment's name (--name or an argument)")
		}
		if in.Upstreams == nil {
			return in, badInput("give at least one --upstream URL")
		}
	} else if n == 0 {
		return in, badInput("nothing to change: give at least one flag (see --help)")
	}
	return in, nil
}

func fmtUpstreams(ups map[string][]string) string {
	sites := make([]string, 0, len(ups))
	for s := range ups {
		sites = append(sites, s)
	}
	sort.Strings(sites)
	parts := make([]string, 0, len(sites))
	for _, s := range sites {
		parts = append(parts, s+"="+strings.Join(ups[s], ","))
	}
	return strings.Join(parts, " ")
}

func fmtUpstreamAuth(ua *apiclient.UpstreamAuth) string {
	if ua == nil || ua.Mode == "" || ua.Mode == "none" {
		return "none"
	}
	s := ua.Mode + " " + ua.Header
	if ua.Secret != "" {
		s += " from secret " + ua.Secret
	}
	return s
}

func (e *cliEnv) showDeployment(d *apiclient.Deployment) error {
	e.warnNoEdges(d.Propagation)
	if e.json {
		return e.printJSON(d.JSON)
	}
	tw := tabwriter.NewWriter(e.stdout, 0, 0, 2, ' ', 0)
	line := func(k, v string) { fmt.Fprintf(tw, "%s:\t%s\n", k, orDash(v)) }
	line("ID", d.ID)
	line("Name", d.Name)
	line("Hosts", strings.Join(d.Hosts, ", "))
	line("Path prefix", d.PathPrefix)
	line("Strip prefix", map[bool]string{true: "yes (the upstream gets the path without it)", false: "no (the upstream gets the path as sent)"}[d.StripPrefix])
	line("Upstreams", fmtUpstreams(d.Upstreams))
	line("Auth", map[bool]string{true: "required", false: "off (requests need no key)"}[d.AuthEnabled])
	line("Invalid key status", strconv.Itoa(d.InvalidKeyStatus))
	line("Upstream auth", fmtUpstreamAuth(d.UpstreamAuth))
	line("Rate limit", fmtRate(d.RateLimit))
	line("Max body bytes", strconv.FormatInt(d.MaxBodyBytes, 10))
	line("Max prompt chars", strconv.Itoa(d.MaxPromptChars))
	line("Models", fmtModels(d.Models))
	line("Max concurrency", fmtConcurrency(d.MaxConcurrency))
	line("Tokens per minute", fmtTokens(d.TokensPerMinute, "minute"))
	line("Tokens per day", fmtTokens(d.TokensPerDay, "day"))
	line("Quota", fmtQuota(d.Quota))
	line("Budget", fmtBudget(d.MaxBudget, d.BudgetRefill))
	line("Pricing", fmtPricing(d.Pricing))
	dm := "none"
	if d.DefaultMaxTokens != nil {
		dm = strconv.FormatInt(*d.DefaultMaxTokens, 10)
	}
	line("Default max tokens", dm)
	line("Revision", strconv.FormatUint(d.Revision, 10))
	for _, w := range d.Warnings {
		line("Warning", w.Message)
	}
	if d.Propagation != nil {
		line("Propagation", fmtPropagation(d.Propagation))
	}
	return tw.Flush()
}

func depCreateCmd() *command {
	return &command{
		name: "deployments create", args: "[name]", nargs: [2]int{0, 1}, summary: "Create a deployment",
		setup: func(fs *flag.FlagSet) func(*cliEnv, []string) error {
			df := defineDepFlags(fs, true)
			return func(e *cliEnv, args []string) error {
				name := ""
				if len(args) > 0 {
					name = args[0]
				}
				in, err := df.input(true, name)
				if err != nil {
					return err
				}
				opts, err := waitOpts(*df.wait)
				if err != nil {
					return err
				}
				d, err := e.api.CreateDeployment(e.ctx, e.project, in, opts...)
				if err != nil {
					return err
				}
				if !e.json {
					fmt.Fprintf(e.stdout, "Created deployment %s (revision %d)\n\n", d.ID, d.Revision)
				}
				return e.showDeployment(d)
			}
		},
	}
}

func depListCmd() *command {
	return &command{
		name: "deployments list", summary: "List the project's deployments",
		setup: func(fs *flag.FlagSet) func(*cliEnv, []string) error {
			return func(e *cliEnv, _ []string) error {
				p, err := e.api.ListDeployments(e.ctx, e.project)
				if err != nil {
					return err
				}
				if e.json {
					return e.printJSON(p.JSON)
				}
				t := newTable(e.stdout, "ID", "NAME", "HOSTS", "PATH", "UPSTREAMS", "AUTH", "RATE LIMIT", "TOKEN LIMITS", "REVISION")
				for _, d := range p.Items {
					t.row(d.ID, d.Name, strings.Join(d.Hosts, ","), d.PathPrefix, fmtUpstreams(d.Upstreams),
						map[bool]string{true: "on", false: "off"}[d.AuthEnabled], fmtRate(d.RateLimit),
						withBudget(fmtTokenLimits(d.TokensPerMinute, d.TokensPerDay, d.Quota), d.MaxBudget), strconv.FormatUint(d.Revision, 10))
				}
				return t.flush()
			}
		},
	}
}

func depGetCmd() *command {
	return &command{
		name: "deployments get", args: "<deployment>", nargs: [2]int{1, 1}, summary: "Show one deployment (by id or name)",
		setup: func(fs *flag.FlagSet) func(*cliEnv, []string) error {
			return func(e *cliEnv, args []string) error {
				d, err := e.api.GetDeployment(e.ctx, e.project, args[0])
				if err != nil {
					return err
				}
				return e.showDeployment(d)
			}
		},
	}
}

func depUpdateCmd() *command {
	return &command{
		name: "deployments update", args: "<deployment>", nargs: [2]int{1, 1}, summary: "Change a deployment: only the flags given are changed",
		setup: func(fs *flag.FlagSet) func(*cliEnv, []string) error {
			df := defineDepFlags(fs, false)
			return func(e *cliEnv, args []string) error {
				in, err := df.input(false, "")
				if err != nil {
					return err
				}
				opts, err := waitOpts(*df.wait)
				if err != nil {
					return err
				}
				d, err := e.api.UpdateDeployment(e.ctx, e.project, args[0], in, opts...)
				if err != nil {
					return err
				}
				if !e.json {
					fmt.Fprintf(e.stdout, "Updated deployment %s (revision %d)\n\n", d.ID, d.Revision)
				}
				return e.showDeployment(d)
			}
		},
	}
}

func depDeleteCmd() *command {
	return &command{
		name: "deployments delete", args: "<deployment>", nargs: [2]int{1, 1}, summary: "Delete a deployment",
		setup: func(fs *flag.FlagSet) func(*cliEnv, []string) error {
			wait := waitFlag(fs)
			return func(e *cliEnv, args []string) error {
				opts, err := waitOpts(*wait)
				if err != nil {
					return err
				}
				del, err := e.api.DeleteDeployment(e.ctx, e.project, args[0], opts...)
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
				fmt.Fprintf(e.stdout, "Deleted deployment %s (revision %d)\n", args[0], del.Revision)
				if del.Propagation != nil {
					fmt.Fprintf(e.stdout, "Propagation: %s\n", fmtPropagation(del.Propagation))
				}
				return nil
			}
		},
	}
}

func depKeysCmd() *command {
	return &command{
		name: "deployments keys", args: "<deployment>", nargs: [2]int{1, 1}, summary: "List the keys linked to a deployment",
		setup: func(fs *flag.FlagSet) func(*cliEnv, []string) error {
			return func(e *cliEnv, args []string) error {
				p, err := e.api.DeploymentKeys(e.ctx, e.project, args[0])
				if err != nil {
					return err
				}
				if e.json {
					return e.printJSON(p.JSON)
				}
				e.keyTable(p.Items)
				return nil
			}
		},
	}
}
