package origin

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"io"
	"log/slog"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"sync"
	"testing"
	"time"

	"github.com/keymesh/keymesh/api"
	"github.com/keymesh/keymesh/internal/natsauth"
	"github.com/keymesh/keymesh/internal/testutil"

	"github.com/nats-io/nats-server/v2/server"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"golang.org/x/crypto/bcrypt"

	"github.com/keymesh/keymesh/event"
)

const testPassword = "correct horse battery staple"

func testConfig(dir string) Config {
	return Config{
		Listen:        "127.0.0.1:0",
		DataDir:       dir,
		NATSListen:    "127.0.0.1:-1",
		AdminPassword: testPassword,
		PasswordCost:  bcrypt.MinCost,
		PollInterval:  50 * time.Millisecond,
		Logger:        slog.New(slog.DiscardHandler),
	}
}

// startServer is the package's one origin starter: New(cfg), Start, and a
// Shutdown when t ends (a test may shut it down earlier: Shutdown is
// idempotent).
func startServer(t testing.TB, cfg Config) *Server {
	t.Helper()
	s, err := New(cfg)
	if err != nil {
		t.Fatalf("New: %v", err)
	}
	if err := s.Start(); err != nil {
		t.Fatalf("Start: %v", err)
	}
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		if err := s.Shutdown(ctx); err != nil {
			t.Errorf("Shutdown: %v", err)
		}
	})
	return s
}

type client struct {
	t     *testing.T
	base  string
	token string
}

func newClient(t *testing.T, s *Server) *client { return newClientWith(t, s, testPassword) }

// newClientWith logs in as admin with password.
func newClientWith(t *testing.T, s *Server, password string) *client {
	c := &client{t: t, base: "http://" + s.Addr()}
	st, body := c.do("POST", "/v1/auth/login", map[string]string{"username": "admin", "password": password})
	if st != 200 {
		t.Fatalf("login: %d %s", st, body)
	}
	var r struct{ Token string }
	mustJSON(t, body, &r)
	c.token = r.Token
	return c
}

// do sends body (a string is sent raw) and returns status and body.
func (c *client) do(method, path string, body any) (int, []byte) {
	st, b, _ := c.doH(method, path, body, nil)
	return st, b
}

func (c *client) doH(method, path string, body any, hdr map[string]string) (int, []byte, http.Header) {
	c.t.Helper()
	var rd io.Reader
	switch b := body.(type) {
	case nil:
	case string:
		rd = bytes.NewBufferString(b)
	default:
		raw, err := json.Marshal(b)
		if err != nil {
			c.t.Fatal(err)
		}
		rd = bytes.NewReader(raw)
	}
	req, err := http.NewRequest(method, c.base+path, rd)
	if err != nil {
		c.t.Fatal(err)
	}
	if c.token != "" {
		req.Header.Set("Authorization", "Bearer "+c.token)
	}
	for k, v := range hdr {
		req.Header.Set(k, v)
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		c.t.Fatalf("%s %s: %v", method, path, err)
	}
	defer resp.Body.Close()
	out, _ := io.ReadAll(resp.Body)
	if resp.StatusCode != http.StatusNoContent && resp.Header.Get("Content-Type") != "application/json" && path != "/metrics" {
		c.t.Errorf("%s %s: Content-Type %q", method, path, resp.Header.Get("Content-Type"))
	}
	return resp.StatusCode, out, resp.Header
}

// must sends and fails the test unless the status is want; it decodes the
// body into out if given.
func (c *client) must(want int, method, path string, body, out any) {
	c.t.Helper()
	st, b := c.do(method, path, body)
	if st != want {
		c.t.Fatalf("%s %s: status %d, want %d: %s", method, path, st, want, b)
	}
	if out != nil {
		mustJSON(c.t, b, out)
	}
}

func mustJSON(t *testing.T, b []byte, out any) {
	t.Helper()
	if err := json.Unmarshal(b, out); err != nil {
		t.Fatalf("decoding %s: %v", b, err)
	}
}

