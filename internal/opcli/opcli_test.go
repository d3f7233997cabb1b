package opcli

import (
	"bytes"
	"context"
	"encoding/json"
	"io"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"testing"

	"github.com/keymesh/keymesh/internal/cli"
	"github.com/keymesh/keymesh/internal/stack"
	"github.com/keymesh/keymesh/origin"
)

const cliPassword = "cli test password"

// startOrigin starts an origin (embedded NATS) with cliPassword, stopped
// when t ends.
func startOrigin(t *testing.T) *origin.Server {
	t.Helper()
	return stack.ForTest(t, stack.Config{Dir: t.TempDir(), AdminPassword: cliPassword}).Origin
}

// cliRunner runs the CLI in-process with a fixed environment.
type cliRunner struct {
	t   *testing.T
	env map[string]string
}

type result struct {
	code           int
	stdout, stderr string
}

func noenv(string) string { return "" }

// runCLI runs the origin binary's commands as cmd/origin does, without the
// server.
func runCLI(args []string, getenv func(string) string, stdin io.Reader, stdout, stderr io.Writer) int {
	return cli.Execute(context.Background(), Root(nil), args, &cli.IO{Stdin: stdin, Stdout: stdout, Stderr: stderr, Getenv: getenv})
}

func run(args []string, getenv func(string) string, stdout, stderr io.Writer) int {
	return runCLI(args, getenv, strings.NewReader(""), stdout, stderr)
}

func (r *cliRunner) run(stdin string, args ...string) result {
	r.t.Helper()
	var out, errb bytes.Buffer
	code := runCLI(args, func(k string) string { return r.env[k] }, strings.NewReader(stdin), &out, &errb)
	return result{code, out.String(), errb.String()}
}

// ok runs and fails the test unless the command exits 0.
func (r *cliRunner) ok(args ...string) string {
	r.t.Helper()
	res := r.run("", args...)
	if res.code != 0 {
		r.t.Fatalf("origin %s: exit %d\nstdout: %s\nstderr: %s", strings.Join(args, " "), res.code, res.stdout, res.stderr)
	}
	if res.stderr != "" {
		r.t.Errorf("origin %s: stderr %q", strings.Join(args, " "), res.stderr)
	}
	return res.stdout
}

// okNoEdges runs a mutation with --wait while no edge is live: it succeeds,
// and stderr is the one warning that the wait proved nothing (issue 12.7).
func (r *cliRunner) okNoEdges(args ...string) string {
	r.t.Helper()
	res := r.run("", args...)
	if res.code != 0 {
		r.t.Fatalf("origin %s: exit %d\nstdout: %s\nstderr: %s", strings.Join(args, " "), res.code, res.stdout, res.stderr)
	}
	if lines := strings.Split(strings.TrimRight(res.stderr, "\n"), "\n"); len(lines) != 1 ||
		!strings.HasPrefix(lines[0], "origin: warning: no live edges") {
		r.t.Errorf("origin %s: stderr %q, want the no-live-edges warning", strings.Join(args, " "), res.stderr)
	}
	return res.stdout
}

// fails runs and checks the exit code and a one-line stderr.
func (r *cliRunner) fails(code int, want string, args ...string) string {
	r.t.Helper()
	res := r.run("", args...)
	if res.code != code {
		r.t.Fatalf("origin %s: exit %d, want %d\nstdout: %s\nstderr: %s", strings.Join(args, " "), res.code, code, res.stdout, res.stderr)
	}
	if lines := strings.Split(strings.TrimRight(res.stderr, "\n"), "\n"); len(lines) != 1 || !strings.HasPrefix(lines[0], "origin: ") ||
		!strings.Contains(lines[0], want) {
		r.t.Fatalf("origin %s: stderr %q, want one line with %q", strings.Join(args, " "), res.stderr, want)
	}
	return res.stderr
}

func (r *cliRunner) json(out any, args ...string) {
	r.t.Helper()
	s := r.ok(append(args, "--json")...)
	if err := json.Unmarshal([]byte(s), out); err != nil {
		r.t.Fatalf("origin %s --json: %v\n%s", strings.Join(args, " "), err, s)
	}
}

func newRunner(t *testing.T, s *origin.Server) (*cliRunner, string) {
	home := t.TempDir()
	return &cliRunner{t: t, env: map[string]string{"HOME": home, "ORIGIN_SERVER": "http://" + s.Addr()}}, home
}

func checkMode(t *testing.T, path string, want os.FileMode) {
	t.Helper()
	st, err := os.Stat(path)
	if err != nil {
		t.Fatal(err)
	}
	if st.Mode().Perm() != want {
		t.Fatalf("%s has mode %v, want %v", path, st.Mode().Perm(), want)
	}
}

