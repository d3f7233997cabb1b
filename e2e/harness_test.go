// Package e2e runs keymesh end to end in one process: a real NATS server
// with JetStream on a random port, a real origin on SQLite, real edges on
// loopback sockets, and a mock OpenAI-compatible upstream.
package e2e

import (
	"context"
	"database/sql"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/nats-io/nats-server/v2/server"
	"github.com/nats-io/nats.go"

	"github.com/keymesh/keymesh/bench"
	"github.com/keymesh/keymesh/edge"
	"github.com/keymesh/keymesh/internal/natsauth"
	kmstack "github.com/keymesh/keymesh/internal/stack"
	"github.com/keymesh/keymesh/internal/testutil"
	"github.com/keymesh/keymesh/origin"
)

const project = "default"

// logSink collects every log line a test's components write, so the test
// can prove no secret reached any of them.
type logSink struct{ testutil.Buffer }

func (s *logSink) logger() *slog.Logger {
	return slog.New(slog.NewTextHandler(s, &slog.HandlerOptions{Level: slog.LevelDebug}))
}

// stack is one test's deployment of keymesh: a kmstack.Stack (origin and
// edges) with the mock upstream, and what the test checks at its end.
type stack struct {
	t        testing.TB
	logs     *logSink
	nats     *server.Server // nil when the origin runs its embedded NATS
	st       *kmstack.Stack
	origin   *origin.Server // st.Origin
	api      *bench.OriginClient
	upstream *bench.Upstream
	secrets  []string // every secret the test saw: must appear in no log
	// upstreamSecrets are credentials the edge injects upstream: they must
	// reach the upstream, and appear in no log.
	upstreamSecrets []string

	mu   sync.Mutex
	seen []http.Header // headers the upstream received

	dataDirs []string // every origin data dir, for its stored audit records
}

// newStack starts a stack whose origin uses a NATS server of the test's
// own (s.nats, which a test may stop), with credentials required as the
// origin's embedded one requires them.
func newStack(t testing.TB) *stack {
	t.Helper()
	keys, err := natsauth.LoadOrCreate(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	ns := startNATS(t, keys)
	s := newStackWith(t, kmstack.Config{NATSURL: ns.ClientURL(), NATSKeys: keys})
	s.nats = ns
	return s
}

// newStackWith starts a stack of cfg (default: the origin's embedded NATS)
// with the harness's password, logs and heartbeats, and the mock upstream.
func newStackWith(t testing.TB, cfg kmstack.Config) *stack {
	t.Helper()
	s := &stack{t: t, logs: &logSink{}}
	if cfg.Dir == "" {
		cfg.Dir = t.TempDir() // before the cleanups below: removed after they ran
	}
	up, err := bench.StartUpstream(bench.UpstreamConfig{
		Logger: s.logs.logger(),
		OnRequest: func(r *http.Request, _ []byte) {
			s.mu.Lock()
			s.seen = append(s.seen, r.Header.Clone())
			s.mu.Unlock()
		},
	}, "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	s.upstream = up
	t.Cleanup(func() { _ = up.Shutdown(context.Background()) })
	t.Cleanup(s.checkNoSecretLogged) // after the stack is down (cleanups run last first)
	cfg.Name, cfg.AdminPassword, cfg.Logger, cfg.SyncTimeout = "e2e", adminPassword, s.logs.logger(), 10*time.Second
	configure := cfg.Origin
	cfg.Origin = func(c *origin.Config) {
		c.HeartbeatInterval = 100 * time.Millisecond
		if configure != nil {
			configure(c)
		}
	}
	if s.st, err = kmstack.Start(context.Background(), cfg); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		_ = s.st.Shutdown(ctx)
	})
	s.dataDirs = append(s.dataDirs, s.st.OriginDir())
	s.adoptOrigin()
	return s
}

// adoptOrigin points the stack's client at the stack's (new) origin.
func (s *stack) adoptOrigin() {
	s.origin = s.st.Origin
	s.api = &bench.OriginClient{BaseURL: s.st.OriginURL, Token: s.st.Token()}
	s.secrets = append(s.secrets, adminPassword, s.api.Token)
}

