package main

import (
	"context"
	"crypto/rand"
	"encoding/base64"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/keymesh/keymesh/bench"
	"github.com/keymesh/keymesh/cluster"
)

func init() {
	register("wan", "propagation across a WAN: edges in network namespaces at one-way delays from the origin, via NATS, then by gossip alone (root)", runWAN)
}

type wanOpts struct {
	edges      int
	delays     []time.Duration // the groups' one-way delays, ascending
	iterations int
	mode       string        // auto, netem, relay
	profile    string        // the edges' --gossip-profile
	keepNATS   int           // edges of the nearest group that keep NATS in the gossip phase
	poll       time.Duration // phase 2 (gossip)
	natsPoll   time.Duration // phase 1 (NATS), from the edge's delay less margin on
	margin     time.Duration // the NATS target: p99 ≤ delay + margin
	rounds     float64       // the gossip target: p99 ≤ rounds × gossip interval
	settle     time.Duration // after the cut's first change, before the measured gossip phase
	edgeArgs   []string      // appended to every edge's command line
	binDir     string
	quiet      bool
}

// wanGroup is one delay group's outcome.
type wanGroup struct {
	DelayMs float64 `json:"one_way_delay_ms"`
	Edges   []int   `json:"edges"`
	// NATSUnlink: each edge's own delay from an unlink's API response to its
	// refusing the key, NATS up everywhere.
	NATSUnlink   bench.Percentiles `json:"nats_unlink"`
	NATSRelink   bench.Percentiles `json:"nats_relink"`
	NATSTargetMs float64           `json:"nats_target_p99_ms"`
	NATSMet      bool              `json:"nats_met"`
	// GossipEdges are the group's edges whose NATS was cut; GossipUnlink
	// their delays; GossipRounds is GossipUnlink's p99 in gossip intervals.
	GossipEdges  []int              `json:"gossip_edges"`
	GossipUnlink *bench.Percentiles `json:"gossip_unlink,omitempty"`
	GossipRelink *bench.Percentiles `json:"gossip_relink,omitempty"`
	GossipRounds float64            `json:"gossip_rounds_p99"`
	GossipMet    bool               `json:"gossip_met"`
	// TransitionUnlink: the cut edges' delays for the first unlink after
	// the cut (wanResult.Transition).
	TransitionUnlink *bench.Percentiles `json:"transition_unlink,omitempty"`
}

type wanResult struct {
	Mode        string  `json:"mode"`
	ModeMeaning string  `json:"mode_meaning"`
	Prober      string  `json:"prober"`
	Edges       int     `json:"edges"`
	Iterations  int     `json:"iterations"`
	PollMs      float64 `json:"poll_interval_ms"`
	NATSPollMs  float64 `json:"nats_poll_interval_ms"`
	InFlight    int     `json:"nats_polls_in_flight"`
	MarginMs    float64 `json:"nats_margin_ms"`
	// Nice is the bench process's nice value as started (that of the
	// origin, upstream and edges it runs) and as it measures
	// (raiseOwnPriority).
	Nice [2]int `json:"nice_stack_bench"`
	// LoadBefore and LoadAfter are the machine's 1-minute load average
	// as the measured phases start and end (the stack's own work
	// included): on a shared machine, what else ran.
	LoadBefore       float64                  `json:"load_average_before"`
	LoadAfter        float64                  `json:"load_average_after"`
	EdgeArgs         []string                 `json:"edge_args,omitempty"`
	GossipProfile    string                   `json:"gossip_profile"`
	GossipIntervalMs float64                  `json:"gossip_interval_ms"`
	NATSKept         []int                    `json:"nats_kept_edges"`
	Groups           []wanGroup               `json:"groups"`
	NATS             *bench.PropagationResult `json:"nats"`
	Gossip           *bench.PropagationResult `json:"gossip"`
	// Transition is one unlink/relink pair made at once after the cut,
	// before the SettleMs pause that precedes Gossip; it is not judged.
	Transition *bench.PropagationResult `json:"transition"`
	SettleMs   float64                  `json:"settle_ms"`
	Targets    []suiteTarget            `json:"targets"`
}