type apiErr struct {
	Error struct {
		Code    string         `json:"code"`
		Message string         `json:"message"`
		Type    string         `json:"type"`
		Details map[string]any `json:"details"`
	} `json:"error"`
}

// waitFor polls cond until it holds, for at most 10s.
func waitFor(t *testing.T, what string, cond func() bool) {
	t.Helper()
	testutil.CheckFor(t, 10*time.Second, 10*time.Millisecond, func() error {
		if cond() {
			return nil
		}
		return errors.New("waiting for " + what)
	})
}

// connect connects to s's NATS: with an origin credential when s runs the
// embedded server (which requires one), else without.
func connect(t *testing.T, s *Server) *nats.Conn {
	t.Helper()
	nc, err := nats.Connect(s.NATSURL(), natsAuth(t, s)...)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(nc.Close)
	return nc
}

// streamRecords waits until the event stream holds rev messages and returns
// them opened, checking sequence == revision and the subject.
func streamRecords(t *testing.T, s *Server, rev uint64) []*event.Record {
	t.Helper()
	nc := connect(t, s)
	js, err := jetstream.New(nc)
	if err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	var st jetstream.Stream
	waitFor(t, "stream to reach the revision", func() bool {
		if st == nil {
			if st, err = js.Stream(ctx, event.StreamName); err != nil {
				st = nil
				return false
			}
		}
		info, err := st.Info(ctx)
		return err == nil && info.State.LastSeq >= rev
	})
	info, err := st.Info(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if info.State.Msgs != rev || info.State.LastSeq != rev {
		t.Fatalf("stream holds %d messages up to %d, want %d", info.State.Msgs, info.State.LastSeq, rev)
	}
	v, err := event.NewVerifier(s.PublicKey())
	if err != nil {
		t.Fatal(err)
	}
	var out []*event.Record
	for seq := uint64(1); seq <= rev; seq++ {
		m, err := st.GetMsg(ctx, seq)
		if err != nil {
			t.Fatalf("GetMsg(%d): %v", seq, err)
		}
		r, err := v.Open(m.Data)
		if err != nil {
			t.Fatalf("event %d does not verify: %v", seq, err)
		}
		if r.Revision != seq {
			t.Fatalf("stream sequence %d holds revision %d", seq, r.Revision)
		}
		if m.Subject != event.Subject(r.Kind, r.Revision) {
			t.Fatalf("event %d on subject %q", seq, m.Subject)
		}
		out = append(out, r)
	}
	return out
}

type extNATS struct {
	url  string
	port int
	stop func()
}

// startExternalNATS runs a standalone JetStream server (as an operator's
// cluster would be) on port (-1 = random) with its store in dir.
func startExternalNATS(t *testing.T, dir string, port int) *extNATS {
	t.Helper()
	ns, err := server.NewServer(&server.Options{Host: "127.0.0.1", Port: port, JetStream: true, StoreDir: dir, NoLog: true, NoSigs: true})
	if err != nil {
		t.Fatal(err)
	}
	ns.Start()
	if !ns.ReadyForConnections(10 * time.Second) {
		t.Fatal("nats not ready")
	}
	var once sync.Once
	stop := func() { once.Do(func() { ns.Shutdown(); ns.WaitForShutdown() }) }
	t.Cleanup(stop)
	return &extNATS{url: ns.ClientURL(), port: ns.Addr().(*net.TCPAddr).Port, stop: stop}
}

// eachStore runs f as one subtest per store: SQLite in the data dir, and a
// fresh PostgreSQL database (see postgresDSN).
func eachStore(t *testing.T, f func(t *testing.T, cfg Config)) {
	t.Run("sqlite", func(t *testing.T) { f(t, testConfig(t.TempDir())) })
	t.Run("postgres", func(t *testing.T) {
		cfg := testConfig(t.TempDir())
		cfg.Store = postgresDSN(t)
		f(t, cfg)
	})
}

// keyClient returns a client authenticating with the project API key
// secret.
func keyClient(t *testing.T, s *Server, secret string) *client {
	return &client{t: t, base: "http://" + s.Addr(), token: secret}
}

// wantError fails the test unless the answer is status with error code.
func wantError(t *testing.T, what string, st int, body []byte, status int, code string) {
	t.Helper()
	if st != status {
		t.Fatalf("%s: status %d, want %d: %s", what, st, status, body)
	}
	var e apiErr
	mustJSON(t, body, &e)
	if e.Error.Code != code {
		t.Fatalf("%s: code %q, want %q: %s", what, e.Error.Code, code, body)
	}
}

// copyIdentity copies the signing and JWT keys of the origin in fromDir to
// toDir, as an operator sets up a replica: edges trust one origin key, and
// every replica must accept the others' admin tokens.
func copyIdentity(t *testing.T, fromDir, toDir string) {
	t.Helper()
	for _, f := range []string{"signing.key", "jwt.key"} {
		b, err := os.ReadFile(filepath.Join(fromDir, f))
		if err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(filepath.Join(toDir, f), b, 0o600); err != nil {
			t.Fatal(err)
		}
	}
}

// startReplica starts a second origin on a's store and NATS with a's keys.
func startReplica(t *testing.T, a *Server) *Server {
	t.Helper()
	cfg := testConfig(t.TempDir())
	cfg.Store, cfg.NATSURL = a.cfg.Store, a.NATSURL()
	copyIdentity(t, a.cfg.DataDir, cfg.DataDir)
	return startServer(t, cfg)
}

// natsAuth are the options connecting to s's embedded NATS as an origin
// (none when s uses an external server).
func natsAuth(t testing.TB, s *Server) []nats.Option {
	t.Helper()
	if s.ns == nil {
		return nil
	}
	keys, err := natsauth.Load(s.cfg.DataDir)
	if err != nil {
		t.Fatal(err)
	}
	tok, seed, err := keys.UserJWT(natsauth.RoleOrigin, "test")
	if err != nil {
		t.Fatal(err)
	}
	return []nats.Option{nats.UserJWTAndSeed(tok, string(seed))}
}

// refusals is the fixture of the tests of refused input: an origin with a
// deployment "d" and a key, and the revision they left. What the tests
// send must be refused and take no revision (unchanged).
type refusals struct {
	t     *testing.T
	s     *Server
	c     *client
	keyID string
	rev   uint64
}

// The collections the refusal tests send to.
const (
	defaultKeys = "/v1/projects/default/keys"
	defaultDeps = "/v1/projects/default/deployments"
)

func newRefusals(t *testing.T) *refusals {
	s := startServer(t, testConfig(t.TempDir()))
	c := newClient(t, s)
	c.must(201, "POST", defaultDeps, dep("d", nil, "/"), nil)
	var k api.Key
	c.must(201, "POST", defaultKeys, map[string]any{}, &k)
	return &refusals{t: t, s: s, c: c, keyID: k.ID, rev: s.Revision()}
}

// refused fails unless method path body is answered 400 VALIDATION_ERROR
// naming field.
func (f *refusals) refused(what, field, method, path string, body any) {
	f.t.Helper()
	st, raw := f.c.do(method, path, body)
	what += " on " + method + " " + path
	wantError(f.t, what, st, raw, 400, "VALIDATION_ERROR")
	var e apiErr
	mustJSON(f.t, raw, &e)
	if e.Error.Details["field"] != field {
		f.t.Fatalf("%s: details %v, want field %q", what, e.Error.Details, field)
	}
}

// unchanged fails if refused input took a revision.
func (f *refusals) unchanged() {
	f.t.Helper()
	if f.s.Revision() != f.rev {
		f.t.Fatalf("refused input took revisions: %d → %d", f.rev, f.s.Revision())
	}
}
