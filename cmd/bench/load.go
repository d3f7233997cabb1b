package main

import (
	"flag"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"time"

	"github.com/keymesh/keymesh/bench"
)

func init() {
	register("load", "open- or closed-loop load against an edge (or an in-process stack)", runLoad)
}

// defaultOut is where a command writes its report unless --out says.
func defaultOut(name string) string {
	return filepath.Join(os.TempDir(), "keymesh-bench", name+"-"+time.Now().UTC().Format("20060102-150405"))
}

// writeReport writes r and lists the files on stderr.
func writeReport(e *env, r bench.Report) error {
	paths, err := r.Write()
	if err != nil {
		return err
	}
	fmt.Fprintf(e.stderr, "wrote %s\n", strings.Join(paths, ", "))
	return nil
}

// parseMix reads "valid=0.9,unknown=0.05,malformed=0.05,revoked=0".
func parseMix(s string) (bench.KeyMix, error) {
	var m bench.KeyMix
	for part := range strings.SplitSeq(s, ",") {
		part = strings.TrimSpace(part)
		if part == "" {
			continue
		}
		k, v, ok := strings.Cut(part, "=")
		if !ok {
			return m, fmt.Errorf("mix %q: want class=weight", part)
		}
		w, err := strconv.ParseFloat(strings.TrimSpace(v), 64)
		if err != nil || w < 0 {
			return m, fmt.Errorf("mix %q: weight must be a non-negative number", part)
		}
		switch strings.TrimSpace(k) {
		case bench.ClassValid:
			m.Valid = w
		case bench.ClassUnknown:
			m.Unknown = w
		case bench.ClassMalformed:
			m.Malformed = w
		case bench.ClassRevoked:
			m.Revoked = w
		default:
			return m, fmt.Errorf("mix %q: class must be valid, unknown, malformed or revoked", part)
		}
	}
	return m, nil
}

// readKeys reads a comma-separated list, or one key a line from @file.
func readKeys(s string) ([]string, error) {
	if s == "" {
		return nil, nil
	}
	if name, ok := strings.CutPrefix(s, "@"); ok {
		b, err := os.ReadFile(name)
		if err != nil {
			return nil, err
		}
		s = strings.ReplaceAll(string(b), "\n", ",")
	}
	var out []string
	for k := range strings.SplitSeq(s, ",") {
		if k = strings.TrimSpace(k); k != "" {
			out = append(out, k)
		}
	}
	return out, nil
}

func progressOut(e *env, quiet bool) io.Writer {
	if quiet {
		return nil
	}
	return e.stderr
}