var wanModeMeaning = map[string]string{
	"netem": "tc netem delays every packet on both ends of each edge's veth: edge↔origin host d each way, edge↔edge gossip d_a + d_b",
	"relay": "no netem in this kernel: the bench delays in userspace — each edge's NATS connection through a TCP relay holding every chunk d each way, edge↔edge gossip (UDP and TCP) through per-pair relays holding it d_a + d_b; the upstream is not delayed",
}

// wanInFlight is how many polls of one edge the prober may have out at
// once (PropagationConfig.InFlight), so that a slow accepted poll (it goes
// to the upstream) does not hold the next one back. It does not raise the
// rate (one poll per --nats-poll); more in flight (16 was tried) only
// queued more at the upstream and slowed the edges.
const wanInFlight = 4

// wanPriorityLead is how many nice levels the bench's own threads (relays,
// prober) run ahead of the stack they measure (raiseOwnPriority).
const wanPriorityLead = 10

const wanProber = "each edge polled on 127.0.0.1 inside its own namespace (sockets opened there with setns): the prober's requests cross no delay"

// gossipInterval is the memberlist gossip interval of an edge run with
// --gossip-profile profile (the edge picks its cluster config the same way).
func gossipInterval(profile string) (time.Duration, error) {
	var c cluster.Config
	switch profile {
	case "wan":
		c = cluster.DefaultConfig()
	case "lan":
		c = cluster.LANConfig()
	case "local":
		c = cluster.LocalConfig()
	default:
		return 0, fmt.Errorf("--gossip-profile must be wan, lan or local, not %q", profile)
	}
	return c.Memberlist.GossipInterval, nil
}

// groupOf splits n edges into len(delays) contiguous groups, as evenly as
// can be: edge i's delay index.
func groupOf(i, n, groups int) int { return i * groups / n }

func parseDelays(s string) ([]time.Duration, error) {
	var out []time.Duration
	for f := range strings.SplitSeq(s, ",") {
		if f = strings.TrimSpace(f); f == "" {
			continue
		}
		d, err := time.ParseDuration(f)
		if err != nil || d < 0 {
			return nil, fmt.Errorf("--delays: %q is not a duration ≥ 0", f)
		}
		out = append(out, d)
	}
	if len(out) == 0 {
		return nil, errors.New("--delays: at least one delay")
	}
	slices.Sort(out)
	return out, nil
}

