package main

import (
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"syscall"
	"time"

	"github.com/keymesh/keymesh/bench"
	"github.com/keymesh/keymesh/internal/natsauth"
)

// The stack as separate processes, the way operators run it: the origin
// (embedded NATS, SQLite), the mock upstream (this binary's `upstream`
// command) and each edge (the edge binary) in a process of its own. The
// load generator then shares the machine with the edge, not its Go
// runtime and garbage collector — as it does with nginx — so comparisons
// are fair. The origin, which in production runs on another machine and
// here ingests every audit record the edges ship, runs at idle priority
// (SCHED_IDLE, else nice 19): it takes the CPU the data path leaves idle.

// processBinaries returns the directory holding the edge and origin
// binaries next to this bench binary (as `make build` leaves them in bin/),
// or "" when they are not there.
func processBinaries() string {
	self, err := os.Executable()
	if err != nil {
		return ""
	}
	dir := filepath.Dir(self)
	for _, name := range []string{"edge", "origin"} {
		if fi, err := os.Stat(filepath.Join(dir, name)); err != nil || fi.IsDir() || fi.Mode()&0o111 == 0 {
			return ""
		}
	}
	return dir
}

// stackMode describes how a stack runs, for reports.
func (s *stack) mode() string {
	if len(s.procs) > 0 {
		return "origin, mock upstream and edge as separate processes (origin at idle CPU priority)"
	}
	return "origin, mock upstream and edge in the bench process"
}

// stackBinDir is stackOpts.binDir for a command's --in-process flag.
func stackBinDir(inProcess bool) string {
	if inProcess {
		return ""
	}
	return processBinaries()
}

// inProcessFlag registers --in-process on fs.
func inProcessFlag(fs *flag.FlagSet) *bool {
	return fs.Bool("in-process", false, "run origin, mock upstream and edge inside the bench process, even when the edge and origin binaries are next to bench (default: separate processes when they are)")
}

func (s *stack) startProcesses(ctx context.Context, o stackOpts, self string) error {
	ports, err := freePorts(3 + 3*o.edges) // origin, NATS, upstream; per edge: proxy, admin, gossip
	if err != nil {
		return err
	}
	originAddr := "127.0.0.1:" + strconv.Itoa(ports[0])
	natsAddr := "127.0.0.1:" + strconv.Itoa(ports[1])
	if err := s.startControl(ctx, o, self, originAddr, natsAddr, "127.0.0.1:"+strconv.Itoa(ports[2])); err != nil {
		return err
	}
	dataDir := filepath.Join(s.dir, "origin")

	for i := range o.edges {
		listen := "127.0.0.1:" + strconv.Itoa(ports[3+3*i])
		admin := "127.0.0.1:" + strconv.Itoa(ports[4+3*i])
		gossip := "127.0.0.1:" + strconv.Itoa(ports[5+3*i])
		args := []string{filepath.Join(o.binDir, "edge"), "--listen", listen, "--admin-listen", admin,
			"--gossip-listen", gossip, "--nats-url", "nats://" + natsAddr, "--site", "bench",
			"--origin-public-key", "@" + filepath.Join(dataDir, "signing.pub"),
			"--data-dir", filepath.Join(s.dir, fmt.Sprintf("edge-%d", i))}
		creds, err := writeEdgeCreds(dataDir, s.dir, fmt.Sprintf("bench-edge-%02d", i))
		if err != nil {
			return err
		}
		args = append(args, "--nats-creds", creds)
		if o.maxKeys > 0 {
			args = append(args, "--max-keys", strconv.FormatInt(o.maxKeys, 10))
		}
		name := fmt.Sprintf("edge-%d", i)
		args, env := o.wrapped(name, args)
		if err := s.spawn(ctx, name, args, env...); err != nil {
			return err
		}
		e := &edgeNode{url: "http://" + listen, adminURL: "http://" + admin}
		if err := waitHTTP(ctx, e.adminURL+"/health"); err != nil {
			return s.failed(name, err)
		}
		s.edges = append(s.edges, e)
	}
	return s.waitApplied(ctx, s.dep.Revision)
}