func runLoad(e *env, args []string) int {
	fs := flag.NewFlagSet("bench load", flag.ContinueOnError)
	url := fs.String("url", "", "edge base URL; empty starts an in-process origin + edge + mock upstream")
	path := fs.String("path", "/v1/chat/completions", "path requested (POST with a small chat body; /v1/models is a GET)")
	host := fs.String("host", "", "Host header to send")
	duration := fs.Duration("duration", 10*time.Second, "how long to measure")
	rate := fs.Float64("rate", 0, "open loop: requests per second due whatever the answers do (0: closed loop)")
	conc := fs.Int("concurrency", 32, "workers: requests in flight (closed loop) or at most in flight (open loop)")
	keys := fs.String("keys", "", "valid keys, comma-separated or @file (one a line); with --url")
	nkeys := fs.Int("valid-keys", 100, "in-process stack: how many valid keys to create")
	nrevoked := fs.Int("revoked-keys", 4, "in-process stack: keys valid at the start and unlinked --revoke-after into the run")
	revokeAfter := fs.Duration("revoke-after", 0, "when the revoked keys are unlinked (default half of --duration)")
	mixFlag := fs.String("mix", "valid=0.9,unknown=0.04,malformed=0.04,revoked=0.02", "key mix: class=weight for valid, unknown, malformed, revoked")
	unknown := fs.Int("unknown-keys", 1000, "distinct well-formed unknown keys")
	stream := fs.Float64("stream-share", 0.1, "share of requests sent with \"stream\": true (0..1)")
	chunk := fs.Duration("stream-chunk-interval", 5*time.Millisecond, "sent as "+bench.HeaderMockChunkInterval+" (pace of the mock upstream's chunks; 0: not sent)")
	header := fs.String("header", bench.HeaderXAPIKey, "credential header: x-api-key, bearer or both")
	out := fs.String("out", "", "report path without extension (.json, .md, -latency.svg); default under $TMPDIR/keymesh-bench")
	quiet := fs.Bool("quiet", false, "no progress line on stderr")
	inProcess := inProcessFlag(fs)
	about := "bench load sends an open-loop (--rate) or closed-loop (--concurrency) load with a key mix and a share of\n" +
		"streamed requests, and reports throughput, status codes by key class and HDR-histogram latencies\n" +
		"(p50/p90/p99/p99.9) as JSON and Markdown with an SVG plot. Without --url it starts its own stack."
	if code, done := parseFlags(e, fs, about, args); done {
		return code
	}
	mix, err := parseMix(*mixFlag)
	if err != nil {
		fmt.Fprintf(e.stderr, "bench load: %v\n", err)
		return 2
	}
	if *duration <= 0 || *conc <= 0 || *stream < 0 || *stream > 1 || *rate < 0 {
		fmt.Fprintln(e.stderr, "bench load: --duration and --concurrency must be positive, --stream-share in 0..1, --rate >= 0")
		return 2
	}
	mode := "" // how the stack runs, when the bench starts it
	cfg := bench.LoadConfig{
		Name: "load", URL: *url, Path: *path, Host: *host, Duration: *duration, Rate: *rate, Concurrency: *conc,
		Mix: mix, UnknownKeys: *unknown, StreamShare: *stream, StreamChunkInterval: *chunk,
		CredentialHeader: *header, RevokeAfter: *revokeAfter, Progress: progressOut(e, *quiet),
	}
	if *url != "" {
		if cfg.ValidKeys, err = readKeys(*keys); err != nil {
			fmt.Fprintf(e.stderr, "bench load: --keys: %v\n", err)
			return 2
		}
		if mix.Revoked > 0 {
			fmt.Fprintln(e.stderr, "bench load: revoked keys need the in-process stack (no --url); set revoked=0 in --mix")
			return 2
		}
	} else {
		st, err := startStack(e.ctx, stackOpts{edges: 1, binDir: stackBinDir(*inProcess)})
		if err != nil {
			fmt.Fprintf(e.stderr, "bench load: %v\n", err)
			return 1
		}
		defer st.close()
		valid, err := st.keys(e.ctx, max(*nkeys, 1), "load")
		if err != nil {
			fmt.Fprintf(e.stderr, "bench load: %v\n", err)
			return 1
		}
		cfg.URL, cfg.ValidKeys = st.edges[0].url, secrets(valid)
		if mix.Revoked > 0 && *nrevoked > 0 {
			revoked, err := st.keys(e.ctx, *nrevoked, "revoked")
			if err != nil {
				fmt.Fprintf(e.stderr, "bench load: %v\n", err)
				return 1
			}
			cfg.RevokedKeys, cfg.Revoke = secrets(revoked), st.unlinker(revoked)
		} else {
			cfg.Mix.Revoked = 0
		}
		cfg.Name = "keymesh edge"
		mode = st.mode()
	}
	res, err := bench.RunLoad(e.ctx, cfg)
	if err != nil {
		fmt.Fprintf(e.stderr, "bench load: %v\n", err)
		return 1
	}
	base := *out
	if base == "" {
		base = defaultOut("load")
	}
	if mode != "" {
		mode = ".  \nStack: " + mode
	}
	md := "# bench load\n\nMachine: " + bench.DescribeMachine().Markdown() + mode + "\n\n" + bench.LoadMarkdown([]*bench.LoadResult{res}, "latency")
	fmt.Fprint(e.stdout, bench.LoadMarkdown([]*bench.LoadResult{res}, ""))
	if err := writeReport(e, bench.Report{Base: base, JSON: res, Markdown: md,
		Charts: map[string]bench.Chart{"latency": bench.LatencyChart("Latency by percentile", []*bench.LoadResult{res}, nil)}}); err != nil {
		fmt.Fprintf(e.stderr, "bench load: %v\n", err)
		return 1
	}
	return 0
}