func runWAN(e *env, args []string) int {
	fs := flag.NewFlagSet("bench wan", flag.ContinueOnError)
	edges := fs.Int("edges", 16, "edges, split evenly across the delay groups (nearest first)")
	delays := fs.String("delays", "40ms,90ms,150ms", "comma-separated one-way delays between the edges' groups and the origin host")
	iterations := fs.Int("iterations", 20, "unlink/relink pairs in each phase")
	mode := fs.String("mode", "auto", `how delays are made: "netem" (tc qdisc netem on each veth), "relay" (userspace TCP/UDP relays in the bench), "auto" (netem when the kernel has it)`)
	profile := fs.String("gossip-profile", "wan", "the edges' --gossip-profile (its gossip interval is the round the gossip target counts)")
	keepNATS := fs.Int("keep-nats", 1, "gossip phase: how many edges of the nearest group keep NATS (the others lose it and learn changes by gossip alone)")
	poll := fs.Duration("poll", 5*time.Millisecond, "gossip phase: pause between two polls of one edge (each poll of an edge that accepts the key goes to the upstream: at 1 ms all the way, 16 pollers saturate two cores)")
	natsPoll := fs.Duration("nats-poll", time.Millisecond, "NATS phase: pause between two polls of one edge, which start --margin short of the edge's one-way delay (no change arrives sooner)")
	edgeArgs := fs.String("edge-args", "", "extra flags for every edge, space-separated (e.g. \"--limits-sync 10s\")")
	margin := fs.Duration("margin", 10*time.Millisecond, "NATS target: each group's p99 unlink→refusal ≤ its one-way delay + this")
	rounds := fs.Float64("rounds", 3, "gossip target: each cut edge's p99 unlink→refusal ≤ this many gossip intervals")
	settle := fs.Duration("settle", 5*time.Second, "gossip phase: pause after the first change that follows the cut (measured apart, not judged) before the measured changes")
	out := fs.String("out", "", "report path without extension; default under $TMPDIR/keymesh-bench")
	quiet := fs.Bool("quiet", false, "no progress line on stderr")
	about := "bench wan measures key propagation across a WAN. Each edge runs in a network namespace of its own,\n" +
		"linked to the origin host (root namespace: origin, NATS, mock upstream) with a one-way delay: --edges\n" +
		"edges in groups, one per --delays entry. The delay is tc netem's when the kernel has it, else the\n" +
		"bench's own relays (--mode). Phase 1 unlinks and relinks a key and times, per edge, the API response →\n" +
		"refusal over NATS (target p99 ≤ delay + --margin); phase 2 cuts NATS for all edges but --keep-nats and\n" +
		"times the same over gossip alone (target p99 ≤ --rounds gossip intervals). Needs root and the edge and\n" +
		"origin binaries next to bench (make build); every namespace and link is removed at the end."
	if code, done := parseFlags(e, fs, about, args); done {
		return code
	}
	ds, err := parseDelays(*delays)
	if err != nil {
		fmt.Fprintf(e.stderr, "bench wan: %v\n", err)
		return 2
	}
	if *edges < 2 || *edges < len(ds) || *iterations <= 0 || *poll <= 0 || *natsPoll <= 0 || *rounds <= 0 || *settle < 0 {
		fmt.Fprintln(e.stderr, "bench wan: --edges must be at least 2 and one per delay; --iterations, --poll, --nats-poll and --rounds positive; --settle not negative")
		return 2
	}
	if *keepNATS < 1 || *keepNATS >= *edges {
		fmt.Fprintln(e.stderr, "bench wan: --keep-nats must be at least 1 (someone must hear the origin) and less than --edges")
		return 2
	}
	if _, err := gossipInterval(*profile); err != nil {
		fmt.Fprintf(e.stderr, "bench wan: %v\n", err)
		return 2
	}
	switch *mode {
	case "auto", "netem", "relay":
	default:
		fmt.Fprintf(e.stderr, "bench wan: --mode must be auto, netem or relay, not %q\n", *mode)
		return 2
	}
	if err := wanPreflight(); err != nil {
		fmt.Fprintln(e.stderr, err)
		return 1
	}
	bin := processBinaries()
	if bin == "" {
		fmt.Fprintln(e.stderr, "bench wan: needs the edge and origin binaries next to bench (go build -o bin/ ./cmd/...)")
		return 1
	}
	res, err := wanRun(e.ctx, e, wanOpts{edges: *edges, delays: ds, iterations: *iterations, mode: *mode, profile: *profile,
		keepNATS: *keepNATS, poll: *poll, natsPoll: *natsPoll, settle: *settle, edgeArgs: strings.Fields(*edgeArgs), margin: *margin, rounds: *rounds, binDir: bin, quiet: *quiet})
	if err != nil {
		fmt.Fprintf(e.stderr, "bench wan: %v\n", err)
		return 1
	}
	md := wanMarkdown(res)
	fmt.Fprint(e.stdout, md)
	base := *out
	if base == "" {
		base = defaultOut("wan")
	}
	if err := writeReport(e, bench.Report{Base: base, JSON: res,
		Markdown: "# bench wan\n\nMachine: " + bench.DescribeMachine().Markdown() + "\n\n" + md}); err != nil {
		fmt.Fprintf(e.stderr, "bench wan: %v\n", err)
		return 1
	}
	return 0
}

