package bench

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"math"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"time"
)

// The fair comparison's load generator: wrk (C, Debian's package,
// scripts/wrk.sh installs it), one thread, a fixed number of connections,
// POSTing the load's chat body with one key, its results read from a Lua
// done() hook rather than from its human-readable summary.

// ErrNoWrk is returned by FindWrk when wrk is not installed.
var ErrNoWrk = errors.New("wrk not found: run scripts/wrk.sh as root (make bench-deps installs the Debian package wrk)")

// FindWrk returns the wrk binary to use (bin, else wrk on PATH).
func FindWrk(bin string) (string, error) {
	if bin == "" {
		bin = "wrk"
	}
	p, err := exec.LookPath(bin)
	if err != nil {
		return "", ErrNoWrk
	}
	return p, nil
}

// GenResult is one closed-loop run of a load generator.
type GenResult struct {
	Requests int64   `json:"requests"`
	Seconds  float64 `json:"seconds"`
	// Errors are failed requests: connect, read, write, timeouts and
	// answers of status 400 or above.
	Errors int64   `json:"errors"`
	RPS    float64 `json:"rps"`
	P50    float64 `json:"p50_ms"`
	P90    float64 `json:"p90_ms"`
	P99    float64 `json:"p99_ms"`
	P999   float64 `json:"p99_9_ms"`
	Max    float64 `json:"max_ms"`
}

// WrkConfig is one wrk run.
type WrkConfig struct {
	Binary string // FindWrk's
	// CPU, if set, is the taskset list wrk runs on.
	CPU         string
	URL         string // the full URL (path included)
	Key         string // sent as X-API-Key
	Connections int
	Threads     int           // default 1
	Duration    time.Duration // rounded up to whole seconds (wrk's unit), at least 1s
}

// wrkKey is what a key may look like to go into the Lua script verbatim.
var wrkKey = regexp.MustCompile(`^[A-Za-z0-9_\-]*$`)

// wrkScript POSTs the chat body with the key and prints, when wrk is done,
// one line the harness parses (latencies in µs).
const wrkScript = `wrk.method = "POST"
wrk.body = '%s'
wrk.headers["Content-Type"] = "application/json"
wrk.headers["X-API-Key"] = "%s"
done = function(summary, latency, requests)
  local e = summary.errors
  io.write(string.format("KMBENCH %%.0f %%.0f %%.0f %%.0f %%.0f %%.0f %%.0f %%.0f %%.0f %%.0f %%.0f %%.0f\n",
    summary.requests, summary.duration, e.connect, e.read, e.write, e.status, e.timeout,
    latency:percentile(50), latency:percentile(90), latency:percentile(99), latency:percentile(99.9), latency.max))
end
`

// RunWrk runs wrk once and returns what it measured.
func RunWrk(ctx context.Context, cfg WrkConfig) (*GenResult, error) {
	if !wrkKey.MatchString(cfg.Key) {
		return nil, errors.New("wrk: the key holds characters the Lua script cannot take")
	}
	if cfg.Connections <= 0 {
		return nil, errors.New("wrk: connections must be positive")
	}
	cfg.Threads = max(cfg.Threads, 1)
	secs := max(int(math.Ceil(cfg.Duration.Seconds())), 1)
	dir, err := os.MkdirTemp("", "keymesh-bench-wrk-")
	if err != nil {
		return nil, err
	}
	defer os.RemoveAll(dir)
	script := filepath.Join(dir, "chat.lua")
	if err := os.WriteFile(script, fmt.Appendf(nil, wrkScript, loadChatBody, cfg.Key), 0o600); err != nil {
		return nil, err
	}
	args := OnCPU(cfg.CPU, []string{cfg.Binary, "-t", strconv.Itoa(cfg.Threads), "-c", strconv.Itoa(cfg.Connections),
		"-d", strconv.Itoa(secs) + "s", "--timeout", "10s", "-s", script, cfg.URL})
	cmd := exec.CommandContext(ctx, args[0], args[1:]...)
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	if err := cmd.Run(); err != nil {
		return nil, fmt.Errorf("wrk: %v: %s", err, strings.TrimSpace(stderr.String()))
	}
	return parseWrk(stdout.String())
}

// parseWrk reads the KMBENCH line of wrkScript's done().
func parseWrk(out string) (*GenResult, error) {
	for _, l := range strings.Split(out, "\n") {
		rest, ok := strings.CutPrefix(l, "KMBENCH ")
		if !ok {
			continue
		}
		f := strings.Fields(rest)
		if len(f) != 12 {
			return nil, fmt.Errorf("wrk: %d fields in %q", len(f), l)
		}
		v := make([]float64, len(f))
		for i, s := range f {
			x, err := strconv.ParseFloat(s, 64)
			if err != nil {
				return nil, fmt.Errorf("wrk: %q: %v", l, err)
			}
			v[i] = x
		}
		r := &GenResult{Requests: int64(v[0]), Seconds: v[1] / 1e6, Errors: int64(v[2] + v[3] + v[4] + v[5] + v[6]),
			P50: v[7] / 1e3, P90: v[8] / 1e3, P99: v[9] / 1e3, P999: v[10] / 1e3, Max: v[11] / 1e3}
		if r.Seconds > 0 {
			r.RPS = float64(r.Requests) / r.Seconds
		}
		return r, nil
	}
	return nil, fmt.Errorf("wrk printed no result line: %q", strings.TrimSpace(out))
}
