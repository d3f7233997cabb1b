package bench

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"sort"
	"strings"
	"sync"
	"time"

	"github.com/valyala/fasthttp"
)

// PropagationConfig describes a propagation run: a key is unlinked from
// and relinked to a deployment again and again; after each API response,
// every edge is polled with the key until it refuses (unlink) or accepts
// (relink).
type PropagationConfig struct {
	Client                 *OriginClient
	Project, Deployment    string
	KeyID, Secret          string
	Edges                  []string // edge base URLs
	Path, Host             string   // polled with GET; default /v1/models
	Iterations             int      // unlink+relink pairs; default 20
	Poll                   time.Duration
	Timeout                time.Duration // per change; default 10s
	Progress               io.Writer
	PauseBetweenIterations time.Duration
	// GossipOnly lists the indexes (into Edges) of edges whose NATS link is
	// cut, so that changes reach them by gossip alone; their own delays are
	// also summarised apart.
	GossipOnly []int
	// Dial, if set, opens the prober's connections (fasthttp's Dial: addr is
	// the edge URL's host:port); bench wan dials inside each edge's network
	// namespace with it.
	Dial func(addr string) (net.Conn, error)
	// PerEdge keeps every edge's own delay in each sample (EdgesMs).
	PerEdge bool
	// NotBefore, if set, is by edge index how long after the API response
	// the first poll of that edge waits: bench wan sets it a margin short
	// of the one-way delay, which no change can beat, so that it can poll
	// densely (Poll) where the change can arrive without polling all the
	// way there. It cannot make a change seem earlier than it is: a change
	// already shown by the first poll is timed at that poll.
	NotBefore []time.Duration
	// InFlight, if above 1, polls each edge every Poll whether or not the
	// polls before have been answered, up to InFlight at once: a change is
	// then timed by the first answer showing it, not after a slow answer
	// that did not (an accepted request goes to the upstream; on a loaded
	// machine that took bench wan's prober over 20 ms). Default 1: the
	// next poll leaves Poll after the last answer.
	InFlight int
}

// PropagationSample is one change: how long until every edge showed it.
type PropagationSample struct {
	Iteration int     `json:"iteration"`
	Op        string  `json:"op"` // "unlink" or "relink"
	Revision  uint64  `json:"revision"`
	Millis    float64 `json:"ms"`      // until the last edge
	Slowest   int     `json:"slowest"` // index of that edge
	TimedOut  bool    `json:"timed_out,omitempty"`
	// EdgesMs is each edge's own delay, by index (PropagationConfig.PerEdge).
	EdgesMs []float64 `json:"edges_ms,omitempty"`
}

// PropagationResult is the outcome of RunPropagation.
type PropagationResult struct {
	Edges      int         `json:"edges"`
	Iterations int         `json:"iterations"`
	PollMs     float64     `json:"poll_interval_ms"`
	Unlink     Percentiles `json:"unlink"`
	Relink     Percentiles `json:"relink"`
	All        Percentiles `json:"all"`
	PerEdge    Percentiles `json:"per_edge"` // every edge's own delay
	// UnlinkPerEdge is every edge's own delay from an unlink's API response
	// to its refusing the key.
	UnlinkPerEdge Percentiles `json:"unlink_per_edge"`
	// GossipOnlyEdges counts the edges reached by gossip alone (NATS cut);
	// GossipOnlyUnlinkPerEdge and GossipOnlyPerEdge are their own delays.
	GossipOnlyEdges         int                 `json:"gossip_only_edges,omitempty"`
	GossipOnlyUnlinkPerEdge *Percentiles        `json:"gossip_only_unlink_per_edge,omitempty"`
	GossipOnlyPerEdge       *Percentiles        `json:"gossip_only_per_edge,omitempty"`
	Timeouts                int                 `json:"timeouts"`
	Samples                 []PropagationSample `json:"samples"`
}

