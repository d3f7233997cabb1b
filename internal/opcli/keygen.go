package opcli

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"path/filepath"

	"github.com/keymesh/keymesh/event"
	"github.com/keymesh/keymesh/internal/cli"
	"github.com/keymesh/keymesh/origin"
)

const keygenSummary = "Write new signing.key, jwt.key and signing.pub for origin replicas to share; needs no server, never replaces a file"

// runKeygen is `origin keygen --out DIR`: it needs no running origin. Exit
// codes as the CLI's: 0 written, 1 refused or failed, 2 bad input.
func runKeygen(_ context.Context, args []string, std *cli.IO) int {
	stdout, stderr := std.Stdout, std.Stderr
	flags := flag.NewFlagSet("origin keygen", flag.ContinueOnError)
	flags.SetOutput(io.Discard)
	out := flags.String("out", "", "directory to write the keys into (created 0700 if missing); copy its files into every replica's --data-dir")
	if err := flags.Parse(args); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			fmt.Fprintf(stdout, "Usage: origin keygen --out DIR\n\n%s.\nThe public key is printed; edges take it as --origin-public-key.\n\nFlags:\n  --out DIR\n      %s\n",
				keygenSummary, flags.Lookup("out").Usage)
			return 0
		}
		fmt.Fprintf(stderr, "origin: keygen: %v (see origin keygen --help)\n", err)
		return 2
	}
	if *out == "" || flags.NArg() > 0 {
		fmt.Fprintln(stderr, "origin: keygen: takes --out DIR and no arguments (see origin keygen --help)")
		return 2
	}
	pub, err := origin.GenerateKeys(*out)
	if err != nil {
		fmt.Fprintf(stderr, "origin: keygen: %s\n", oneLine(err.Error()))
		return 1
	}
	fmt.Fprintf(stdout, "Wrote %s and %s (secrets, mode 0600) and %s\nPublic key (the edges' --origin-public-key): %s\n",
		filepath.Join(*out, "signing.key"), filepath.Join(*out, "jwt.key"), filepath.Join(*out, "signing.pub"),
		event.EncodePublicKey(pub))
	return 0
}
