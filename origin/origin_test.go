package origin

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io/fs"
	"log/slog"
	"net"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/keymesh/keymesh/api"
	"github.com/keymesh/keymesh/event"
	"github.com/keymesh/keymesh/internal/testutil"
)

type keyResp struct {
	ID          string           `json:"id"`
	Project     string           `json:"project"`
	Name        string           `json:"name"`
	Prefix      string           `json:"prefix"`
	Permissions []string         `json:"permissions"`
	Deployments []string         `json:"deployments"`
	ExpiresAt   *time.Time       `json:"expires_at"`
	RateLimit   *event.RateLimit `json:"rate_limit"`
	Disabled    bool             `json:"disabled"`
	Revision    uint64           `json:"revision"`
	Key         *string          `json:"key"`
}

type depResp struct {
	ID               string              `json:"id"`
	Name             string              `json:"name"`
	Upstreams        map[string][]string `json:"upstreams"`
	AuthEnabled      bool                `json:"auth_enabled"`
	InvalidKeyStatus int                 `json:"invalid_key_status"`
	UpstreamAuth     *event.UpstreamAuth `json:"upstream_auth"`
	PathPrefix       string              `json:"path_prefix"`
	MaxBodyBytes     int64               `json:"max_body_bytes"`
	MaxPromptChars   int                 `json:"max_prompt_chars"`
	Revision         uint64              `json:"revision"`
}

var chatDep = map[string]any{"name": "chat", "hosts": []string{"chat.example.com"}, "upstreams": map[string][]string{"*": {"http://127.0.0.1:9000"}}}

func TestStartupFilesAndLogin(t *testing.T) {
	dir := t.TempDir()
	s := startServer(t, testConfig(dir))
	c := newClient(t, s)

	for _, f := range []string{"signing.key", "jwt.key"} {
		st, err := os.Stat(filepath.Join(dir, f))
		if err != nil || st.Mode().Perm() != 0o600 {
			t.Errorf("%s: %v mode %v, want 0600", f, err, st.Mode().Perm())
		}
	}
	pub, err := event.ParsePublicKey("@" + filepath.Join(dir, "signing.pub"))
	if err != nil || !pub.Equal(s.PublicKey()) {
		t.Fatalf("signing.pub does not hold the public key: %v", err)
	}
	var sk struct {
		PublicKey string `json:"public_key"`
	}
	c.must(200, "GET", "/v1/signing-key", nil, &sk)
	if sk.PublicKey != event.EncodePublicKey(s.PublicKey()) {
		t.Errorf("signing-key endpoint: %q", sk.PublicKey)
	}

	anon := &client{t: t, base: c.base}
	var e apiErr
	st, b := anon.do("POST", "/v1/auth/login", map[string]string{"username": "admin", "password": "wrong"})
	if st != 401 {
		t.Fatalf("wrong password: %d", st)
	}
	mustJSON(t, b, &e)
	if e.Error.Code != "AUTHENTICATION_FAILED" {
		t.Errorf("wrong password code %q", e.Error.Code)
	}
	if st, _ := anon.do("POST", "/v1/auth/login", map[string]string{"username": "nobody", "password": "x"}); st != 401 {
		t.Errorf("unknown user: %d", st)
	}
	if st, _ := anon.do("GET", "/v1/projects/default/keys", nil); st != 401 {
		t.Errorf("no token: %d", st)
	}
	bad := &client{t: t, base: c.base, token: c.token + "x"}
	if st, _ := bad.do("GET", "/v1/projects/default/keys", nil); st != 401 {
		t.Errorf("bad token: %d", st)
	}
	if st, _ := c.do("GET", "/v1/projects/default/keys", nil); st != 200 {
		t.Errorf("with token: %d", st)
	}
	if st, _ := c.do("GET", "/v1/projects/nope/keys", nil); st != 404 {
		t.Errorf("unknown project: %d", st)
	}
	if st, _ := c.do("GET", "/v1/nothing", nil); st != 404 {
		t.Errorf("unknown path: %d", st)
	}
	if st, _ := anon.do("GET", "/health", nil); st != 200 {
		t.Errorf("health: %d", st)
	}

	// Projects: create, conflict, list.
	var p struct{ ID, Name string }
	c.must(201, "POST", "/v1/projects", map[string]string{"name": "team-a"}, &p)
	if p.Name != "team-a" || p.ID == "" {
		t.Errorf("project %+v", p)
	}
	if st, _ := c.do("POST", "/v1/projects", map[string]string{"name": "team-a"}); st != 409 {
		t.Errorf("duplicate project: %d", st)
	}
	c.must(201, "POST", "/v1/projects/"+p.ID+"/deployments", chatDep, nil) // by id
	c.must(201, "POST", "/v1/projects/team-a/keys", map[string]any{}, nil) // by name
}

