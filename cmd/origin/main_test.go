package main

import (
	"bytes"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/keymesh/keymesh/internal/testutil"
)

func noenv(string) string { return "" }

func TestBadFlagExitsWithOneLine(t *testing.T) {
	var out, errb bytes.Buffer
	if code := run([]string{"--no-such-flag"}, noenv, &out, &errb); code == 0 {
		t.Fatal("bad flag exited 0")
	}
	if lines := strings.Split(strings.TrimSpace(errb.String()), "\n"); len(lines) != 1 || !strings.Contains(lines[0], "no-such-flag") {
		t.Fatalf("stderr %q", errb.String())
	}
}

func TestBadEnvExitsWithOneLine(t *testing.T) {
	var out, errb bytes.Buffer
	env := func(k string) string {
		if k == "ORIGIN_TOKEN_TTL" {
			return "soon"
		}
		return ""
	}
	if code := run(nil, env, &out, &errb); code == 0 || strings.Count(strings.TrimSpace(errb.String()), "\n") != 0 ||
		!strings.Contains(errb.String(), "ORIGIN_TOKEN_TTL") {
		t.Fatalf("code %d stderr %q", code, errb.String())
	}
}

func TestHelpListsFlags(t *testing.T) {
	var out, errb bytes.Buffer
	if code := run([]string{"--help"}, noenv, &out, &errb); code != 0 {
		t.Fatalf("--help exited %d", code)
	}
	for _, f := range []string{"--listen", "--data-dir", "--store", "--nats-url", "--nats-listen", "--stream-replicas", "ORIGIN_NATS_URL", "ORIGIN_STREAM_REPLICAS",
		`--audit-retention  [ORIGIN_AUDIT_RETENTION] (default "720h0m0s")`, `--audit-max-rows  [ORIGIN_AUDIT_MAX_ROWS] (default "1000000")`,
		`--stream-max-age  [ORIGIN_STREAM_MAX_AGE] (default "720h0m0s")`,
		`--usage-stream-max-bytes  [ORIGIN_USAGE_STREAM_MAX_BYTES] (default "1073741824")`,
		`--usage-stream-max-age  [ORIGIN_USAGE_STREAM_MAX_AGE] (default "168h0m0s")`,
		`--usage-dedup-retention  [ORIGIN_USAGE_DEDUP_RETENTION] (default "720h0m0s")`} {
		if !strings.Contains(out.String(), f) {
			t.Errorf("--help lacks %s:\n%s", f, out.String())
		}
	}
}

// origin --help is the server's flags, then what the commands are; the
// commands are reachable through the binary's run.
func TestServerHelpNamesCommands(t *testing.T) {
	var out, errb bytes.Buffer
	if code := run([]string{"--help"}, noenv, &out, &errb); code != 0 || !strings.Contains(out.String(), "--listen") ||
		!strings.Contains(out.String(), "operator CLI of a running origin: login, keys") || !strings.Contains(out.String(), "origin keygen --out DIR") {
		t.Fatalf("server --help: %d %s", code, out.String())
	}
	out.Reset()
	if code := run([]string{"help"}, noenv, &out, &errb); code != 0 || !strings.Contains(out.String(), "  keys create [name]") ||
		!strings.Contains(out.String(), "  keygen --out DIR") || !strings.Contains(out.String(), "  nats-creds ") {
		t.Fatalf("help: %d %s", code, out.String())
	}
	out.Reset()
	if code := run([]string{"keys", "create", "--help"}, noenv, &out, &errb); code != 0 || !strings.Contains(out.String(), "Usage: origin keys create") {
		t.Fatalf("keys create --help: %d %s", code, out.String())
	}
	errb.Reset()
	if code := run([]string{"keys", "frobnicate"}, noenv, &out, &errb); code != 2 || !strings.HasPrefix(errb.String(), `origin: unknown command "keys frobnicate"`) {
		t.Fatalf("keys frobnicate: %d %q", code, errb.String())
	}
}

