package opcli

import (
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"strings"

	"github.com/keymesh/keymesh/origin/apiclient"
)

// Admin users, logout, and a project's rules (upstream policy, quotas).
// Passwords are read from a file, an environment variable or piped stdin,
// never from an argument (which ps would show), and never printed.

// readSecretInput reads a password: file, else env, else piped stdin (when
// stdinOK). It never prompts.
func (e *cliEnv) readSecretInput(file, env, what string, stdinOK bool) (string, error) {
	var pw string
	switch {
	case file != "":
		b, err := os.ReadFile(file)
		if err != nil {
			return "", badInput("reading the %s file: %v", what, errors.Unwrap(err))
		}
		pw = string(b)
	case e.getenv(env) != "":
		pw = e.getenv(env)
	case stdinOK:
		if f, ok := e.stdin.(*os.File); ok {
			if st, err := f.Stat(); err != nil || st.Mode()&os.ModeCharDevice != 0 {
				return "", badInput("no %s: give its file, set %s, or pipe it on stdin", what, env)
			}
		}
		b, err := io.ReadAll(io.LimitReader(e.stdin, 64<<10))
		if err != nil {
			return "", badInput("reading the %s from stdin failed", what)
		}
		pw = string(b)
	default:
		return "", badInput("no %s: give its file or set %s", what, env)
	}
	pw = strings.TrimRight(pw, "\r\n")
	if pw == "" {
		return "", badInput("the %s is empty", what)
	}
	return pw, nil
}

func logoutCmd() *command {
	return &command{
		name: "logout", summary: "End every session of the logged-in user (all their tokens, on every replica) and remove the token file",
		setup: func(fs *flag.FlagSet) func(*cliEnv, []string) error {
			return func(e *cliEnv, _ []string) error {
				if e.api.Token == "" {
					return badInput("logout ends a user's sessions; a project key has none")
				}
				if err := e.api.Logout(e.ctx); err != nil {
					return err
				}
				if err := os.Remove(e.tokenFile); err != nil && !errors.Is(err, os.ErrNotExist) {
					return fmt.Errorf("removing the token file: %w", err)
				}
				fmt.Fprintln(e.stdout, "Logged out: every token of this user is now refused")
				return nil
			}
		},
	}
}

func usersListCmd() *command {
	return &command{
		name: "users list", summary: "List admin users",
		setup: func(fs *flag.FlagSet) func(*cliEnv, []string) error {
			return func(e *cliEnv, _ []string) error {
				us, err := e.api.Users(e.ctx)
				if err != nil {
					return err
				}
				if e.json {
					return e.printValue(map[string]any{"items": us})
				}
				t := newTable(e.stdout, "ID", "USERNAME", "CREATED")
				for _, u := range us {
					t.row(u.ID, u.Username, fmtTime(&u.CreatedAt, "-"))
				}
				return t.flush()
			}
		},
	}
}

func usersCreateCmd() *command {
	return &command{
		name: "users create", args: "<username>", nargs: [2]int{1, 1}, summary: "Create an admin user (password from --password-file, env ORIGIN_NEW_PASSWORD or stdin)",
		setup: func(fs *flag.FlagSet) func(*cliEnv, []string) error {
			pwFile := fs.String("password-file", "", "read the new user's password from this file (else env ORIGIN_NEW_PASSWORD, else stdin when piped)")
			return func(e *cliEnv, args []string) error {
				pw, err := e.readSecretInput(*pwFile, "ORIGIN_NEW_PASSWORD", "new password", true)
				if err != nil {
					return err
				}
				u, err := e.api.CreateUser(e.ctx, args[0], pw)
				if err != nil {
					return err
				}
				if e.json {
					return e.printValue(u)
				}
				fmt.Fprintf(e.stdout, "Created admin user %s (%s)\n", u.Username, u.ID)
				return nil
			}
		},
	}
}

func usersDeleteCmd() *command {
	return &command{
		name: "users delete", args: "<username>", nargs: [2]int{1, 1}, summary: "Delete an admin user and end their sessions",
		setup: func(fs *flag.FlagSet) func(*cliEnv, []string) error {
			return func(e *cliEnv, args []string) error {
				if err := e.api.DeleteUser(e.ctx, args[0]); err != nil {
					return err
				}
				fmt.Fprintf(e.stdout, "Deleted user %s; their tokens are refused\n", args[0])
				return nil
			}
		},
	}
}

