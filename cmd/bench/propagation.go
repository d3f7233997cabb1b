package main

import (
	"context"
	"flag"
	"fmt"
	"strings"
	"time"

	"github.com/keymesh/keymesh/bench"
)

func init() {
	register("propagation", "unlink/relink a key repeatedly and time until every edge refuses/accepts", runPropagation)
}

type propOpts struct {
	edges      int
	iterations int
	poll       time.Duration
	quiet      bool
	// cutNATS severs NATS for that many edges after warm-up (the last
	// ones), in a stack whose edges gossip; 0: NATS only, no gossip.
	cutNATS int
}

// propagationStack measures propagation over a new in-process stack of
// o.edges edges: over NATS, or, with o.cutNATS, with that many edges
// reached by gossip alone.
func propagationStack(ctx context.Context, e *env, o propOpts) (*bench.PropagationResult, error) {
	st, err := startStack(ctx, stackOpts{edges: o.edges, maxKeys: 10_000, gossip: o.cutNATS > 0})
	if err != nil {
		return nil, err
	}
	defer st.close()
	ks, err := st.keys(ctx, 1, "propagation")
	if err != nil {
		return nil, err
	}
	var cut []int
	if o.cutNATS > 0 {
		if cut, err = st.cutNATS(ctx, o.cutNATS); err != nil {
			return nil, err
		}
	}
	return bench.RunPropagation(ctx, bench.PropagationConfig{Client: st.api, Project: benchProject,
		Deployment: st.dep.ID, KeyID: ks[0].ID, Secret: ks[0].Secret, Edges: st.edgeURLs(),
		Iterations: o.iterations, Poll: o.poll, Progress: progressOut(e, o.quiet),
		PauseBetweenIterations: 20 * time.Millisecond, GossipOnly: cut})
}

func runPropagation(e *env, args []string) int {
	fs := flag.NewFlagSet("bench propagation", flag.ContinueOnError)
	edges := fs.Int("edges", 16, "in-process stack: how many edges to start")
	origin := fs.String("origin", "", "attach: the origin's admin API (password from ORIGIN_ADMIN_PASSWORD); empty starts an in-process stack")
	edgeURLs := fs.String("edge-urls", "", "attach: comma-separated edge base URLs to poll")
	project := fs.String("project", benchProject, "attach: project")
	deployment := fs.String("deployment", benchDeployment, "attach: deployment (created if missing, sent to --upstream)")
	upstream := fs.String("upstream", "http://127.0.0.1:8000", "attach: upstream of a deployment that has to be created")
	iterations := fs.Int("iterations", 20, "unlink/relink pairs")
	poll := fs.Duration("poll", time.Millisecond, "pause between two polls of one edge")
	out := fs.String("out", "", "report path without extension; default under $TMPDIR/keymesh-bench")
	quiet := fs.Bool("quiet", false, "no progress line on stderr")
	cutNATS := fs.Int("cut-nats", 0, "in-process stack: the edges gossip, and this many of them (the last ones) have their NATS link severed after warm-up, so changes reach them by gossip alone")
	about := "bench propagation unlinks and relinks a key again and again and measures, from each API response,\n" +
		"how long until every edge refuses (unlink) or accepts (relink) it, polling each edge with the key.\n" +
		"Without --origin it starts an in-process origin (embedded NATS) and --edges edges; with --cut-nats K\n" +
		"the edges form a gossip ring (local timings) and K of them lose NATS, measuring the gossip path."
	if code, done := parseFlags(e, fs, about, args); done {
		return code
	}
	if *iterations <= 0 || *poll <= 0 || *edges <= 0 {
		fmt.Fprintln(e.stderr, "bench propagation: --iterations, --poll and --edges must be positive")
		return 2
	}
	if *cutNATS < 0 || *cutNATS >= *edges {
		fmt.Fprintln(e.stderr, "bench propagation: --cut-nats must be at least 0 and less than --edges (one edge must reach NATS)")
		return 2
	}
	if *cutNATS > 0 && *origin != "" {
		fmt.Fprintln(e.stderr, "bench propagation: --cut-nats needs the in-process stack (no --origin)")
		return 2
	}
	var res *bench.PropagationResult
	var err error
	if *origin == "" {
		res, err = propagationStack(e.ctx, e, propOpts{edges: *edges, iterations: *iterations, poll: *poll, quiet: *quiet,
			cutNATS: *cutNATS})
	} else {
		res, err = attachPropagation(e, *origin, *edgeURLs, *project, *deployment, *upstream, *iterations, *poll, *quiet)
	}
	if err != nil {
		fmt.Fprintf(e.stderr, "bench propagation: %v\n", err)
		return 1
	}
	md := bench.PropagationMarkdown(res, "propagation")
	fmt.Fprint(e.stdout, bench.PropagationMarkdown(res, ""))
	base := *out
	if base == "" {
		base = defaultOut("propagation")
	}
	if err := writeReport(e, bench.Report{Base: base, JSON: res,
		Markdown: "# bench propagation\n\nMachine: " + bench.DescribeMachine().Markdown() + "\n\n" + md,
		Charts:   map[string]bench.Chart{"propagation": bench.PropagationChart(res)}}); err != nil {
		fmt.Fprintf(e.stderr, "bench propagation: %v\n", err)
		return 1
	}
	return 0
}

func attachPropagation(e *env, origin, edgeURLs, project, deployment, upstream string, iterations int, poll time.Duration, quiet bool) (*bench.PropagationResult, error) {
	var edges []string
	for u := range strings.SplitSeq(edgeURLs, ",") {
		if u = strings.TrimSpace(u); u != "" {
			edges = append(edges, u)
		}
	}
	if len(edges) == 0 {
		return nil, fmt.Errorf("--origin needs --edge-urls")
	}
	password := e.getenv("ORIGIN_ADMIN_PASSWORD")
	if password == "" {
		return nil, fmt.Errorf("--origin needs ORIGIN_ADMIN_PASSWORD")
	}
	ctx, cancel := context.WithTimeout(e.ctx, 10*time.Minute)
	defer cancel()
	c := &bench.OriginClient{BaseURL: strings.TrimRight(origin, "/")}
	if err := c.Login(ctx, "admin", password); err != nil {
		return nil, err
	}
	d, err := c.EnsureDeployment(ctx, project, deployment, []string{upstream})
	if err != nil {
		return nil, err
	}
	k, err := c.CreateKey(ctx, project, "bench-propagation", d.ID)
	if err != nil {
		return nil, err
	}
	defer func() {
		dctx, dcancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer dcancel()
		_, _ = c.Do(dctx, "DELETE", "/v1/projects/"+project+"/keys/"+k.ID, nil, nil)
	}()
	return bench.RunPropagation(ctx, bench.PropagationConfig{Client: c, Project: project, Deployment: d.ID,
		KeyID: k.ID, Secret: k.Secret, Edges: edges, Iterations: iterations, Poll: poll, Progress: progressOut(e, quiet)})
}
