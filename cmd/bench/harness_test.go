package main

import (
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/keymesh/keymesh/bench"
)

func TestParseMix(t *testing.T) {
	m, err := parseMix("valid=0.9, unknown=0.05,malformed=0.05,revoked=0")
	if err != nil || m != (bench.KeyMix{Valid: 0.9, Unknown: 0.05, Malformed: 0.05}) {
		t.Fatalf("%+v %v", m, err)
	}
	for _, bad := range []string{"valid", "valid=x", "valid=-1", "stolen=1"} {
		if _, err := parseMix(bad); err == nil {
			t.Errorf("%q: want an error", bad)
		}
	}
}

func TestReadKeys(t *testing.T) {
	f := filepath.Join(t.TempDir(), "keys")
	if err := os.WriteFile(f, []byte("a\n\nb\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	for in, want := range map[string]string{"a, b,": "a|b", "@" + f: "a|b", "": ""} {
		got, err := readKeys(in)
		if err != nil || strings.Join(got, "|") != want {
			t.Errorf("readKeys(%q) = %v, %v", in, got, err)
		}
	}
}

func TestBenchCommandsRejectBadFlags(t *testing.T) {
	for _, args := range [][]string{
		{"load", "--mix", "nonsense"},
		{"load", "--rate", "-1"},
		{"load", "--url", "http://127.0.0.1:1", "--mix", "revoked=1"},
		{"flood", "--duration", "0s"},
		{"propagation", "--edges", "0"},
		{"propagation", "--edges", "2", "--cut-nats", "2"},
		{"propagation", "--cut-nats", "1", "--origin", "http://127.0.0.1:1"},
		{"compare", "--stream-share", "2"},
		{"suite", "--edges", "0"},
		{"freeport", "-n", "0"},
	} {
		e, _, stderr := testEnv(context.Background(), nil)
		if code := run(e, args); code != 2 {
			t.Errorf("%v: exit %d, want 2 (stderr %q)", args, code, stderr.String())
		}
		if n := strings.Count(strings.TrimSpace(stderr.String()), "\n"); n != 0 {
			t.Errorf("%v: want one line, got %q", args, stderr.String())
		}
	}
	for _, name := range []string{"load", "flood", "propagation", "compare", "suite", "freeport", "bareproxy", "rawproxy"} {
		e, stdout, _ := testEnv(context.Background(), nil)
		if code := run(e, []string{name, "--help"}); code != 0 || !strings.Contains(stdout.String(), "bench "+name) {
			t.Errorf("%s --help: exit %d:\n%s", name, code, stdout.String())
		}
	}
}

func TestFreePort(t *testing.T) {
	e, stdout, _ := testEnv(context.Background(), nil)
	if code := run(e, []string{"freeport", "-n", "3"}); code != 0 {
		t.Fatal(code)
	}
	seen := map[string]bool{}
	for _, l := range strings.Fields(stdout.String()) {
		if p, err := strconv.Atoi(l); err != nil || p <= 0 {
			t.Errorf("not a port: %q", l)
		}
		seen[l] = true
	}
	if len(seen) != 3 {
		t.Errorf("want 3 distinct ports: %q", stdout.String())
	}
}

// TestLoadOnInProcessStack runs bench load for a second on its own stack
// (origin with embedded NATS, an edge, the mock upstream) with every key
// class, and checks what each class got.
func TestLoadOnInProcessStack(t *testing.T) {
	out := filepath.Join(t.TempDir(), "load")
	e, stdout, stderr := testEnv(context.Background(), nil)
	code := run(e, []string{"load", "--duration", "1500ms", "--concurrency", "4", "--valid-keys", "3", "--revoked-keys", "2",
		"--revoke-after", "500ms", "--mix", "valid=0.5,unknown=0.2,malformed=0.2,revoked=0.1", "--stream-share", "0.2",
		"--stream-chunk-interval", "1ms", "--unknown-keys", "10", "--out", out})
	if code != 0 {
		t.Fatalf("exit %d: %s", code, stderr.String())
	}
	if !strings.Contains(stdout.String(), "keymesh edge") || !strings.Contains(stderr.String(), "rps") {
		t.Errorf("stdout:\n%s\nstderr:\n%s", stdout.String(), stderr.String())
	}
	var res bench.LoadResult
	b, err := os.ReadFile(out + ".json")
	if err != nil {
		t.Fatal(err)
	}
	if err := json.Unmarshal(b, &res); err != nil {
		t.Fatal(err)
	}
	only := func(class, status string) {
		t.Helper()
		c := res.ByClass[class]
		if c.Requests == 0 || c.Status[status] != c.Requests {
			t.Errorf("%s keys: want every one %s, got %+v", class, status, c)
		}
	}
	only(bench.ClassValid, "200")
	only(bench.ClassUnknown, "401")
	only(bench.ClassMalformed, "401")
	only(bench.ClassRevokedAfter, "401")
	if res.RevokedAt == 0 || res.RevokeErr != "" {
		t.Errorf("revocation: at %v err %q", res.RevokedAt, res.RevokeErr)
	}
	if res.StreamTTFB.Count == 0 {
		t.Error("no stream measured")
	}
	for _, f := range []string{out + ".md", out + "-latency.svg"} {
		if _, err := os.Stat(f); err != nil {
			t.Error(err)
		}
	}
}

// TestFloodAndPropagationOnInProcessStack: malformed keys cause no lookup;
// an unlink and a relink reach two edges.
func TestFloodAndPropagationOnInProcessStack(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	e, _, stderr := testEnv(ctx, nil)
	res, err := floodStack(ctx, e, floodOpts{duration: 400 * time.Millisecond, conc: 4, unknown: 5, quiet: true})
	if err != nil {
		t.Fatalf("%v %s", err, stderr.String())
	}
	if len(res.Phases) != 3 {
		t.Fatalf("%+v", res.Phases)
	}
	mal, unk := res.Phases[0], res.Phases[1]
	if mal.Requests == 0 || mal.Refused != mal.Requests || mal.Lookups != 0 {
		t.Errorf("malformed: %+v", mal)
	}
	if unk.Refused != unk.Requests || unk.Lookups < 1 || unk.Lookups > float64(unk.Requests) {
		t.Errorf("unknown: %+v", unk)
	}

	out := filepath.Join(t.TempDir(), "prop")
	e, stdout, stderr := testEnv(ctx, nil)
	if code := run(e, []string{"propagation", "--edges", "2", "--iterations", "2", "--quiet", "--out", out}); code != 0 {
		t.Fatalf("exit %d: %s", code, stderr.String())
	}
	if !strings.Contains(stdout.String(), "unlink → every edge refuses | 2 |") {
		t.Errorf("stdout:\n%s", stdout.String())
	}
	var pr bench.PropagationResult
	b, err := os.ReadFile(out + ".json")
	if err != nil {
		t.Fatal(err)
	}
	if err := json.Unmarshal(b, &pr); err != nil || pr.Edges != 2 || len(pr.Samples) != 4 || pr.Timeouts != 0 {
		t.Errorf("%v %+v", err, pr)
	}

	// --cut-nats: the gossip path, measured apart.
	e, stdout, stderr = testEnv(ctx, nil)
	if code := run(e, []string{"propagation", "--edges", "3", "--cut-nats", "2", "--iterations", "2", "--quiet", "--out", out}); code != 0 {
		t.Fatalf("--cut-nats: exit %d: %s", code, stderr.String())
	}
	if !strings.Contains(stdout.String(), "unlink, each gossip-only edge | 4 |") {
		t.Errorf("--cut-nats stdout:\n%s", stdout.String())
	}
	if b, err = os.ReadFile(out + ".json"); err != nil {
		t.Fatal(err)
	}
	pr = bench.PropagationResult{}
	if err := json.Unmarshal(b, &pr); err != nil || pr.GossipOnlyEdges != 2 || pr.GossipOnlyPerEdge == nil || pr.Timeouts != 0 {
		t.Errorf("--cut-nats: %v %+v", err, pr)
	}
}

// TestCompare compares direct, keymesh and (when installed) nginx briefly,
// on an in-process stack and on one of separate processes.
func TestCompare(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	_, nerr := bench.FindNginx("")
	for _, mode := range []struct {
		name   string
		binDir func(t *testing.T) string
	}{{"in-process", func(*testing.T) string { return "" }}, {"processes", buildStackBinaries}} {
		t.Run(mode.name, func(t *testing.T) {
			e, _, stderr := testEnv(ctx, nil)
			res, how, err := compareStack(ctx, e, compareOpts{duration: 400 * time.Millisecond, conc: 4, nkeys: 3, stream: 0.2,
				chunk: time.Millisecond, skipNginx: nerr != nil, quiet: true, binDir: mode.binDir(t)})
			if err != nil {
				t.Fatalf("%v %s", err, stderr.String())
			}
			if mode.name == "processes" && !strings.Contains(how, "separate processes") {
				t.Errorf("mode %q", how)
			}
			want := 4 // direct, keymesh, bare fasthttp, nginx
			if nerr != nil {
				want = 3
			}
			if len(res.Runs) != want {
				t.Fatalf("runs: %d, want %d", len(res.Runs), want)
			}
			for _, r := range res.Runs {
				if r.Requests == 0 || r.Status["200"] != r.Requests {
					t.Errorf("%s: %d requests, status %v (%s)", r.Name, r.Requests, r.Status, r.LastError)
				}
			}
		})
	}
}

// TestProcessStackStopsEverything: a process stack leaves no process and
// no directory behind.
func TestProcessStackStopsEverything(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	st, err := startStack(ctx, stackOpts{edges: 2, binDir: buildStackBinaries(t)})
	if err != nil {
		t.Fatal(err)
	}
	if len(st.procs) != 4 || len(st.edges) != 2 {
		t.Fatalf("%d processes, %d edges", len(st.procs), len(st.edges))
	}
	k, err := st.keys(ctx, 1, "procs")
	if err != nil {
		t.Fatal(err)
	}
	for _, e := range st.edges {
		if code := probeKey(t, e.url, k[0].Secret); code != 200 {
			t.Fatalf("%s: %d", e.url, code)
		}
	}
	st.close()
	for _, p := range st.procs {
		select {
		case <-p.done:
		default:
			t.Errorf("%s still running", p.name)
		}
	}
	if _, err := os.Stat(st.dir); !os.IsNotExist(err) {
		t.Errorf("%s left behind: %v", st.dir, err)
	}
}

func probeKey(t *testing.T, edge, key string) int {
	t.Helper()
	req, _ := http.NewRequest(http.MethodGet, edge+"/v1/models", nil)
	req.Header.Set("X-API-Key", key)
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	return resp.StatusCode
}

var stackBinaries struct {
	once sync.Once
	dir  string
	err  error
}

// buildStackBinaries builds origin and edge once per test run, and makes
// this test binary answer `upstream` in child processes (TestMain runs main
// when BENCH_TEST_MAIN=1).
func buildStackBinaries(t *testing.T) string {
	t.Helper()
	stackBinaries.once.Do(func() {
		dir, err := os.MkdirTemp("", "keymesh-bench-bin-")
		if err != nil {
			stackBinaries.err = err
			return
		}
		out, err := exec.Command("go", "build", "-o", dir+"/", "github.com/keymesh/keymesh/cmd/origin", "github.com/keymesh/keymesh/cmd/edge").CombinedOutput()
		if err != nil {
			stackBinaries.err = fmt.Errorf("go build: %v\n%s", err, out)
		}
		stackBinaries.dir = dir
	})
	if stackBinaries.err != nil {
		t.Fatal(stackBinaries.err)
	}
	t.Setenv("BENCH_TEST_MAIN", "1")
	return stackBinaries.dir
}
