package main

import (
	"bytes"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

func TestFlagErrorsAreOneLine(t *testing.T) {
	missing := filepath.Join(t.TempDir(), "nope.pub")
	bad := filepath.Join(t.TempDir(), "bad.pub")
	if err := os.WriteFile(bad, []byte("not a key"), 0o600); err != nil {
		t.Fatal(err)
	}
	tests := []struct {
		name string
		args []string
		env  map[string]string
		want string
	}{
		{"unknown flag", []string{"--bogus"}, nil, "flag provided but not defined"},
		{"no public key", nil, nil, "--origin-public-key is required"},
		{"unreadable key file", []string{"--origin-public-key", "@" + missing}, nil, "no such file"},
		{"bad key", []string{"--origin-public-key", "@" + bad}, nil, "32 bytes of base64"},
		{"bad duration from env", []string{"--origin-public-key", "x"}, map[string]string{"EDGE_LOOKUP_TIMEOUT": "soon"}, "EDGE_LOOKUP_TIMEOUT"},
		{"stray argument", []string{"serve"}, nil, "unexpected argument"},
		{"negative bound", []string{"--max-upstream-conns", "-1"}, nil, "must be positive"},
		{"bad gossip profile", []string{"--gossip-profile", "fast"}, nil, "--gossip-profile must be wan, lan or local"},
		{"bad partition mode", []string{"--limits-partition", "open"}, nil, "--limits-partition must be share, deny or local"},
		{"zero limits sync", []string{"--limits-sync", "0s"}, nil, "--limits-sync must be positive"},
		{"bad upstream pattern", []string{"--upstream-allow", "10.0.0.0/8,ftp://x"}, nil, "--upstream-allow"},
		{"bad upstream pattern from env", nil, map[string]string{"EDGE_UPSTREAM_ALLOW": "http://x/path"}, "--upstream-allow: upstream policy: \"http://x/path\""},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var stdout, stderr bytes.Buffer
			code := run(tt.args, func(k string) string { return tt.env[k] }, &stdout, &stderr)
			if code == 0 {
				t.Fatal("exit 0 on bad input")
			}
			msg := stderr.String()
			if strings.Count(msg, "\n") != 1 || !strings.Contains(msg, tt.want) || !strings.HasPrefix(msg, "edge: ") {
				t.Fatalf("want one line mentioning %q, got %q", tt.want, msg)
			}
		})
	}
}

func TestHelpListsEveryFlag(t *testing.T) {
	var stdout, stderr bytes.Buffer
	if code := run([]string{"--help"}, func(string) string { return "" }, &stdout, &stderr); code != 0 {
		t.Fatalf("--help exit %d", code)
	}
	for _, f := range []string{"--listen", "--admin-listen", "--nats-url", "--site", "--origin-public-key", "--upstream-allow", "--limits-sync", "--limits-partition", "EDGE_NATS_URL", "--version"} {
		if !strings.Contains(stdout.String(), f) {
			t.Errorf("--help does not mention %s", f)
		}
	}
}
