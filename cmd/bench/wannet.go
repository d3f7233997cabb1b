package main

import (
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"os/exec"
	"regexp"
	"strconv"
	"strings"
	"syscall"
	"time"

	"golang.org/x/sys/unix"

	"github.com/keymesh/keymesh/bench"
)

// The network of bench wan: one Linux network namespace per edge, joined
// by a veth pair to a bridge in the root namespace, where the origin (its
// NATS) and the mock upstream run — a star whose hub is the origin host,
// each edge at its own one-way delay from it.
//
// Two ways to delay, chosen once per run:
//
//   - netem: `tc qdisc ... netem delay d` on both ends of an edge's veth, so
//     every packet between that edge and the hub takes d each way, and
//     edge-to-edge gossip (across the bridge) takes d_a + d_b.
//   - relay: for kernels without netem, the bench delays in userspace. Each
//     edge reaches NATS through a bench.DelayRelay in the root namespace
//     (d each way); the edges gossip over addresses that exist only on the
//     loopback of the namespaces: in edge a's namespace, peer b's gossip
//     address is a socket of the bench (UDP and TCP) that hands what a sends
//     to b, inside b's namespace and from a's own address, d_a + d_b later —
//     the same delays as netem's star, link by link.
//
// In both modes every edge's NATS goes through a relay of the bench (of
// delay 0 with netem), which is how NATS is cut for the gossip phase. The
// prober reaches each edge on 127.0.0.1 inside its namespace (sockets
// opened there with setns), so its own requests cross no delay. The mock
// upstream is reached over the veth: with netem, an accepted request
// crosses the delay; with the relay, it does not. Neither is measured:
// only refusals and acceptances are.
//
// Names carry the bench's pid (kmw<pid>...), so that two runs do not
// collide and a run can remove what a crashed one (a dead pid) left.

const (
	wanPrefix     = "kmw"
	wanGossipPort = 7946
	wanProxyPort  = 8080
	wanAdminPort  = 9090
)

// errNotRoot: bench wan creates namespaces and links.
var errNotRoot = errors.New("bench wan needs root (it creates network namespaces, veth links and qdiscs); run it with sudo")

type wanEdge struct {
	ns          string
	veth, peer  string // root side, namespace side
	ip          string // on the veth, in the bridge's subnet
	gossip      string // gossip address (IP)
	delay       time.Duration
	nats        *bench.DelayRelay
	proxyHost   string // the prober's name for it: edge-<i>
	natsAddress string
}

type wanNet struct {
	id     string // kmw<pid>
	bridge string
	subnet string // a.b.c of a /24; the hub is .1
	mode   string // "netem" or "relay"
	edges  []*wanEdge
	udp    []*bench.DelayUDP
	tcp    []*bench.DelayRelay
	nsMade []string
	links  []string
}

// ip runs ip(8) with args; its output is in the error.
func ipCmd(args ...string) error {
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	out, err := exec.CommandContext(ctx, "ip", args...).CombinedOutput()
	if err != nil {
		return fmt.Errorf("ip %s: %v: %s", strings.Join(args, " "), err, strings.TrimSpace(string(out)))
	}
	return nil
}

