package cli

import (
	"bytes"
	"context"
	"regexp"
	"strings"
	"testing"
)

// tree is origin-like: a root that runs on its own (a server), nested
// groups, leaves that report what they got.
func tree(root func(args []string) int) *Command {
	leaf := func(name, args, summary string) *Command {
		return &Command{Name: name, Args: args, Summary: summary, Run: func(_ context.Context, a []string, io *IO) int {
			io.Stdout.Write([]byte(name + "(" + strings.Join(a, ",") + ")"))
			return 0
		}}
	}
	c := &Command{
		Name: "prog", Help: "Every command takes --server.",
		Subcommands: []*Command{
			leaf("login", "", "Log in"),
			{Name: "keys", Help: "Keys need a project.", Subcommands: []*Command{
				leaf("create", "[name]", "Create a key"),
				{Name: "grants", Subcommands: []*Command{leaf("add", "<who>", "Grant")}},
			}},
			VersionCommand("prog"),
		},
	}
	if root != nil {
		c.Run = func(_ context.Context, a []string, io *IO) int { return root(a) }
	}
	return c
}

func execute(c *Command, args ...string) (int, string, string) {
	var out, errb bytes.Buffer
	code := Execute(context.Background(), c, args, &IO{Stdout: &out, Stderr: &errb, Getenv: func(string) string { return "" }})
	return code, out.String(), errb.String()
}

func TestExecuteDispatchesByName(t *testing.T) {
	var rootArgs []string
	c := tree(func(a []string) int { rootArgs = a; return 7 })
	for _, tc := range []struct {
		args []string
		out  string
	}{
		{[]string{"login", "--json"}, "login(--json)"},
		{[]string{"keys", "create", "ci", "--wait", "1s"}, "create(ci,--wait,1s)"},
		{[]string{"keys", "grants", "add", "ops"}, "add(ops)"},
		{[]string{"keys", "create", "--help"}, "create(--help)"}, // a leaf explains itself
		{[]string{"help", "keys", "create"}, "create(--help)"},
		{[]string{"keys", "help", "create"}, "create(--help)"},
	} {
		if code, out, errb := execute(c, tc.args...); code != 0 || out != tc.out || errb != "" {
			t.Errorf("%v: exit %d, stdout %q, stderr %q; want %q", tc.args, code, out, errb, tc.out)
		}
	}
	// What names no subcommand is the root's own: flags, --help, a stray
	// word, nothing at all.
	for _, args := range [][]string{nil, {"--listen", "x"}, {"--help"}, {"-h"}, {"frob"}} {
		rootArgs = []string{"unset"}
		if code, _, _ := execute(c, args...); code != 7 || strings.Join(rootArgs, " ") != strings.Join(args, " ") {
			t.Errorf("%v: exit %d, the root got %q", args, code, rootArgs)
		}
	}
}

