package e2e

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"math/rand/v2"
	"net"
	"net/http"
	"os"
	"os/exec"
	"os/signal"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/keymesh/keymesh/edge"
	"github.com/keymesh/keymesh/event"
	"github.com/keymesh/keymesh/internal/testutil"
	"github.com/keymesh/keymesh/origin"
)

// Child processes: the test binary re-executed with one of these variables
// set runs no test but an origin (with its embedded NATS, as `origin
// --data-dir D --listen L --nats-listen N` does) or an edge (as `edge
// --data-dir D ...`), until SIGTERM (drained) or SIGKILL (a crash). A test
// that kills a component for real runs it so.
const (
	originProcessEnv = "KEYMESH_E2E_ORIGIN_PROCESS" // its data dir
	edgeProcessEnv   = "KEYMESH_E2E_EDGE_PROCESS"   // its data dir
	listenEnv        = "KEYMESH_E2E_LISTEN"
	adminListenEnv   = "KEYMESH_E2E_ADMIN_LISTEN"
	natsEnv          = "KEYMESH_E2E_NATS"       // origin: where its NATS listens; edge: the NATS URL
	passwordEnv      = "KEYMESH_E2E_PASSWORD"   // origin's admin password
	credsEnv         = "KEYMESH_E2E_NATS_CREDS" // edge's
	publicKeyEnv     = "KEYMESH_E2E_PUBLIC_KEY" // edge's origin key, @path
)

func TestMain(m *testing.M) {
	if dir := os.Getenv(originProcessEnv); dir != "" {
		os.Exit(runOriginProcess(dir))
	}
	if dir := os.Getenv(edgeProcessEnv); dir != "" {
		os.Exit(runEdgeProcess(dir))
	}
	os.Exit(m.Run())
}

func childLogger() *slog.Logger {
	return slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelDebug}))
}

// runOriginProcess is an origin child's main: the harness's origin
// settings (heartbeats every 100ms, bcrypt's minimum cost).
func runOriginProcess(dir string) int {
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGTERM, syscall.SIGINT)
	defer stop()
	cfg := origin.DefaultConfig()
	cfg.DataDir = dir
	cfg.Listen = os.Getenv(listenEnv)
	cfg.NATSListen = os.Getenv(natsEnv)
	cfg.AdminPassword = os.Getenv(passwordEnv)
	cfg.PasswordCost = 4
	cfg.HeartbeatInterval = 100 * time.Millisecond
	cfg.Logger = childLogger()
	srv, err := origin.New(cfg)
	if err != nil {
		fmt.Fprintf(os.Stderr, "origin: %v\n", err)
		return 1
	}
	if err := srv.Start(); err != nil {
		fmt.Fprintf(os.Stderr, "origin: %v\n", err)
		return 1
	}
	select {
	case err := <-srv.Err():
		fmt.Fprintf(os.Stderr, "origin: %v\n", err)
		_ = srv.Shutdown(context.Background())
		return 1
	case <-ctx.Done():
	}
	sctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	if err := srv.Shutdown(sctx); err != nil {
		fmt.Fprintf(os.Stderr, "origin: shutdown: %v\n", err)
		return 1
	}
	return 0
}

// runEdgeProcess is an edge child's main: open-cached (see
// outageHarness.startEdge), lookups bounded at 500ms as the harness's.
func runEdgeProcess(dir string) int {
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGTERM, syscall.SIGINT)
	defer stop()
	cfg := edge.DefaultConfig()
	cfg.DataDir = dir
	cfg.Listen, cfg.AdminListen = os.Getenv(listenEnv), os.Getenv(adminListenEnv)
	cfg.NATSURL, cfg.NATSCreds = os.Getenv(natsEnv), os.Getenv(credsEnv)
	cfg.FailOpen = true
	cfg.LookupTimeout = 500 * time.Millisecond
	cfg.Logger = childLogger()
	var err error
	if cfg.OriginPublicKey, err = event.ParsePublicKey(os.Getenv(publicKeyEnv)); err != nil {
		fmt.Fprintf(os.Stderr, "edge: %v\n", err)
		return 1
	}
	n, err := edge.New(cfg)
	if err != nil {
		fmt.Fprintf(os.Stderr, "edge: %v\n", err)
		return 1
	}
	served := make(chan error, 1)
	go func() { served <- n.ListenAndServe() }()
	select {
	case err := <-served:
		fmt.Fprintf(os.Stderr, "edge: %v\n", err)
		_ = n.Shutdown(context.Background())
		return 1
	case <-ctx.Done():
	}
	sctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	if err := n.Shutdown(sctx); err != nil {
		fmt.Fprintf(os.Stderr, "edge: shutdown: %v\n", err)
		return 1
	}
	return 0
}

// child is a component in a process of its own: its own Go runtime, its
// own sockets, killed for real. It is stopped (SIGTERM) when the test ends.
type child struct {
	t      testing.TB
	name   string
	env    []string // the child's variables
	health string   // a URL that answers 200 once it serves
	outs   []*testutil.Buffer
	cmd    *exec.Cmd
	exited chan error
}

func newChild(t testing.TB, name, health string, env ...string) *child {
	c := &child{t: t, name: name, health: health, env: env}
	t.Cleanup(func() {
		if c.cmd != nil {
			c.stop()
		}
		if t.Failed() {
			for i, out := range c.outs {
				t.Logf("%s run %d output:\n%s", name, i+1, out.String())
			}
		}
	})
	return c
}

