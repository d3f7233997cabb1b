// Package opcli is the origin binary's commands other than the server: the
// operator CLI of a running origin (origin login, keys, deployments, link,
// unlink, projects, users, edges, usage, audit, logout), and keygen, nats-creds and
// nats-config, which need no server (they write key files, with
// origin.GenerateKeys and internal/natsauth). Root assembles them, with
// version, into the tree cmd/origin executes.
//
// It guarantees: the commands that talk to an origin do so only through
// origin/apiclient, over its REST API; exit codes are 0 done, 1 the API (or
// the network, or the file system) refused, 2 bad input; errors are one
// line on stderr; no token, password or key secret is ever written to
// stderr (a created or rotated secret goes to stdout, once), and passwords
// come from a file, the environment or piped stdin, never an argument.
package opcli

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"time"

	"github.com/keymesh/keymesh/internal/cli"
	"github.com/keymesh/keymesh/origin/apiclient"
)

const (
	defaultServer = "http://127.0.0.1:7000"
	cliTimeout    = 30 * time.Second
)

// commonHelp follows every listing of the operator commands.
const commonHelp = "Every command that calls the API (all but keygen, nats-creds, nats-config and version) takes --server (env ORIGIN_SERVER, default " + defaultServer + "), --project (env ORIGIN_PROJECT, default \"default\") and --json;\n" +
	"see origin <command> --help. Credentials: env ORIGIN_TOKEN (a JWT), else env ORIGIN_API_KEY (a project key\n" +
	"holding write_config), else the token file written by origin login (--token-file, env ORIGIN_TOKEN_FILE,\n" +
	"default ~/.config/keymesh/token)."

// Root is the origin binary's command tree. serve runs the server: origin
// with no command, or with flags (and --help) that name none; nil leaves
// the tree without it (the tests of the commands).
func Root(serve func(ctx context.Context, args []string, io *cli.IO) int) *cli.Command {
	subs := apiCommands()
	subs = append(subs,
		&cli.Command{Name: "keygen", Args: "--out DIR", Summary: keygenSummary, Run: runKeygen},
		&cli.Command{Name: "nats-creds", Args: "--role edge --id ID", Summary: natsCredsSummary, Run: runNATSCreds},
		&cli.Command{Name: "nats-config", Args: "[--data-dir DIR]", Summary: natsConfigSummary, Run: runNATSConfig},
		cli.VersionCommand("origin"),
	)
	return &cli.Command{
		Name:        "origin",
		Usage:       "origin <command> [arguments] [flags]   (origin [flags] with no command runs the server)",
		Help:        commonHelp,
		Run:         serve,
		Subcommands: subs,
	}
}

// ServerHelp is what origin --help prints after the server's flags: what
// else the binary does.
func ServerHelp() string {
	var names []string
	for _, c := range apiCommands() {
		names = append(names, c.Name)
	}
	return "With a command, origin is the operator CLI of a running origin: " + strings.Join(names, ", ") + " (see origin help).\n" +
		"origin keygen --out DIR writes the signing and token keys that replicas share.\n" +
		"origin nats-creds --role edge --id ID writes an edge's NATS credentials; origin nats-config prints what an external NATS cluster needs.\n" +
		"origin --version prints the version.\n"
}

// command is one operator command that talks to a running origin: the
// flags every such command takes (--server, --project, --token-file,
// --json), its own, and the credentials it runs with.
type command struct {
	name    string // "keys create"
	args    string // positional arguments, for the usage line
	nargs   [2]int // min and max positional arguments
	summary string
	noAuth  bool // login: no token needed
	// setup defines the command's own flags and returns what runs it.
	setup func(fs *flag.FlagSet) func(e *cliEnv, args []string) error
}

// cliEnv is what a command runs with.
type cliEnv struct {
	ctx       context.Context
	getenv    func(string) string
	stdin     io.Reader
	stdout    io.Writer
	stderr    io.Writer // warnings only; errors are returned
	server    string
	project   string
	tokenFile string
	json      bool
	api       *apiclient.Client
}

// usageError is bad input: exit 2.
type usageError struct{ msg string }

func (e *usageError) Error() string { return e.msg }

func badInput(format string, a ...any) error { return &usageError{fmt.Sprintf(format, a...)} }

