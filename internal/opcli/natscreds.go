package opcli

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"

	"github.com/keymesh/keymesh/internal/cli"
	"github.com/keymesh/keymesh/internal/natsauth"
	"github.com/keymesh/keymesh/origin"
)

const (
	natsCredsSummary  = "Write a NATS .creds file for an edge (or an origin replica on an external NATS); needs no server"
	natsConfigSummary = "Print the nats-server configuration an external NATS cluster needs to admit keymesh's credentials; needs no server"
)

// runNATSCreds is `origin nats-creds --role edge --id ID [--data-dir DIR]
// [--out FILE]`. It reads (creating on first use, as the origin's first
// start does) the NATS operator and account keys under the data dir. Exit
// codes: 0 written, 1 failed, 2 bad input.
func runNATSCreds(_ context.Context, args []string, std *cli.IO) int {
	stdout, stderr := std.Stdout, std.Stderr
	flags := flag.NewFlagSet("origin nats-creds", flag.ContinueOnError)
	flags.SetOutput(io.Discard)
	role := flags.String("role", "edge", "edge: may publish only its own heartbeat, audit and usage subjects and read events; origin: everything")
	id := flags.String("id", "", "the edge's id (its --id; required for --role edge): the credential speaks for this edge only")
	dataDir := flags.String("data-dir", origin.DefaultConfig().DataDir, "the origin's data dir, holding nats-operator.nk, nats-system.nk and nats-account.nk (created 0600 if missing)")
	out := flags.String("out", "", "file to write (mode 0600, never replaced); default: standard output")
	if err := flags.Parse(args); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			fmt.Fprintf(stdout, "Usage: origin nats-creds --role edge --id EDGE-ID [--data-dir DIR] [--out FILE]\n\n%s.\n"+
				"The file holds a secret seed: give it to that edge only, as --nats-creds.\n\nFlags:\n", natsCredsSummary)
			flags.VisitAll(func(f *flag.Flag) { fmt.Fprintf(stdout, "  --%s\n      %s\n", f.Name, f.Usage) })
			return 0
		}
		fmt.Fprintf(stderr, "origin: nats-creds: %v (see origin nats-creds --help)\n", err)
		return 2
	}
	if flags.NArg() > 0 || (*role == string(natsauth.RoleEdge) && *id == "") {
		fmt.Fprintln(stderr, "origin: nats-creds: --role edge takes --id EDGE-ID, and no arguments (see origin nats-creds --help)")
		return 2
	}
	keys, err := natsauth.LoadOrCreate(*dataDir)
	if err != nil {
		fmt.Fprintf(stderr, "origin: nats-creds: %s\n", oneLine(err.Error()))
		return 1
	}
	creds, err := keys.Creds(natsauth.Role(*role), *id)
	if errors.Is(err, natsauth.ErrInvalid) {
		fmt.Fprintf(stderr, "origin: nats-creds: %s\n", oneLine(err.Error()))
		return 2
	}
	if err != nil {
		fmt.Fprintf(stderr, "origin: nats-creds: %s\n", oneLine(err.Error()))
		return 1
	}
	if *out == "" {
		_, _ = stdout.Write(creds)
		return 0
	}
	f, err := os.OpenFile(*out, os.O_WRONLY|os.O_CREATE|os.O_EXCL, 0o600)
	if err == nil {
		_, err = f.Write(creds)
		if cerr := f.Close(); err == nil {
			err = cerr
		}
	}
	if err != nil {
		fmt.Fprintf(stderr, "origin: nats-creds: %s\n", oneLine(err.Error()))
		return 1
	}
	fmt.Fprintf(stdout, "Wrote %s (secret, mode 0600)\n", *out)
	return 0
}

// runNATSConfig is `origin nats-config [--data-dir DIR]`.
func runNATSConfig(_ context.Context, args []string, std *cli.IO) int {
	stdout, stderr := std.Stdout, std.Stderr
	flags := flag.NewFlagSet("origin nats-config", flag.ContinueOnError)
	flags.SetOutput(io.Discard)
	dataDir := flags.String("data-dir", origin.DefaultConfig().DataDir, "the origin's data dir, holding the NATS operator and account keys (created 0600 if missing)")
	if err := flags.Parse(args); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			fmt.Fprintf(stdout, "Usage: origin nats-config [--data-dir DIR]\n\n%s:\n"+
				"the operator JWT, the system account and a MEMORY resolver preloaded with the system and keymesh\n"+
				"accounts (JetStream enabled). Include it in every server's config; then run the origins with\n"+
				"--nats-url and --nats-creds (origin nats-creds --role origin), the edges with --nats-creds\n"+
				"(origin nats-creds --role edge --id ID). It holds public JWTs only, no secret.\n\nFlags:\n  --data-dir\n      %s\n",
				natsConfigSummary, flags.Lookup("data-dir").Usage)
			return 0
		}
		fmt.Fprintf(stderr, "origin: nats-config: %v (see origin nats-config --help)\n", err)
		return 2
	}
	if flags.NArg() > 0 {
		fmt.Fprintln(stderr, "origin: nats-config: takes no arguments (see origin nats-config --help)")
		return 2
	}
	keys, err := natsauth.LoadOrCreate(*dataDir)
	if err == nil {
		var conf string
		if conf, err = keys.Config(); err == nil {
			_, _ = io.WriteString(stdout, conf)
			return 0
		}
	}
	fmt.Fprintf(stderr, "origin: nats-config: %s\n", oneLine(err.Error()))
	return 1
}