func tcCmd(ns string, args ...string) error {
	if ns != "" {
		args = append([]string{"-n", ns}, args...)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	out, err := exec.CommandContext(ctx, "tc", args...).CombinedOutput()
	if err != nil {
		return fmt.Errorf("tc %s: %v: %s", strings.Join(args, " "), err, strings.TrimSpace(string(out)))
	}
	return nil
}

// wanPreflight says why bench wan cannot run here, or nil.
func wanPreflight() error {
	if os.Geteuid() != 0 {
		return errNotRoot
	}
	if _, err := exec.LookPath("ip"); err != nil {
		return errors.New("bench wan needs ip(8) (iproute2)")
	}
	return nil
}

var wanName = regexp.MustCompile(`^` + wanPrefix + `([0-9]+)(n[0-9]+|v[0-9]+|br)$`)

// cleanStaleWAN removes the namespaces and links of bench wan runs whose
// process is gone (a crash, a kill -9), and returns what it removed.
func cleanStaleWAN() []string {
	dead := func(name string) bool {
		m := wanName.FindStringSubmatch(name)
		if m == nil {
			return false
		}
		pid, err := strconv.Atoi(m[1])
		if err != nil || pid == os.Getpid() {
			return false
		}
		return syscall.Kill(pid, 0) == syscall.ESRCH
	}
	var removed []string
	if out, err := exec.Command("ip", "netns", "list").Output(); err == nil {
		for line := range strings.Lines(string(out)) {
			f := strings.Fields(line)
			if len(f) > 0 && dead(f[0]) {
				killNetnsPids(f[0])
				if ipCmd("netns", "del", f[0]) == nil {
					removed = append(removed, f[0])
				}
			}
		}
	}
	if out, err := exec.Command("ip", "-o", "link", "show").Output(); err == nil {
		for line := range strings.Lines(string(out)) {
			f := strings.Fields(line) // "12: name@peer: <...>"
			if len(f) < 2 {
				continue
			}
			name, _, _ := strings.Cut(strings.TrimSuffix(f[1], ":"), "@")
			if dead(name) && ipCmd("link", "del", name) == nil {
				removed = append(removed, name)
			}
		}
	}
	return removed
}

// killNetnsPids kills what still runs in namespace ns.
func killNetnsPids(ns string) {
	out, err := exec.Command("ip", "netns", "pids", ns).Output()
	if err != nil {
		return
	}
	for _, f := range strings.Fields(string(out)) {
		if pid, err := strconv.Atoi(f); err == nil && pid > 1 {
			_ = syscall.Kill(pid, syscall.SIGKILL)
		}
	}
}

// freeSubnet picks a /24 under 10.231/16 that no interface here uses.
func freeSubnet(seed int) (string, error) {
	out, err := exec.Command("ip", "-4", "-o", "addr", "show").Output()
	if err != nil {
		return "", fmt.Errorf("ip addr show: %w", err)
	}
	used := string(out)
	for k := range 250 {
		c := (seed + k) % 250
		subnet := fmt.Sprintf("10.231.%d", c)
		if !strings.Contains(used, " "+subnet+".") {
			return subnet, nil
		}
	}
	return "", errors.New("no free 10.231.x.0/24 here")
}

// netemWorks probes once whether the kernel has netem, on dev.
func netemWorks(dev string) bool {
	if _, err := exec.LookPath("tc"); err != nil {
		return false
	}
	if tcCmd("", "qdisc", "add", "dev", dev, "root", "netem", "delay", "1ms") != nil {
		return false
	}
	_ = tcCmd("", "qdisc", "del", "dev", dev, "root")
	return true
}

// newWANNet builds the namespaces, links and delays for one edge per entry
// of delays. mode is auto, netem or relay. On error, what was built is
// removed.
func newWANNet(delays []time.Duration, mode string) (_ *wanNet, err error) {
	if err := wanPreflight(); err != nil {
		return nil, err
	}
	if len(delays) > 200 {
		return nil, errors.New("bench wan: at most 200 edges")
	}
	pid := os.Getpid()
	n := &wanNet{id: wanPrefix + strconv.Itoa(pid)}
	defer func() {
		if err != nil {
			n.close()
		}
	}()
	if n.subnet, err = freeSubnet(pid); err != nil {
		return nil, err
	}
	n.bridge = n.id + "br"
	if err := ipCmd("link", "add", n.bridge, "type", "bridge"); err != nil {
		return nil, err
	}
	n.links = append(n.links, n.bridge)
	if err := ipCmd("addr", "add", n.hub()+"/24", "dev", n.bridge); err != nil {
		return nil, err
	}
	if err := ipCmd("link", "set", n.bridge, "up"); err != nil {
		return nil, err
	}
	switch mode {
	case "auto":
		n.mode = "relay"
		if netemWorks(n.bridge) {
			n.mode = "netem"
		}
	case "netem":
		if !netemWorks(n.bridge) {
			return nil, errors.New("bench wan: --mode netem, but this kernel has no netem qdisc (tc qdisc add ... netem fails); use --mode relay or auto")
		}
		n.mode = "netem"
	case "relay":
		n.mode = "relay"
	default:
		return nil, fmt.Errorf("bench wan: --mode must be auto, netem or relay, not %q", mode)
	}
	for i, d := range delays {
		e := &wanEdge{ns: fmt.Sprintf("%sn%d", n.id, i), veth: fmt.Sprintf("%sv%d", n.id, i),
			peer: fmt.Sprintf("kmwp%d", i), ip: fmt.Sprintf("%s.%d", n.subnet, 10+i), delay: d,
			proxyHost: fmt.Sprintf("edge-%d", i)}
		e.gossip = e.ip
		if n.mode == "relay" {
			// Loopback addresses, on no link: only the bench's sockets join them.
			e.gossip = fmt.Sprintf("127.77.%d.%d", (10+i)/256, (10+i)%256)
		}
		if err := ipCmd("netns", "add", e.ns); err != nil {
			return nil, err
		}
		n.nsMade = append(n.nsMade, e.ns)
		n.edges = append(n.edges, e)
		if err := ipCmd("link", "add", e.veth, "type", "veth", "peer", "name", e.peer, "netns", e.ns); err != nil {
			return nil, err
		}
		n.links = append(n.links, e.veth)
		for _, args := range [][]string{
			{"link", "set", e.veth, "master", n.bridge, "up"},
			{"-n", e.ns, "addr", "add", e.ip + "/24", "dev", e.peer},
			{"-n", e.ns, "link", "set", e.peer, "up"},
			{"-n", e.ns, "link", "set", "lo", "up"},
		} {
			if err := ipCmd(args...); err != nil {
				return nil, err
			}
		}
		if n.mode == "netem" && d > 0 {
			delay := strconv.FormatInt(d.Microseconds(), 10) + "us"
			// Both ends: root→edge leaves through the root side, edge→root
			// through the namespace's side.
			if err := tcCmd("", "qdisc", "add", "dev", e.veth, "root", "netem", "delay", delay, "limit", "100000"); err != nil {
				return nil, err
			}
			if err := tcCmd(e.ns, "qdisc", "add", "dev", e.peer, "root", "netem", "delay", delay, "limit", "100000"); err != nil {
				return nil, err
			}
		}
	}
	if n.mode == "relay" {
		if err := n.startGossipRelays(); err != nil {
			return nil, err
		}
	}
	return n, nil
}

// hub is the root namespace's address on the bridge.
func (n *wanNet) hub() string { return n.subnet + ".1" }

// startGossipRelays (relay mode) joins each pair of edges through delayed
// sockets: bench.DelayUDP for memberlist's packets, bench.DelayRelay for its
// streams. The gossip addresses are in 127.0.0.0/8, local to every
// namespace's loopback already, so in a's namespace b's address is the
// bench's socket and nothing else.
func (n *wanNet) startGossipRelays() error {
	for i, a := range n.edges {
		for _, b := range n.edges[i+1:] {
			d := a.delay + b.delay
			addrA := &net.UDPAddr{IP: net.ParseIP(a.gossip), Port: wanGossipPort}
			addrB := &net.UDPAddr{IP: net.ParseIP(b.gossip), Port: wanGossipPort}
			// In a's namespace, b's address; in b's, a's.
			ua, err := bench.ListenUDPIn(a.ns, addrB)
			if err != nil {
				return err
			}
			ub, err := bench.ListenUDPIn(b.ns, addrA)
			if err != nil {
				ua.Close()
				return err
			}
			n.udp = append(n.udp, bench.NewDelayUDP(ua, ub, addrA, addrB, d))
			for _, dir := range [][2]*wanEdge{{a, b}, {b, a}} {
				from, to := dir[0], dir[1]
				ln, err := bench.ListenIn(from.ns, net.JoinHostPort(to.gossip, strconv.Itoa(wanGossipPort)))
				if err != nil {
					return err
				}
				laddr := &net.TCPAddr{IP: net.ParseIP(from.gossip)}
				target := net.JoinHostPort(to.gossip, strconv.Itoa(wanGossipPort))
				n.tcp = append(n.tcp, bench.NewDelayRelay(ln, d, func() (net.Conn, error) {
					return bench.DialIn(to.ns, target, laddr, 5*time.Second)
				}))
			}
		}
	}
	return nil
}

// startNATSRelays gives each edge its own way to NATS (natsAddr, in the
// root namespace): a relay on the hub's address, of the edge's delay in
// relay mode (0 with netem, where the veth delays), which cutNATS severs.
func (n *wanNet) startNATSRelays(natsAddr string) error {
	for _, e := range n.edges {
		ln, err := net.Listen("tcp", net.JoinHostPort(n.hub(), "0"))
		if err != nil {
			return err
		}
		d := e.delay
		if n.mode == "netem" {
			d = 0
		}
		e.nats = bench.NewDelayRelay(ln, d, func() (net.Conn, error) { return net.DialTimeout("tcp", natsAddr, 5*time.Second) })
		n.tcp = append(n.tcp, e.nats)
		e.natsAddress = ln.Addr().String()
	}
	return nil
}

// dial is the prober's dialer: host edge-<i> is 127.0.0.1 in edge i's
// namespace.
func (n *wanNet) dial(addr string) (net.Conn, error) {
	host, port, err := net.SplitHostPort(addr)
	if err != nil {
		return nil, err
	}
	for _, e := range n.edges {
		if e.proxyHost == host {
			return bench.DialIn(e.ns, net.JoinHostPort("127.0.0.1", port), nil, 5*time.Second)
		}
	}
	return nil, fmt.Errorf("bench wan: no edge named %q", host)
}

// close removes everything newWANNet made (and whatever still runs in its
// namespaces); it is safe to call more than once.
func (n *wanNet) close() {
	for _, r := range n.tcp {
		r.Close()
	}
	for _, u := range n.udp {
		u.Close()
	}
	n.tcp, n.udp = nil, nil
	for _, ns := range n.nsMade {
		killNetnsPids(ns)
		_ = ipCmd("netns", "del", ns)
	}
	for i := len(n.links) - 1; i >= 0; i-- {
		_ = exec.Command("ip", "link", "del", n.links[i]).Run() // a veth goes with its namespace
	}
	n.nsMade, n.links = nil, nil
}

// raiseOwnPriority sets every thread of the bench process (its relays,
// which are the network, and its prober) by nice levels ahead of the
// processes it measures, which it started before and which keep theirs. A
// link does not wait for CPU: on two loaded cores, relays at the edges'
// priority held chunks past their delay (p99 4.7 ms; 2.1 ms ahead). It
// cannot make a change reach an edge sooner. (The mock upstream was tried
// too: it then took the CPU the edges needed.) It returns the nice values
// before and after.
func raiseOwnPriority(by int) (from, to int, err error) {
	raw, err := unix.Getpriority(unix.PRIO_PROCESS, 0)
	if err != nil {
		return 0, 0, err
	}
	from = 20 - raw // the raw syscall answers 20 - nice
	to = max(from-by, -20)
	if err := renice(os.Getpid(), to); err != nil {
		return from, from, err
	}
	return from, to, nil
}

// renice sets every thread of process pid to nice value to. Linux keeps
// nice per thread; threads made later inherit it from the thread that
// makes them, so two passes catch one made meanwhile.
func renice(pid, to int) error {
	for range 2 {
		tasks, err := os.ReadDir("/proc/" + strconv.Itoa(pid) + "/task")
		if err != nil {
			return err
		}
		for _, t := range tasks {
			tid, err := strconv.Atoi(t.Name())
			if err != nil {
				continue
			}
			if err := unix.Setpriority(unix.PRIO_PROCESS, tid, to); err != nil && !errors.Is(err, unix.ESRCH) {
				return err
			}
		}
	}
	return nil
}
