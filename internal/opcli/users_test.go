package opcli

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
)

func TestCLIUsersLogoutAndProjectRules(t *testing.T) {
	s := startOrigin(t)
	r, home := newRunner(t, s)
	r.env["ORIGIN_PASSWORD"] = cliPassword
	r.ok("login")

	// A user: created with the password on stdin, never in an argument.
	res := r.run("ops password 1\n", "users", "create", "ops")
	if res.code != 0 || !strings.Contains(res.stdout, "Created admin user ops") || strings.Contains(res.stdout+res.stderr, "ops password") {
		t.Fatalf("users create: %+v", res)
	}
	r.fails(1, "origin: CONFLICT: ", "users", "create", "ops", "--password-file", writeTemp(t, "ops password 1"))
	r.fails(1, "origin: VALIDATION_ERROR: ", "users", "create", "x2", "--password-file", writeTemp(t, "short"))
	out := r.ok("users", "list")
	if !strings.Contains(out, "admin") || !strings.Contains(out, "ops") {
		t.Fatalf("users list:\n%s", out)
	}
	var page struct{ Items []struct{ Username string } }
	r.json(&page, "users", "list")
	if len(page.Items) != 2 {
		t.Fatalf("users list --json: %+v", page)
	}

	// ops logs in, changes their own password (the old one from
	// ORIGIN_PASSWORD), and is logged out by it.
	ops := &cliRunner{t: t, env: map[string]string{"HOME": t.TempDir(), "ORIGIN_SERVER": r.env["ORIGIN_SERVER"],
		"ORIGIN_USERNAME": "ops", "ORIGIN_PASSWORD": "ops password 1"}}
	ops.ok("login")
	ops.env["ORIGIN_NEW_PASSWORD"] = "ops password 2"
	ops.env["ORIGIN_PASSWORD"] = "wrong"
	ops.fails(1, "origin: PERMISSION_DENIED: ", "users", "password", "ops")
	ops.env["ORIGIN_PASSWORD"] = "ops password 1"
	ops.ok("users", "password", "ops")
	ops.fails(1, "origin: AUTHENTICATION_FAILED: ", "users", "list")
	ops.env["ORIGIN_PASSWORD"] = "ops password 2"
	ops.ok("login")
	ops.ok("logout")
	ops.fails(2, "not logged in", "users", "list")

	// A project's policy and quotas.
	out = r.ok("projects", "update", "default", "--allowed-upstreams", "https://*.example.com,10.0.0.0/8", "--max-keys", "50")
	if !strings.Contains(out, "https://*.example.com, 10.0.0.0/8") || !strings.Contains(out, "of 50") {
		t.Fatalf("projects update:\n%s", out)
	}
	r.fails(1, "origin: PERMISSION_DENIED: ", "deployments", "create", "x", "--upstream", "http://127.0.0.1:9")
	out = r.ok("projects", "update", "default", "--default-upstreams", "--max-keys", "0")
	if !strings.Contains(out, "default (any http(s)") || !strings.Contains(out, "of 100000") {
		t.Fatalf("projects update back:\n%s", out)
	}
	r.ok("projects", "get", "default")
	r.fails(2, "nothing to change", "projects", "update", "default")
	r.fails(2, "not both", "projects", "update", "default", "--default-upstreams", "--allowed-upstreams", "10.0.0.0/8")

	// Deleting a user; the last one stays.
	r.ok("users", "delete", "ops")
	r.fails(1, "origin: CONFLICT: ", "users", "delete", "admin")

	// Logout removes the token file and ends the session.
	tokenFile := filepath.Join(home, ".config", "keymesh", "token")
	tok, err := os.ReadFile(tokenFile)
	if err != nil {
		t.Fatal(err)
	}
	r.ok("logout")
	if _, err := os.Stat(tokenFile); !os.IsNotExist(err) {
		t.Fatalf("token file still there: %v", err)
	}
	r.env["ORIGIN_TOKEN"] = strings.TrimSpace(string(tok))
	r.fails(1, "origin: AUTHENTICATION_FAILED: ", "keys", "list")
}

func writeTemp(t *testing.T, content string) string {
	t.Helper()
	p := filepath.Join(t.TempDir(), "f")
	if err := os.WriteFile(p, []byte(content+"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	return p
}