func usersPasswordCmd() *command {
	return &command{
		name: "users password", args: "<username>", nargs: [2]int{1, 1},
		summary: "Set a user's password and end their sessions (your own needs the old one: --old-password-file or env ORIGIN_PASSWORD)",
		setup: func(fs *flag.FlagSet) func(*cliEnv, []string) error {
			pwFile := fs.String("password-file", "", "read the new password from this file (else env ORIGIN_NEW_PASSWORD, else stdin when piped)")
			oldFile := fs.String("old-password-file", "", "read the current password from this file (else env ORIGIN_PASSWORD); needed to change your own")
			return func(e *cliEnv, args []string) error {
				pw, err := e.readSecretInput(*pwFile, "ORIGIN_NEW_PASSWORD", "new password", true)
				if err != nil {
					return err
				}
				old := ""
				if *oldFile != "" || e.getenv("ORIGIN_PASSWORD") != "" {
					if old, err = e.readSecretInput(*oldFile, "ORIGIN_PASSWORD", "old password", false); err != nil {
						return err
					}
				}
				if err := e.api.ChangePassword(e.ctx, args[0], pw, old); err != nil {
					return err
				}
				fmt.Fprintf(e.stdout, "Changed the password of %s; their sessions are ended (log in again if it was yours)\n", args[0])
				return nil
			}
		},
	}
}

func projectsGetCmd() *command {
	return &command{
		name: "projects get", args: "<project>", nargs: [2]int{1, 1}, summary: "Show a project's upstream policy, quotas and usage",
		setup: func(fs *flag.FlagSet) func(*cliEnv, []string) error {
			return func(e *cliEnv, args []string) error {
				p, err := e.api.GetProject(e.ctx, args[0])
				if err != nil {
					return err
				}
				return e.printProject(p)
			}
		},
	}
}

func projectsUpdateCmd() *command {
	return &command{
		name: "projects update", args: "<project>", nargs: [2]int{1, 1}, summary: "Set a project's allowed upstreams and quotas (admin users only)",
		setup: func(fs *flag.FlagSet) func(*cliEnv, []string) error {
			var allowed listFlag
			fs.Var(&allowed, "allowed-upstreams", `comma-separated URL patterns (http(s)://host[:port][/path], host "*" or "*.suffix", port "*") and IP addresses or CIDRs; "" allows nothing`)
			def := fs.Bool("default-upstreams", false, "back to the default policy: any http(s) upstream but link-local, metadata and reserved addresses")
			maxKeys := fs.Int("max-keys", -1, "most keys the project may hold (0: the default)")
			maxDeps := fs.Int("max-deployments", -1, "most deployments the project may hold (0: the default)")
			maxLinks := fs.Int("max-links-per-key", -1, "most deployments one key may be linked to (0: the default)")
			tf := defineTokenFlags(fs, false, false, "all the project's deployments together")
			wait := waitFlag(fs)
			return func(e *cliEnv, args []string) error {
				var in apiclient.ProjectUpdate
				if allowed.set && *def {
					return badInput("give --allowed-upstreams or --default-upstreams, not both")
				}
				if allowed.set {
					in.AllowedUpstreams = &allowed.vals
				}
				in.DefaultUpstreams = *def
				for _, q := range []struct {
					v   *int
					dst **int
					fl  string
				}{{maxKeys, &in.MaxKeys, "max-keys"}, {maxDeps, &in.MaxDeployments, "max-deployments"}, {maxLinks, &in.MaxLinksPerKey, "max-links-per-key"}} {
					if isSet(fs, q.fl) {
						if *q.v < 0 {
							return badInput("--%s must not be negative", q.fl)
						}
						*q.dst = ptr(*q.v)
					}
				}
				if tf.changes() {
					var err error
					if in.Tokens, err = tf.limits(); err != nil {
						return err
					}
				}
				if !allowed.set && !*def && in.MaxKeys == nil && in.MaxDeployments == nil && in.MaxLinksPerKey == nil && !tf.changes() {
					return badInput("nothing to change (see origin projects update --help)")
				}
				opts, err := waitOpts(*wait)
				if err != nil {
					return err
				}
				p, err := e.api.UpdateProject(e.ctx, args[0], in, opts...)
				if err != nil {
					return err
				}
				e.warnNoEdges(p.Propagation)
				return e.printProject(p)
			}
		},
	}
}

func (e *cliEnv) printProject(p *apiclient.ProjectDetail) error {
	if e.json {
		return e.printJSON(p.JSON)
	}
	policy := "default (any http(s) upstream but link-local, metadata and reserved addresses)"
	if p.AllowedUpstreams != nil {
		policy = strings.Join(p.AllowedUpstreams, ", ")
		if policy == "" {
			policy = "none allowed"
		}
	}
	fmt.Fprintf(e.stdout, "Project %s (%s)\n  allowed upstreams: %s\n  keys: %d of %d\n  deployments: %d of %d\n  links per key: at most %d\n",
		p.Name, p.ID, policy, p.Usage.Keys, p.Limits.MaxKeys, p.Usage.Deployments, p.Limits.MaxDeployments, p.Limits.MaxLinksPerKey)
	fmt.Fprintf(e.stdout, "  tokens per minute: %s\n  tokens per day: %s\n  quota: %s\n  budget: %s\n",
		fmtTokens(p.TokensPerMinute, "minute"), fmtTokens(p.TokensPerDay, "day"), fmtQuota(p.Quota), fmtBudget(p.MaxBudget, p.BudgetRefill))
	if p.Propagation != nil {
		fmt.Fprintf(e.stdout, "  propagation: %s\n", fmtPropagation(p.Propagation))
	}
	return nil
}
