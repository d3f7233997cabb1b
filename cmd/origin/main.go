// Command origin is keymesh's control plane: the REST admin API, the key and
// deployment store, and the signed event stream edges follow. See package
// origin. With a command, it is the operator CLI instead (package opcli).
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"os"
	"os/signal"
	"syscall"
	"time"

	"github.com/keymesh/keymesh/internal/cli"
	"github.com/keymesh/keymesh/internal/opcli"
	"github.com/keymesh/keymesh/origin"
)

func main() {
	os.Exit(run(os.Args[1:], os.Getenv, os.Stdout, os.Stderr))
}

func run(args []string, getenv func(string) string, stdout, stderr io.Writer) int {
	return cli.Execute(context.Background(), opcli.Root(serve), args, &cli.IO{Stdin: os.Stdin, Stdout: stdout, Stderr: stderr, Getenv: getenv})
}

// serve is origin [flags]: the server, until SIGINT or SIGTERM.
func serve(ctx context.Context, args []string, std *cli.IO) int {
	stdout, stderr, getenv := std.Stdout, std.Stderr, std.Getenv
	cfg := origin.DefaultConfig()
	fs := flag.NewFlagSet("origin", flag.ContinueOnError)
	fs.StringVar(&cfg.Listen, "listen", cfg.Listen, "REST admin API, /health and /metrics address")
	fs.StringVar(&cfg.DataDir, "data-dir", cfg.DataDir, "SQLite store, embedded NATS store, signing key and bootstrap admin password")
	fs.StringVar(&cfg.Store, "store", "", "store URL: sqlite://<path> or postgres://user:pass@host/db (default sqlite://<data-dir>/origin.db)")
	fs.StringVar(&cfg.NATSURL, "nats-url", "", "URL(s) of an external NATS cluster with JetStream (default: start an embedded NATS server)")
	fs.StringVar(&cfg.NATSListen, "nats-listen", cfg.NATSListen, "where the embedded NATS server listens; it always requires credentials (origin nats-creds)")
	fs.StringVar(&cfg.NATSCreds, "nats-creds", "", "NATS .creds file to connect to --nats-url with (origin nats-creds --role origin); the embedded server needs none")
	fs.StringVar(&cfg.NATSTLSCA, "nats-tls-ca", "", "PEM CA file verifying the external NATS server's certificate")
	fs.StringVar(&cfg.NATSTLSCert, "nats-tls-cert", "", "PEM certificate: the client certificate for --nats-url, or the one the embedded NATS serves TLS with (with --nats-tls-key)")
	fs.StringVar(&cfg.NATSTLSKey, "nats-tls-key", "", "PEM private key of --nats-tls-cert")
	fs.IntVar(&cfg.StreamReplicas, "stream-replicas", cfg.StreamReplicas, "JetStream servers holding the event stream, 1-5 (3 on an external cluster of three or more)")
	fs.DurationVar(&cfg.TokenTTL, "token-ttl", cfg.TokenTTL, "lifetime of admin login tokens")
	fs.DurationVar(&cfg.AuditRetention, "audit-retention", cfg.AuditRetention, "how long audit records (edge requests and admin actions) are kept")
	fs.IntVar(&cfg.AuditMaxRows, "audit-max-rows", cfg.AuditMaxRows, "most audit records kept; the oldest beyond are pruned")
	fs.DurationVar(&cfg.StreamMaxAge, "stream-max-age", cfg.StreamMaxAge, "how long events stay in the JetStream stream and published ones in the store's outbox; an edge further behind drops its cache")
	fs.Int64Var(&cfg.UsageStreamMaxBytes, "usage-stream-max-bytes", cfg.UsageStreamMaxBytes, "bytes of usage records the JetStream usage stream holds unread; full, it refuses edges' publishes (they retry)")
	fs.DurationVar(&cfg.UsageStreamMaxAge, "usage-stream-max-age", cfg.UsageStreamMaxAge, "how long a usage record waits unread in the usage stream")
	fs.DurationVar(&cfg.UsageDedupRetention, "usage-dedup-retention", cfg.UsageDedupRetention, "how long a stored usage record's id is kept; older records are refused (more than --usage-stream-max-age)")
	drain := fs.Duration("drain-timeout", 30*time.Second, "on SIGTERM, how long in-flight requests may finish")

	if err := cli.Parse(fs, "ORIGIN", args, getenv, stdout); err != nil {
		if errors.Is(err, cli.ErrHelp) {
			fmt.Fprintln(stdout, "\nThe admin password of the first start comes from ORIGIN_ADMIN_PASSWORD; if unset, a random one is written to <data-dir>/admin-password.")
			fmt.Fprint(stdout, "\n"+opcli.ServerHelp())
			return 0
		}
		fmt.Fprintf(stderr, "origin: %v\n", err)
		return 2
	}
	cfg.AdminPassword = getenv("ORIGIN_ADMIN_PASSWORD")
	log := slog.New(slog.NewTextHandler(stderr, nil))
	cfg.Logger = log

	// Signals are caught from before startup, so an early SIGTERM is a clean
	// stop rather than a kill.
	ctx, stop := signal.NotifyContext(ctx, syscall.SIGINT, syscall.SIGTERM)
	defer stop()
	srv, err := origin.New(cfg)
	if err != nil {
		fmt.Fprintf(stderr, "origin: %v\n", err)
		return 1
	}
	if err := srv.Start(); err != nil {
		fmt.Fprintf(stderr, "origin: %v\n", err)
		return 1
	}
	select {
	case err := <-srv.Err():
		fmt.Fprintf(stderr, "origin: %v\n", err)
		_ = srv.Shutdown(context.Background())
		return 1
	case <-ctx.Done():
	}
	return cli.Drain(log, *drain, srv.Shutdown)
}