// wanRun builds the network, starts the stack in it, runs both phases and
// tears everything down, whatever happens.
func wanRun(ctx context.Context, e *env, o wanOpts) (_ *wanResult, err error) {
	interval, err := gossipInterval(o.profile)
	if err != nil {
		return nil, err
	}
	if removed := cleanStaleWAN(); len(removed) > 0 {
		fmt.Fprintf(e.stderr, "bench wan: removed what an earlier run left: %s\n", strings.Join(removed, " "))
	}
	perEdge := make([]time.Duration, o.edges)
	for i := range perEdge {
		perEdge[i] = o.delays[groupOf(i, o.edges, len(o.delays))]
	}
	wn, err := newWANNet(perEdge, o.mode)
	if err != nil {
		return nil, err
	}
	defer wn.close()
	st, err := startWANStack(ctx, wn, o)
	if st != nil {
		defer st.close() // before the network goes
		defer stopEdges(st)
	}
	if err != nil {
		return nil, err
	}
	from, to, err := raiseOwnPriority(wanPriorityLead)
	if err != nil {
		return nil, fmt.Errorf("raising the bench's own priority: %w", err)
	}
	k, err := st.api.CreateKey(ctx, benchProject, "bench-wan", st.dep.ID)
	if err != nil {
		return nil, err
	}
	if err := st.waitApplied(ctx, k.Revision); err != nil {
		return nil, err
	}
	urls := make([]string, len(wn.edges))
	for i, we := range wn.edges {
		urls[i] = fmt.Sprintf("http://%s:%d", we.proxyHost, wanProxyPort)
	}
	// Phase 1 polls each edge densely from its one-way delay less the
	// margin on: no change can reach it sooner (the network holds every
	// byte that long), and a poll every natsPoll all the way there would
	// load the two cores enough to slow what is measured (see
	// docs/design.md, "WAN bench").
	notBefore := make([]time.Duration, len(wn.edges))
	for i, we := range wn.edges {
		notBefore[i] = max(we.delay-o.margin, 0)
	}
	cfg := bench.PropagationConfig{Client: st.api, Project: benchProject, Deployment: st.dep.ID, KeyID: k.ID,
		Secret: k.Secret, Edges: urls, Iterations: o.iterations, Poll: o.natsPoll, NotBefore: notBefore, InFlight: wanInFlight, Progress: progressOut(e, o.quiet),
		PauseBetweenIterations: 20 * time.Millisecond, Dial: wn.dial, PerEdge: true}
	res := &wanResult{Mode: wn.mode, ModeMeaning: wanModeMeaning[wn.mode], Prober: wanProber, Edges: o.edges,
		Iterations: o.iterations, GossipProfile: o.profile, GossipIntervalMs: float64(interval) / 1e6,
		SettleMs: float64(o.settle) / 1e6, PollMs: float64(o.poll) / 1e6, NATSPollMs: float64(o.natsPoll) / 1e6, EdgeArgs: o.edgeArgs,
		InFlight: wanInFlight, MarginMs: float64(o.margin) / 1e6,
		Nice: [2]int{from, to}, LoadBefore: loadAverage()}
	if res.NATS, err = bench.RunPropagation(ctx, cfg); err != nil {
		return nil, fmt.Errorf("phase 1 (NATS): %w", err)
	}
	cfg.Poll, cfg.NotBefore = o.poll, nil

	// Phase 2: NATS cut for every edge but the first keepNATS (of the
	// nearest group); changes reach the others by gossip alone.
	var cut []int
	for i, we := range wn.edges {
		if i < o.keepNATS {
			res.NATSKept = append(res.NATSKept, i)
			continue
		}
		we.nats.Cut()
		cut = append(cut, i)
	}
	if err := waitNATSDown(ctx, st, cut); err != nil {
		return nil, err
	}
	cfg.GossipOnly = cut
	// The first change after the cut is measured on its own: for a moment
	// the edges still act on what they knew with NATS (see docs/design.md,
	// "WAN bench"), which is a transition, not the gossip path's pace.
	first := cfg
	first.Iterations = 1
	if res.Transition, err = bench.RunPropagation(ctx, first); err != nil {
		return nil, fmt.Errorf("phase 2 (first change after the cut): %w", err)
	}
	select {
	case <-ctx.Done():
		return nil, ctx.Err()
	case <-time.After(o.settle):
	}
	if res.Gossip, err = bench.RunPropagation(ctx, cfg); err != nil {
		return nil, fmt.Errorf("phase 2 (gossip): %w", err)
	}
	res.LoadAfter = loadAverage()
	res.Groups = wanGroups(res, o, cut, interval)
	res.Targets = wanTargets(res, o)
	return res, nil
}

