package cli

import (
	"context"
	"fmt"
	"io"
	"strings"

	"github.com/keymesh/keymesh/internal/buildinfo"
)

// IO is what a command reads and writes: the process's standard streams and
// environment, or a test's.
type IO struct {
	Stdin          io.Reader
	Stdout, Stderr io.Writer
	Getenv         func(string) string
}

// Command is a binary (the root) or one of its subcommands, which nest:
// origin → keys → create. Run prints everything the command says, its own
// --help and errors included; the tree around it only dispatches, lists and
// refuses what names no command.
type Command struct {
	// Name is the word that selects the command (the binary's name at the
	// root).
	Name string
	// Args follows the name in listings: "<key_id>", "--out DIR".
	Args string
	// Summary is one line for the listing of the parent's commands.
	Summary string
	// Usage replaces the first line of this command's listing, after
	// "Usage: " (default "<path> <command> [arguments] [flags]").
	Usage string
	// Help is printed after this command's listing: what every subcommand
	// takes, say.
	Help string
	// Run runs the command with the arguments after its name and returns
	// the exit code: 0 done, 1 failed while running, 2 bad usage (after one
	// line on stderr). On a command with Subcommands, Run gets the
	// arguments that name none, --help included (origin [flags] runs the
	// server); without Run such a command needs a subcommand. A command
	// without Subcommands must have a Run.
	Run func(ctx context.Context, args []string, io *IO) int
	// Subcommands are selected by the first argument, and listed in this
	// order.
	Subcommands []*Command
}

// Execute runs the command of root that args name and returns its exit
// code. Besides the subcommands, a command with subcommands answers:
//
//	help [command...]   its listing, or the named command's (a leaf's --help)
//	--help, -h, -help   its listing, unless it has a Run (which explains its flags)
//	--version, -version at the root, the version subcommand if there is one
//
// A word that names no subcommand, where no Run takes it, is one line on
// stderr and exit 2, as is a missing subcommand (at the root: the listing,
// on stderr).
func Execute(ctx context.Context, root *Command, args []string, io *IO) int {
	return root.execute(ctx, nil, args, io)
}

func (c *Command) execute(ctx context.Context, parents []*Command, args []string, io *IO) int {
	if len(c.Subcommands) == 0 {
		return c.Run(ctx, args, io)
	}
	path := append(parents[:len(parents):len(parents)], c)
	if len(args) == 0 {
		switch {
		case c.Run != nil:
			return c.Run(ctx, args, io)
		case len(parents) == 0:
			c.list(io.Stderr, path)
		default:
			fmt.Fprintf(io.Stderr, "%s: %s needs a subcommand: %s (see %s)\n",
				path[0].Name, words(path[1:]), strings.Join(c.names(), ", "), seeHelp(path))
		}
		return 2
	}
	switch a := args[0]; {
	case a == "help":
		return c.help(ctx, path, args[1:], io)
	case isHelpFlag(a) && c.Run == nil:
		c.list(io.Stdout, path)
		return 0
	case (a == "--version" || a == "-version") && len(parents) == 0 && c.find("version") != nil:
		return c.find("version").execute(ctx, path, args[1:], io)
	}
	if sub := c.find(args[0]); sub != nil {
		return sub.execute(ctx, path, args[1:], io)
	}
	if c.Run != nil {
		return c.Run(ctx, args, io)
	}
	return unknown(path, args[0], io.Stderr)
}

// help is `help [command...]` on the command at the end of path.
func (c *Command) help(ctx context.Context, path []*Command, names []string, io *IO) int {
	at := c
	for _, n := range names {
		sub := at.find(n)
		if sub == nil {
			return unknown(path, n, io.Stderr)
		}
		at, path = sub, append(path, sub)
	}
	if len(at.Subcommands) == 0 {
		return at.Run(ctx, []string{"--help"}, io)
	}
	at.list(io.Stdout, path)
	return 0
}