// RunPropagation runs cfg.Iterations unlink/relink pairs.
func RunPropagation(ctx context.Context, cfg PropagationConfig) (*PropagationResult, error) {
	if cfg.Client == nil || len(cfg.Edges) == 0 || cfg.KeyID == "" || cfg.Secret == "" {
		return nil, errors.New("propagation: client, edges and key are required")
	}
	if cfg.Path == "" {
		cfg.Path = "/v1/models"
	}
	if cfg.Iterations <= 0 {
		cfg.Iterations = 20
	}
	if cfg.Poll <= 0 {
		cfg.Poll = time.Millisecond
	}
	if cfg.Timeout <= 0 {
		cfg.Timeout = 10 * time.Second
	}
	client := &fasthttp.Client{MaxConnsPerHost: max(4, cfg.InFlight), ReadTimeout: 5 * time.Second, WriteTimeout: 5 * time.Second,
		NoDefaultUserAgentHeader: true, Dial: cfg.Dial}
	defer client.CloseIdleConnections()
	p := &prober{client: client, cfg: &cfg}

	// Start from a linked key that every edge accepts.
	if _, err := cfg.Client.Link(ctx, cfg.Project, cfg.Deployment, cfg.KeyID, true); err != nil {
		return nil, fmt.Errorf("linking the key: %w", err)
	}
	if _, _, err := p.waitAll(ctx, true, time.Now()); err != nil {
		return nil, fmt.Errorf("edges never accepted the linked key: %w", err)
	}

	res := &PropagationResult{Edges: len(cfg.Edges), Iterations: cfg.Iterations, PollMs: float64(cfg.Poll) / 1e6,
		GossipOnlyEdges: len(cfg.GossipOnly)}
	unlink, relink, all, perEdge := NewLatency(), NewLatency(), NewLatency(), NewLatency()
	unlinkPerEdge, gossipUnlink, gossipAll := NewLatency(), NewLatency(), NewLatency()
	gossipOnly := map[int]bool{}
	for _, i := range cfg.GossipOnly {
		gossipOnly[i] = true
	}
	for i := range cfg.Iterations {
		for _, link := range []bool{false, true} {
			if err := ctx.Err(); err != nil {
				return nil, err
			}
			rev, err := cfg.Client.Link(ctx, cfg.Project, cfg.Deployment, cfg.KeyID, link)
			t0 := time.Now()
			if err != nil {
				return nil, fmt.Errorf("iteration %d: %w", i, err)
			}
			delays, slowest, werr := p.waitAll(ctx, link, t0)
			op := "unlink"
			if link {
				op = "relink"
			}
			s := PropagationSample{Iteration: i, Op: op, Revision: rev, Slowest: slowest}
			if werr != nil {
				if ctx.Err() != nil {
					return nil, ctx.Err()
				}
				s.TimedOut = true
				res.Timeouts++
			}
			var worst time.Duration
			for i, d := range delays {
				perEdge.Record(d)
				if !link {
					unlinkPerEdge.Record(d)
				}
				if gossipOnly[i] {
					gossipAll.Record(d)
					if !link {
						gossipUnlink.Record(d)
					}
				}
				worst = max(worst, d)
				if cfg.PerEdge {
					s.EdgesMs = append(s.EdgesMs, float64(d)/1e6)
				}
			}
			s.Millis = float64(worst) / 1e6
			all.Record(worst)
			if link {
				relink.Record(worst)
			} else {
				unlink.Record(worst)
			}
			res.Samples = append(res.Samples, s)
			if cfg.Progress != nil && isTerminal(cfg.Progress) {
				fmt.Fprintf(cfg.Progress, "\rpropagation   %3d/%d  %-6s %7.2f ms (rev %d)   ", i+1, cfg.Iterations, op, s.Millis, rev)
			}
		}
		if cfg.PauseBetweenIterations > 0 {
			select {
			case <-ctx.Done():
				return nil, ctx.Err()
			case <-time.After(cfg.PauseBetweenIterations):
			}
		}
	}
	res.Unlink, res.Relink, res.All, res.PerEdge = unlink.Summary(), relink.Summary(), all.Summary(), perEdge.Summary()
	res.UnlinkPerEdge = unlinkPerEdge.Summary()
	if len(gossipOnly) > 0 {
		gu, ga := gossipUnlink.Summary(), gossipAll.Summary()
		res.GossipOnlyUnlinkPerEdge, res.GossipOnlyPerEdge = &gu, &ga
	}
	if cfg.Progress != nil {
		if !isTerminal(cfg.Progress) {
			fmt.Fprintf(cfg.Progress, "propagation   %d edges, %d iterations: last edge p50 %.2f ms, p99 %.2f ms", len(cfg.Edges), cfg.Iterations, res.All.P50, res.All.P99)
		}
		fmt.Fprintln(cfg.Progress)
	}
	return res, nil
}