func commands() []*command {
	return []*command{
		loginCmd(),
		keysCreateCmd(), keysListCmd(), keysGetCmd(), keysUpdateCmd(), keysDeleteCmd(), keysRotateCmd(),
		depCreateCmd(), depListCmd(), depGetCmd(), depUpdateCmd(), depDeleteCmd(), depKeysCmd(),
		linkCmd(true), linkCmd(false),
		projectsListCmd(), projectsCreateCmd(), projectsGetCmd(), projectsUpdateCmd(), edgesCmd(), usageCmd(), auditCmd(),
		logoutCmd(), usersListCmd(), usersCreateCmd(), usersDeleteCmd(), usersPasswordCmd(),
	}
}

// apiCommands is commands as a tree: "keys create" is create under keys,
// groups in the order of their first command.
func apiCommands() []*cli.Command {
	var top []*cli.Command
	groups := map[string]*cli.Command{}
	for _, c := range commands() {
		words := strings.Fields(c.name)
		leaf := &cli.Command{Name: words[len(words)-1], Args: c.args, Summary: c.summary, Run: c.execute}
		if len(words) == 1 {
			top = append(top, leaf)
			continue
		}
		g := groups[words[0]]
		if g == nil {
			g = &cli.Command{Name: words[0], Help: commonHelp}
			groups[words[0]] = g
			top = append(top, g)
		}
		g.Subcommands = append(g.Subcommands, leaf)
	}
	return top
}

// execute runs the command and maps its error to one line and an exit
// code.
func (c *command) execute(ctx context.Context, args []string, std *cli.IO) int {
	err := c.run(ctx, args, std)
	var ue *usageError
	var ae *apiclient.APIError
	switch {
	case err == nil:
		return 0
	case errors.Is(err, flag.ErrHelp):
		return 0
	case errors.As(err, &ue):
		fmt.Fprintf(std.Stderr, "origin: %s: %s\n", c.name, oneLine(ue.msg))
		return 2
	case errors.As(err, &ae):
		msg := ae.Message
		if ae.Status == http.StatusUnauthorized && !c.noAuth {
			msg += " (run origin login, or set ORIGIN_TOKEN)"
		}
		fmt.Fprintf(std.Stderr, "origin: %s: %s\n", ae.Code, oneLine(msg))
		return 1
	default:
		fmt.Fprintf(std.Stderr, "origin: %s\n", oneLine(err.Error()))
		return 1
	}
}

func oneLine(s string) string { return strings.Join(strings.Fields(s), " ") }

// run parses the command's flags and runs it.
func (c *command) run(ctx context.Context, args []string, std *cli.IO) error {
	getenv := std.Getenv
	fs := flag.NewFlagSet("origin "+c.name, flag.ContinueOnError)
	fs.SetOutput(io.Discard)
	e := &cliEnv{getenv: getenv, stdin: std.Stdin, stdout: std.Stdout, stderr: std.Stderr}
	fs.StringVar(&e.server, "server", envOr(getenv, "ORIGIN_SERVER", defaultServer), "origin API address [env ORIGIN_SERVER]")
	if !c.noAuth {
		fs.StringVar(&e.project, "project", envOr(getenv, "ORIGIN_PROJECT", "default"), "project id or name [env ORIGIN_PROJECT]")
	}
	fs.StringVar(&e.tokenFile, "token-file", envOr(getenv, "ORIGIN_TOKEN_FILE", ""), "where origin login keeps the token (default ~/.config/keymesh/token) [env ORIGIN_TOKEN_FILE]")
	fs.BoolVar(&e.json, "json", false, "print the API's JSON instead of a table")
	runFn := c.setup(fs)
	pos, err := parseInterleaved(fs, args)
	if errors.Is(err, flag.ErrHelp) {
		c.usage(fs, std.Stdout)
		return flag.ErrHelp
	}
	if err != nil {
		return badInput("%v (see origin %s --help)", err, c.name)
	}
	if len(pos) < c.nargs[0] || len(pos) > c.nargs[1] {
		want := c.args
		if want == "" {
			want = "no arguments"
		}
		return badInput("takes %s, got %d argument(s) (see origin %s --help)", want, len(pos), c.name)
	}
	for _, p := range pos {
		if strings.TrimSpace(p) == "" {
			return badInput("an argument is empty")
		}
	}
	if e.server == "" || !(strings.HasPrefix(e.server, "http://") || strings.HasPrefix(e.server, "https://")) {
		return badInput("--server %q is not an http(s) URL", e.server)
	}
	if e.tokenFile == "" {
		e.tokenFile, err = defaultTokenFile(getenv)
		if err != nil && (c.noAuth || getenv("ORIGIN_TOKEN") == "" && getenv("ORIGIN_API_KEY") == "") {
			return badInput("%v", err)
		}
	}
	e.api = &apiclient.Client{BaseURL: strings.TrimSuffix(e.server, "/")}
	wait := waitOf(fs)
	e.api.HTTP = &http.Client{Timeout: cliTimeout + wait}
	if !c.noAuth {
		if err := e.credentials(); err != nil {
			return err
		}
	}
	ctx, cancel := context.WithTimeout(ctx, cliTimeout+wait)
	defer cancel()
	e.ctx = ctx
	return runFn(e, pos)
}