func unknown(path []*Command, word string, stderr io.Writer) int {
	what := strings.TrimSpace(words(path[1:]) + " " + word)
	if strings.HasPrefix(word, "-") {
		fmt.Fprintf(stderr, "%s: expected a command before flag %q (see %s)\n", path[0].Name, word, seeHelp(path))
	} else {
		fmt.Fprintf(stderr, "%s: unknown command %q (see %s)\n", path[0].Name, what, seeHelp(path))
	}
	return 2
}

// seeHelp is how to get the listing of the command at the end of path:
// --help, unless its Run explains its own flags with that.
func seeHelp(path []*Command) string {
	if path[len(path)-1].Run != nil {
		return words(path) + " help"
	}
	return words(path) + " --help"
}

// list prints the command's usage and every command under it by its full
// name, as typed after the binary's ("keys create [name]").
func (c *Command) list(w io.Writer, path []*Command) {
	usage := c.Usage
	if usage == "" {
		usage = words(path) + " <command> [arguments] [flags]"
	}
	type entry struct{ name, summary string }
	var entries []entry
	var walk func(prefix string, cmds []*Command)
	walk = func(prefix string, cmds []*Command) {
		for _, s := range cmds {
			name := strings.TrimSpace(prefix + " " + s.Name)
			if s.Run != nil || len(s.Subcommands) == 0 {
				entries = append(entries, entry{strings.TrimSpace(name + " " + s.Args), s.Summary})
			}
			walk(name, s.Subcommands)
		}
	}
	walk(words(path[1:]), c.Subcommands)
	width := 0
	for _, e := range entries {
		width = max(width, len(e.name))
	}
	fmt.Fprintf(w, "Usage: %s\n\nCommands:\n", usage)
	for _, e := range entries {
		fmt.Fprintf(w, "  %-*s  %s\n", width, e.name, e.summary)
	}
	if c.Help != "" {
		fmt.Fprintf(w, "\n%s\n", strings.TrimRight(c.Help, "\n"))
	}
}

func (c *Command) find(name string) *Command {
	for _, s := range c.Subcommands {
		if s.Name == name {
			return s
		}
	}
	return nil
}

func (c *Command) names() []string {
	out := make([]string, len(c.Subcommands))
	for i, s := range c.Subcommands {
		out[i] = s.Name
	}
	return out
}

func words(path []*Command) string {
	out := make([]string, len(path))
	for i, c := range path {
		out[i] = c.Name
	}
	return strings.Join(out, " ")
}

func isHelpFlag(a string) bool { return a == "--help" || a == "-h" || a == "-help" }

// PrintVersion is --version for a binary without subcommands: if args ask
// for the version (--version or -version as the first argument), it prints
// binary's version line to w and reports true. Called before the flags are
// parsed, so no environment variable can set it.
func PrintVersion(args []string, binary string, w io.Writer) bool {
	if len(args) == 0 || (args[0] != "--version" && args[0] != "-version") {
		return false
	}
	fmt.Fprintln(w, buildinfo.Line(binary))
	return true
}

// VersionCommand is the version subcommand of binary, which the root's
// --version runs too: one line, as buildinfo.Line.
func VersionCommand(binary string) *Command {
	const summary = "Print the version, the commit and the Go version it was built with"
	return &Command{
		Name: "version", Summary: summary,
		Run: func(_ context.Context, args []string, io *IO) int {
			switch {
			case len(args) == 0:
				fmt.Fprintln(io.Stdout, buildinfo.Line(binary))
				return 0
			case len(args) == 1 && isHelpFlag(args[0]):
				fmt.Fprintf(io.Stdout, "Usage: %s version   (or %s --version)\n\n%s, in one line:\n%s\n", binary, binary, summary, buildinfo.Line(binary))
				return 0
			}
			fmt.Fprintf(io.Stderr, "%s: version takes no arguments (see %s version --help)\n", binary, binary)
			return 2
		},
	}
}