// startNATS starts a NATS server that, like the origin's embedded one,
// admits only credentials keys issued.
func startNATS(t testing.TB, keys *natsauth.Keys) *server.Server {
	t.Helper()
	opts := &server.Options{
		Host: "127.0.0.1", Port: -1, JetStream: true, StoreDir: t.TempDir(), NoLog: true, NoSigs: true,
	}
	if err := keys.ServerOptions(opts); err != nil {
		t.Fatal(err)
	}
	ns, err := server.NewServer(opts)
	if err != nil {
		t.Fatal(err)
	}
	go ns.Start()
	if !ns.ReadyForConnections(10 * time.Second) {
		t.Fatal("nats server did not start")
	}
	t.Cleanup(ns.Shutdown)
	return ns
}

// natsCreds writes a .creds file for role (and edge id) and returns its
// path.
func (s *stack) natsCreds(role natsauth.Role, id string) string {
	s.t.Helper()
	path, err := s.st.Creds(role, id)
	if err != nil {
		s.t.Fatal(err)
	}
	return path
}

// natsConn connects to the stack's NATS with an origin credential.
func (s *stack) natsConn() (*nats.Conn, error) {
	return nats.Connect(s.st.NATSURL(), nats.UserCredentials(s.natsCreds(natsauth.RoleOrigin, "test")))
}

const adminPassword = "e2e-admin-password-not-secret-elsewhere"

// embeddedOrigin starts an origin that runs its own NATS (credentials
// required, keys in dir), as `origin` does by default, and stops it when t
// ends. configure, if set, adjusts the Config last.
func embeddedOrigin(t testing.TB, dir string, logs *logSink, configure func(*origin.Config)) *origin.Server {
	t.Helper()
	st, err := kmstack.Start(context.Background(), kmstack.Config{Dir: t.TempDir(), OriginDir: dir,
		AdminPassword: adminPassword, Logger: logs.logger(), Origin: configure})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = st.Shutdown(context.Background()) })
	return st.Origin
}

// edgeOpts change how an edge is started.
type edgeOpts struct {
	natsURL    string // default: the stack's NATS
	dataDir    string // default: none persisted
	secretsDir string
	idle       time.Duration // upstream idle timeout; default the edge's
	site       string
	staleness  time.Duration
	failOpen   bool
	// unsynced: return once the edge listens, without waiting for it to
	// synchronise (its NATS may be down).
	unsynced bool
	// configure, if set, adjusts the edge's Config last.
	configure func(*edge.Config)
}

func (s *stack) startEdge(o edgeOpts) *edge.Node {
	s.t.Helper()
	e, err := s.st.AddEdge(context.Background(), kmstack.EdgeOptions{
		Site: o.site, DataDir: o.dataDir, NATSURL: o.natsURL, Unsynced: o.unsynced,
		Configure: func(c *edge.Config) {
			c.SecretsDir = o.secretsDir
			c.UpstreamIdleTimeout = o.idle
			c.MaxStaleness = o.staleness
			c.FailOpen = o.failOpen
			if o.configure != nil {
				o.configure(c)
			}
			c.LookupTimeout = 500 * time.Millisecond
		},
	})
	if err != nil {
		s.t.Fatal(err)
	}
	return e.Node
}

// deployment creates a deployment pointing at the mock upstream.
func (s *stack) deployment(name string, extra map[string]any) *bench.Deployment {
	s.t.Helper()
	in := map[string]any{"name": name, "upstreams": map[string][]string{"*": {s.upstream.URL()}}}
	for k, v := range extra {
		in[k] = v
	}
	var d bench.Deployment
	s.call(http.MethodPost, "/v1/projects/"+project+"/deployments", in, &d)
	return &d
}

// key creates a key linked to deployments and remembers its secret.
func (s *stack) key(deployments ...string) *bench.Key {
	s.t.Helper()
	k, err := s.api.CreateKey(context.Background(), project, "test", deployments...)
	if err != nil {
		s.t.Fatal(err)
	}
	s.secrets = append(s.secrets, k.Secret)
	return k
}