// startWANStack starts the origin and the mock upstream in the root
// namespace, and one edge process in each namespace, gossiping over wn.
// The stack it returns (also on error) must be closed.
func startWANStack(ctx context.Context, wn *wanNet, o wanOpts) (*stack, error) {
	dir, err := os.MkdirTemp("", "keymesh-bench-wan-")
	if err != nil {
		return nil, err
	}
	st := &stack{dir: dir}
	self, err := os.Executable()
	if err != nil {
		return st, err
	}
	ports, err := freePorts(3)
	if err != nil {
		return st, err
	}
	natsAddr := "127.0.0.1:" + strconv.Itoa(ports[1])
	// The upstream listens on the hub's address: the edges reach it over
	// their veth.
	so := stackOpts{binDir: o.binDir, originAtNormalPriority: true}
	if err := st.startControl(ctx, so, self, "127.0.0.1:"+strconv.Itoa(ports[0]), natsAddr,
		net.JoinHostPort(wn.hub(), strconv.Itoa(ports[2]))); err != nil {
		return st, err
	}
	if err := wn.startNATSRelays(natsAddr); err != nil {
		return st, err
	}
	originDir := filepath.Join(dir, "origin")
	key := make([]byte, 32)
	_, _ = rand.Read(key)
	gossipKey := filepath.Join(dir, "gossip.key")
	if err := os.WriteFile(gossipKey, []byte(base64.StdEncoding.EncodeToString(key)), 0o600); err != nil {
		return st, err
	}
	for i, we := range wn.edges {
		join := wn.edges[0].gossip
		if i == 0 {
			join = wn.edges[1].gossip
		}
		creds, err := writeEdgeCreds(originDir, dir, fmt.Sprintf("wan-edge-%02d", i))
		if err != nil {
			return st, err
		}
		name := fmt.Sprintf("edge-%d", i)
		args := []string{"ip", "netns", "exec", we.ns, filepath.Join(o.binDir, "edge"),
			"--listen", fmt.Sprintf("127.0.0.1:%d", wanProxyPort), "--admin-listen", fmt.Sprintf("127.0.0.1:%d", wanAdminPort),
			"--nats-url", "nats://" + we.natsAddress, "--nats-creds", creds, "--site", "bench",
			"--origin-public-key", "@" + filepath.Join(originDir, "signing.pub"),
			"--data-dir", filepath.Join(dir, name),
			"--gossip-listen", net.JoinHostPort(we.gossip, strconv.Itoa(wanGossipPort)),
			"--join", net.JoinHostPort(join, strconv.Itoa(wanGossipPort)),
			"--gossip-key", "@" + gossipKey, "--gossip-profile", o.profile, "--node-name", "wan-" + name}
		args = append(args, o.edgeArgs...)
		if err := st.spawn(ctx, name, args); err != nil {
			return st, err
		}
		client := nsHTTPClient(wn)
		node := &edgeNode{url: fmt.Sprintf("http://%s:%d", we.proxyHost, wanProxyPort),
			adminURL: fmt.Sprintf("http://%s:%d", we.proxyHost, wanAdminPort), client: client}
		st.edges = append(st.edges, node)
	}
	for i, node := range st.edges {
		if err := waitHTTPWith(ctx, node.client, node.adminURL+"/health", 20*time.Second); err != nil {
			return st, st.failed(fmt.Sprintf("edge-%d", i), err)
		}
	}
	if err := st.waitApplied(ctx, st.dep.Revision); err != nil {
		return st, err
	}
	return st, waitWANRing(ctx, st)
}