// start runs the child and waits until it answers its health URL.
func (c *child) start() {
	c.t.Helper()
	exe, err := os.Executable()
	if err != nil {
		c.t.Fatal(err)
	}
	out := &testutil.Buffer{}
	c.outs = append(c.outs, out)
	c.cmd = exec.Command(exe)
	c.cmd.Env = append(os.Environ(), c.env...)
	c.cmd.Stdout, c.cmd.Stderr = out, out
	if err := c.cmd.Start(); err != nil {
		c.t.Fatal(err)
	}
	exited := make(chan error, 1)
	c.exited = exited
	go func() { exited <- c.cmd.Wait() }()
	testutil.CheckFor(c.t, 60*time.Second, 20*time.Millisecond, func() error {
		select {
		case err := <-exited:
			exited <- err
			c.t.Fatalf("%s exited at start (%v):\n%s", c.name, err, out.String())
		default:
		}
		resp, err := http.Get(c.health)
		if err != nil {
			return err
		}
		resp.Body.Close()
		if resp.StatusCode != http.StatusOK {
			return fmt.Errorf("%s: %d", c.health, resp.StatusCode)
		}
		return nil
	})
}

// kill sends SIGKILL: nothing is drained, flushed or acknowledged.
func (c *child) kill() {
	c.t.Helper()
	if err := c.cmd.Process.Kill(); err != nil {
		c.t.Fatal(err)
	}
	var exit *exec.ExitError
	if err := <-c.exited; !errors.As(err, &exit) || exit.Sys().(syscall.WaitStatus).Signal() != syscall.SIGKILL {
		c.t.Fatalf("%s did not die of SIGKILL: %v", c.name, err)
	}
	c.cmd = nil
}

// stop sends SIGTERM and waits for the drained exit, which must be clean
// (a data race the child's detector found makes it fail).
func (c *child) stop() {
	c.t.Helper()
	_ = c.cmd.Process.Signal(syscall.SIGTERM)
	select {
	case err := <-c.exited:
		if err != nil {
			c.t.Errorf("%s exited with %v", c.name, err)
		}
	case <-time.After(30 * time.Second):
		_ = c.cmd.Process.Kill()
		<-c.exited
		c.t.Errorf("%s did not stop within 30s of SIGTERM", c.name)
	}
	c.cmd = nil
}

// output is every run's output so far.
func (c *child) output() string {
	var b strings.Builder
	for _, out := range c.outs {
		b.WriteString(out.String())
	}
	return b.String()
}

// originProcess is an origin in a child process, at fixed ports: a
// restarted origin must be where its edges reconnect.
type originProcess struct {
	*child
	dir      string
	listen   string // host:port of the REST API
	natsAddr string // host:port of the embedded NATS
}

func newOriginProcess(t testing.TB, dir string) *originProcess {
	t.Helper()
	p := &originProcess{dir: dir, listen: stableAddr(t), natsAddr: stableAddr(t)}
	p.child = newChild(t, "origin", p.url()+"/health", originProcessEnv+"="+dir, listenEnv+"="+p.listen,
		natsEnv+"="+p.natsAddr, passwordEnv+"="+adminPassword)
	return p
}

func (p *originProcess) url() string     { return "http://" + p.listen }
func (p *originProcess) natsURL() string { return "nats://" + p.natsAddr }

// edgeProcess is an edge in a child process on dir, at the same addresses
// each time it starts.
type edgeProcess struct {
	*child
	listen, admin string
}

func newEdgeProcess(t testing.TB, dir, natsURL, creds, publicKey string) *edgeProcess {
	t.Helper()
	e := &edgeProcess{listen: stableAddr(t), admin: stableAddr(t)}
	e.child = newChild(t, "edge", "http://"+e.admin+"/health", edgeProcessEnv+"="+dir, listenEnv+"="+e.listen,
		adminListenEnv+"="+e.admin, natsEnv+"="+natsURL, credsEnv+"="+creds, publicKeyEnv+"=@"+publicKey)
	return e
}

// edgeProcessStatus is the part of an edge's /status the tests read.
type edgeProcessStatus struct {
	AppliedRevision uint64          `json:"applied_revision"`
	NATSConnected   bool            `json:"nats_connected"`
	Usage           edge.UsageStats `json:"usage"`
	Cache           struct{ StaleServed uint64 }
}

func (e *edgeProcess) status() (edgeProcessStatus, error) {
	var st edgeProcessStatus
	resp, err := http.Get("http://" + e.admin + "/status")
	if err != nil {
		return st, err
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return st, fmt.Errorf("/status: %d", resp.StatusCode)
	}
	return st, json.NewDecoder(resp.Body).Decode(&st)
}

// stableAddr returns a loopback address whose port is free now and below
// the kernel's ephemeral range: a port a component gives up while it is
// down must still be free when it restarts there, and ports below the
// range are never handed to a listener on :0 nor to an outgoing
// connection meanwhile (one taken from the range could be, on a busy
// machine).
func stableAddr(t testing.TB) string {
	t.Helper()
	low := 32768
	if b, err := os.ReadFile("/proc/sys/net/ipv4/ip_local_port_range"); err == nil {
		if f := strings.Fields(string(b)); len(f) == 2 {
			if n, err := strconv.Atoi(f[0]); err == nil {
				low = n
			}
		}
	}
	const from = 10000
	if low <= from+1000 {
		t.Fatalf("the ephemeral port range starts at %d: no stable ports below it", low)
	}
	takenMu.Lock()
	defer takenMu.Unlock()
	for range 100 {
		addr := "127.0.0.1:" + strconv.Itoa(from+rand.IntN(low-from))
		if takenAddrs[addr] {
			continue
		}
		ln, err := net.Listen("tcp", addr)
		if err != nil {
			continue
		}
		ln.Close()
		takenAddrs[addr] = true
		return addr
	}
	t.Fatal("no free port below the ephemeral range")
	return ""
}

// takenAddrs are the addresses stableAddr gave: each once.
var (
	takenMu    sync.Mutex
	takenAddrs = map[string]bool{}
)