// parseInterleaved parses flags that may come before, between or after the
// positional arguments, which it returns.
func parseInterleaved(fs *flag.FlagSet, args []string) ([]string, error) {
	var pos []string
	for {
		if err := fs.Parse(args); err != nil {
			return nil, err
		}
		rest := fs.Args()
		if len(rest) == 0 {
			return pos, nil
		}
		if len(rest) < len(args) && args[len(args)-len(rest)-1] == "--" {
			return append(pos, rest...), nil
		}
		pos = append(pos, rest[0])
		args = rest[1:]
	}
}

func (c *command) usage(fs *flag.FlagSet, out io.Writer) {
	fmt.Fprintf(out, "Usage: origin %s [flags]\n\n%s\n\nFlags:\n", strings.TrimSpace(c.name+" "+c.args), c.summary)
	fs.VisitAll(func(f *flag.Flag) {
		typ, usage := flag.UnquoteUsage(f)
		def := ""
		if f.DefValue != "" && f.DefValue != "false" && f.DefValue != "0" && f.DefValue != "0s" && f.DefValue != "[]" {
			def = fmt.Sprintf(" (default %q)", f.DefValue)
		}
		if typ != "" {
			typ = " " + typ
		}
		fmt.Fprintf(out, "  --%s%s%s\n      %s\n", f.Name, typ, def, usage)
	})
}

func envOr(getenv func(string) string, name, def string) string {
	if v := getenv(name); v != "" {
		return v
	}
	return def
}

func defaultTokenFile(getenv func(string) string) (string, error) {
	home := getenv("HOME")
	if home == "" {
		var err error
		if home, err = os.UserHomeDir(); err != nil {
			return "", errors.New("no home directory for the token file: give --token-file or ORIGIN_TOKEN_FILE")
		}
	}
	return filepath.Join(home, ".config", "keymesh", "token"), nil
}

// credentials picks the token: env ORIGIN_TOKEN, else env ORIGIN_API_KEY
// (a project key), else the token file.
func (e *cliEnv) credentials() error {
	if t := strings.TrimSpace(e.getenv("ORIGIN_TOKEN")); t != "" {
		e.api.Token = t
		return nil
	}
	if k := strings.TrimSpace(e.getenv("ORIGIN_API_KEY")); k != "" {
		e.api.APIKey = k
		return nil
	}
	b, err := os.ReadFile(e.tokenFile)
	if errors.Is(err, os.ErrNotExist) {
		return badInput("not logged in: run origin login, or set ORIGIN_TOKEN")
	}
	if err != nil {
		return fmt.Errorf("reading the token file: %w", err)
	}
	if e.api.Token = strings.TrimSpace(string(b)); e.api.Token == "" {
		return badInput("the token file %s is empty: run origin login", e.tokenFile)
	}
	return nil
}

// ---- flag helpers ----

// listFlag is a flag that may be repeated and takes comma-separated lists.
type listFlag struct {
	vals []string
	set  bool
}

func (l *listFlag) String() string { return strings.Join(l.vals, ",") }
func (l *listFlag) Set(v string) error {
	if !l.set {
		l.vals, l.set = []string{}, true
	}
	for _, s := range strings.Split(v, ",") {
		if s = strings.TrimSpace(s); s != "" {
			l.vals = append(l.vals, s)
		}
	}
	return nil
}

// waitFlag defines --wait on a mutation.
func waitFlag(fs *flag.FlagSet) *time.Duration {
	return fs.Duration("wait", 0, "hold the answer until every live edge has applied the change, at most this long (e.g. 2s)")
}

func waitOf(fs *flag.FlagSet) time.Duration {
	if f := fs.Lookup("wait"); f != nil {
		if d, ok := f.Value.(flag.Getter).Get().(time.Duration); ok {
			return d
		}
	}
	return 0
}