type prober struct {
	client *fasthttp.Client
	cfg    *PropagationConfig
}

// status sends one GET with the key to edge and returns the status code.
func (p *prober) status(edge string) (int, error) {
	req := fasthttp.AcquireRequest()
	resp := fasthttp.AcquireResponse()
	defer fasthttp.ReleaseRequest(req)
	defer fasthttp.ReleaseResponse(resp)
	req.SetRequestURI(strings.TrimRight(edge, "/") + p.cfg.Path)
	if p.cfg.Host != "" {
		req.UseHostHeader = true
		req.Header.SetHost(p.cfg.Host)
	}
	req.Header.Set("X-API-Key", p.cfg.Secret)
	if err := p.client.Do(req, resp); err != nil {
		return 0, err
	}
	return resp.StatusCode(), nil
}

// waitAll polls every edge until each accepts (accept) or refuses the key;
// it returns each edge's delay from t0 and the slowest edge's index.
func (p *prober) waitAll(ctx context.Context, accept bool, t0 time.Time) ([]time.Duration, int, error) {
	delays := make([]time.Duration, len(p.cfg.Edges))
	errs := make([]error, len(p.cfg.Edges))
	var wg sync.WaitGroup
	deadline := t0.Add(p.cfg.Timeout)
	for i, edge := range p.cfg.Edges {
		wg.Add(1)
		go func() {
			defer wg.Done()
			if i < len(p.cfg.NotBefore) {
				select {
				case <-ctx.Done():
				case <-time.After(time.Until(t0.Add(p.cfg.NotBefore[i]))):
				}
			}
			if p.cfg.InFlight > 1 {
				delays[i], errs[i] = p.pollOverlapping(ctx, edge, accept, t0, deadline)
				return
			}
			for {
				code, err := p.status(edge)
				now := time.Now()
				if err == nil && p.shows(code, accept) {
					delays[i] = now.Sub(t0)
					return
				}
				if now.After(deadline) || ctx.Err() != nil {
					delays[i] = now.Sub(t0)
					errs[i] = fmt.Errorf("edge %s still answered %d (%v) after %v", edge, code, err, p.cfg.Timeout)
					return
				}
				time.Sleep(p.cfg.Poll)
			}
		}()
	}
	wg.Wait()
	slowest := 0
	for i, d := range delays {
		if d > delays[slowest] {
			slowest = i
		}
	}
	return delays, slowest, errors.Join(errs...)
}

// shows reports whether an answer code shows the change: an acceptance
// (accept) or a refusal.
func (p *prober) shows(code int, accept bool) bool {
	return (accept && code == 200) || (!accept && (code == 401 || code == 403))
}