// stopEdges stops every edge at once (SIGTERM, SIGKILL after 10s) before
// the stack stops the rest in order: an edge whose NATS was cut may take
// its whole drain to give up flushing, and one after the other that would
// be minutes.
func stopEdges(st *stack) {
	var edges []*process
	for _, p := range st.procs {
		if strings.HasPrefix(p.name, "edge-") {
			_ = p.cmd.Process.Signal(syscall.SIGTERM)
			edges = append(edges, p)
		}
	}
	deadline := time.Now().Add(10 * time.Second)
	for _, p := range edges {
		select {
		case <-p.done:
		case <-time.After(time.Until(deadline)):
			_ = p.cmd.Process.Kill()
			<-p.done
		}
	}
}

// nsHTTPClient reaches edge we's listeners inside its namespace.
func nsHTTPClient(wn *wanNet) *http.Client {
	return &http.Client{Timeout: 5 * time.Second, Transport: &http.Transport{
		DialContext: func(_ context.Context, _, addr string) (net.Conn, error) { return wn.dial(addr) }}}
}

// wanStatus is what bench wan reads from an edge's /status.
type wanStatus struct {
	NATSConnected bool `json:"nats_connected"`
	Gossip        *struct {
		Peers []json.RawMessage `json:"peers"`
	} `json:"gossip"`
}

func edgeStatus(ctx context.Context, node *edgeNode) (*wanStatus, error) {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, node.adminURL+"/status", nil)
	if err != nil {
		return nil, err
	}
	resp, err := node.client.Do(req)
	if err != nil {
		return nil, err
	}
	defer resp.Body.Close()
	var st wanStatus
	return &st, json.NewDecoder(io.LimitReader(resp.Body, 1<<20)).Decode(&st)
}

// waitEdges polls every edge's status until ok holds for each (at most
// 30s: WAN gossip timings are slow).
func waitEdges(ctx context.Context, st *stack, which []int, what string, ok func(*wanStatus) bool) error {
	deadline := time.Now().Add(30 * time.Second)
	for _, i := range which {
		for {
			s, err := edgeStatus(ctx, st.edges[i])
			if err == nil && ok(s) {
				break
			}
			if time.Now().After(deadline) {
				return fmt.Errorf("edge %d: %s not within 30s (last error: %v)", i, what, err)
			}
			select {
			case <-ctx.Done():
				return ctx.Err()
			case <-time.After(20 * time.Millisecond):
			}
		}
	}
	return nil
}

func waitWANRing(ctx context.Context, st *stack) error {
	all := make([]int, len(st.edges))
	for i := range all {
		all[i] = i
	}
	return waitEdges(ctx, st, all, "seeing every other edge by gossip", func(s *wanStatus) bool {
		return s.Gossip != nil && len(s.Gossip.Peers) == len(st.edges)-1
	})
}

func waitNATSDown(ctx context.Context, st *stack, cut []int) error {
	return waitEdges(ctx, st, cut, "noticing its NATS link was cut", func(s *wanStatus) bool { return !s.NATSConnected })
}

// loadAverage is the machine's 1-minute load average (0 if unknown).
func loadAverage() float64 {
	b, err := os.ReadFile("/proc/loadavg")
	if err != nil {
		return 0
	}
	f := strings.Fields(string(b))
	if len(f) == 0 {
		return 0
	}
	v, _ := strconv.ParseFloat(f[0], 64)
	return v
}

