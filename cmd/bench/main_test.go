package main

import (
	"bufio"
	"context"
	"io"
	"net/http"
	"os"
	"os/exec"
	"regexp"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/keymesh/keymesh/internal/testutil"
)

// TestMain lets a test run this binary's main by re-executing the test
// binary with BENCH_TEST_MAIN=1.
func TestMain(m *testing.M) {
	if os.Getenv("BENCH_TEST_MAIN") == "1" {
		main()
		return
	}
	os.Exit(m.Run())
}

func testEnv(ctx context.Context, vars map[string]string) (*env, *testutil.Buffer, *testutil.Buffer) {
	var stdout, stderr testutil.Buffer
	return &env{ctx: ctx, stdout: &stdout, stderr: &stderr, getenv: func(k string) string { return vars[k] }}, &stdout, &stderr
}

func TestUsageErrorsAreOneLine(t *testing.T) {
	tests := []struct {
		name string
		args []string
		env  map[string]string
		want string
	}{
		{"unknown command", []string{"frobnicate"}, nil, `bench: unknown command "frobnicate"`},
		{"flag before command", []string{"--listen", "x"}, nil, "expected a command"},
		{"help for unknown command", []string{"help", "nope"}, nil, "unknown command"},
		{"bad flag", []string{"upstream", "--bogus"}, nil, "bench upstream: flag provided but not defined"},
		{"bad duration", []string{"upstream", "--chunk-interval", "soon"}, nil, "invalid value"},
		{"bad duration from env", []string{"upstream"}, map[string]string{"BENCH_UPSTREAM_CHUNK_INTERVAL": "soon"}, "BENCH_UPSTREAM_CHUNK_INTERVAL"},
		{"non-positive chunks", []string{"upstream", "--stream-chunks", "0"}, nil, "must be positive"},
		{"stray argument", []string{"upstream", "serve"}, nil, "unexpected argument"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			e, stdout, stderr := testEnv(context.Background(), tt.env)
			if code := run(e, tt.args); code != 2 {
				t.Fatalf("exit %d, want 2", code)
			}
			msg := stderr.String()
			if strings.Count(msg, "\n") != 1 || !strings.Contains(msg, tt.want) {
				t.Fatalf("want one line mentioning %q, got %q", tt.want, msg)
			}
			if stdout.String() != "" {
				t.Fatalf("stdout %q", stdout.String())
			}
		})
	}
	// No command at all: usage on stderr, exit 2.
	e, _, stderr := testEnv(context.Background(), nil)
	if code := run(e, nil); code != 2 || !strings.Contains(stderr.String(), "Usage: bench <command>") {
		t.Fatalf("no args: exit %d, stderr %q", code, stderr.String())
	}
}

func TestHelp(t *testing.T) {
	tests := []struct {
		args []string
		want []string
	}{
		{[]string{"--help"}, []string{"Usage: bench <command>", "upstream", "serve a mock"}},
		{[]string{"help"}, []string{"Usage: bench <command>"}},
		{[]string{"upstream", "--help"}, []string{"mock OpenAI-compatible", "--listen", "--chunk-interval", "--stream-chunks", "--model", "BENCH_UPSTREAM_LISTEN", "127.0.0.1:8000"}},
		{[]string{"help", "upstream"}, []string{"--chunk-interval"}},
	}
	for _, tt := range tests {
		t.Run(strings.Join(tt.args, " "), func(t *testing.T) {
			e, stdout, stderr := testEnv(context.Background(), nil)
			if code := run(e, tt.args); code != 0 {
				t.Fatalf("exit %d, stderr %q", code, stderr.String())
			}
			for _, w := range tt.want {
				if !strings.Contains(stdout.String(), w) {
					t.Fatalf("help lacks %q:\n%s", w, stdout.String())
				}
			}
		})
	}
}

var listeningRE = regexp.MustCompile(`url=(http://127\.0\.0\.1:\d+)`)

// waitURL polls the log for the "listening" line and returns the URL in it.
func waitURL(t *testing.T, log func() string) string {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for time.Now().Before(deadline) {
		if m := listeningRE.FindStringSubmatch(log()); m != nil {
			return m[1]
		}
		time.Sleep(10 * time.Millisecond)
	}
	t.Fatalf("no listening line in log:\n%s", log())
	return ""
}

