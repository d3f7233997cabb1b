package e2e

import (
	"context"
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
	"syscall"
	"testing"
	"time"

	"github.com/keymesh/keymesh/internal/testutil"
	"github.com/keymesh/keymesh/origin"
)

// The environment of a child process that runs an origin (originProcess):
// the test binary re-executed with originProcessEnv set runs no test but
// an origin with its embedded NATS, as `origin --data-dir D --listen L
// --nats-listen N` does, until SIGTERM (drained) or SIGKILL (a crash).
const (
	originProcessEnv  = "KEYMESH_E2E_ORIGIN_PROCESS" // its data dir
	originListenEnv   = "KEYMESH_E2E_ORIGIN_LISTEN"
	originNATSEnv     = "KEYMESH_E2E_ORIGIN_NATS"
	originPasswordEnv = "KEYMESH_E2E_ORIGIN_PASSWORD"
)

func TestMain(m *testing.M) {
	if dir := os.Getenv(originProcessEnv); dir != "" {
		os.Exit(runOriginProcess(dir))
	}
	os.Exit(m.Run())
}

// runOriginProcess is the child's main: the harness's origin settings
// (heartbeats every 100ms, bcrypt's minimum cost), logs on stderr.
func runOriginProcess(dir string) int {
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGTERM, syscall.SIGINT)
	defer stop()
	cfg := origin.DefaultConfig()
	cfg.DataDir = dir
	cfg.Listen = os.Getenv(originListenEnv)
	cfg.NATSListen = os.Getenv(originNATSEnv)
	cfg.AdminPassword = os.Getenv(originPasswordEnv)
	cfg.PasswordCost = 4
	cfg.HeartbeatInterval = 100 * time.Millisecond
	cfg.Logger = slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelDebug}))
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

// originProcess is an origin running in a child process: its own Go
// runtime, its own embedded NATS, killed for real.
type originProcess struct {
	t        testing.TB
	dir      string
	listen   string // host:port of the REST API
	natsAddr string // host:port of the embedded NATS
	out      *testutil.Buffer
	outs     []*testutil.Buffer // every run's output
	cmd      *exec.Cmd
	exited   chan error
}

// newOriginProcess prepares an origin on dir with fixed ports (a restarted
// origin must be where its edges reconnect); start runs it.
func newOriginProcess(t testing.TB, dir string) *originProcess {
	t.Helper()
	web, nats := stablePort(t), stablePort(t)
	for nats == web {
		nats = stablePort(t)
	}
	p := &originProcess{t: t, dir: dir, listen: "127.0.0.1:" + strconv.Itoa(web), natsAddr: "127.0.0.1:" + strconv.Itoa(nats)}
	t.Cleanup(func() {
		if p.cmd != nil {
			p.stop()
		}
		if t.Failed() {
			for i, out := range p.outs {
				t.Logf("origin run %d output:\n%s", i+1, out.String())
			}
		}
	})
	return p
}

// start runs the origin and waits until it answers /health.
func (p *originProcess) start() {
	p.t.Helper()
	exe, err := os.Executable()
	if err != nil {
		p.t.Fatal(err)
	}
	p.out = &testutil.Buffer{}
	p.outs = append(p.outs, p.out)
	p.cmd = exec.Command(exe)
	p.cmd.Env = append(os.Environ(), originProcessEnv+"="+p.dir, originListenEnv+"="+p.listen,
		originNATSEnv+"="+p.natsAddr, originPasswordEnv+"="+adminPassword)
	p.cmd.Stdout, p.cmd.Stderr = p.out, p.out
	if err := p.cmd.Start(); err != nil {
		p.t.Fatal(err)
	}
	exited := make(chan error, 1)
	p.exited = exited
	go func() { exited <- p.cmd.Wait() }()
	testutil.CheckFor(p.t, 60*time.Second, 20*time.Millisecond, func() error {
		select {
		case err := <-exited:
			exited <- err
			p.t.Fatalf("origin exited at start (%v):\n%s", err, p.out.String())
		default:
		}
		resp, err := http.Get(p.url() + "/health")
		if err != nil {
			return err
		}
		resp.Body.Close()
		if resp.StatusCode != http.StatusOK {
			return fmt.Errorf("/health: %d", resp.StatusCode)
		}
		return nil
	})
}

// kill sends SIGKILL: nothing is drained, flushed or acknowledged.
func (p *originProcess) kill() {
	p.t.Helper()
	if err := p.cmd.Process.Kill(); err != nil {
		p.t.Fatal(err)
	}
	var exit *exec.ExitError
	if err := <-p.exited; !errors.As(err, &exit) || exit.Sys().(syscall.WaitStatus).Signal() != syscall.SIGKILL {
		p.t.Fatalf("origin did not die of SIGKILL: %v", err)
	}
	p.cmd = nil
}

// stop sends SIGTERM and waits for the drained exit, which must be clean
// (a data race the child's detector found makes it fail).
func (p *originProcess) stop() {
	p.t.Helper()
	_ = p.cmd.Process.Signal(syscall.SIGTERM)
	select {
	case err := <-p.exited:
		if err != nil {
			p.t.Errorf("origin exited with %v", err)
		}
	case <-time.After(30 * time.Second):
		_ = p.cmd.Process.Kill()
		<-p.exited
		p.t.Errorf("origin did not stop within 30s of SIGTERM")
	}
	p.cmd = nil
}

func (p *originProcess) url() string     { return "http://" + p.listen }
func (p *originProcess) natsURL() string { return "nats://" + p.natsAddr }

// output is every run's output so far.
func (p *originProcess) output() string {
	var b strings.Builder
	for _, out := range p.outs {
		b.WriteString(out.String())
	}
	return b.String()
}

// stablePort returns a loopback port, free now, below the kernel's
// ephemeral range: a port the origin gives up while it is down must still
// be free when it restarts there, and ports below the range are never
// handed to another listener on :0 nor to an outgoing connection
// meanwhile (a port taken from the range could be, on a busy machine).
func stablePort(t testing.TB) int {
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
	for range 100 {
		port := from + rand.IntN(low-from)
		ln, err := net.Listen("tcp", "127.0.0.1:"+strconv.Itoa(port))
		if err != nil {
			continue
		}
		ln.Close()
		return port
	}
	t.Fatal("no free port below the ephemeral range")
	return 0
}
