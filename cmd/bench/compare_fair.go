package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"log/slog"
	"os"
	"strconv"
	"strings"
	"time"

	"github.com/keymesh/keymesh/bench"
	"github.com/keymesh/keymesh/internal/cli"
)

// The fair comparison behind `bench compare` (bench.RunFair): the C
// backend (or its Go twin), the bare fasthttp proxy, an edge, nginx with a
// static key map and nginx with Debian's access log, each a process of its
// own; the backend and the proxies pinned to one core with GOMAXPROCS=1 (or
// one nginx worker), this process — the load generator's side — and the
// origin (idle priority) on another.

func init() {
	register("backend", "serve the fixed chat completion the fair compare's proxies sit in front of (Go stand-in for the C backend)", runBackend)
}

// fairOpts configures fairCompare.
type fairOpts struct {
	rounds      int
	round       time.Duration // one target's turn
	warmup      time.Duration
	openLoop    []float64
	openLoopDur time.Duration
	connections int
	nkeys       int
	wrk         string // wrk binary, "" for the bench's own generator
	noPin       bool
	nginxBin    string
	skipNginx   bool
	// bareOnly measures the backend and the bare proxy alone (no origin,
	// no edge, no nginx): the harness's own quick test.
	bareOnly bool
	binDir   string // the edge and origin binaries (required unless bareOnly)
	quiet    bool
}

// wrapped applies o.wrap, if any, to a child's command line.
func (o stackOpts) wrapped(name string, args []string) ([]string, []string) {
	if o.wrap == nil {
		return args, nil
	}
	return o.wrap(name, args)
}

// pid is the process id of the stack's child named name (0 if none).
func (s *stack) pid(name string) int {
	for _, p := range s.procs {
		if p.name == name && p.cmd.Process != nil {
			return p.cmd.Process.Pid
		}
	}
	return 0
}

// fairCompare starts the processes and runs the fair comparison.
func fairCompare(ctx context.Context, e *env, o fairOpts) (*bench.FairResult, error) {
	if o.binDir == "" && !o.bareOnly {
		return nil, errors.New("the fair comparison runs every proxy as a process of its own: build edge and origin next to bench (make build), or pass --mixed")
	}
	pin := bench.PlanPinning()
	if o.noPin {
		pin = bench.Pinning{Note: "nothing pinned (--no-pin)"}
	}
	// This process (the bench's open-loop generator) and every child not
	// pinned elsewhere — the origin — go to the generator's core.
	restore, err := bench.PinSelf(pin.Generator)
	if err != nil {
		return nil, err
	}
	defer restore()
	self, err := os.Executable()
	if err != nil {
		return nil, err
	}
	// Pinned children: the proxy's core, GOMAXPROCS=1 for Go ones.
	onProxyCore := func(name string, args []string) ([]string, []string) {
		if name == "origin" {
			return args, nil // idle priority, on the generator's core
		}
		return bench.OnCPU(pin.Proxy, args), []string{"GOMAXPROCS=1"}
	}
	ports, err := freePorts(3)
	if err != nil {
		return nil, err
	}
	backendURL := "http://127.0.0.1:" + strconv.Itoa(ports[0])
	so := stackOpts{edges: 1, binDir: o.binDir, upstream: backendURL, wrap: onProxyCore}
	var st *stack
	if o.bareOnly {
		dir, err := os.MkdirTemp("", "keymesh-bench-")
		if err != nil {
			return nil, err
		}
		st = &stack{dir: dir, upURL: backendURL}
	} else if st, err = startStack(ctx, so); err != nil {
		return nil, err
	}
	defer st.close()

	backend := "the C backend (bench/backend/backend.c: one thread, epoll, a fixed chat completion), compiled with cc -O2"
	bin, berr := bench.BuildBackend(st.dir)
	if berr != nil {
		backend = "the Go fixed backend (fasthttp, GOMAXPROCS=1: " + berr.Error() + ")"
		args, env := onProxyCore("backend", []string{self, "backend", "--listen", "127.0.0.1:" + strconv.Itoa(ports[0])})
		err = st.spawn(ctx, "backend", args, env...)
	} else {
		err = st.spawn(ctx, "backend", bench.OnCPU(pin.Proxy, []string{bin, strconv.Itoa(ports[0])}))
	}
	if err != nil {
		return nil, err
	}
	if err := waitHTTP(ctx, backendURL+"/health"); err != nil {
		return nil, st.failed("backend", err)
	}

	// The yardsticks, each this binary's command of that name.
	bareAddr, rawAddr := "127.0.0.1:"+strconv.Itoa(ports[1]), "127.0.0.1:"+strconv.Itoa(ports[2])
	for _, y := range []struct{ cmd, addr string }{{"bareproxy", bareAddr}, {"rawproxy", rawAddr}} {
		args, env := onProxyCore(y.cmd, []string{self, y.cmd, "--listen", y.addr, "--upstream", backendURL})
		if err := st.spawn(ctx, y.cmd, args, env...); err != nil {
			return nil, err
		}
		if err := waitHTTP(ctx, "http://"+y.addr+"/health"); err != nil {
			return nil, st.failed(y.cmd, err)
		}
	}

	key := "km_fair_compare_direct" // the backend and the raw and bare proxies check nothing
	targets := []bench.FairTarget{{Name: bench.TargetDirect, URL: backendURL}}
	var keys []string
	if !o.bareOnly {
		ks, err := st.keys(ctx, max(o.nkeys, 1), "compare")
		if err != nil {
			return nil, err
		}
		keys, key = secrets(ks), ks[0].Secret
	}
	targets = append(targets, bench.FairTarget{Name: bench.TargetRaw, URL: "http://" + rawAddr, PIDs: []int{st.pid("rawproxy")}},
		bench.FairTarget{Name: bench.TargetBare, URL: "http://" + bareAddr, PIDs: []int{st.pid("bareproxy")}})
	if !o.bareOnly {
		targets = append(targets, bench.FairTarget{Name: bench.TargetKeymesh, URL: st.edges[0].url, PIDs: []int{st.pid("edge-0")}})
	}
	if !o.bareOnly && !o.skipNginx {
		for _, v := range []struct{ name, log string }{{bench.TargetNginx, bench.NginxLogOff}, {bench.TargetNginxLog, bench.NginxLogCombined}} {
			ng, err := bench.StartNginx(ctx, bench.NginxConfig{Binary: o.nginxBin, Upstream: backendURL, Keys: keys, Workers: "1",
				AccessLog: v.log, Prefix: bench.OnCPU(pin.Proxy, nil)})
			if err != nil {
				return nil, fmt.Errorf("%w (or pass --skip-nginx)", err)
			}
			defer ng.Stop()
			targets = append(targets, bench.FairTarget{Name: v.name, URL: ng.URL, PIDs: []int{ng.PID()}})
		}
	}
	res, err := bench.RunFair(ctx, bench.FairConfig{Targets: targets, BackendPID: st.pid("backend"), Key: key, Rounds: o.rounds,
		Duration: o.round, Warmup: o.warmup, Connections: o.connections, Wrk: o.wrk, Pin: pin, OpenLoop: o.openLoop,
		OpenLoopTargets: fairOpenTargets(o), OpenLoopDuration: o.openLoopDur, Backend: backend, Progress: progressOut(e, o.quiet)})
	if err != nil {
		return nil, err
	}
	if !o.bareOnly {
		res.Notes = append(res.Notes, "the edge as operators run it: audit records shipped to the origin (at idle priority) over NATS, metrics on")
	}
	return res, nil
}