// wanGroups summarises both phases per delay group from every edge's own
// delays.
func wanGroups(res *wanResult, o wanOpts, cut []int, interval time.Duration) []wanGroup {
	isCut := map[int]bool{}
	for _, i := range cut {
		isCut[i] = true
	}
	var groups []wanGroup
	for g, d := range o.delays {
		wg := wanGroup{DelayMs: float64(d) / 1e6}
		for i := range o.edges {
			if groupOf(i, o.edges, len(o.delays)) == g {
				wg.Edges = append(wg.Edges, i)
				if isCut[i] {
					wg.GossipEdges = append(wg.GossipEdges, i)
				}
			}
		}
		wg.NATSUnlink, wg.NATSRelink = perEdgeSummary(res.NATS, wg.Edges, "unlink"), perEdgeSummary(res.NATS, wg.Edges, "relink")
		wg.NATSTargetMs = float64(d+o.margin) / 1e6
		wg.NATSMet = res.NATS.Timeouts == 0 && wg.NATSUnlink.Count > 0 && wg.NATSUnlink.P99 <= wg.NATSTargetMs
		if len(wg.GossipEdges) > 0 {
			un, re := perEdgeSummary(res.Gossip, wg.GossipEdges, "unlink"), perEdgeSummary(res.Gossip, wg.GossipEdges, "relink")
			wg.GossipUnlink, wg.GossipRelink = &un, &re
			wg.GossipRounds = un.P99 / (float64(interval) / 1e6)
			wg.GossipMet = res.Gossip.Timeouts == 0 && un.Count > 0 && wg.GossipRounds <= o.rounds
			tr := perEdgeSummary(res.Transition, wg.GossipEdges, "unlink")
			wg.TransitionUnlink = &tr
		}
		groups = append(groups, wg)
	}
	return groups
}

// perEdgeSummary is the distribution of the delays of edges (each edge's
// own, every change op) in r.
func perEdgeSummary(r *bench.PropagationResult, edges []int, op string) bench.Percentiles {
	l := bench.NewLatency()
	for _, s := range r.Samples {
		if s.Op != op {
			continue
		}
		for _, i := range edges {
			if i < len(s.EdgesMs) {
				l.Record(time.Duration(s.EdgesMs[i] * 1e6))
			}
		}
	}
	return l.Summary()
}

func wanTargets(res *wanResult, o wanOpts) []suiteTarget {
	var out []suiteTarget
	for _, g := range res.Groups {
		out = append(out, suiteTarget{Target: fmt.Sprintf("%s one way, via NATS: p99 unlink → refusal ≤ %s", wanMs(g.DelayMs), wanMs(g.NATSTargetMs)),
			Measured: fmt.Sprintf("p99 %s (p50 %s, max %s; %d edges × %d unlinks)", wanMs(g.NATSUnlink.P99), wanMs(g.NATSUnlink.P50),
				wanMs(g.NATSUnlink.Max), len(g.Edges), res.Iterations),
			Verdict: verdictWord(g.NATSMet)})
	}
	for _, g := range res.Groups {
		if g.GossipUnlink == nil {
			continue
		}
		out = append(out, suiteTarget{Target: fmt.Sprintf("%s one way, NATS cut: p99 unlink → refusal ≤ %g gossip rounds (%s)", wanMs(g.DelayMs), o.rounds,
			wanMs(o.rounds*res.GossipIntervalMs)),
			Measured: fmt.Sprintf("p99 %s = %.2f rounds (p50 %s, max %s; %d edges × %d unlinks)", wanMs(g.GossipUnlink.P99), g.GossipRounds,
				wanMs(g.GossipUnlink.P50), wanMs(g.GossipUnlink.Max), len(g.GossipEdges), res.Iterations),
			Verdict: verdictWord(g.GossipMet)})
	}
	return out
}

// wanMs formats milliseconds for the WAN report.
func wanMs(v float64) string {
	if v >= 100 {
		return fmt.Sprintf("%.0f ms", v)
	}
	return fmt.Sprintf("%.1f ms", v)
}