var secretRE = regexp.MustCompile(`km_[A-Za-z0-9_-]{20,}`)

func TestCLIWorkflow(t *testing.T) {
	s := startOrigin(t)
	r, home := newRunner(t, s)

	// Not logged in yet.
	r.fails(2, "not logged in", "keys", "list")

	// A wrong password: exit 1, one line, the password nowhere.
	res := r.run("not the password\n", "login", "--username", "admin")
	if res.code != 1 || strings.Count(res.stderr, "\n") != 1 || !strings.HasPrefix(res.stderr, "origin: AUTHENTICATION_FAILED: ") ||
		strings.Contains(res.stderr+res.stdout, "not the password") {
		t.Fatalf("wrong password: %+v", res)
	}

	// Password piped on stdin; the token goes to ~/.config/keymesh/token.
	res = r.run(cliPassword+"\n", "login")
	if res.code != 0 || !strings.Contains(res.stdout, "Logged in") {
		t.Fatalf("login: %+v", res)
	}
	tokenFile := filepath.Join(home, ".config", "keymesh", "token")
	checkMode(t, tokenFile, 0o600)
	checkMode(t, filepath.Dir(tokenFile), 0o700)
	tok, err := os.ReadFile(tokenFile)
	if err != nil || len(bytes.TrimSpace(tok)) < 20 {
		t.Fatalf("token file: %q %v", tok, err)
	}
	if strings.Contains(res.stdout+res.stderr, strings.TrimSpace(string(tok))) {
		t.Fatal("login printed the token")
	}

	// Deployments.
	out := r.okNoEdges("deployments", "create", "chat", "--upstream", "http://127.0.0.1:9", "--upstream", "eu=http://10.0.0.1:8000",
		"--hosts", "chat.example.com", "--rate-limit", "600", "--wait", "1s")
	// No edge runs: every --wait below is warned about on stderr.
	for _, want := range []string{"Created deployment dep_", "chat.example.com", "*=http://127.0.0.1:9 eu=http://10.0.0.1:8000", "600/min", "Propagation:"} {
		if !strings.Contains(out, want) {
			t.Errorf("deployments create lacks %q:\n%s", want, out)
		}
	}
	var dep struct{ ID, Name string }
	r.json(&dep, "deployments", "get", "chat")
	if dep.Name != "chat" || !strings.HasPrefix(dep.ID, "dep_") {
		t.Fatalf("deployments get: %+v", dep)
	}
	out = r.ok("deployments", "list")
	if lines := strings.Split(strings.TrimSpace(out), "\n"); len(lines) != 2 || !strings.HasPrefix(lines[0], "ID ") || !strings.Contains(lines[1], dep.ID) {
		t.Fatalf("deployments list:\n%s", out)
	}
	r.ok("deployments", "update", "chat", "--invalid-key-status", "403", "--auth=false")
	var dep2 struct {
		InvalidKeyStatus int  `json:"invalid_key_status"`
		AuthEnabled      bool `json:"auth_enabled"`
	}
	r.json(&dep2, "deployments", "get", dep.ID)
	if dep2.InvalidKeyStatus != 403 || dep2.AuthEnabled {
		t.Fatalf("deployments update: %+v", dep2)
	}

	// A key: the secret is printed once, with the note.
	out = r.ok("keys", "create", "--name", "ci", "--deployments", "chat", "--expires-in-days", "30")
	secret := secretRE.FindString(out)
	if secret == "" || !strings.Contains(out, "shown only this once") || !strings.Contains(out, "cannot be shown again") {
		t.Fatalf("keys create:\n%s", out)
	}
	id := regexp.MustCompile(`Created key (key_\S+)`).FindStringSubmatch(out)
	if id == nil {
		t.Fatalf("keys create: no id:\n%s", out)
	}
	keyID := id[1]

	// The list shows it, as a table and as JSON, never with the secret.
	out = r.ok("keys", "list")
	lines := strings.Split(strings.TrimSpace(out), "\n")
	if len(lines) != 2 || !regexp.MustCompile(`^ID\s+NAME\s+PREFIX\s+STATUS`).MatchString(lines[0]) ||
		!strings.Contains(lines[1], keyID) || !strings.Contains(lines[1], "chat") || !strings.Contains(lines[1], "active") {
		t.Fatalf("keys list:\n%s", out)
	}
	if strings.Index(lines[0], "NAME") != strings.Index(lines[1], "ci") {
		t.Errorf("keys list columns are not aligned:\n%s", out)
	}
	var page struct {
		Items      []map[string]any `json:"items"`
		NextCursor *string          `json:"next_cursor"`
	}
	r.json(&page, "keys", "list")
	if len(page.Items) != 1 || page.Items[0]["id"] != keyID || page.Items[0]["key"] != nil || page.NextCursor != nil {
		t.Fatalf("keys list --json: %+v", page)
	}
	if strings.Contains(out+r.ok("keys", "get", keyID), secret) {
		t.Fatal("the secret was shown again")
	}

	// Unlink and link again.
	out = r.ok("unlink", "chat", keyID)
	if !strings.Contains(out, "Unlinked key "+keyID) {
		t.Fatalf("unlink: %s", out)
	}
	r.json(&page, "deployments", "keys", "chat")
	if len(page.Items) != 0 {
		t.Fatalf("still linked after unlink: %+v", page)
	}
	r.okNoEdges("link", "chat", keyID, "--wait", "1s")
	r.json(&page, "deployments", "keys", "chat")
	if len(page.Items) != 1 || page.Items[0]["id"] != keyID {
		t.Fatalf("not linked after link: %+v", page)
	}

	// Update, rotate.
	out = r.ok("keys", "update", keyID, "--disabled", "--rate-limit", "60", "--expires", "never", "--permissions", "read_models,run_inference")
	for _, want := range []string{"disabled", "60/min", "never", "read_models, run_inference"} {
		if !strings.Contains(out, want) {
			t.Errorf("keys update lacks %q:\n%s", want, out)
		}
	}
	out = r.ok("keys", "rotate", keyID, "--grace", "1m")
	if fresh := secretRE.FindString(out); fresh == "" || fresh == secret || !strings.Contains(out, "shown only this once") {
		t.Fatalf("keys rotate:\n%s", out)
	}
	r.fails(1, "origin: VALIDATION_ERROR: ", "keys", "update", keyID, "--expires", "next week")
	r.fails(1, "origin: VALIDATION_ERROR: ", "keys", "update", keyID, "--permissions", "fly")

	// Model allow-lists and concurrency caps: set, shown, cleared.
	out = r.ok("keys", "update", keyID, "--models", "meta-llama/*,mock-model", "--max-concurrency", "4")
	for _, want := range []string{"meta-llama/*, mock-model", "4 per edge"} {
		if !strings.Contains(out, want) {
			t.Errorf("keys update --models --max-concurrency lacks %q:\n%s", want, out)
		}
	}
	var withModels struct {
		Models         []string `json:"models"`
		MaxConcurrency *int     `json:"max_concurrency"`
	}
	r.json(&withModels, "keys", "get", keyID)
	if len(withModels.Models) != 2 || withModels.MaxConcurrency == nil || *withModels.MaxConcurrency != 4 {
		t.Fatalf("keys get --json after --models: %+v", withModels)
	}
	out = r.ok("keys", "update", keyID, "--models", "", "--max-concurrency", "0")
	if !strings.Contains(out, "any") || !strings.Contains(out, "no cap") {
		t.Errorf("keys update clearing --models and --max-concurrency:\n%s", out)
	}
	r.fails(1, "origin: VALIDATION_ERROR: ", "keys", "update", keyID, "--models", "llama-?b")
	var capped struct {
		Models         []string `json:"models"`
		MaxConcurrency *int     `json:"max_concurrency"`
	}
	r.json(&capped, "keys", "create", "capped", "--models", "mock-model", "--max-concurrency", "2")
	if len(capped.Models) != 1 || capped.MaxConcurrency == nil || *capped.MaxConcurrency != 2 {
		t.Fatalf("keys create --models --max-concurrency: %+v", capped)
	}

	// More keys, read a page at a time.
	var created struct {
		ID  string `json:"id"`
		Key string `json:"key"`
	}
	r.json(&created, "keys", "create", "second")
	if created.Key == "" {
		t.Fatal("keys create --json lacks the secret")
	}
	out = r.ok("keys", "list", "--limit", "1")
	if !strings.Contains(out, "More: --cursor ") {
		t.Fatalf("keys list --limit 1:\n%s", out)
	}

	// Delete.
	if out := r.ok("keys", "delete", keyID); !strings.Contains(out, "Deleted key "+keyID) {
		t.Fatalf("keys delete: %s", out)
	}
	r.fails(1, "origin: NOT_FOUND: ", "keys", "get", keyID)
	if out := r.okNoEdges("deployments", "delete", "chat", "--wait", "100ms"); !strings.Contains(out, "Deleted deployment chat") ||
		!strings.Contains(out, "Propagation:") {
		t.Fatalf("deployments delete --wait: %s", out)
	}
	r.fails(1, "origin: NOT_FOUND: ", "deployments", "get", "chat")
}