func TestUpstreamRunsUntilCancelled(t *testing.T) {
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	e, _, stderr := testEnv(ctx, map[string]string{"BENCH_UPSTREAM_MODEL": "env-model"})
	codec := make(chan int, 1)
	go func() { codec <- run(e, []string{"upstream", "--listen", "127.0.0.1:0", "--stream-chunks", "2"}) }()
	url := waitURL(t, stderr.String)

	resp, err := http.Get(url + "/v1/models")
	if err != nil {
		t.Fatal(err)
	}
	body, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if resp.StatusCode != http.StatusOK || !strings.Contains(string(body), `"id":"env-model"`) {
		t.Fatalf("models: %d %s", resp.StatusCode, body)
	}
	resp, err = http.Post(url+"/v1/chat/completions", "application/json", strings.NewReader(`{"stream": true}`))
	if err != nil {
		t.Fatal(err)
	}
	body, _ = io.ReadAll(resp.Body)
	resp.Body.Close()
	if n := strings.Count(string(body), "data: {"); n != 2 || !strings.HasSuffix(string(body), "data: [DONE]\n\n") {
		t.Fatalf("stream with --stream-chunks 2:\n%s", body)
	}

	cancel()
	select {
	case code := <-codec:
		if code != 0 {
			t.Fatalf("exit %d after cancel; log:\n%s", code, stderr.String())
		}
	case <-time.After(10 * time.Second):
		t.Fatal("did not stop after cancel")
	}
	if _, err := http.Get(url + "/health"); err == nil {
		t.Fatal("still serving after stop")
	}
}

func TestListenErrorExits1(t *testing.T) {
	e, _, stderr := testEnv(context.Background(), nil)
	if code := run(e, []string{"upstream", "--listen", "256.0.0.1:bad"}); code != 1 {
		t.Fatalf("exit %d", code)
	}
	if msg := stderr.String(); strings.Count(msg, "\n") != 1 || !strings.HasPrefix(msg, "bench upstream: listening on") {
		t.Fatalf("stderr %q", msg)
	}
}

// The real binary: SIGTERM (and SIGINT) drain and exit 0.
func TestSignalsStopGracefully(t *testing.T) {
	exe, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	for _, sig := range []syscall.Signal{syscall.SIGTERM, syscall.SIGINT} {
		t.Run(sig.String(), func(t *testing.T) {
			cmd := exec.Command(exe, "upstream", "--listen", "127.0.0.1:0", "--chunk-interval", "30ms", "--stream-chunks", "4")
			cmd.Env = append(os.Environ(), "BENCH_TEST_MAIN=1")
			var stderr testutil.Buffer
			cmd.Stderr = &stderr
			if err := cmd.Start(); err != nil {
				t.Fatal(err)
			}
			defer func() { _ = cmd.Process.Kill() }()
			url := waitURL(t, stderr.String)

			// A stream in flight when the signal arrives still completes.
			resp, err := http.Post(url+"/v1/chat/completions", "application/json", strings.NewReader(`{"stream": true}`))
			if err != nil {
				t.Fatal(err)
			}
			defer resp.Body.Close()
			br := bufio.NewReader(resp.Body)
			if line, err := br.ReadString('\n'); err != nil || !strings.HasPrefix(line, "data: {") {
				t.Fatalf("first line %q, %v", line, err)
			}
			if err := cmd.Process.Signal(sig); err != nil {
				t.Fatal(err)
			}
			rest, err := io.ReadAll(br)
			if err != nil || !strings.HasSuffix(string(rest), "data: [DONE]\n\n") || strings.Count(string(rest), "data: {") != 3 {
				t.Fatalf("stream cut by %v: %v\n%s", sig, err, rest)
			}
			if err := cmd.Wait(); err != nil {
				t.Fatalf("exit after %v: %v; log:\n%s", sig, err, stderr.String())
			}
			if !strings.Contains(stderr.String(), "shutting down") {
				t.Fatalf("log:\n%s", stderr.String())
			}
		})
	}
}
