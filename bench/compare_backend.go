package bench

import (
	_ "embed"
	"errors"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"

	"github.com/valyala/fasthttp"
)

// The fair comparison's backend, pinning and CPU accounting. A proxy can
// only be measured in front of a server that is not itself the limit, so
// the backend is the cheapest HTTP/1.1 server there is: a single-threaded
// C epoll loop (backend/backend.c) answering every request with one fixed
// chat completion. Where no C compiler is, FixedBackend — the same answer
// from fasthttp, run with GOMAXPROCS=1 — stands in, and the report says
// which one ran.

//go:embed backend/backend.c
var backendSource []byte

// FixedChatBody is the chat completion both backends answer with (the C
// one has it compiled in; TestFixedBackendsAgree holds the two together).
const FixedChatBody = `{"id":"chatcmpl-bench","object":"chat.completion","created":1764633600,"model":"mock-model",` +
	`"choices":[{"index":0,"message":{"role":"assistant","content":"Hello! This is a mock answer."},"logprobs":null,"finish_reason":"stop"}],` +
	`"usage":{"prompt_tokens":4,"completion_tokens":7,"total_tokens":11}}`

// ErrNoCompiler is returned by BuildBackend when neither cc nor gcc is on
// PATH.
var ErrNoCompiler = errors.New("no C compiler (cc or gcc) on PATH")

// BuildBackend compiles the C backend into dir and returns its path. It
// is compiled from the source embedded in this binary on every run, so a
// stale build never answers.
func BuildBackend(dir string) (string, error) {
	cc := ""
	for _, c := range []string{"cc", "gcc"} {
		if p, err := exec.LookPath(c); err == nil {
			cc = p
			break
		}
	}
	if cc == "" {
		return "", ErrNoCompiler
	}
	src := filepath.Join(dir, "backend.c")
	if err := os.WriteFile(src, backendSource, 0o600); err != nil {
		return "", err
	}
	bin := filepath.Join(dir, "kmbench-backend")
	if out, err := exec.Command(cc, "-O2", "-o", bin, src).CombinedOutput(); err != nil {
		return "", fmt.Errorf("compiling the C backend: %v: %s", err, strings.TrimSpace(string(out)))
	}
	return bin, nil
}

// FixedBackend is the Go stand-in for the C backend: every request gets
// FixedChatBody. Run it with GOMAXPROCS=1 (`bench backend` does).
type FixedBackend struct {
	srv *fasthttp.Server
	ln  net.Listener
}

// StartFixedBackend serves a FixedBackend on addr.
func StartFixedBackend(addr string) (*FixedBackend, error) {
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		return nil, err
	}
	body := []byte(FixedChatBody)
	b := &FixedBackend{ln: ln, srv: &fasthttp.Server{NoDefaultServerHeader: true, NoDefaultDate: true,
		Handler: func(ctx *fasthttp.RequestCtx) {
			ctx.SetContentType("application/json")
			ctx.SetBody(body)
		}}}
	go func() { _ = b.srv.Serve(ln) }()
	return b, nil
}

// URL is where the backend listens.
func (b *FixedBackend) URL() string { return "http://" + b.ln.Addr().String() }

// Close stops it at once (it holds no state worth draining).
func (b *FixedBackend) Close() error { return b.srv.Shutdown() }

// Pinning says which cores a fair comparison puts what on.
type Pinning struct {
	// Proxy is the core (taskset list) of the backend and the proxy under
	// test, Generator that of the load generator, the bench process itself
	// and the origin; both empty when nothing is pinned.
	Proxy, Generator string
	// Note says how it was decided, for the report.
	Note string
}

// Pinned reports whether the plan pins anything.
func (p Pinning) Pinned() bool { return p.Proxy != "" }

// PlanPinning puts the proxy side on the first core this process may run
// on and the generator on the second. With one core, or without taskset,
// nothing is pinned and the note says so.
func PlanPinning() Pinning {
	cpus := allowedCPUs()
	if _, err := exec.LookPath("taskset"); err != nil {
		return Pinning{Note: "taskset not found: nothing pinned, the load generator shares the cores with the proxy under test"}
	}
	if len(cpus) < 2 {
		return Pinning{Note: "one CPU: nothing pinned, the load generator shares the core with the proxy under test (figures are a lower bound)"}
	}
	return Pinning{Proxy: strconv.Itoa(cpus[0]), Generator: strconv.Itoa(cpus[1]),
		Note: fmt.Sprintf("backend and proxy under test on CPU %d, load generator, bench and origin (idle priority) on CPU %d", cpus[0], cpus[1])}
}

// allowedCPUs lists the CPUs of this process's affinity mask.
func allowedCPUs() []int {
	b, err := os.ReadFile("/proc/self/status")
	if err != nil {
		return nil
	}
	for _, l := range strings.Split(string(b), "\n") {
		if v, ok := strings.CutPrefix(l, "Cpus_allowed_list:"); ok {
			return parseCPUList(strings.TrimSpace(v))
		}
	}
	return nil
}

