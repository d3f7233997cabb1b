package origin

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/json"
	"fmt"
	"io/fs"
	"log/slog"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/keymesh/keymesh/apikey"
	"github.com/keymesh/keymesh/event"
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

func TestMutationsPublishGapFreeSignedEvents(t *testing.T) {
	s := startServer(t, testConfig(t.TempDir()))
	c := newClient(t, s)

	var dep, dep2 depResp
	c.must(201, "POST", "/v1/projects/default/deployments", chatDep, &dep) // rev 1
	if dep.Revision != 1 || !dep.AuthEnabled || dep.InvalidKeyStatus != 401 || dep.UpstreamAuth.Mode != "none" ||
		dep.PathPrefix != "/" || dep.MaxBodyBytes != 10<<20 || dep.MaxPromptChars != 10000 {
		t.Fatalf("deployment defaults: %+v", dep)
	}
	c.must(201, "POST", "/v1/projects/default/deployments", map[string]any{ // rev 2
		"name": "embed", "path_prefix": "/v1/embeddings", "invalid_key_status": 403,
		"upstreams": map[string][]string{"eu": {"https://gpu-eu:8000"}, "*": {"http://gpu:8000"}},
	}, &dep2)

	var k keyResp
	st, body, hdr := c.doH("POST", "/v1/projects/default/keys", map[string]any{"name": "ci", "deployments": []string{"chat"}}, nil) // rev 3
	if st != 201 {
		t.Fatalf("create key: %d %s", st, body)
	}
	mustJSON(t, body, &k)
	if hdr.Get("X-Revision") != "3" || k.Revision != 3 {
		t.Fatalf("create key revision: header %q body %d", hdr.Get("X-Revision"), k.Revision)
	}
	if k.Key == nil || !slices.Equal(k.Deployments, []string{dep.ID}) || !slices.Equal(k.Permissions, event.DefaultPermissions) {
		t.Fatalf("created key %+v", k)
	}
	hash, err := apikey.ParseString(*k.Key)
	if err != nil || k.Prefix != apikey.Display(*k.Key) {
		t.Fatalf("secret %v, prefix %q", err, k.Prefix)
	}
	var got keyResp
	c.must(200, "GET", "/v1/projects/default/keys/"+k.ID, nil, &got)
	if got.Key != nil {
		t.Fatal("GET returned the secret")
	}
	if st, b := c.do("GET", "/v1/projects/default/keys/"+k.ID, nil); bytes.Contains(b, []byte(*k.Key)) || st != 200 {
		t.Fatal("GET body contains the secret")
	}

	var linked keyResp
	c.must(200, "PUT", "/v1/projects/default/deployments/embed/keys/"+k.ID, nil, &linked) // rev 4
	if linked.Revision != 4 || len(linked.Deployments) != 2 {
		t.Fatalf("link: %+v", linked)
	}
	c.must(200, "DELETE", "/v1/projects/default/deployments/"+dep.ID+"/keys/"+k.ID, nil, &linked) // rev 5
	if !slices.Equal(linked.Deployments, []string{dep2.ID}) {
		t.Fatalf("unlink: %+v", linked)
	}
	var patched keyResp
	c.must(200, "PATCH", "/v1/projects/default/keys/"+k.ID, map[string]any{"disabled": true, "expires_at": "2099-01-02", "rate_limit": map[string]int{"requests_per_minute": 60}}, &patched) // rev 6
	if !patched.Disabled || patched.ExpiresAt == nil || !patched.ExpiresAt.Equal(time.Date(2099, 1, 2, 0, 0, 0, 0, time.UTC)) || patched.RateLimit.RequestsPerMinute != 60 {
		t.Fatalf("patch: %+v", patched)
	}
	var dk struct{ Items []keyResp }
	c.must(200, "GET", "/v1/projects/default/deployments/embed/keys", nil, &dk)
	if len(dk.Items) != 1 || dk.Items[0].ID != k.ID {
		t.Fatalf("deployment keys: %+v", dk)
	}
	c.must(200, "PATCH", "/v1/projects/default/deployments/embed", map[string]any{"auth_enabled": false}, nil) // rev 7
	st, _, hdr = c.doH("DELETE", "/v1/projects/default/deployments/embed", nil, nil)                           // rev 8
	if st != 204 || hdr.Get("X-Revision") != "8" {
		t.Fatalf("delete deployment: %d %q", st, hdr.Get("X-Revision"))
	}
	c.must(200, "GET", "/v1/projects/default/keys/"+k.ID, nil, &got)
	if len(got.Deployments) != 0 {
		t.Fatalf("links survive deployment deletion: %+v", got)
	}
	if st, _ := c.do("DELETE", "/v1/projects/default/keys/"+k.ID, nil); st != 204 { // rev 9
		t.Fatalf("delete key: %d", st)
	}
	if st, _ := c.do("GET", "/v1/projects/default/keys/"+k.ID, nil); st != 404 {
		t.Fatalf("deleted key: %d", st)
	}
	if s.Revision() != 9 {
		t.Fatalf("Revision() = %d", s.Revision())
	}

	recs := streamRecords(t, s, 9)
	kinds := ""
	for _, r := range recs {
		kinds += string(r.Kind)[:1]
	}
	if kinds != "ddkkkkddk" {
		t.Fatalf("event kinds %q", kinds)
	}
	if d := recs[0].Deployment; d.ID != dep.ID || d.Revision != 1 || d.Upstreams["*"][0] != "http://127.0.0.1:9000" {
		t.Errorf("deployment event %+v", d)
	}
	if k3 := recs[2].Key; k3.ID != k.ID || len(k3.Secrets) != 1 || !k3.Secrets[0].Hash.Equal(hash) || !slices.Equal(k3.Deployments, []string{dep.ID}) {
		t.Errorf("create event %+v", k3)
	}
	if k4 := recs[3].Key; !slices.Contains(k4.Deployments, dep2.ID) || !slices.Contains(k4.Deployments, dep.ID) {
		t.Errorf("link event %+v", k4)
	}
	if k5 := recs[4].Key; slices.Contains(k5.Deployments, dep.ID) {
		t.Errorf("unlink event still links: %+v", k5)
	}
	if k6 := recs[5].Key; !k6.Disabled || k6.RateLimit == nil || k6.ExpiresAt == nil {
		t.Errorf("patch event %+v", k6)
	}
	if d := recs[6].Deployment; d.AuthEnabled || d.InvalidKeyStatus != 403 {
		t.Errorf("deployment patch event %+v", d)
	}
	if d := recs[7].Deployment; !d.Deleted || d.ID != dep2.ID {
		t.Errorf("deployment delete event %+v", d)
	}
	if k9 := recs[8].Key; !k9.Deleted || k9.ID != k.ID || !k9.Secrets[0].Hash.Equal(hash) {
		t.Errorf("key delete event %+v", k9)
	}
	waitFor(t, "outbox to be marked published", func() bool { return s.PublishedRevision() == 9 })
}

