// Package e2e runs keymesh end to end in one process: a real NATS server
// with JetStream on a random port, a real origin on SQLite, real edges on
// loopback sockets, and a mock OpenAI-compatible upstream.
package e2e

import (
	"bytes"
	"context"
	"crypto/rand"
	"database/sql"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
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
	"github.com/keymesh/keymesh/origin"
)

const project = "default"

// logSink collects every log line a test's components write, so the test
// can prove no secret reached any of them.
type logSink struct {
	mu  sync.Mutex
	buf bytes.Buffer
}

func (s *logSink) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.buf.Write(p)
}

func (s *logSink) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.buf.String()
}

func (s *logSink) logger() *slog.Logger {
	return slog.New(slog.NewTextHandler(s, &slog.HandlerOptions{Level: slog.LevelDebug}))
}

// stack is one test's deployment of keymesh.
type stack struct {
	t        testing.TB
	logs     *logSink
	nats     *server.Server
	origin   *origin.Server
	api      *bench.OriginClient
	upstream *bench.Upstream
	secrets  []string // every secret the test saw: must appear in no log
	// upstreamSecrets are credentials the edge injects upstream: they must
	// reach the upstream, and appear in no log.
	upstreamSecrets []string

	mu    sync.Mutex
	seen  []http.Header // headers the upstream received
	edges []*edge.Node

	dataDirs []string // every origin data dir, for its stored audit records

	// natsKeys are the NATS trust roots the stack's server trusts; every
	// component connects with a credential they issue (natsCreds).
	natsKeys *natsauth.Keys
}