func wanMarkdown(r *wanResult) string {
	var b strings.Builder
	fmt.Fprintf(&b, "%d edges, each in a network namespace of its own at a one-way delay from the origin host (origin, NATS and mock upstream in the root namespace), in %d groups; %d unlink/relink pairs per phase.\n\n",
		r.Edges, len(r.Groups), r.Iterations)
	fmt.Fprintf(&b, "- Delay mode: **%s** — %s.\n", r.Mode, r.ModeMeaning)
	fmt.Fprintf(&b, "- Prober: %s; each delay is from the API's response to the edge's own first refusal (401/403) or acceptance (200). Via NATS, each edge is polled every %s (up to %d polls out at once) from %s short of its one-way delay on (no change can arrive sooner; one already there would be timed at that first poll, never earlier); NATS cut, every %s. A change is seen up to one interval plus one poll's round trip late.\n",
		r.Prober, wanMs(r.NATSPollMs), r.InFlight, wanMs(r.MarginMs), wanMs(r.PollMs))
	fmt.Fprintf(&b, "- Priorities: the bench's own threads (the relays, which are the network, and the prober) run at nice %d, the origin, upstream and edges at nice %d (anything else on the machine at nice 0 takes precedence over them); load average %.2f as the phases started, %.2f as they ended.\n",
		r.Nice[1], r.Nice[0], r.LoadBefore, r.LoadAfter)
	if len(r.EdgeArgs) > 0 {
		fmt.Fprintf(&b, "- Extra edge flags: `%s`.\n", strings.Join(r.EdgeArgs, " "))
	}
	fmt.Fprintf(&b, "- Phase 1: NATS up for every edge (gossip too). Phase 2: NATS cut for every edge but %v (nearest group); the others learn changes by gossip alone.\n", r.NATSKept)
	fmt.Fprintf(&b, "- Gossip rounds: the edges run --gossip-profile %s, whose memberlist gossip interval is %s; rounds = p99 delay ÷ interval, the network's own delays (the kept edge's NATS, edge↔edge) included.\n\n",
		r.GossipProfile, wanMs(r.GossipIntervalMs))
	b.WriteString("| one-way delay | edges | NATS unlink p50 | p99 | max | NATS relink p99 | gossip-only edges | gossip unlink p50 | p99 | max | rounds (p99) | gossip relink p99 |\n")
	b.WriteString("|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|\n")
	for _, g := range r.Groups {
		gp50, gp99, gmax, grounds, grel := "-", "-", "-", "-", "-"
		if g.GossipUnlink != nil {
			gp50, gp99, gmax = wanMs(g.GossipUnlink.P50), wanMs(g.GossipUnlink.P99), wanMs(g.GossipUnlink.Max)
			grounds, grel = fmt.Sprintf("%.2f", g.GossipRounds), wanMs(g.GossipRelink.P99)
		}
		fmt.Fprintf(&b, "| %s | %d | %s | %s | %s | %s | %d | %s | %s | %s | %s | %s |\n", wanMs(g.DelayMs), len(g.Edges),
			wanMs(g.NATSUnlink.P50), wanMs(g.NATSUnlink.P99), wanMs(g.NATSUnlink.Max), wanMs(g.NATSRelink.P99),
			len(g.GossipEdges), gp50, gp99, gmax, grounds, grel)
	}
	b.WriteString("\nThe first unlink right after the cut (before a pause of " + wanMs(r.SettleMs) + "; not judged), the cut edges' delays:")
	for _, g := range r.Groups {
		if g.TransitionUnlink != nil {
			fmt.Fprintf(&b, " %s group p50 %s, max %s;", wanMs(g.DelayMs), wanMs(g.TransitionUnlink.P50), wanMs(g.TransitionUnlink.Max))
		}
	}
	b.WriteString("\n")
	if r.NATS.Timeouts+r.Gossip.Timeouts > 0 {
		fmt.Fprintf(&b, "\n**%d changes timed out** (phase 1: %d, phase 2: %d).\n", r.NATS.Timeouts+r.Gossip.Timeouts, r.NATS.Timeouts, r.Gossip.Timeouts)
	}
	b.WriteString("\n")
	b.WriteString(targetsMarkdown(r.Targets))
	return b.String()
}