func fairOpenTargets(o fairOpts) []string {
	if o.bareOnly {
		return []string{bench.TargetDirect, bench.TargetBare}
	}
	return []string{bench.TargetDirect, bench.TargetKeymesh, bench.TargetNginx}
}

// parseFractions parses "0.25,0.5,0.75" ("" or "none": no open loop).
func parseFractions(s string) ([]float64, error) {
	if s == "" || s == "none" {
		return nil, nil
	}
	var out []float64
	for _, f := range strings.Split(s, ",") {
		if f = strings.TrimSpace(f); f == "" {
			continue
		}
		v, err := strconv.ParseFloat(f, 64)
		if err != nil || v <= 0 || v > 1 {
			return nil, fmt.Errorf("open-loop fraction %q: want a number in (0,1]", f)
		}
		out = append(out, v)
	}
	return out, nil
}

// fairThroughputChart draws the fair comparison's median throughput.
func fairThroughputChart(r *bench.FairResult) bench.Chart {
	ch := bench.Chart{Title: "Throughput (fair compare, medians)", XLabel: "target", YLabel: "requests/s", Bars: true}
	s := bench.Series{Name: "rps"}
	for _, x := range r.Runs {
		ch.X = append(ch.X, x.Name)
		s.Y = append(s.Y, x.RPS)
	}
	ch.Series = []bench.Series{s}
	return ch
}

func runBackend(e *env, args []string) int {
	fs := flag.NewFlagSet("bench backend", flag.ContinueOnError)
	listen := fs.String("listen", "127.0.0.1:8000", "address to serve on")
	about := "bench backend answers every request with one fixed chat completion (fasthttp): the Go stand-in for the\n" +
		"C backend bench compare builds when a C compiler is there. Run it with GOMAXPROCS=1, as compare does."
	if code, done := parseFlags(e, fs, about, args); done {
		return code
	}
	b, err := bench.StartFixedBackend(*listen)
	if err != nil {
		fmt.Fprintf(e.stderr, "bench backend: %v\n", err)
		return 1
	}
	log := slog.New(slog.NewTextHandler(e.stderr, nil))
	log.Info("fixed backend listening", "url", b.URL())
	<-e.ctx.Done()
	return cli.Drain(log, time.Second, func(context.Context) error { return b.Close() })
}