// parseCPUList parses a kernel CPU list ("0-2,4").
func parseCPUList(s string) []int {
	var out []int
	for _, part := range strings.Split(s, ",") {
		lo, hi, isRange := strings.Cut(part, "-")
		a, err := strconv.Atoi(strings.TrimSpace(lo))
		if err != nil {
			continue
		}
		b := a
		if isRange {
			if b, err = strconv.Atoi(strings.TrimSpace(hi)); err != nil {
				continue
			}
		}
		for c := a; c <= b; c++ {
			out = append(out, c)
		}
	}
	return out
}

// OnCPU prefixes a command line with taskset for cpus (unchanged when
// cpus is empty).
func OnCPU(cpus string, args []string) []string {
	if cpus == "" {
		return args
	}
	return append([]string{"taskset", "-c", cpus}, args...)
}

// PinSelf moves every thread of this process to cpus and returns a func
// that restores the previous mask (threads started meanwhile included).
// Children started while pinned inherit the mask.
func PinSelf(cpus string) (restore func(), err error) {
	if cpus == "" {
		return func() {}, nil
	}
	b, err := os.ReadFile("/proc/self/status")
	if err != nil {
		return nil, err
	}
	prev := ""
	for _, l := range strings.Split(string(b), "\n") {
		if v, ok := strings.CutPrefix(l, "Cpus_allowed_list:"); ok {
			prev = strings.TrimSpace(v)
		}
	}
	if prev == "" {
		return nil, errors.New("pin: no Cpus_allowed_list in /proc/self/status")
	}
	pid := strconv.Itoa(os.Getpid())
	if out, err := exec.Command("taskset", "-a", "-p", "-c", cpus, pid).CombinedOutput(); err != nil {
		return nil, fmt.Errorf("taskset: %v: %s", err, strings.TrimSpace(string(out)))
	}
	var once sync.Once
	return func() {
		once.Do(func() { _ = exec.Command("taskset", "-a", "-p", "-c", prev, pid).Run() })
	}, nil
}

// clockTicks is the kernel's USER_HZ, the unit of /proc/<pid>/stat's
// times: 100 on every Linux this runs on (getconf asked once in case).
var clockTicks = sync.OnceValue(func() float64 {
	if out, err := exec.Command("getconf", "CLK_TCK").Output(); err == nil {
		if v, err := strconv.Atoi(strings.TrimSpace(string(out))); err == nil && v > 0 {
			return float64(v)
		}
	}
	return 100
})

// procStat returns a process's parent and its CPU time (utime+stime, all
// threads) in seconds.
func procStat(pid int) (ppid int, cpu CPUTimes, err error) {
	b, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/stat")
	if err != nil {
		return 0, CPUTimes{}, err
	}
	// The command name is in parentheses and may hold anything; the
	// fields after its last ')' are fixed: state is field 3, ppid 4,
	// utime 14, stime 15.
	i := strings.LastIndexByte(string(b), ')')
	if i < 0 {
		return 0, CPUTimes{}, fmt.Errorf("/proc/%d/stat: no command name", pid)
	}
	f := strings.Fields(string(b[i+1:]))
	if len(f) < 13 {
		return 0, CPUTimes{}, fmt.Errorf("/proc/%d/stat: %d fields", pid, len(f))
	}
	ppid, _ = strconv.Atoi(f[1])
	ut, err1 := strconv.ParseFloat(f[11], 64)
	st, err2 := strconv.ParseFloat(f[12], 64)
	if err1 != nil || err2 != nil {
		return 0, CPUTimes{}, fmt.Errorf("/proc/%d/stat: bad times", pid)
	}
	return ppid, CPUTimes{User: ut / clockTicks(), System: st / clockTicks()}, nil
}

// CPUTimes is CPU time in seconds, in user space and in the kernel.
type CPUTimes struct{ User, System float64 }

// Total is User + System.
func (c CPUTimes) Total() float64 { return c.User + c.System }

// ProcCPU is the CPU time in seconds of the processes pids and their
// children (nginx's workers under its master), from /proc. A pid that is
// gone counts nothing.
func ProcCPU(pids ...int) float64 { return ProcCPUTimes(pids...).Total() }

// ProcCPUTimes is ProcCPU split into user and system time.
func ProcCPUTimes(pids ...int) CPUTimes {
	want := map[int]bool{}
	for _, p := range pids {
		if p > 0 {
			want[p] = true
		}
	}
	var total CPUTimes
	if len(want) == 0 {
		return total
	}
	ents, _ := os.ReadDir("/proc")
	for _, e := range ents {
		pid, err := strconv.Atoi(e.Name())
		if err != nil {
			continue
		}
		ppid, cpu, err := procStat(pid)
		if err == nil && (want[pid] || want[ppid]) {
			total.User += cpu.User
			total.System += cpu.System
		}
	}
	return total
}