// startControl starts a process stack's origin (admin API on originAddr,
// NATS on natsAddr) and, unless o.upstream names one, the mock upstream on
// upAddr; then it creates the bench deployment.
func (s *stack) startControl(ctx context.Context, o stackOpts, self, originAddr, natsAddr, upAddr string) error {
	dataDir := filepath.Join(s.dir, "origin")
	originCmd := []string{filepath.Join(o.binDir, "origin"), "--data-dir", dataDir, "--listen", originAddr, "--nats-listen", natsAddr}
	if !o.originAtNormalPriority {
		originCmd = idlePriority(originCmd)
	}
	originCmd, originEnv := o.wrapped("origin", originCmd)
	if err := s.spawn(ctx, "origin", originCmd, append(originEnv, "ORIGIN_ADMIN_PASSWORD="+benchPassword)...); err != nil {
		return err
	}
	s.api = &bench.OriginClient{BaseURL: "http://" + originAddr}
	if err := waitHTTP(ctx, s.api.BaseURL+"/health"); err != nil {
		return s.failed("origin", err)
	}
	if err := s.api.Login(ctx, "admin", benchPassword); err != nil {
		return err
	}

	if s.upURL = o.upstream; s.upURL == "" {
		if err := s.spawn(ctx, "upstream", []string{self, "upstream", "--listen", upAddr}); err != nil {
			return err
		}
		s.upURL = "http://" + upAddr
		if err := waitHTTP(ctx, s.upURL+"/health"); err != nil {
			return s.failed("upstream", err)
		}
	}
	var err error
	s.dep, err = s.api.EnsureDeployment(ctx, benchProject, benchDeployment, []string{s.upURL})
	return err
}

// idlePriority prefixes a command so that it runs only on CPU time nothing
// else wants: chrt's SCHED_IDLE where available, else nice 19.
func idlePriority(cmd []string) []string {
	if chrt, err := exec.LookPath("chrt"); err == nil {
		return append([]string{chrt, "--idle", "0"}, cmd...)
	}
	if nice, err := exec.LookPath("nice"); err == nil {
		return append([]string{nice, "-n", "19"}, cmd...)
	}
	return cmd
}

// spawn starts one process of the stack, its output in <dir>/<name>.log.
func (s *stack) spawn(ctx context.Context, name string, args []string, env ...string) error {
	logf, err := os.Create(filepath.Join(s.dir, name+".log"))
	if err != nil {
		return err
	}
	defer logf.Close() // the child holds its own descriptor
	cmd := exec.Command(args[0], args[1:]...)
	cmd.Env = append(os.Environ(), env...)
	cmd.Stdout, cmd.Stderr = logf, logf
	// Its own process group, so that a Ctrl-C at the terminal reaches the
	// bench only, which then stops the stack in order; SIGTERM from the
	// kernel should the bench die first, so that nothing outlives it.
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true, Pdeathsig: syscall.SIGTERM}
	if err := cmd.Start(); err != nil {
		return fmt.Errorf("starting %s: %w", name, err)
	}
	s.procs = append(s.procs, &process{name: name, cmd: cmd, done: make(chan struct{})})
	p := s.procs[len(s.procs)-1]
	go func() { _ = cmd.Wait(); close(p.done) }()
	return ctx.Err()
}

// failed wraps err with the last lines of a process's log.
func (s *stack) failed(name string, err error) error {
	b, _ := os.ReadFile(filepath.Join(s.dir, name+".log"))
	if len(b) > 2000 {
		b = b[len(b)-2000:]
	}
	return fmt.Errorf("%s did not come up: %w; its log ends:\n%s", name, err, b)
}

// process is one child of a process stack.
type process struct {
	name string
	cmd  *exec.Cmd
	done chan struct{}
}

// stopProcesses sends SIGTERM to every child, last started first, and
// kills what has not exited within 10s.
func (s *stack) stopProcesses() {
	for i := len(s.procs) - 1; i >= 0; i-- {
		p := s.procs[i]
		_ = p.cmd.Process.Signal(syscall.SIGTERM)
		select {
		case <-p.done:
		case <-time.After(10 * time.Second):
			_ = p.cmd.Process.Kill()
			<-p.done
		}
	}
}