func waitOpts(d time.Duration) ([]apiclient.CallOption, error) {
	if d < 0 || d > 5*time.Minute {
		return nil, badInput("--wait must be between 0 and 5m")
	}
	if d == 0 {
		return nil, nil
	}
	return []apiclient.CallOption{apiclient.Wait(d)}, nil
}

func isSet(fs *flag.FlagSet, name string) bool {
	set := false
	fs.Visit(func(f *flag.Flag) { set = set || f.Name == name })
	return set
}

func ptr[T any](v T) *T { return &v }

// ---- output ----

// printJSON prints raw (the API's answer) indented, members in the API's
// order.
func (e *cliEnv) printJSON(raw json.RawMessage) error {
	var buf bytes.Buffer
	if err := json.Indent(&buf, bytes.TrimSpace(raw), "", "  "); err != nil {
		return fmt.Errorf("the origin answered with invalid JSON: %w", err)
	}
	buf.WriteByte('\n')
	_, err := e.stdout.Write(buf.Bytes())
	return err
}

// printValue prints v as indented JSON.
func (e *cliEnv) printValue(v any) error {
	b, err := json.Marshal(v)
	if err != nil {
		return err
	}
	return e.printJSON(b)
}

func fmtTime(t *time.Time, never string) string {
	if t == nil || t.IsZero() {
		return never
	}
	return t.UTC().Format(time.RFC3339)
}

func fmtRate(rl *apiclient.RateLimit) string {
	if rl == nil {
		return "none"
	}
	return fmt.Sprintf("%d/min", rl.RequestsPerMinute)
}

func orDash(s string) string {
	if s == "" {
		return "-"
	}
	return s
}

// warnNoEdges says on stderr, once per mutation, that a ?wait answer knew
// no live edge: "0 applied, 0 pending" reads like success but proves
// nothing reached an edge.
func (e *cliEnv) warnNoEdges(p *apiclient.Propagation) {
	if p != nil && p.LiveEdges == 0 && e.stderr != nil {
		fmt.Fprintln(e.stderr, "origin: warning: no live edges: the origin has heard from no edge, so --wait proved nothing reached one")
	}
}

func fmtPropagation(p *apiclient.Propagation) string {
	s := fmt.Sprintf("%d edge(s) applied, %d pending", len(p.Applied), len(p.Pending))
	if len(p.Pending) > 0 {
		s += ": " + strings.Join(p.Pending, ", ")
	}
	return s
}

// ---- login ----

func loginCmd() *command {
	return &command{
		name: "login", summary: "Log in and keep the token (mode 0600) for the other commands", noAuth: true,
		setup: func(fs *flag.FlagSet) func(*cliEnv, []string) error {
			user := fs.String("username", "admin", "user to log in as [env ORIGIN_USERNAME]")
			pwFile := fs.String("password-file", "", "read the password from this file (else env ORIGIN_PASSWORD, else stdin when piped)")
			return func(e *cliEnv, _ []string) error {
				if !isSet(fs, "username") {
					*user = envOr(e.getenv, "ORIGIN_USERNAME", *user)
				}
				pw, err := e.password(*pwFile)
				if err != nil {
					return err
				}
				s, err := e.api.Login(e.ctx, *user, pw)
				if err != nil {
					return err
				}
				if err := writeToken(e.tokenFile, s.Token); err != nil {
					return err
				}
				if e.json {
					return e.printValue(map[string]any{"server": e.server, "username": *user, "expires_at": s.ExpiresAt, "token_file": e.tokenFile})
				}
				fmt.Fprintf(e.stdout, "Logged in to %s as %s until %s; token saved to %s\n", e.server, *user, fmtTime(&s.ExpiresAt, "-"), e.tokenFile)
				if e.getenv("ORIGIN_TOKEN") != "" {
					fmt.Fprintln(e.stdout, "Note: ORIGIN_TOKEN is set and wins over the saved token.")
				}
				return nil
			}
		},
	}
}