func TestCLITokenSources(t *testing.T) {
	s := startOrigin(t)
	r, _ := newRunner(t, s)
	dir := t.TempDir()
	pwFile := filepath.Join(dir, "pw")
	if err := os.WriteFile(pwFile, []byte(cliPassword+"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	tokenFile := filepath.Join(dir, "sub", "token")
	r.ok("login", "--password-file", pwFile, "--token-file", tokenFile)
	checkMode(t, tokenFile, 0o600)
	tok, _ := os.ReadFile(tokenFile)

	// --token-file and ORIGIN_TOKEN_FILE name the file.
	r.ok("keys", "list", "--token-file", tokenFile)
	r.env["ORIGIN_TOKEN_FILE"] = tokenFile
	r.ok("projects", "list")

	// ORIGIN_TOKEN wins over the file, both ways.
	r.env["ORIGIN_TOKEN"] = "not-a-token"
	msg := r.fails(1, "origin: AUTHENTICATION_FAILED: ", "keys", "list")
	if strings.Contains(msg, "not-a-token") {
		t.Fatal("the token is in the error")
	}
	if err := os.WriteFile(tokenFile, []byte("garbage\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	r.env["ORIGIN_TOKEN"] = strings.TrimSpace(string(tok))
	r.ok("keys", "list")

	// ORIGIN_PASSWORD logs in too; logging in again keeps the mode.
	delete(r.env, "ORIGIN_TOKEN")
	r.env["ORIGIN_PASSWORD"] = cliPassword
	r.ok("login")
	checkMode(t, tokenFile, 0o600)
	r.ok("keys", "list")

	// A project key with write_config works through ORIGIN_API_KEY, before
	// the token file.
	var k struct {
		Key string `json:"key"`
	}
	r.json(&k, "keys", "create", "ops", "--permissions", "write_config")
	if err := os.WriteFile(tokenFile, []byte("garbage\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	r.env["ORIGIN_API_KEY"] = k.Key
	r.ok("keys", "list")
	msg = r.fails(1, "origin: PERMISSION_DENIED: ", "projects", "create", "nope")
	if strings.Contains(msg, k.Key) {
		t.Fatal("the key is in the error")
	}
	delete(r.env, "ORIGIN_API_KEY")

	// Wrong password from a file: exit 1, one line.
	if err := os.WriteFile(pwFile, []byte("wrong\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	msg = r.fails(1, "origin: AUTHENTICATION_FAILED: ", "login", "--password-file", pwFile)
	if strings.Contains(msg, "wrong") {
		t.Fatal("the password is in the error")
	}
}

func TestCLIBadInput(t *testing.T) {
	s := startOrigin(t)
	r, _ := newRunner(t, s)
	r.env["ORIGIN_PASSWORD"] = cliPassword
	r.ok("login")
	for _, tc := range []struct {
		want string
		args []string
	}{
		{"unknown command", []string{"keys", "frobnicate"}},
		{"needs a subcommand", []string{"keys"}},
		{"takes <key_id>", []string{"keys", "get"}},
		{"takes <key_id>", []string{"keys", "get", "a", "b"}},
		{"takes <deployment> <key_id>", []string{"link", "chat"}},
		{"invalid value", []string{"keys", "create", "--rate-limit", "lots"}},
		{"not defined", []string{"keys", "list", "--nope"}},
		{"--wait", []string{"keys", "delete", "k", "--wait", "10m"}},
		{"nothing to change", []string{"keys", "update", "k"}},
		{"upstream", []string{"deployments", "create", "x"}},
		{"--server", []string{"keys", "list", "--server", "127.0.0.1:7000"}},
		{"password", []string{"login", "--password-file", "/nonexistent/pw"}},
	} {
		r.fails(2, tc.want, tc.args...)
	}
	// An origin that is not there: exit 1, one line.
	r.fails(1, "origin: ", "keys", "list", "--server", "http://127.0.0.1:1")
}

func TestCLIHelp(t *testing.T) {
	var out, errb bytes.Buffer
	if code := run([]string{"keys", "create", "--help"}, noenv, &out, &errb); code != 0 {
		t.Fatalf("exit %d: %s", code, errb.String())
	}
	for _, f := range []string{"--name", "--permissions", "--deployments", "--expires", "--expires-in-days", "--rate-limit", "--wait", "--server", "--project", "--json", "ORIGIN_SERVER"} {
		if !strings.Contains(out.String(), f) {
			t.Errorf("keys create --help lacks %s:\n%s", f, out.String())
		}
	}
	out.Reset()
	if code := run([]string{"help"}, noenv, &out, &errb); code != 0 {
		t.Fatal(code)
	}
	for _, c := range []string{"login", "keys create", "keys list", "keys get", "keys update", "keys delete", "keys rotate",
		"deployments create", "deployments list", "deployments get", "deployments update", "deployments delete", "deployments keys", "link", "unlink"} {
		if !strings.Contains(out.String(), "  "+c) {
			t.Errorf("help lacks %s", c)
		}
	}
	// origin --help, the server's flags, is cmd/origin's TestServerHelpNamesCommands.
}