func TestSecretNeverStoredOrLogged(t *testing.T) {
	dir := t.TempDir()
	var logs syncBuffer
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
	var logs syncBuffer
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

func request(t *testing.T, nc *nats.Conn, subj string, data []byte) *event.Record {
	t.Helper()
	return requestV(t, nc, subj, data, nil)
}

func requestV(t *testing.T, nc *nats.Conn, subj string, data []byte, s *Server) *event.Record {
	t.Helper()
	m, err := nc.Request(subj, data, 5*time.Second)
	if err != nil {
		t.Fatalf("request %s: %v", subj, err)
	}
	if reason := m.Header.Get(event.ErrorHeader); reason != "" {
		t.Fatalf("lookup error: %s", reason)
	}
	v, _ := event.NewVerifier(s.PublicKey())
	r, err := v.Open(m.Data)
	if err != nil {
		t.Fatalf("reply does not verify: %v", err)
	}
	return r
}

func TestLookupResponders(t *testing.T) {
	s := startServer(t, testConfig(t.TempDir()))
	c := newClient(t, s)
	var dep depResp
	c.must(201, "POST", "/v1/projects/default/deployments", chatDep, &dep)
	var k keyResp
	c.must(201, "POST", "/v1/projects/default/keys", map[string]any{"deployments": []string{dep.ID}, "permissions": []string{"run_inference"}}, &k)
	nc := connect(t, s)
	h, _ := apikey.ParseString(*k.Key)

	r := requestV(t, nc, event.LookupKeySubject, h[:], s)
	if r.Kind != event.KindKey || r.Revision != 2 || r.Key.ID != k.ID || !slices.Equal(r.Key.Deployments, []string{dep.ID}) ||
		!slices.Equal(r.Key.Permissions, []string{"run_inference"}) || !r.Key.Secrets[0].Hash.Equal(h) {
		t.Fatalf("lookup: %+v %+v", r, r.Key)
	}
	// The reply's revision is the current one, not the key's.
	c.must(201, "POST", "/v1/projects/default/deployments", map[string]any{"name": "other", "upstreams": map[string][]string{"*": {"http://x:1"}}}, nil)
	if r := requestV(t, nc, event.LookupKeySubject, h[:], s); r.Revision != 3 {
		t.Fatalf("lookup revision %d, want 3", r.Revision)
	}

	unknown := sha256.Sum256([]byte("nope"))
	r = requestV(t, nc, event.LookupKeySubject, unknown[:], s)
	if r.Kind != event.KindKeyNotFound || r.Hash == nil || *r.Hash != apikey.Hash(unknown) || r.Revision != 3 {
		t.Fatalf("unknown hash: %+v", r)
	}

	r = requestV(t, nc, event.SnapshotSubject, nil, s)
	if r.Kind != event.KindSnapshot || r.Revision != 3 || len(r.Deployments) != 2 {
		t.Fatalf("snapshot: %+v", r)
	}

	m, err := nc.Request(event.LookupKeySubject, []byte("short"), 5*time.Second)
	if err != nil || len(m.Data) != 0 || m.Header.Get(event.ErrorHeader) == "" {
		t.Fatalf("bad request: %v %q %v", err, m.Data, m.Header)
	}

	// Rotation: with a grace period the old secret still resolves; with none
	// it is answered as not found.
	var rot keyResp
	c.must(200, "POST", "/v1/projects/default/keys/"+k.ID+"/rotate", map[string]any{"grace_seconds": 3600}, &rot)
	h2, _ := apikey.ParseString(*rot.Key)
	if r := requestV(t, nc, event.LookupKeySubject, h[:], s); r.Kind != event.KindKey || len(r.Key.Secrets) != 2 {
		t.Fatalf("old secret in grace: %+v", r.Key)
	}
	c.must(200, "POST", "/v1/projects/default/keys/"+k.ID+"/rotate", nil, &rot)
	h3, _ := apikey.ParseString(*rot.Key)
	if r := requestV(t, nc, event.LookupKeySubject, h2[:], s); r.Kind != event.KindKeyNotFound {
		t.Fatalf("rotated secret without grace: %+v", r)
	}
	if r := requestV(t, nc, event.LookupKeySubject, h3[:], s); r.Kind != event.KindKey || r.Key.ID != k.ID {
		t.Fatalf("new secret: %+v", r)
	}
	recs := streamRecords(t, s, s.Revision())
	last := recs[len(recs)-1].Key
	for _, sec := range last.Secrets {
		if !sec.Hash.Equal(h3) && (sec.NotAfter == nil || sec.NotAfter.After(time.Now())) {
			t.Fatalf("rotation event keeps an old secret alive: %+v", last.Secrets)
		}
	}
}

func TestAPIKeyAuth(t *testing.T) {
	s := startServer(t, testConfig(t.TempDir()))
	c := newClient(t, s)
	c.must(201, "POST", "/v1/projects", map[string]string{"name": "other"}, nil)
	var admin, plain keyResp
	c.must(201, "POST", "/v1/projects/default/keys", map[string]any{"permissions": []string{"write_config", "run_inference"}}, &admin)
	c.must(201, "POST", "/v1/projects/default/keys", map[string]any{}, &plain)

	kc := &client{t: t, base: c.base}
	st, _, _ := kc.doH("GET", "/v1/projects/default/keys", nil, map[string]string{"X-API-Key": *admin.Key})
	if st != 200 {
		t.Fatalf("X-API-Key with write_config: %d", st)
	}
	kc.token = *admin.Key
	if st, _ := kc.do("GET", "/v1/projects/default/keys", nil); st != 200 {
		t.Fatalf("Bearer key: %d", st)
	}
	if st, _ := kc.do("GET", "/v1/projects/other/keys", nil); st != 403 {
		t.Fatalf("other project: %d", st)
	}
	if st, _ := kc.do("POST", "/v1/projects/default/keys", map[string]any{"permissions": []string{"manage_users"}}); st != 403 {
		t.Fatalf("escalation: %d", st)
	}
	if st, _ := kc.do("POST", "/v1/projects", map[string]string{"name": "x"}); st != 403 {
		t.Fatalf("manage_users needed: %d", st)
	}
	kc.token = *plain.Key
	if st, _ := kc.do("GET", "/v1/projects/default/keys", nil); st != 403 {
		t.Fatalf("key without write_config: %d", st)
	}
	c.must(200, "PATCH", "/v1/projects/default/keys/"+admin.ID, map[string]any{"disabled": true}, nil)
	kc.token = *admin.Key
	if st, _ := kc.do("GET", "/v1/projects/default/keys", nil); st != 401 {
		t.Fatalf("disabled key: %d", st)
	}
}

// A project key holding write_config may manage only keys whose every
// permission it holds itself: rotating a greater key would hand it that
// key's secret, and changing, relinking or deleting one would let it tamper
// with a key it could not have created. Refusals take no revision.
func TestAPIKeyCannotManageMorePrivilegedKeys(t *testing.T) {
	eachStore(t, func(t *testing.T, cfg Config) {
		s := startServer(t, cfg)
		c := newClient(t, s)
		c.must(201, "POST", "/v1/projects/default/deployments", chatDep, nil)
		var wc, big, small keyResp
		c.must(201, "POST", "/v1/projects/default/keys", map[string]any{"name": "wc", "permissions": []string{"write_config"}}, &wc)
		c.must(201, "POST", "/v1/projects/default/keys", map[string]any{"name": "big",
			"permissions": []string{"write_config", "run_inference", "manage_users"}}, &big)
		c.must(201, "POST", "/v1/projects/default/keys", map[string]any{"name": "small", "permissions": []string{}}, &small)
		kc := keyClient(t, s, *wc.Key)
		keys := "/v1/projects/default/keys/"
		rev := s.Revision()
		for _, tc := range []struct {
			what, method, path string
			body               any
		}{
			{"rotate", "POST", keys + big.ID + "/rotate", map[string]any{"grace_seconds": 60}},
			{"patch", "PATCH", keys + big.ID, map[string]any{"disabled": true}},
			{"patch permissions down", "PATCH", keys + big.ID, map[string]any{"permissions": []string{"write_config"}}},
			{"delete", "DELETE", keys + big.ID, nil},
			{"delete with wait", "DELETE", keys + big.ID + "?wait=1s", nil},
			{"link", "PUT", "/v1/projects/default/deployments/chat/keys/" + big.ID, nil},
			{"unlink", "DELETE", "/v1/projects/default/deployments/chat/keys/" + big.ID, nil},
			{"create with the defaults", "POST", "/v1/projects/default/keys", map[string]any{"name": "d"}},
			{"create with null permissions", "POST", "/v1/projects/default/keys", map[string]any{"permissions": nil}},
			{"create project", "POST", "/v1/projects", map[string]any{"name": "mine"}},
		} {
			st, b := kc.do(tc.method, tc.path, tc.body)
			wantError(t, tc.what, st, b, http.StatusForbidden, "PERMISSION_DENIED")
			if bytes.Contains(b, []byte(`"key"`)) || bytes.Contains(b, []byte(apikey.Prefix)) {
				t.Fatalf("%s: refusal carries a secret: %s", tc.what, b)
			}
		}
		if s.Revision() != rev {
			t.Fatalf("refused requests moved the revision from %d to %d", rev, s.Revision())
		}
		// The greater key is untouched: its secret still works, it is enabled.
		var got keyResp
		keyClient(t, s, *big.Key).must(200, "GET", keys+big.ID, nil, &got)
		if got.Disabled || len(got.Permissions) != 3 || got.Prefix != big.Prefix {
			t.Fatalf("greater key changed: %+v", got)
		}
		// Not even a key holding manage_users creates projects.
		st, b := keyClient(t, s, *big.Key).do("POST", "/v1/projects", map[string]any{"name": "mine"})
		wantError(t, "manage_users key creating a project", st, b, http.StatusForbidden, "PERMISSION_DENIED")

		// Keys within its own permissions, itself included, it manages.
		kc.must(201, "POST", "/v1/projects/default/keys", map[string]any{"permissions": []string{"write_config"}}, nil)
		kc.must(200, "PATCH", keys+small.ID, map[string]any{"name": "smaller"}, nil)
		kc.must(200, "PUT", "/v1/projects/default/deployments/chat/keys/"+small.ID, nil, nil)
		var rot keyResp
		kc.must(200, "POST", keys+small.ID+"/rotate", nil, &rot)
		if rot.Key == nil {
			t.Fatal("rotate answered no secret")
		}
		kc.must(200, "POST", keys+wc.ID+"/rotate", map[string]any{"grace_seconds": 60}, nil)
		if st, _ := kc.do("DELETE", keys+small.ID, nil); st != http.StatusNoContent {
			t.Fatalf("delete of a lesser key: %d", st)
		}
		// A user manages every key.
		c.must(200, "POST", keys+big.ID+"/rotate", nil, nil)
	})
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
			Propagation *propagation
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
		var ps struct{ Items []Project }
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

func TestOutboxPublishesAfterRestart(t *testing.T) {
	dir := t.TempDir()
	cfg := testConfig(dir)
	cfg.disablePublisher = true
	s1, err := New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	if err := s1.Start(); err != nil {
		t.Fatal(err)
	}
	c := newClient(t, s1)
	c.must(201, "POST", "/v1/projects/default/deployments", chatDep, nil)
	c.must(201, "POST", "/v1/projects/default/keys", map[string]any{"deployments": []string{"chat"}}, nil)
	if s1.PublishedRevision() != 0 {
		t.Fatalf("published %d with the publisher off", s1.PublishedRevision())
	}
	// Simulate a crash after publishing revision 1 but before marking it,
	// long enough ago that JetStream's duplicate window no longer knows its
	// message id: put it on the stream by hand, without an id.
	nc, err := nats.Connect(s1.NATSURL(), natsAuth(t, s1)...)
	if err != nil {
		t.Fatal(err)
	}
	js, _ := jetstream.New(nc)
	ctx := context.Background()
	if _, err := js.CreateStream(ctx, jetstream.StreamConfig{Name: event.StreamName, Subjects: []string{event.StreamSubjects}, Storage: jetstream.FileStorage}); err != nil {
		t.Fatal(err)
	}
	evs, err := s1.store.unpublished(ctx, 10)
	if err != nil || len(evs) != 2 {
		t.Fatalf("unpublished: %v %d", err, len(evs))
	}
	if _, err := js.PublishMsg(ctx, &nats.Msg{Subject: evs[0].Subject, Data: evs[0].Payload}); err != nil {
		t.Fatal(err)
	}
	nc.Close()
	if err := s1.Shutdown(ctx); err != nil {
		t.Fatal(err)
	}

	s2 := startServer(t, testConfig(dir))
	recs := streamRecords(t, s2, 2) // exactly once each: Msgs == LastSeq == 2
	if recs[1].Kind != event.KindKey {
		t.Fatalf("revision 2 is %s", recs[1].Kind)
	}
	waitFor(t, "both events marked published", func() bool { return s2.PublishedRevision() == 2 })
	c2 := newClient(t, s2)
	c2.must(200, "PATCH", "/v1/projects/default/deployments/chat", map[string]any{"max_prompt_chars": 5}, nil)
	streamRecords(t, s2, 3)
}

func TestOutboxSurvivesNATSOutage(t *testing.T) {
	// An external NATS server the origin connects to by URL.
	nsDir := t.TempDir()
	ns1 := startExternalNATS(t, nsDir, -1)
	port := ns1.port
	cfg := testConfig(t.TempDir())
	cfg.NATSURL = ns1.url
	s := startServer(t, cfg)
	c := newClient(t, s)
	c.must(201, "POST", "/v1/projects/default/deployments", chatDep, nil)
	streamRecords(t, s, 1)

	ns1.stop()
	c.must(201, "POST", "/v1/projects/default/keys", map[string]any{"deployments": []string{"chat"}}, nil)
	c.must(200, "PATCH", "/v1/projects/default/deployments/chat", map[string]any{"auth_enabled": false}, nil)
	if s.PublishedRevision() != 1 {
		t.Fatalf("published %d while NATS is down", s.PublishedRevision())
	}
	startExternalNATS(t, nsDir, port)
	waitFor(t, "publisher to catch up", func() bool { return s.PublishedRevision() == 3 })
	streamRecords(t, s, 3)
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

func TestConcurrentMutationsGapFree(t *testing.T) {
	s := startServer(t, testConfig(t.TempDir()))
	c := newClient(t, s)
	const n = 20
	errs := make(chan error, n)
	for i := 0; i < n; i++ {
		go func(i int) {
			st, b := c.do("POST", "/v1/projects/default/keys", map[string]any{"name": strconv.Itoa(i)})
			if st != 201 {
				errs <- fmt.Errorf("%d: %s", st, b)
				return
			}
			errs <- nil
		}(i)
	}
	for i := 0; i < n; i++ {
		if err := <-errs; err != nil {
			t.Fatal(err)
		}
	}
	recs := streamRecords(t, s, n)
	ids := map[string]bool{}
	for _, r := range recs {
		ids[r.Key.ID] = true
	}
	if len(ids) != n {
		t.Fatalf("%d distinct keys in %d events", len(ids), n)
	}
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

func TestOutboxRepublishesToARecreatedStream(t *testing.T) {
	s := startServer(t, testConfig(t.TempDir()))
	c := newClient(t, s)
	c.must(201, "POST", "/v1/projects/default/deployments", chatDep, nil)
	c.must(201, "POST", "/v1/projects/default/keys", map[string]any{}, nil)
	streamRecords(t, s, 2)
	nc := connect(t, s)
	js, _ := jetstream.New(nc)
	if err := js.DeleteStream(context.Background(), event.StreamName); err != nil {
		t.Fatal(err)
	}
	c.must(201, "POST", "/v1/projects/default/keys", map[string]any{}, nil)
	recs := streamRecords(t, s, 3)
	if recs[0].Kind != event.KindDeployment {
		t.Fatalf("revision 1 is %s", recs[0].Kind)
	}
	waitFor(t, "all marked published", func() bool { return s.PublishedRevision() == 3 })
}

// The stream and the outbox are bounded by StreamMaxAge: the stream has
// that MaxAge, published events older than it leave the store, unpublished
// ones stay, and a stream that lost events the store no longer holds skips
// past them rather than wait for them forever.
func TestStreamAndOutboxBoundedByAge(t *testing.T) {
	eachStore(t, func(t *testing.T, cfg Config) {
		cfg.StreamMaxAge = 48 * time.Hour
		s := startServer(t, cfg)
		c := newClient(t, s)
		c.must(201, "POST", "/v1/projects/default/deployments", chatDep, nil)
		c.must(201, "POST", "/v1/projects/default/keys", map[string]any{}, nil)
		c.must(201, "POST", "/v1/projects/default/keys", map[string]any{}, nil)
		streamRecords(t, s, 3)
		waitFor(t, "all published", func() bool { return s.PublishedRevision() == 3 })
		nc := connect(t, s)
		js, _ := jetstream.New(nc)
		ctx := context.Background()
		st, err := js.Stream(ctx, event.StreamName)
		if err != nil {
			t.Fatal(err)
		}
		if info, err := st.Info(ctx); err != nil || info.Config.MaxAge != 48*time.Hour {
			t.Fatalf("stream MaxAge %v (%v), want 48h", info.Config.MaxAge, err)
		}

		if n, err := s.pruneOutbox(time.Now()); err != nil || n != 0 {
			t.Fatalf("pruned %d fresh events (%v)", n, err)
		}
		// 48 hours after revision 3 was committed, 1 and 2 are past the
		// age and go; 3 is not, and stays. (Unpublished events never go:
		// see the store suite.)
		var created3 string
		if err := s.store.db.QueryRow(`SELECT created_at FROM events WHERE revision = 3`).Scan(&created3); err != nil {
			t.Fatal(err)
		}
		t3, err := parseTS(created3)
		if err != nil {
			t.Fatal(err)
		}
		if n, err := s.pruneOutbox(t3.Add(48 * time.Hour)); err != nil || n != 2 {
			t.Fatalf("pruned %d (%v), want 2", n, err)
		}
		if first, _ := s.store.firstEventRevision(ctx); first != 3 {
			t.Fatalf("oldest event left %d, want 3", first)
		}

		// The stream is lost (e.g. a new NATS cluster): revisions 1 and 2 are
		// gone from the store, so the new stream starts at 3.
		if err := js.DeleteStream(ctx, event.StreamName); err != nil {
			t.Fatal(err)
		}
		c.must(201, "POST", "/v1/projects/default/keys", map[string]any{}, nil) // revision 4
		waitFor(t, "publisher to catch up", func() bool { return s.PublishedRevision() == 4 })
		st, err = js.Stream(ctx, event.StreamName)
		if err != nil {
			t.Fatal(err)
		}
		info, err := st.Info(ctx)
		if err != nil || info.State.FirstSeq != 3 || info.State.LastSeq != 4 || info.State.Msgs != 2 {
			t.Fatalf("recreated stream %+v (%v), want revisions 3 and 4", info.State, err)
		}
	})
}

func TestListProjectsAndDeployments(t *testing.T) {
	s := startServer(t, testConfig(t.TempDir()))
	c := newClient(t, s)
	c.must(201, "POST", "/v1/projects/default/deployments", chatDep, nil)
	var ps struct{ Items []Project }
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