// pollOverlapping polls edge every Poll, up to InFlight polls at once,
// until an answer shows the change; it returns the time from t0 to the
// first such answer. Every poll it started has ended when it returns.
func (p *prober) pollOverlapping(ctx context.Context, edge string, accept bool, t0, deadline time.Time) (time.Duration, error) {
	type answer struct {
		at   time.Time
		code int
		err  error
	}
	answers := make(chan answer, p.cfg.InFlight)
	inFlight := 0
	tick := time.NewTicker(p.cfg.Poll)
	defer tick.Stop()
	var seen time.Time
	var last answer
	send := func() {
		inFlight++
		go func() {
			code, err := p.status(edge)
			answers <- answer{at: time.Now(), code: code, err: err}
		}()
	}
	send()
	for {
		over := time.Now().After(deadline) || ctx.Err() != nil
		if (!seen.IsZero() || over) && inFlight == 0 {
			break
		}
		select {
		case a := <-answers:
			inFlight--
			last = a
			if a.err == nil && p.shows(a.code, accept) && (seen.IsZero() || a.at.Before(seen)) {
				seen = a.at
			}
		case <-tick.C:
			if seen.IsZero() && !over && inFlight < p.cfg.InFlight {
				send()
			}
		}
	}
	if seen.IsZero() {
		return last.at.Sub(t0), fmt.Errorf("edge %s still answered %d (%v) after %v", edge, last.code, last.err, p.cfg.Timeout)
	}
	return seen.Sub(t0), nil
}

// PropagationMarkdown renders a propagation result; the chart (sorted
// per-change delays) is linked as CHART:chart.
func PropagationMarkdown(r *PropagationResult, chart string) string {
	var b strings.Builder
	fmt.Fprintf(&b, "%d edges, %d unlink/relink pairs, each edge polled every %.1f ms; time from the API response until the last edge showed the change.\n\n",
		r.Edges, r.Iterations, r.PollMs)
	if r.GossipOnlyEdges > 0 {
		fmt.Fprintf(&b, "NATS was cut for %d of the edges: changes reached them by gossip alone.\n\n", r.GossipOnlyEdges)
	}
	b.WriteString("| change | count | p50 ms | p90 ms | p99 ms | max ms |\n|---|---:|---:|---:|---:|---:|\n")
	type row struct {
		n string
		p Percentiles
	}
	rows := []row{{"unlink → every edge refuses", r.Unlink}, {"relink → every edge accepts", r.Relink}, {"all changes (last edge)", r.All},
		{"each edge on its own", r.PerEdge}, {"unlink, each edge on its own", r.UnlinkPerEdge}}
	if r.GossipOnlyUnlinkPerEdge != nil && r.GossipOnlyPerEdge != nil {
		rows = append(rows, row{"unlink, each gossip-only edge", *r.GossipOnlyUnlinkPerEdge},
			row{"each gossip-only edge on its own", *r.GossipOnlyPerEdge})
	}
	for _, row := range rows {
		fmt.Fprintf(&b, "| %s | %d | %s | %s | %s | %s |\n", row.n, row.p.Count, ms(row.p.P50), ms(row.p.P90), ms(row.p.P99), ms(row.p.Max))
	}
	if r.Timeouts > 0 {
		fmt.Fprintf(&b, "\n**%d changes timed out** (an edge never showed them).\n", r.Timeouts)
	}
	if chart != "" {
		fmt.Fprintf(&b, "\n![propagation delays](CHART:%s)\n", chart)
	}
	return b.String()
}

// PropagationChart draws every change's delay, sorted, unlink and relink
// as two lines.
func PropagationChart(r *PropagationResult) Chart {
	var un, re []float64
	for _, s := range r.Samples {
		if s.Op == "unlink" {
			un = append(un, s.Millis)
		} else {
			re = append(re, s.Millis)
		}
	}
	sort.Float64s(un)
	sort.Float64s(re)
	n := max(len(un), len(re))
	c := Chart{Title: fmt.Sprintf("Propagation to %d edges (sorted)", r.Edges), XLabel: "changes, fastest to slowest (% of changes)",
		YLabel: "ms until the last edge"}
	for i := range n {
		if n <= 10 || i%max(1, n/10) == 0 || i == n-1 {
			c.X = append(c.X, fmt.Sprintf("%.0f", 100*float64(i+1)/float64(n)))
		} else {
			c.X = append(c.X, "")
		}
	}
	c.Series = []Series{{Name: "unlink", Y: un}, {Name: "relink", Y: re}}
	return c
}
