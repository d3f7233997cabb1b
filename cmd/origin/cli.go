package main

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
	"slices"
	"sort"
	"strings"
	"time"

	"github.com/keymesh/keymesh/origin/apiclient"
)

// The operator CLI: `origin <command> ...` talks to a running origin's REST
// API. Exit codes: 0 done, 1 the API (or the network) refused, 2 bad input.
// Errors are one line on stderr; no token, password or key secret is ever
// written to stderr (a created or rotated secret goes to stdout, once).

const (
	defaultServer = "http://127.0.0.1:7000"
	cliTimeout    = 30 * time.Second
)

// command is one CLI command.
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

var commandGroups = []string{"login", "logout", "keys", "deployments", "link", "unlink", "projects", "users", "edges"}

// isCommand reports whether args start with a CLI command rather than the
// server's flags.
func isCommand(args []string) bool {
	return len(args) > 0 && (slices.Contains(commandGroups, args[0]) || args[0] == "help")
}

func commands() []*command {
	return []*command{
		loginCmd(),
		keysCreateCmd(), keysListCmd(), keysGetCmd(), keysUpdateCmd(), keysDeleteCmd(), keysRotateCmd(),
		depCreateCmd(), depListCmd(), depGetCmd(), depUpdateCmd(), depDeleteCmd(), depKeysCmd(),
		linkCmd(true), linkCmd(false),
		projectsListCmd(), projectsCreateCmd(), projectsGetCmd(), projectsUpdateCmd(), edgesCmd(),
		logoutCmd(), usersListCmd(), usersCreateCmd(), usersDeleteCmd(), usersPasswordCmd(),
	}
}

// runCLI runs one CLI command; args[0] is its first word.
func runCLI(args []string, getenv func(string) string, stdin io.Reader, stdout, stderr io.Writer) int {
	cmds := commands()
	grouped := func(g string) bool { return g == "keys" || g == "deployments" || g == "projects" || g == "users" }
	switch {
	case args[0] == "help":
		group := ""
		if len(args) > 1 {
			group = args[1]
		}
		listCommands(cmds, group, stdout)
		return 0
	case grouped(args[0]) && len(args) == 1:
		var subs []string
		for _, c := range cmds {
			if w := strings.Fields(c.name); w[0] == args[0] {
				subs = append(subs, w[1])
			}
		}
		fmt.Fprintf(stderr, "origin: %s needs a subcommand: %s (see origin %s --help)\n", args[0], strings.Join(subs, ", "), args[0])
		return 2
	case grouped(args[0]) && (args[1] == "--help" || args[1] == "-h" || args[1] == "help"):
		listCommands(cmds, args[0], stdout)
		return 0
	}
	var cmd *command
	var rest []string
	for _, c := range cmds {
		words := strings.Fields(c.name)
		if len(args) >= len(words) && slices.Equal(args[:len(words)], words) {
			cmd, rest = c, args[len(words):]
			break
		}
	}
	if cmd == nil {
		fmt.Fprintf(stderr, "origin: unknown command %q (see origin help)\n", strings.Join(args[:min(2, len(args))], " "))
		return 2
	}
	err := cmd.run(rest, getenv, stdin, stdout, stderr)
	var ue *usageError
	var ae *apiclient.APIError
	switch {
	case err == nil:
		return 0
	case errors.Is(err, flag.ErrHelp):
		return 0
	case errors.As(err, &ue):
		fmt.Fprintf(stderr, "origin: %s: %s\n", cmd.name, oneLine(ue.msg))
		return 2
	case errors.As(err, &ae):
		msg := ae.Message
		if ae.Status == http.StatusUnauthorized && !cmd.noAuth {
			msg += " (run origin login, or set ORIGIN_TOKEN)"
		}
		fmt.Fprintf(stderr, "origin: %s: %s\n", ae.Code, oneLine(msg))
		return 1
	default:
		fmt.Fprintf(stderr, "origin: %s\n", oneLine(err.Error()))
		return 1
	}
}

func oneLine(s string) string { return strings.Join(strings.Fields(s), " ") }

func listCommands(cmds []*command, group string, out io.Writer) {
	fmt.Fprintln(out, "Usage: origin <command> [arguments] [flags]   (origin [flags] with no command runs the server)")
	fmt.Fprintln(out, "\nCommands:")
	for _, c := range cmds {
		if group != "" && strings.Fields(c.name)[0] != group {
			continue
		}
		fmt.Fprintf(out, "  %-42s %s\n", strings.TrimSpace(c.name+" "+c.args), c.summary)
	}
	if group == "" {
		fmt.Fprintf(out, "  %-42s %s\n", "keygen --out DIR", keygenSummary)
	}
	fmt.Fprintln(out, "\nEvery command takes --server (env ORIGIN_SERVER, default "+defaultServer+"), --project (env ORIGIN_PROJECT, default \"default\") and --json;")
	fmt.Fprintln(out, "see origin <command> --help. Credentials: env ORIGIN_TOKEN (a JWT), else env ORIGIN_API_KEY (a project key")
	fmt.Fprintln(out, "holding write_config), else the token file written by origin login (--token-file, env ORIGIN_TOKEN_FILE,")
	fmt.Fprintln(out, "default ~/.config/keymesh/token).")
}

// run parses the command's flags and runs it.
func (c *command) run(args []string, getenv func(string) string, stdin io.Reader, stdout, stderr io.Writer) error {
	fs := flag.NewFlagSet("origin "+c.name, flag.ContinueOnError)
	fs.SetOutput(io.Discard)
	e := &cliEnv{getenv: getenv, stdin: stdin, stdout: stdout, stderr: stderr}
	fs.StringVar(&e.server, "server", envOr(getenv, "ORIGIN_SERVER", defaultServer), "origin API address [env ORIGIN_SERVER]")
	if !c.noAuth {
		fs.StringVar(&e.project, "project", envOr(getenv, "ORIGIN_PROJECT", "default"), "project id or name [env ORIGIN_PROJECT]")
	}
	fs.StringVar(&e.tokenFile, "token-file", envOr(getenv, "ORIGIN_TOKEN_FILE", ""), "where origin login keeps the token (default ~/.config/keymesh/token) [env ORIGIN_TOKEN_FILE]")
	fs.BoolVar(&e.json, "json", false, "print the API's JSON instead of a table")
	runFn := c.setup(fs)
	pos, err := parseInterleaved(fs, args)
	if errors.Is(err, flag.ErrHelp) {
		c.usage(fs, stdout)
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
	ctx, cancel := context.WithTimeout(context.Background(), cliTimeout+wait)
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
				t := newTable(e.stdout, "ID", "SITE", "ADDRESS", "APPLIED", "LAST SEEN")
				for _, ed := range edges {
					t.row(ed.ID, ed.Site, orDash(ed.Address), fmt.Sprint(ed.AppliedRevision), fmtTime(&ed.LastSeen, "-"))
				}
				return t.flush()
			}
		},
	}
}