// The audit and stream bounds come from flags or the environment; a value
// the origin cannot use stops it with one line.
func TestRetentionFlags(t *testing.T) {
	for _, tc := range []struct {
		args []string
		env  map[string]string
		want string
	}{
		{[]string{"--audit-retention", "a-while"}, nil, "audit-retention"},
		{nil, map[string]string{"ORIGIN_AUDIT_MAX_ROWS": "many"}, "ORIGIN_AUDIT_MAX_ROWS"},
		{[]string{"--audit-max-rows", "-1"}, nil, "audit retention and row limit must not be negative"},
		{nil, map[string]string{"ORIGIN_AUDIT_RETENTION": "-1h"}, "audit retention and row limit must not be negative"},
		{[]string{"--stream-max-age", "1m"}, nil, "StreamMaxAge must be at least 2m0s"},
		{[]string{"--usage-stream-max-age", "800h"}, nil, "UsageDedupRetention must exceed UsageStreamMaxAge"},
		{nil, map[string]string{"ORIGIN_USAGE_STREAM_MAX_BYTES": "-5"}, "must not be negative"},
	} {
		var out, errb bytes.Buffer
		args := append([]string{"--data-dir", t.TempDir(), "--listen", "127.0.0.1:0", "--nats-listen", "127.0.0.1:-1"}, tc.args...)
		code := run(args, func(k string) string { return tc.env[k] }, &out, &errb)
		if code == 0 || strings.Count(strings.TrimSpace(errb.String()), "\n") != 0 || !strings.Contains(errb.String(), tc.want) {
			t.Errorf("%v %v: code %d stderr %q", tc.args, tc.env, code, errb.String())
		}
	}
}

func TestUnusableDataDirExitsWithOneLine(t *testing.T) {
	file := filepath.Join(t.TempDir(), "file")
	if err := os.WriteFile(file, []byte("x"), 0o600); err != nil {
		t.Fatal(err)
	}
	var out, errb bytes.Buffer
	code := run([]string{"--data-dir", file, "--listen", "127.0.0.1:0", "--nats-listen", "127.0.0.1:-1"}, noenv, &out, &errb)
	if code == 0 {
		t.Fatal("exit 0")
	}
	if lines := strings.Split(strings.TrimSpace(errb.String()), "\n"); len(lines) != 1 || !strings.HasPrefix(lines[0], "origin: ") {
		t.Fatalf("stderr %q", errb.String())
	}
}

func TestSignalShutsDownCleanly(t *testing.T) {
	dir := t.TempDir()
	env := func(k string) string {
		switch k {
		case "ORIGIN_DATA_DIR":
			return dir
		case "ORIGIN_LISTEN":
			return "127.0.0.1:0"
		case "ORIGIN_NATS_LISTEN":
			return "127.0.0.1:-1"
		case "ORIGIN_ADMIN_PASSWORD":
			return "pw-for-test"
		}
		return ""
	}
	var out bytes.Buffer
	errb := &testutil.Buffer{}
	done := make(chan int, 1)
	go func() { done <- run(nil, env, &out, errb) }()
	deadline := time.Now().Add(20 * time.Second)
	for !strings.Contains(errb.String(), "origin started") {
		if time.Now().After(deadline) {
			t.Fatalf("not started: %s", errb.String())
		}
		time.Sleep(10 * time.Millisecond)
	}
	if err := syscall.Kill(os.Getpid(), syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	select {
	case code := <-done:
		if code != 0 {
			t.Fatalf("exit %d: %s", code, errb.String())
		}
	case <-time.After(20 * time.Second):
		t.Fatal("no exit after SIGTERM")
	}
	if strings.Contains(errb.String(), "pw-for-test") {
		t.Fatal("password logged")
	}
}

func TestStreamReplicasOutOfRangeExitsWithOneLine(t *testing.T) {
	for _, c := range []struct {
		args []string
		env  string
	}{{args: []string{"--stream-replicas", "7"}}, {env: "0x"}, {env: "9"}} {
		var out, errb bytes.Buffer
		env := func(k string) string {
			if k == "ORIGIN_STREAM_REPLICAS" {
				return c.env
			}
			return ""
		}
		args := append(c.args, "--data-dir", t.TempDir(), "--listen", "127.0.0.1:0", "--nats-listen", "127.0.0.1:-1")
		code := run(args, env, &out, &errb)
		if code == 0 || strings.Count(strings.TrimSpace(errb.String()), "\n") != 0 || !strings.Contains(strings.ToLower(errb.String()), "replicas") {
			t.Errorf("%v env %q: code %d stderr %q", c.args, c.env, code, errb.String())
		}
	}
}