func newStack(t testing.TB) *stack {
	t.Helper()
	s := &stack{t: t, logs: &logSink{}}
	keys, err := natsauth.LoadOrCreate(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	s.natsKeys = keys
	s.nats = startNATS(t, keys)
	s.startOrigin()
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
	t.Cleanup(s.checkNoSecretLogged)
	return s
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
	b, err := s.natsKeys.Creds(role, id)
	if err != nil {
		s.t.Fatal(err)
	}
	path := filepath.Join(s.t.TempDir(), "nats.creds")
	if err := os.WriteFile(path, b, 0o600); err != nil {
		s.t.Fatal(err)
	}
	return path
}

// natsConn connects to the stack's NATS with an origin credential.
func (s *stack) natsConn() (*nats.Conn, error) {
	return nats.Connect(s.nats.ClientURL(), nats.UserCredentials(s.natsCreds(natsauth.RoleOrigin, "test")))
}

// edgeCreds returns the credential of the edge cfg describes: for cfg.ID,
// else the id kept in its data dir (created as the edge would), else a
// random one.
func (s *stack) edgeCreds(cfg *edge.Config) string {
	s.t.Helper()
	id := cfg.ID
	if id == "" && cfg.DataDir != "" {
		path := filepath.Join(cfg.DataDir, "edge-id")
		if b, err := os.ReadFile(path); err == nil {
			id = strings.TrimSpace(string(b))
		} else {
			id = "e2e-edge-" + rand.Text()[:10]
			if err := os.MkdirAll(cfg.DataDir, 0o700); err != nil {
				s.t.Fatal(err)
			}
			if err := os.WriteFile(path, []byte(id+"\n"), 0o600); err != nil {
				s.t.Fatal(err)
			}
		}
	}
	if id == "" {
		id = "e2e-edge-" + rand.Text()[:10]
	}
	return s.natsCreds(natsauth.RoleEdge, id)
}

const adminPassword = "e2e-admin-password-not-secret-elsewhere"

func (s *stack) startOrigin() {
	dir := s.t.TempDir()
	s.dataDirs = append(s.dataDirs, dir)
	s.startOriginOn(dir)
}

// startOriginOn starts an origin on data dir dir and the stack's NATS, and
// logs the stack's client in to it.
func (s *stack) startOriginOn(dir string) {
	t := s.t
	cfg := origin.DefaultConfig()
	cfg.DataDir = dir
	cfg.Listen = "127.0.0.1:0"
	cfg.NATSURL = s.nats.ClientURL()
	cfg.NATSCreds = s.natsCreds(natsauth.RoleOrigin, "origin")
	cfg.AdminPassword = adminPassword
	cfg.PasswordCost = 4
	cfg.HeartbeatInterval = 100 * time.Millisecond
	cfg.Logger = s.logs.logger()
	o, err := origin.New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	if err := o.Start(); err != nil {
		t.Fatal(err)
	}
	s.origin = o
	t.Cleanup(func() { _ = o.Shutdown(context.Background()) })
	s.api = &bench.OriginClient{BaseURL: "http://" + o.Addr()}
	if err := s.api.Login(context.Background(), "admin", adminPassword); err != nil {
		t.Fatal(err)
	}
	s.secrets = append(s.secrets, adminPassword, s.api.Token)
}

// embeddedOrigin starts an origin that runs its own NATS (credentials
// required, keys in dir), as `origin` does by default, and stops it when t
// ends. configure, if set, adjusts the Config last.
func embeddedOrigin(t testing.TB, dir string, logs *logSink, configure func(*origin.Config)) *origin.Server {
	t.Helper()
	cfg := origin.DefaultConfig()
	cfg.DataDir = dir
	cfg.Listen = "127.0.0.1:0"
	cfg.NATSListen = "127.0.0.1:-1"
	cfg.AdminPassword = adminPassword
	cfg.PasswordCost = 4
	cfg.Logger = logs.logger()
	if configure != nil {
		configure(&cfg)
	}
	o, err := origin.New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	if err := o.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = o.Shutdown(context.Background()) })
	return o
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
	t := s.t
	t.Helper()
	cfg := edge.DefaultConfig()
	cfg.Listen = "127.0.0.1:0"
	cfg.AdminListen = ""
	cfg.NATSURL = o.natsURL
	if cfg.NATSURL == "" {
		cfg.NATSURL = s.nats.ClientURL()
	}
	cfg.DataDir = o.dataDir
	cfg.SecretsDir = o.secretsDir
	cfg.UpstreamIdleTimeout = o.idle
	cfg.MaxStaleness = o.staleness
	cfg.FailOpen = o.failOpen
	if o.configure != nil {
		o.configure(&cfg)
	}
	if o.site != "" {
		cfg.Site = o.site
	}
	if cfg.NATSCreds == "" {
		cfg.NATSCreds = s.edgeCreds(&cfg)
	}
	cfg.OriginPublicKey = s.origin.PublicKey()
	cfg.LookupTimeout = 500 * time.Millisecond
	cfg.Logger = s.logs.logger()
	e, err := edge.New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	ln, err := net.Listen("tcp", cfg.Listen)
	if err != nil {
		t.Fatal(err)
	}
	go func() { _ = e.Serve(ln) }()
	t.Cleanup(func() { _ = e.Shutdown(context.Background()) })
	s.mu.Lock()
	s.edges = append(s.edges, e)
	s.mu.Unlock()
	if !o.unsynced {
		select {
		case <-e.Synced():
		case <-time.After(10 * time.Second):
			t.Fatal("edge did not synchronise")
		}
	}
	checkFor(t, 5*time.Second, func() error {
		if e.Addr() == "" {
			return errors.New("edge not listening")
		}
		return nil
	})
	return e
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
	checkFor(t, 10*time.Second, func() error {
		for i, e := range edges {
			if got := e.View().AppliedRevision(); got < rev {
				return fmt.Errorf("edge %d applied %d, want %d", i, got, rev)
			}
		}
		return nil
	})
}

// checkFor polls f until it returns nil or total passes.
func checkFor(t testing.TB, total time.Duration, f func() error) {
	t.Helper()
	deadline := time.Now().Add(total)
	for {
		err := f()
		if err == nil {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("still failing after %v: %v", total, err)
		}
		time.Sleep(5 * time.Millisecond)
	}
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
	s.mu.Lock()
	for _, e := range s.edges {
		for _, path := range []string{"/metrics", "/status"} {
			rec := httptest.NewRecorder()
			e.AdminHandler().ServeHTTP(rec, httptest.NewRequest(http.MethodGet, path, nil))
			logs += rec.Body.String()
		}
	}
	s.mu.Unlock()
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