// call sends an admin request and returns the revision of a mutation.
func (s *stack) call(method, path string, in, out any) uint64 {
	s.t.Helper()
	rev, err := s.api.Do(context.Background(), method, path, in, out)
	if err != nil {
		s.t.Fatalf("%s %s: %v", method, path, err)
	}
	return rev
}

// waitApplied waits until every edge has applied rev.
func waitApplied(t testing.TB, rev uint64, edges ...*edge.Node) {
	t.Helper()
	testutil.CheckFor(t, 10*time.Second, 0, func() error {
		for i, e := range edges {
			if got := e.View().AppliedRevision(); got < rev {
				return fmt.Errorf("edge %d applied %d, want %d", i, got, rev)
			}
		}
		return nil
	})
}

var httpClient = &http.Client{Timeout: 10 * time.Second, Transport: &http.Transport{MaxIdleConnsPerHost: 64}}

// send makes one request through an edge and returns status and body.
func send(t testing.TB, e *edge.Node, method, path string, headers map[string]string, body string) (int, string) {
	t.Helper()
	req, err := http.NewRequest(method, "http://"+e.Addr()+path, strings.NewReader(body))
	if err != nil {
		t.Fatal(err)
	}
	for k, v := range headers {
		if k == "Host" {
			req.Host = v
			continue
		}
		req.Header.Set(k, v)
	}
	if body != "" && req.Header.Get("Content-Type") == "" {
		req.Header.Set("Content-Type", "application/json")
	}
	resp, err := httpClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatal(err)
	}
	return resp.StatusCode, string(b)
}

const chatBody = `{"model": "mock-model", "messages": [{"role": "user", "content": "Hello!"}]}`

func chat(t testing.TB, e *edge.Node, headers map[string]string) (int, string) {
	t.Helper()
	return send(t, e, http.MethodPost, "/v1/chat/completions", headers, chatBody)
}

func withKey(k *bench.Key) map[string]string { return map[string]string{"X-API-Key": k.Secret} }

// storedAudit returns every row of the audit table of the SQLite database
// at path, as text.
func storedAudit(t testing.TB, path string) string {
	db, err := sql.Open("sqlite", "file:"+path+"?mode=ro")
	if err != nil {
		t.Errorf("opening %s: %v", path, err)
		return ""
	}
	defer db.Close()
	rows, err := db.Query(`SELECT * FROM audit_log`)
	if err != nil {
		t.Errorf("reading the audit log of %s: %v", path, err)
		return ""
	}
	defer rows.Close()
	cols, _ := rows.Columns()
	var b strings.Builder
	vals := make([]any, len(cols))
	ptrs := make([]any, len(cols))
	for i := range vals {
		ptrs[i] = &vals[i]
	}
	for rows.Next() {
		if err := rows.Scan(ptrs...); err != nil {
			t.Errorf("reading the audit log of %s: %v", path, err)
			return b.String()
		}
		fmt.Fprintln(&b, vals...)
	}
	return b.String()
}

// checkNoSecretLogged runs last: no secret the test used may appear in any
// log line, in any edge's metrics or status, in any audit record, or in what
// the upstream got.
func (s *stack) checkNoSecretLogged() {
	logs := s.logs.String()
	for _, e := range s.st.Edges() {
		for _, path := range []string{"/metrics", "/status"} {
			rec := httptest.NewRecorder()
			e.AdminHandler().ServeHTTP(rec, httptest.NewRequest(http.MethodGet, path, nil))
			logs += rec.Body.String()
		}
	}
	// and every audit record each origin stored, read from its database
	// (the origin may be down by now).
	for _, dir := range s.dataDirs {
		logs += storedAudit(s.t, filepath.Join(dir, "origin-audit.db"))
	}
	for _, secret := range append(s.secrets, s.upstreamSecrets...) {
		if secret != "" && strings.Contains(logs, secret) {
			s.t.Errorf("a secret (%s...) appears in the logs", secret[:6])
		}
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	for _, h := range s.seen {
		for name, vals := range h {
			for _, v := range vals {
				for _, secret := range s.secrets {
					if secret != "" && strings.Contains(v, secret) {
						s.t.Errorf("a client secret was forwarded upstream in %s", name)
					}
				}
			}
		}
	}
}