func TestExecuteListsAndRefuses(t *testing.T) {
	c := tree(nil)
	// Listings: nested commands by their full name, with their arguments,
	// then the command's Help.
	for _, args := range [][]string{{"help"}, {"--help"}, {"-h"}, {"-help"}} {
		code, out, _ := execute(c, args...)
		if code != 0 || !strings.HasPrefix(out, "Usage: prog <command> [arguments] [flags]\n\nCommands:\n") ||
			!regexp.MustCompile(`(?m)^  keys create \[name\] +Create a key$`).MatchString(out) ||
			!regexp.MustCompile(`(?m)^  keys grants add <who> +Grant$`).MatchString(out) ||
			!strings.Contains(out, "  login ") || !strings.Contains(out, "  version ") ||
			!strings.HasSuffix(out, "\n\nEvery command takes --server.\n") {
			t.Errorf("%v: exit %d\n%s", args, code, out)
		}
	}
	for _, args := range [][]string{{"keys", "--help"}, {"keys", "help"}, {"help", "keys"}} {
		code, out, _ := execute(c, args...)
		if code != 0 || !strings.HasPrefix(out, "Usage: prog keys <command>") || !strings.Contains(out, "  keys create [name]") ||
			strings.Contains(out, "login") || !strings.Contains(out, "Keys need a project.") {
			t.Errorf("%v: exit %d\n%s", args, code, out)
		}
	}
	// Refusals: one line on stderr, exit 2, nothing on stdout.
	for _, tc := range []struct {
		args []string
		want string
	}{
		{[]string{"frob"}, `prog: unknown command "frob" (see prog --help)`},
		{[]string{"keys", "frob"}, `prog: unknown command "keys frob" (see prog keys --help)`},
		{[]string{"keys", "grants", "frob", "x"}, `prog: unknown command "keys grants frob" (see prog keys grants --help)`},
		{[]string{"help", "nope"}, `prog: unknown command "nope" (see prog --help)`},
		{[]string{"help", "keys", "nope"}, `prog: unknown command "keys nope" (see prog keys --help)`},
		{[]string{"--listen", "x"}, `prog: expected a command before flag "--listen" (see prog --help)`},
		{[]string{"keys", "--json"}, `prog: expected a command before flag "--json" (see prog keys --help)`},
		{[]string{"keys"}, `prog: keys needs a subcommand: create, grants (see prog keys --help)`},
		{[]string{"keys", "grants"}, `prog: keys grants needs a subcommand: add (see prog keys grants --help)`},
		{[]string{"version", "extra"}, `prog: version takes no arguments`},
	} {
		code, out, errb := execute(c, tc.args...)
		if code != 2 || out != "" || strings.Count(errb, "\n") != 1 || !strings.HasPrefix(errb, tc.want) {
			t.Errorf("%v: exit %d, stdout %q, stderr %q; want %q", tc.args, code, out, errb, tc.want)
		}
	}
	// A root that runs on its own explains its flags with --help: the
	// listing is help.
	if code, _, errb := execute(tree(func([]string) int { return 0 }), "help", "nope"); code != 2 || errb != "prog: unknown command \"nope\" (see prog help)\n" {
		t.Errorf("help nope with a root Run: exit %d, stderr %q", code, errb)
	}
	// Nothing at all at the root: the listing, on stderr.
	if code, out, errb := execute(c); code != 2 || out != "" || !strings.HasPrefix(errb, "Usage: prog <command>") {
		t.Errorf("no arguments: exit %d, stdout %q, stderr %q", code, out, errb)
	}
}

func TestVersion(t *testing.T) {
	shape := regexp.MustCompile(`^prog \S+ \(commit ([0-9a-f]{7}|unknown)(, dirty)?\) go\S+\n$`)
	for _, root := range []*Command{tree(nil), tree(func([]string) int { return 7 })} {
		for _, args := range [][]string{{"--version"}, {"-version"}, {"version"}} {
			if code, out, errb := execute(root, args...); code != 0 || !shape.MatchString(out) || errb != "" {
				t.Errorf("%v: exit %d, stdout %q, stderr %q", args, code, out, errb)
			}
		}
	}
	// --version is the root's only: below, it is a flag like any other.
	if code, _, errb := execute(tree(nil), "keys", "--version"); code != 2 || !strings.Contains(errb, "expected a command") {
		t.Errorf("keys --version: exit %d, stderr %q", code, errb)
	}
	if code, out, _ := execute(tree(nil), "version", "--help"); code != 0 || !strings.Contains(out, "Usage: prog version") {
		t.Errorf("version --help: exit %d, %q", code, out)
	}
	edge := regexp.MustCompile(`^edge \S+ \(commit ([0-9a-f]{7}|unknown)(, dirty)?\) go\S+\n$`)
	for _, tc := range []struct {
		args []string
		want bool
	}{{[]string{"--version"}, true}, {[]string{"-version", "x"}, true}, {nil, false}, {[]string{"--listen", "--version"}, false}} {
		var out bytes.Buffer
		if got := PrintVersion(tc.args, "edge", &out); got != tc.want || (got && !edge.MatchString(out.String())) || (!got && out.Len() != 0) {
			t.Errorf("PrintVersion(%q) = %v, printed %q", tc.args, got, out.String())
		}
	}
}
