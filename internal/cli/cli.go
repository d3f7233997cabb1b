// Package cli holds what the keymesh binaries share at their edges: the
// subcommand tree (Command, Execute: dispatch by name, help listings, one
// line for what names no command), flags that also read from the
// environment, one-line errors, --version and signal handling.
package cli

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"strings"
	"time"
)

// ErrHelp is returned by Parse after printing usage for -h/--help.
var ErrHelp = flag.ErrHelp

// EnvName is the environment variable that sets flag name: PREFIX_NAME in
// upper snake case ("nats-url" with prefix "EDGE" is EDGE_NATS_URL).
func EnvName(prefix, name string) string {
	return prefix + "_" + strings.ToUpper(strings.ReplaceAll(name, "-", "_"))
}

// Parse fills fs from the environment (variables named by EnvName), then
// from args, which win. Usage goes to out on --help (and ErrHelp is
// returned); any other problem is returned as one readable error.
func Parse(fs *flag.FlagSet, prefix string, args []string, getenv func(string) string, out io.Writer) error {
	fs.SetOutput(io.Discard)
	var envErr error
	fs.VisitAll(func(f *flag.Flag) {
		if v := getenv(EnvName(prefix, f.Name)); v != "" && envErr == nil {
			if err := fs.Set(f.Name, v); err != nil {
				envErr = fmt.Errorf("%s: %v", EnvName(prefix, f.Name), err)
			}
		}
	})
	if envErr != nil {
		return envErr
	}
	if err := fs.Parse(args); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			Usage(fs, prefix, out)
			return ErrHelp
		}
		return fmt.Errorf("%v (see --help)", err)
	}
	if fs.NArg() > 0 {
		return fmt.Errorf("unexpected argument %q (see --help)", fs.Arg(0))
	}
	return nil
}

// Usage prints every flag with its default and environment variable.
func Usage(fs *flag.FlagSet, prefix string, out io.Writer) {
	fmt.Fprintf(out, "Usage: %s [flags]\n\nFlags (each also read from the environment variable shown):\n", fs.Name())
	fs.VisitAll(func(f *flag.Flag) {
		def := ""
		if f.DefValue != "" {
			def = fmt.Sprintf(" (default %q)", f.DefValue)
		}
		fmt.Fprintf(out, "  --%s  [%s]%s\n      %s\n", f.Name, EnvName(prefix, f.Name), def, f.Usage)
	})
}

// Drain runs shutdown with a deadline of timeout and maps the outcome to an
// exit code: a drain cut short by the deadline is still a clean stop (0),
// any other error is 1.
func Drain(log *slog.Logger, timeout time.Duration, shutdown func(context.Context) error) int {
	log.Info("shutting down", "drain_timeout", timeout)
	ctx, cancel := context.WithTimeout(context.Background(), timeout)
	defer cancel()
	err := shutdown(ctx)
	switch {
	case err == nil:
		return 0
	case errors.Is(err, context.DeadlineExceeded):
		log.Warn("drain timeout reached; cut what was still in flight", "drain_timeout", timeout)
		return 0
	default:
		log.Error("shutdown", "err", err)
		return 1
	}
}