// startBareProxy starts a bench.BareProxy in front of the stack's upstream,
// in a process of its own when the stack's are (this binary's bareproxy
// command), and returns its URL; the stack stops it.
func (s *stack) startBareProxy(ctx context.Context) (string, error) {
	if len(s.procs) == 0 {
		p, err := bench.StartBareProxy(s.upstreamURL(), "127.0.0.1:0")
		if err != nil {
			return "", err
		}
		s.onStop = append(s.onStop, func(ctx context.Context) { _ = p.Shutdown(ctx) })
		return p.URL(), nil
	}
	ports, err := freePorts(1)
	if err != nil {
		return "", err
	}
	addr := "127.0.0.1:" + strconv.Itoa(ports[0])
	self, err := os.Executable()
	if err != nil {
		return "", err
	}
	if err := s.spawn(ctx, "bareproxy", []string{self, "bareproxy", "--listen", addr, "--upstream", s.upstreamURL()}); err != nil {
		return "", err
	}
	if err := waitHTTP(ctx, "http://"+addr+"/health"); err != nil {
		return "", s.failed("bareproxy", err)
	}
	return "http://" + addr, nil
}

// appliedRevision is the revision an edge has applied.
func (e *edgeNode) appliedRevision(ctx context.Context) (uint64, error) {
	if e.srv != nil {
		return e.srv.View().AppliedRevision(), nil
	}
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, e.adminURL+"/status", nil)
	if err != nil {
		return 0, err
	}
	client := http.DefaultClient
	if e.client != nil {
		client = e.client
	}
	resp, err := client.Do(req)
	if err != nil {
		return 0, err
	}
	defer resp.Body.Close()
	var st struct {
		AppliedRevision uint64 `json:"applied_revision"`
	}
	if err := json.NewDecoder(io.LimitReader(resp.Body, 1<<20)).Decode(&st); err != nil {
		return 0, err
	}
	return st.AppliedRevision, nil
}

func (s *stack) upstreamURL() string {
	if s.upstream != nil {
		return s.upstream.URL()
	}
	return s.upURL
}

// waitHTTP waits (at most 15s) until url answers 2xx.
func waitHTTP(ctx context.Context, url string) error {
	return waitHTTPWith(ctx, http.DefaultClient, url, 15*time.Second)
}

// waitHTTPWith is waitHTTP through client, for at most limit.
func waitHTTPWith(ctx context.Context, client *http.Client, url string, limit time.Duration) error {
	ctx, cancel := context.WithTimeout(ctx, limit)
	defer cancel()
	var last error = errors.New("no answer")
	for {
		req, _ := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
		resp, err := client.Do(req)
		if err == nil {
			resp.Body.Close()
			if resp.StatusCode/100 == 2 {
				return nil
			}
			err = fmt.Errorf("status %d", resp.StatusCode)
		}
		last = err
		select {
		case <-ctx.Done():
			return fmt.Errorf("%s: %w", url, last)
		case <-time.After(50 * time.Millisecond):
		}
	}
}

// freePorts returns n distinct loopback ports that were free a moment ago.
func freePorts(n int) ([]int, error) {
	seen := map[int]bool{}
	out := make([]int, 0, n)
	for len(out) < n {
		p, err := bench.FreePort()
		if err != nil {
			return nil, err
		}
		if !seen[p] {
			seen[p] = true
			out = append(out, p)
		}
	}
	return out, nil
}

// writeEdgeCreds writes into dir the NATS credentials of edge id, issued
// from the keys in the origin's data dir, and returns the file's path.
func writeEdgeCreds(originDir, dir, id string) (string, error) {
	keys, err := natsauth.Load(originDir)
	if err != nil {
		return "", err
	}
	b, err := keys.Creds(natsauth.RoleEdge, id)
	if err != nil {
		return "", err
	}
	path := filepath.Join(dir, id+".creds")
	return path, os.WriteFile(path, b, 0o600)
}
