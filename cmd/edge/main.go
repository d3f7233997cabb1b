// Command edge is keymesh's data plane: a reverse proxy in front of GPU
// inference servers that checks API keys against a cache kept current by
// the origin's signed events. See packages edge (the node) and proxy (its
// request path).
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
	"strings"
	"syscall"
	"time"

	"github.com/keymesh/keymesh/cluster"
	"github.com/keymesh/keymesh/edge"
	"github.com/keymesh/keymesh/event"
	"github.com/keymesh/keymesh/internal/cli"
	"github.com/keymesh/keymesh/internal/redact"
	"github.com/keymesh/keymesh/proxy"
)

func main() {
	os.Exit(run(os.Args[1:], os.Getenv, os.Stdout, os.Stderr))
}

func run(args []string, getenv func(string) string, stdout, stderr io.Writer) int {
	cfg := edge.DefaultConfig()
	fs := flag.NewFlagSet("edge", flag.ContinueOnError)
	fs.StringVar(&cfg.Listen, "listen", cfg.Listen, "the inference-facing proxy address")
	fs.StringVar(&cfg.AdminListen, "admin-listen", cfg.AdminListen, "/metrics (Prometheus), /status, /health and pprof for operators; never expose publicly (empty disables)")
	fs.StringVar(&cfg.NATSURL, "nats-url", cfg.NATSURL, "NATS server URL(s), comma-separated, for events and cache-miss lookups")
	fs.StringVar(&cfg.NATSCreds, "nats-creds", cfg.NATSCreds, "NATS .creds file from origin nats-creds --role edge --id ID (the origin's NATS requires one); it names this edge: --id defaults to it, another --id is refused")
	fs.StringVar(&cfg.ID, "id", cfg.ID, "this edge's id in heartbeats and audit records (default: the one --nats-creds names, else one kept in --data-dir)")
	fs.StringVar(&cfg.NATSTLSCA, "nats-tls-ca", cfg.NATSTLSCA, "PEM CA file verifying the NATS server's certificate (use a tls:// --nats-url)")
	fs.StringVar(&cfg.NATSTLSCert, "nats-tls-cert", cfg.NATSTLSCert, "PEM client certificate presented to NATS (with --nats-tls-key)")
	fs.StringVar(&cfg.NATSTLSKey, "nats-tls-key", cfg.NATSTLSKey, "PEM private key of --nats-tls-cert")
	fs.StringVar(&cfg.Site, "site", cfg.Site, "this edge's site (region / GPU cluster); selects each deployment's upstream list")
	pub := fs.String("origin-public-key", "", "origin's Ed25519 public key, base64 or @file (required; origin writes it to <data-dir>/signing.pub)")
	fs.StringVar(&cfg.DataDir, "data-dir", cfg.DataDir, "where the applied revision and deployments persist across restarts")
	fs.StringVar(&cfg.SecretsDir, "secrets-dir", cfg.SecretsDir, "directory of upstream credentials for upstream_auth inject, per project: <dir>/<project>/<secret> (env EDGE_SECRET_<PROJECT>__<SECRET> wins); SIGHUP re-reads them")
	upstreamAllow := fs.String("upstream-allow", strings.Join(cfg.UpstreamAllow, ","), `comma-separated upstreams this edge may connect to: CIDRs or IPs (the address connected to), or [http(s)://]host[:port] with host a name or *.domain (the URL's host); empty allows any. Link-local and cloud-metadata addresses are denied unless a prefix inside them is listed; this edge's own listeners always`)
	fs.DurationVar(&cfg.LookupTimeout, "lookup-timeout", cfg.LookupTimeout, "how long a cache-miss lookup may take before the request gets 503")
	fs.Int64Var(&cfg.MaxKeys, "max-keys", cfg.MaxKeys, "most key secrets held in the cache")
	fs.IntVar(&cfg.MaxLookups, "max-lookups", cfg.MaxLookups, "cache-miss lookups in flight at once; past it a miss gets 503 (a flood of new keys costs the origin a bounded load)")
	fs.DurationVar(&cfg.UpstreamIdleTimeout, "upstream-idle-timeout", cfg.UpstreamIdleTimeout, "cut an upstream that sends nothing for this long (a generation that keeps streaming is never cut)")
	fs.DurationVar(&cfg.UpstreamConnectTimeout, "upstream-connect-timeout", cfg.UpstreamConnectTimeout, "how long connecting to an upstream may take before the next one is tried")
	fs.IntVar(&cfg.MaxUpstreamConns, "max-upstream-conns", cfg.MaxUpstreamConns, fmt.Sprintf("connections (requests and streams in flight) per upstream server; past it a request waits %s, then gets 503", cfg.UpstreamPoolWait))
	fs.IntVar(&cfg.MaxRequestBodyBytes, "max-request-body", cfg.MaxRequestBodyBytes, "largest request body in bytes the edge reads, whatever a deployment's max_body_bytes allows (413 beyond)")
	fs.DurationVar(&cfg.MaxStaleness, "max-staleness", cfg.MaxStaleness, "the edge is current while a signed origin heartbeat no older than this names a committed head it has applied; past it, re-validate cached keys before use (restored --data-dir state is as old as its newest signed record)")
	failMode := fs.String("fail-mode", failModeName(cfg.FailOpen), `what a stale edge cannot prove: "closed" answers 503 (a failed re-validation, a peer answer older than --max-staleness, a deployment with auth off), "open-cached" serves what it has`)
	fs.StringVar(&cfg.TLSCert, "tls-cert", cfg.TLSCert, "PEM certificate for HTTPS on --listen (TLS 1.2+); SIGHUP reloads it")
	fs.StringVar(&cfg.TLSKey, "tls-key", cfg.TLSKey, "PEM private key for --tls-cert")
	fs.StringVar(&cfg.TLSClientCA, "tls-client-ca", cfg.TLSClientCA, "PEM CA bundle: require client certificates signed by it (mutual TLS)")
	corsOrigins := fs.String("cors-origins", strings.Join(cfg.CORSAllowedOrigins, ","), `comma-separated origins browsers may call from ("*" for any); empty disables CORS`)
	corsMethods := fs.String("cors-methods", strings.Join(cfg.CORSAllowedMethods, ","), "comma-separated methods allowed in CORS preflights")
	corsHeaders := fs.String("cors-headers", strings.Join(cfg.CORSAllowedHeaders, ","), "comma-separated request headers allowed in CORS preflights")
	fs.StringVar(&cfg.Gossip.Listen, "gossip-listen", cfg.Gossip.Listen, "memberlist bind address for gossip between edges")
	join := fs.String("join", strings.Join(cfg.Gossip.Join, ","), "comma-separated gossip peers (host:port; DNS names allowed); retried until one answers")
	gossipKeys := fs.String("gossip-key", "", "base64 AES key (16/24/32 bytes) or @file encrypting gossip; several comma-separated for rotation, the first encrypts")
	fs.BoolVar(&cfg.Gossip.Insecure, "gossip-insecure", cfg.Gossip.Insecure, "allow plaintext gossip (labs only)")
	fs.StringVar(&cfg.Gossip.Name, "node-name", cfg.Gossip.Name, "unique gossip node name (default hostname-listen)")
	profile := fs.String("gossip-profile", profileName(cfg.Gossip), `gossip timings: "wan" (sites across regions), "lan" (one site), "local" (one machine: tests, labs)`)
	fs.StringVar(&cfg.AuditFile, "audit-file", cfg.AuditFile, "also append audit records to this JSON-lines file")
	fs.Int64Var(&cfg.UsageSpoolBytes, "usage-spool-bytes", cfg.UsageSpoolBytes, "bound in bytes of the usage records waiting for JetStream, spooled in <data-dir>/usage (without --data-dir: in memory, lost with the process); when full, new records are dropped and counted")
	fs.DurationVar(&cfg.LimitsSync, "limits-sync", cfg.LimitsSync, "how often this edge tells the other edges (NATS and gossip) what it admitted against global limits: rate and token limits, quotas, budgets; the Δ of the overshoot bound in docs/design.md")
	fs.StringVar(&cfg.LimitsPartition, "limits-partition", cfg.LimitsPartition, `bounded requests while no other edge's limit report arrives although live edges are known: "share" admits at most this edge's share of each bound (limit / live edges; fail-closed), "deny" refuses them, "local" counts on this edge alone (each edge up to the whole limit)`)
	drain := fs.Duration("drain-timeout", 30*time.Second, "on SIGTERM, how long in-flight requests and streams may finish")

	if cli.PrintVersion(args, "edge", stdout) {
		return 0
	}
	if err := cli.Parse(fs, "EDGE", args, getenv, stdout); err != nil {
		if errors.Is(err, cli.ErrHelp) {
			fmt.Fprintln(stdout, "\nedge --version prints the version, the commit and the Go version it was built with.")
			return 0
		}
		fmt.Fprintf(stderr, "edge: %v\n", err)
		return 2
	}
	if cfg.MaxUpstreamConns <= 0 || cfg.MaxRequestBodyBytes <= 0 || cfg.MaxKeys <= 0 || cfg.MaxLookups <= 0 || cfg.UsageSpoolBytes <= 0 {
		fmt.Fprintln(stderr, "edge: --max-upstream-conns, --max-request-body, --max-keys, --max-lookups and --usage-spool-bytes must be positive")
		return 2
	}
	if cfg.LimitsSync <= 0 {
		fmt.Fprintln(stderr, "edge: --limits-sync must be positive")
		return 2
	}
	switch cfg.LimitsPartition {
	case proxy.LimitPartitionShare, proxy.LimitPartitionDeny, proxy.LimitPartitionLocal:
	default:
		fmt.Fprintf(stderr, "edge: --limits-partition must be share, deny or local, not %q\n", cfg.LimitsPartition)
		return 2
	}
	cfg.UpstreamAllow = splitList(*upstreamAllow)
	if err := proxy.CheckUpstreamAllow(cfg.UpstreamAllow); err != nil {
		fmt.Fprintf(stderr, "edge: --upstream-allow: %v\n", err)
		return 2
	}
	cfg.Gossip.Join = splitList(*join)
	cfg.Gossip.Keys = nil
	for _, k := range splitList(*gossipKeys) {
		key, err := cluster.ParseKey(k)
		if err != nil {
			fmt.Fprintf(stderr, "edge: --gossip-key: %v\n", err)
			return 2
		}
		cfg.Gossip.Keys = append(cfg.Gossip.Keys, key)
	}
	switch *profile {
	case "wan":
		cfg.Gossip.LAN, cfg.Gossip.Local = false, false
	case "lan":
		cfg.Gossip.LAN, cfg.Gossip.Local = true, false
	case "local":
		cfg.Gossip.LAN, cfg.Gossip.Local = false, true
	default:
		fmt.Fprintf(stderr, "edge: --gossip-profile must be wan, lan or local, not %q\n", *profile)
		return 2
	}
	cfg.CORSAllowedOrigins = splitList(*corsOrigins)
	cfg.CORSAllowedMethods = splitList(*corsMethods)
	cfg.CORSAllowedHeaders = splitList(*corsHeaders)
	switch *failMode {
	case "closed":
		cfg.FailOpen = false
	case "open-cached":
		cfg.FailOpen = true
	default:
		fmt.Fprintf(stderr, "edge: --fail-mode must be closed or open-cached, not %q\n", *failMode)
		return 2
	}
	if *pub == "" {
		fmt.Fprintln(stderr, "edge: --origin-public-key is required (base64, or @path to the origin's signing.pub)")
		return 2
	}
	key, err := event.ParsePublicKey(*pub)
	if err != nil {
		fmt.Fprintf(stderr, "edge: --origin-public-key: %v\n", err)
		return 2
	}
	cfg.OriginPublicKey = key
	log := slog.New(slog.NewTextHandler(stderr, nil))
	cfg.Logger = log

	srv, err := edge.New(cfg)
	if err != nil {
		fmt.Fprintf(stderr, "edge: %v\n", err)
		return 1
	}
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGINT, syscall.SIGTERM)
	defer stop()
	errc := make(chan error, 1)
	go func() { errc <- srv.ListenAndServe() }()
	hup := make(chan os.Signal, 1)
	signal.Notify(hup, syscall.SIGHUP)
	defer signal.Stop(hup)
	go func() {
		for range hup {
			srv.ReloadSecrets()
			if err := srv.ReloadTLS(); err != nil {
				log.Error("reloading TLS certificate; keeping the current one", "err", err)
			} else if cfg.TLSCert != "" {
				log.Info("TLS certificate reloaded")
			}
		}
	}()
	log.Info("edge started", "listen", cfg.Listen, "admin", cfg.AdminListen, "site", cfg.Site, "nats", redact.URLs(cfg.NATSURL))

	select {
	case err := <-errc:
		fmt.Fprintf(stderr, "edge: %v\n", err)
		_ = srv.Shutdown(context.Background())
		return 1
	case <-ctx.Done():
	}
	return cli.Drain(log, *drain, srv.Shutdown)
}

// failModeName is --fail-mode's value for FailOpen.
func failModeName(open bool) string {
	if open {
		return "open-cached"
	}
	return "closed"
}

// profileName is --gossip-profile's value for g's timings.
func profileName(g edge.GossipConfig) string {
	switch {
	case g.Local:
		return "local"
	case g.LAN:
		return "lan"
	}
	return "wan"
}

func splitList(s string) []string {
	var out []string
	for _, p := range strings.Split(s, ",") {
		if p = strings.TrimSpace(p); p != "" {
			out = append(out, p)
		}
	}
	return out
}
