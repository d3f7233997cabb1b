// Command bench is keymesh's harness: a mock OpenAI-compatible upstream,
// and the load, comparison, propagation and flood runs that drive a
// keymesh stack. Each subcommand registers itself from its own file; see
// package bench.
package main

import (
	"bytes"
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"os/signal"
	"slices"
	"strings"
	"syscall"

	"github.com/keymesh/keymesh/internal/cli"
)

// env is what a subcommand gets from the process.
type env struct {
	// ctx ends on SIGINT or SIGTERM: stop gracefully and return 0.
	ctx            context.Context
	stdout, stderr io.Writer
	getenv         func(string) string
}

// commands are bench's subcommands, each added by an init in its own file.
var commands []*cli.Command

// register adds a subcommand. run returns the exit code: 0 success, 1
// failure while running, 2 bad usage (after one line on stderr).
func register(name, summary string, run func(e *env, args []string) int) {
	commands = append(commands, &cli.Command{Name: name, Summary: summary,
		Run: func(ctx context.Context, args []string, io *cli.IO) int {
			return run(&env{ctx: ctx, stdout: io.Stdout, stderr: io.Stderr, getenv: io.Getenv}, args)
		}})
}

func root() *cli.Command {
	subs := slices.Clone(commands)
	slices.SortFunc(subs, func(a, b *cli.Command) int { return strings.Compare(a.Name, b.Name) })
	version := cli.VersionCommand("bench")
	version.Summary = strings.ToLower(version.Summary[:1]) + version.Summary[1:] // as bench's others
	return &cli.Command{
		Name: "bench", Usage: "bench <command> [flags]", Help: "Run 'bench <command> --help' for a command's flags.",
		Subcommands: append(subs, version),
	}
}

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGINT, syscall.SIGTERM)
	go func() {
		<-ctx.Done()
		stop() // a second signal kills at once
	}()
	code := run(&env{ctx: ctx, stdout: os.Stdout, stderr: os.Stderr, getenv: os.Getenv}, os.Args[1:])
	stop()
	os.Exit(code)
}

func run(e *env, args []string) int {
	return cli.Execute(e.ctx, root(), args, &cli.IO{Stdin: os.Stdin, Stdout: e.stdout, Stderr: e.stderr, Getenv: e.getenv})
}

// parseFlags parses a subcommand's flags (environment BENCH_<COMMAND>_<FLAG>
// too). On --help it prints about, then the flags, and returns (0, true); on
// a bad flag, one line on stderr and (2, true).
func parseFlags(e *env, fs *flag.FlagSet, about string, args []string) (int, bool) {
	prefix := "BENCH_" + strings.ToUpper(strings.TrimPrefix(fs.Name(), "bench "))
	var help bytes.Buffer
	if err := cli.Parse(fs, prefix, args, e.getenv, &help); err != nil {
		if errors.Is(err, cli.ErrHelp) {
			fmt.Fprintf(e.stdout, "%s\n\n%s", about, help.String())
			return 0, true
		}
		fmt.Fprintf(e.stderr, "%s: %v\n", fs.Name(), err)
		return 2, true
	}
	return 0, false
}