// password reads the login password: file, env, or piped stdin. It never
// prompts.
func (e *cliEnv) password(file string) (string, error) {
	var pw string
	switch {
	case file != "":
		b, err := os.ReadFile(file)
		if err != nil {
			return "", badInput("reading --password-file: %v", errors.Unwrap(err))
		}
		pw = string(b)
	case e.getenv("ORIGIN_PASSWORD") != "":
		pw = e.getenv("ORIGIN_PASSWORD")
	default:
		if f, ok := e.stdin.(*os.File); ok {
			if st, err := f.Stat(); err != nil || st.Mode()&os.ModeCharDevice != 0 {
				return "", badInput("no password: give --password-file, set ORIGIN_PASSWORD, or pipe it on stdin")
			}
		}
		b, err := io.ReadAll(io.LimitReader(e.stdin, 64<<10))
		if err != nil {
			return "", badInput("reading the password from stdin failed")
		}
		pw = string(b)
	}
	pw = strings.TrimRight(pw, "\r\n")
	if pw == "" {
		return "", badInput("the password is empty")
	}
	return pw, nil
}

// writeToken replaces path with token, mode 0600, in a directory of mode
// 0700 if it has to create it.
func writeToken(path, token string) error {
	dir := filepath.Dir(path)
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return fmt.Errorf("creating the token directory: %w", err)
	}
	f, err := os.CreateTemp(dir, ".token-*")
	if err != nil {
		return fmt.Errorf("writing the token file: %w", err)
	}
	defer os.Remove(f.Name())
	if err := f.Chmod(0o600); err != nil {
		f.Close()
		return fmt.Errorf("writing the token file: %w", err)
	}
	if _, err := f.WriteString(token + "\n"); err != nil {
		f.Close()
		return fmt.Errorf("writing the token file: %w", err)
	}
	if err := f.Close(); err != nil {
		return fmt.Errorf("writing the token file: %w", err)
	}
	if err := os.Rename(f.Name(), path); err != nil {
		return fmt.Errorf("writing the token file: %w", err)
	}
	return nil
}

// ---- projects and edges ----

func projectsListCmd() *command {
	return &command{
		name: "projects list", summary: "List projects",
		setup: func(fs *flag.FlagSet) func(*cliEnv, []string) error {
			return func(e *cliEnv, _ []string) error {
				var raw json.RawMessage
				if _, err := e.api.Do(e.ctx, http.MethodGet, "/v1/projects", nil, &raw); err != nil {
					return err
				}
				if e.json {
					return e.printJSON(raw)
				}
				var page struct{ Items []apiclient.Project }
				if err := json.Unmarshal(raw, &page); err != nil {
					return err
				}
				t := newTable(e.stdout, "ID", "NAME", "CREATED")
				for _, p := range page.Items {
					t.row(p.ID, p.Name, fmtTime(&p.CreatedAt, "-"))
				}
				return t.flush()
			}
		},
	}
}

func projectsCreateCmd() *command {
	return &command{
		name: "projects create", args: "<name>", nargs: [2]int{1, 1}, summary: "Create a project",
		setup: func(fs *flag.FlagSet) func(*cliEnv, []string) error {
			return func(e *cliEnv, args []string) error {
				var raw json.RawMessage
				if _, err := e.api.Do(e.ctx, http.MethodPost, "/v1/projects", map[string]string{"name": args[0]}, &raw); err != nil {
					return err
				}
				if e.json {
					return e.printJSON(raw)
				}
				var p apiclient.Project
				if err := json.Unmarshal(raw, &p); err != nil {
					return err
				}
				fmt.Fprintf(e.stdout, "Created project %s (%s)\n", p.Name, p.ID)
				return nil
			}
		},
	}
}

func edgesCmd() *command {
	return &command{
		name: "edges", summary: "List the edges and the revision each has applied",
		setup: func(fs *flag.FlagSet) func(*cliEnv, []string) error {
			return func(e *cliEnv, _ []string) error {
				var raw json.RawMessage
				if _, err := e.api.Do(e.ctx, http.MethodGet, "/v1/edges", nil, &raw); err != nil {
					return err
				}
				if e.json {
					return e.printJSON(raw)
				}
				edges, err := e.api.Edges(e.ctx)
				if err != nil {
					return err
				}
				sort.Slice(edges, func(i, j int) bool { return edges[i].ID < edges[j].ID })
				t := newTable(e.stdout, "ID", "SITE", "ADDRESS", "APPLIED", "LAST SEEN", "STATE")
				for _, ed := range edges {
					// stale: not heard from within the liveness, or left on
					// shutdown; ?wait does not wait for it.
					state := "stale"
					if ed.Live {
						state = "live"
					}
					t.row(ed.ID, ed.Site, orDash(ed.Address), fmt.Sprint(ed.AppliedRevision), fmtTime(&ed.LastSeen, "-"), state)
				}
				return t.flush()
			}
		},
	}
}