func TestRandomAdminPassword(t *testing.T) {
	dir := t.TempDir()
	cfg := testConfig(dir)
	cfg.AdminPassword = ""
	s := startServer(t, cfg)
	b, err := os.ReadFile(filepath.Join(dir, "admin-password"))
	if err != nil {
		t.Fatal(err)
	}
	if st, _ := os.Stat(filepath.Join(dir, "admin-password")); st.Mode().Perm() != 0o600 {
		t.Errorf("admin-password mode %v", st.Mode().Perm())
	}
	c := &client{t: t, base: "http://" + s.Addr()}
	c.must(200, "POST", "/v1/auth/login", map[string]string{"username": "admin", "password": strings.TrimSpace(string(b))}, nil)
}

func TestSecretNeverStoredOrLogged(t *testing.T) {
	dir := t.TempDir()
	var logs testutil.Buffer
	cfg := testConfig(dir)
	cfg.Logger = slog.New(slog.NewTextHandler(&logs, &slog.HandlerOptions{Level: slog.LevelDebug}))
	s := startServer(t, cfg)
	c := newClient(t, s)
	anon := &client{t: t, base: c.base}
	anon.do("POST", "/v1/auth/login", map[string]string{"username": "admin", "password": "wrong-password-123"})
	var k keyResp
	c.must(201, "POST", "/v1/projects/default/keys", map[string]any{"name": "x"}, &k)
	var r keyResp
	c.must(200, "POST", "/v1/projects/default/keys/"+k.ID+"/rotate", map[string]any{"grace_seconds": 60}, &r)
	streamRecords(t, s, 2)
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if err := s.Shutdown(ctx); err != nil {
		t.Fatal(err)
	}
	secrets := [][]byte{[]byte(*k.Key), []byte(*r.Key), []byte(testPassword)}
	for _, sec := range append(secrets, []byte(c.token), []byte("wrong-password-123")) {
		if bytes.Contains(logs.Bytes(), sec) {
			t.Errorf("logs contain a secret: %s", logs.Bytes())
		}
	}
	if logs.Len() == 0 {
		t.Error("no logs captured")
	}
	err := filepath.WalkDir(dir, func(path string, d fs.DirEntry, err error) error {
		if err != nil || d.IsDir() {
			return err
		}
		b, err := os.ReadFile(path)
		if err != nil {
			return err
		}
		for _, sec := range secrets {
			if bytes.Contains(b, sec) {
				t.Errorf("%s contains a secret", path)
			}
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
}

// The NATS URL may carry credentials (nats://user:pass@host or a token as
// nats://token@host): they are never logged, nor echoed in the error of a
// URL that does not parse.
func TestNATSCredentialsNeverLogged(t *testing.T) {
	ns := startExternalNATS(t, t.TempDir(), -1) // no auth: it ignores what clients send
	hostPort := strings.TrimPrefix(ns.url, "nats://")
	var logs testutil.Buffer
	cfg := testConfig(t.TempDir())
	cfg.NATSURL = "nats://keymesh:s3cr3t-nats-pw@" + hostPort + ",nats://t0ken-nats-secret@" + hostPort
	cfg.Logger = slog.New(slog.NewTextHandler(&logs, &slog.HandlerOptions{Level: slog.LevelDebug}))
	s := startServer(t, cfg)
	newClient(t, s).must(201, "POST", "/v1/projects/default/deployments", chatDep, nil)
	streamRecords(t, s, 1)
	ns.stop() // disconnect and reconnect attempts log too
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	_ = s.Shutdown(ctx)
	out := logs.Bytes()
	if !bytes.Contains(out, []byte("origin started")) || !bytes.Contains(out, []byte("keymesh:REDACTED@"+hostPort)) {
		t.Fatalf("startup log does not name the redacted URL:\n%s", out)
	}
	for _, secret := range []string{"s3cr3t-nats-pw", "t0ken-nats-secret"} {
		if bytes.Contains(out, []byte(secret)) {
			t.Fatalf("logs contain the NATS credential %q:\n%s", secret, out)
		}
	}

	bad := testConfig(t.TempDir())
	bad.NATSURL = "nats://key mesh:s3cr3t-nats-pw@" + hostPort
	_, err := New(bad)
	if err == nil || strings.Contains(err.Error(), "s3cr3t-nats-pw") {
		t.Fatalf("New with an unparseable NATS URL: %v", err)
	}
}

func TestBadInputAnswered400AndNothingStored(t *testing.T) {
	s := startServer(t, testConfig(t.TempDir()))
	c := newClient(t, s)
	var dep depResp
	c.must(201, "POST", "/v1/projects/default/deployments", chatDep, &dep)
	var k keyResp
	c.must(201, "POST", "/v1/projects/default/keys", map[string]any{}, &k)
	rev := s.Revision()

	keys := "/v1/projects/default/keys"
	deps := "/v1/projects/default/deployments"
	cases := []struct {
		name, method, path string
		body               any
		status             int
		field              string
	}{
		{"malformed json", "POST", keys, `{"name":`, 400, ""},
		{"not an object", "POST", keys, `[1,2]`, 400, ""},
		{"trailing data", "POST", keys, `{} {}`, 400, ""},
		{"unknown field", "POST", keys, `{"nmae":"x"}`, 400, "nmae"},
		{"wrong type name", "POST", keys, `{"name":5}`, 400, "name"},
		{"wrong type permissions", "POST", keys, `{"permissions":"run_inference"}`, 400, "permissions"},
		{"unknown permission", "POST", keys, `{"permissions":["run_inference","fly"]}`, 400, "permissions"},
		{"bad expires_at", "POST", keys, `{"expires_at":"tomorrow"}`, 400, "expires_at"},
		{"past expires_at", "POST", keys, `{"expires_at":"2001-01-01"}`, 400, "expires_at"},
		{"both expiries", "POST", keys, `{"expires_at":"2099-01-01","expires_in_days":3}`, 400, "expires_in_days"},
		{"bad days", "POST", keys, `{"expires_in_days":0}`, 400, "expires_in_days"},
		{"float days", "POST", keys, `{"expires_in_days":1.5}`, 400, "expires_in_days"},
		{"bad rate limit", "POST", keys, `{"rate_limit":{"requests_per_minute":0}}`, 400, "rate_limit"},
		{"rate limit unknown member", "POST", keys, `{"rate_limit":{"rpm":5}}`, 400, "rate_limit"},
		{"unknown deployment", "POST", keys, `{"deployments":["nope"]}`, 400, "deployments"},
		{"disabled not bool", "PATCH", keys + "/" + k.ID, `{"disabled":"yes"}`, 400, "disabled"},
		{"patch bad expiry", "PATCH", keys + "/" + k.ID, `{"expires_at":"31/12/2099"}`, 400, "expires_at"},
		{"patch unknown deployment", "PATCH", keys + "/" + k.ID, `{"deployments":["nope"]}`, 400, "deployments"},
		{"patch missing key", "PATCH", keys + "/key_nope", `{"disabled":true}`, 404, ""},
		{"invalid_key_status 500", "POST", deps, `{"name":"d2","upstreams":{"*":["http://a:1"]},"invalid_key_status":500}`, 400, "invalid_key_status"},
		{"patch invalid_key_status", "PATCH", deps + "/chat", `{"invalid_key_status":500}`, 400, "invalid_key_status"},
		{"no upstreams", "POST", deps, `{"name":"d2"}`, 400, "upstreams"},
		{"empty upstreams", "POST", deps, `{"name":"d2","upstreams":{}}`, 400, "upstreams"},
		{"bad upstream url", "POST", deps, `{"name":"d2","upstreams":{"*":["ftp://x"]}}`, 400, "upstreams"},
		{"upstream list empty", "POST", deps, `{"name":"d2","upstreams":{"eu":[]}}`, 400, "upstreams"},
		{"bad mode", "POST", deps, `{"name":"d2","upstreams":{"*":["http://a:1"]},"upstream_auth":{"mode":"magic"}}`, 400, "upstream_auth"},
		{"inject without secret", "POST", deps, `{"name":"d2","upstreams":{"*":["http://a:1"]},"upstream_auth":{"mode":"inject"}}`, 400, "upstream_auth"},
		{"bad host", "POST", deps, `{"name":"d2","hosts":["a b"],"upstreams":{"*":["http://a:1"]}}`, 400, "hosts"},
		{"bad path prefix", "POST", deps, `{"name":"d2","path_prefix":"v1","upstreams":{"*":["http://a:1"]}}`, 400, "path_prefix"},
		{"duplicate deployment", "POST", deps, chatDep, 409, ""},
		{"missing deployment", "GET", deps + "/nope", nil, 404, ""},
		{"link missing key", "PUT", deps + "/chat/keys/key_nope", nil, 404, ""},
		{"link missing deployment", "PUT", deps + "/nope/keys/" + k.ID, nil, 404, ""},
		{"bad limit", "GET", keys + "?limit=0", nil, 400, "limit"},
		{"too large", "POST", keys, `{"name":"` + strings.Repeat("a", 2<<20) + `"}`, 413, ""},
		{"bad grace", "POST", keys + "/" + k.ID + "/rotate", `{"grace_seconds":-1}`, 400, "grace_seconds"},
		{"bad wait", "PATCH", keys + "/" + k.ID + "?wait=soon", `{}`, 400, "wait"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			c.t = t
			st, b := c.do(tc.method, tc.path, tc.body)
			if st != tc.status {
				t.Fatalf("status %d, want %d: %s", st, tc.status, b)
			}
			var e apiErr
			mustJSON(t, b, &e)
			if e.Error.Code == "" || e.Error.Type == "" {
				t.Fatalf("error body %s", b)
			}
			if tc.status == 400 && e.Error.Code != "VALIDATION_ERROR" {
				t.Fatalf("code %q", e.Error.Code)
			}
			if tc.field != "" && e.Error.Details["field"] != tc.field {
				t.Fatalf("details %v, want field %q", e.Error.Details, tc.field)
			}
			if s.Revision() != rev {
				t.Fatalf("revision moved to %d", s.Revision())
			}
		})
	}
	c.t = t
	var list struct{ Items []keyResp }
	c.must(200, "GET", keys, nil, &list)
	if len(list.Items) != 1 {
		t.Fatalf("%d keys stored", len(list.Items))
	}
	var got depResp
	c.must(200, "GET", deps+"/chat", nil, &got)
	if got.InvalidKeyStatus != 401 || got.Revision != dep.Revision {
		t.Fatalf("deployment changed: %+v", got)
	}
}

func TestListPagination(t *testing.T) {
	s := startServer(t, testConfig(t.TempDir()))
	c := newClient(t, s)
	var ids []string
	for i := 0; i < 5; i++ {
		var k keyResp
		c.must(201, "POST", "/v1/projects/default/keys", map[string]any{"name": fmt.Sprint("k", i)}, &k)
		ids = append(ids, k.ID)
	}
	var seen []string
	cursor := ""
	for pages := 0; ; pages++ {
		var page struct {
			Items      []keyResp
			NextCursor *string `json:"next_cursor"`
		}
		path := "/v1/projects/default/keys?limit=2"
		if cursor != "" {
			path += "&cursor=" + cursor
		}
		c.must(200, "GET", path, nil, &page)
		for _, it := range page.Items {
			seen = append(seen, it.ID)
		}
		if page.NextCursor == nil {
			break
		}
		cursor = *page.NextCursor
		if pages > 5 {
			t.Fatal("pagination does not end")
		}
	}
	slices.Sort(ids)
	if !slices.Equal(seen, ids) {
		t.Fatalf("paged %v, want %v", seen, ids)
	}
}

// POST /projects answers the store's revision (on a replica too, where the
// local one lags) and validates ?wait like every mutation.
func TestCreateProjectRevisionAndWait(t *testing.T) {
	check := func(t *testing.T, a, b *Server) {
		ca, cb := newClient(t, a), newClient(t, b)
		ca.must(201, "POST", "/v1/projects/default/deployments", chatDep, nil)
		ca.must(201, "POST", "/v1/projects/default/keys", map[string]any{}, nil) // revision 2, committed through a
		st, body, h := cb.doH("POST", "/v1/projects", map[string]any{"name": "p1"}, nil)
		var p struct {
			ID          string
			Revision    uint64
			Propagation *api.Propagation
		}
		if st != 201 {
			t.Fatalf("create project: %d %s", st, body)
		}
		mustJSON(t, body, &p)
		if p.Revision != 2 || h.Get("X-Revision") != "2" || p.Propagation != nil {
			t.Fatalf("project created at revision 2 answered %+v, X-Revision %q", p, h.Get("X-Revision"))
		}
		st, body = cb.do("POST", "/v1/projects?wait=bogus", map[string]any{"name": "p2"})
		wantError(t, "wait=bogus", st, body, 400, "VALIDATION_ERROR")
		var e apiErr
		mustJSON(t, body, &e)
		if e.Error.Details["field"] != "wait" {
			t.Fatalf("details %v", e.Error.Details)
		}
		var ps struct{ Items []api.Project }
		cb.must(200, "GET", "/v1/projects", nil, &ps)
		if len(ps.Items) != 2 {
			t.Fatalf("a refused create stored a project: %+v", ps.Items)
		}
		cb.must(201, "POST", "/v1/projects?wait=50ms", map[string]any{"name": "p2"}, &p)
		if p.Propagation == nil || p.Propagation.Applied == nil || p.Propagation.Pending == nil || p.Revision != 2 {
			t.Fatalf("with ?wait: %+v", p)
		}
	}
	t.Run("sqlite", func(t *testing.T) {
		s := startServer(t, testConfig(t.TempDir()))
		check(t, s, s)
	})
	t.Run("postgres replicas", func(t *testing.T) {
		cfg := testConfig(t.TempDir())
		cfg.Store = postgresDSN(t)
		a := startServer(t, cfg)
		check(t, a, startReplica(t, a))
	})
}

func TestRestartKeepsStateAndKey(t *testing.T) {
	dir := t.TempDir()
	s1, err := New(testConfig(dir))
	if err != nil {
		t.Fatal(err)
	}
	if err := s1.Start(); err != nil {
		t.Fatal(err)
	}
	c := newClient(t, s1)
	c.must(201, "POST", "/v1/projects/default/deployments", chatDep, nil)
	pub := s1.PublicKey()
	if err := s1.Shutdown(context.Background()); err != nil {
		t.Fatal(err)
	}
	if err := s1.Shutdown(context.Background()); err != nil {
		t.Fatalf("second Shutdown: %v", err)
	}
	s2 := startServer(t, testConfig(dir))
	if !s2.PublicKey().Equal(pub) || s2.Revision() != 1 {
		t.Fatalf("restart: key kept %v, revision %d", s2.PublicKey().Equal(pub), s2.Revision())
	}
	c2 := newClient(t, s2) // old password still works; token key kept
	var d depResp
	c2.must(201, "POST", "/v1/projects/default/deployments", map[string]any{"name": "two", "upstreams": map[string][]string{"*": {"http://x:1"}}}, &d)
	if d.Revision != 2 {
		t.Fatalf("revision after restart %d", d.Revision)
	}
	c.base = c2.base
	c.must(200, "GET", "/v1/projects/default/deployments/two", nil, nil) // token from before the restart
}

func TestMetricsAndHealth(t *testing.T) {
	s := startServer(t, testConfig(t.TempDir()))
	c := &client{t: t, base: "http://" + s.Addr()}
	var h map[string]any
	c.must(200, "GET", "/health", nil, &h)
	if h["status"] != "ok" {
		t.Fatalf("health %v", h)
	}
	st, b := c.do("GET", "/metrics", nil)
	if st != 200 || !bytes.Contains(b, []byte("keymesh_origin_revision 0")) {
		t.Fatalf("metrics %d %s", st, b)
	}
	var x json.RawMessage
	_ = x
}

func TestListProjectsAndDeployments(t *testing.T) {
	s := startServer(t, testConfig(t.TempDir()))
	c := newClient(t, s)
	c.must(201, "POST", "/v1/projects/default/deployments", chatDep, nil)
	var ps struct{ Items []api.Project }
	c.must(200, "GET", "/v1/projects", nil, &ps)
	if len(ps.Items) != 1 || ps.Items[0].Name != "default" {
		t.Fatalf("projects %+v", ps)
	}
	var ds struct{ Items []depResp }
	c.must(200, "GET", "/v1/projects/default/deployments", nil, &ds)
	if len(ds.Items) != 1 || ds.Items[0].Name != "chat" {
		t.Fatalf("deployments %+v", ds)
	}
	var edges []any
	c.must(200, "GET", "/v1/edges", nil, &edges)
	if edges == nil || len(edges) != 0 {
		t.Fatalf("edges %v", edges)
	}
}

func TestStartsWhileExternalNATSIsDown(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	port := ln.Addr().(*net.TCPAddr).Port
	ln.Close()
	cfg := testConfig(t.TempDir())
	cfg.NATSURL = fmt.Sprintf("nats://127.0.0.1:%d", port)
	s := startServer(t, cfg)
	c := newClient(t, s)
	c.must(201, "POST", "/v1/projects/default/deployments", chatDep, nil)
	startExternalNATS(t, t.TempDir(), port)
	waitFor(t, "publisher to publish after NATS came up", func() bool { return s.PublishedRevision() == 1 })
	streamRecords(t, s, 1)
	// The lookup responders were subscribed on reconnect.
	r := requestV(t, connect(t, s), event.SnapshotSubject, nil, s)
	if r.Kind != event.KindSnapshot || len(r.Deployments) != 1 {
		t.Fatalf("snapshot %+v", r)
	}
}
