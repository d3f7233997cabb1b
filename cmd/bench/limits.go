package main

import (
	"context"
	"encoding/json"
	"flag"
	"fmt"
	"io"
	"net/http"
	"strings"
	"time"

	"github.com/keymesh/keymesh/bench"
	"github.com/keymesh/keymesh/origin/apiclient"
)

func init() {
	register("limits", "offer one key more than its limit over N edges and count what they admitted together", runLimits)
}

// The limits cases.
const (
	caseSpread = "spread" // round robin over every edge
	caseMoved  = "moved"  // all on edge 1 for half the window, then all on edge 2
	caseTokens = "tokens" // spread, against tokens_per_minute, requests carrying max_tokens
)

// defaultLimit is the requests per minute of a 60 s window; a shorter
// window scales it down (see limitsAbout).
const defaultLimit = 600

// limitsOpts are a limits run's settings (flags of bench limits and of
// bench suite).
type limitsOpts struct {
	edges int
	// window is how long each case offers load; limit the key's bound per
	// minute (0: scaledLimit); factor the offered load as a multiple of
	// limit per span (a minute, or the window if shorter).
	window time.Duration
	limit  int64
	factor float64
	conc   int
	cases  []string
	// maxTokens is the tokens case's max_tokens.
	maxTokens int
	// sync is the edges' sync interval Δ the default bound is computed
	// from; bound, if ≥ 0, replaces that bound (in requests; the tokens
	// case multiplies it by maxTokens).
	sync  time.Duration
	bound float64
	quiet bool
}

const limitsAbout = "bench limits gives one key a limit L per minute and offers it factor·L a minute (factor·L in all\n" +
	"when the window W is shorter) through N edges of an in-process stack (origin with embedded NATS, N\n" +
	"edges on their defaults in one gossip ring, a mock upstream), then counts what the edges admitted\n" +
	"together. Cases (each with a fresh key):\n" +
	"  spread  C clients send round robin over all N edges (the key's rate_limit: L requests/min)\n" +
	"  moved   all load on edge 1 for the first half of W, then all on edge 2\n" +
	"  tokens  as spread, against the key's tokens_per_minute (L × the metered tokens of one answer,\n" +
	"          measured first), every request carrying max_tokens\n" +
	"Reported per case: offered, admitted (2xx), refused (429), limit, admitted/limit, the most admitted in\n" +
	"any 60 s (by send time), overshoot = max(0, that − L)/L, and the verdict against the target\n" +
	"admitted ≤ L·1.05 + bound, the bound being docs/design.md's E·r·(Δ + d) with d = 0 on loopback (the\n" +
	"total offered rate times --sync-interval;\n" +
	"for tokens times max_tokens, what each admitted request may hold) unless --bound is given.\n" +
	"Scaling: a window shorter than a minute lies inside one minute, so the key may spend its whole L in\n" +
	"it: --limit 0 (the default) takes L = 600 × W / 60 s (W = 10 s: L = 100), which keeps the offered rate\n" +
	"(factor·L/W = 40 requests/s with the defaults) and so the bound E·r·Δ the same as for a minute, while L\n" +
	"itself shrinks: the same bound is a larger share of a smaller L. Edges that count alone admit about\n" +
	"min(N, factor)·L spread and 2·L moved in a window up to a minute; edges that share their counts about L."

func limitsFlags(fs *flag.FlagSet) *limitsOpts {
	o := &limitsOpts{}
	fs.IntVar(&o.edges, "edges", 4, "edges the load is spread over")
	fs.DurationVar(&o.window, "duration", time.Minute, "the window W each case offers load for")
	fs.Int64Var(&o.limit, "limit", 0, "the key's limit L per minute (requests; 0: 600, scaled to W when W is shorter: 600 × W / 60 s)")
	fs.Float64Var(&o.factor, "factor", 4, "offered load as a multiple of L per minute (per window, if shorter)")
	fs.IntVar(&o.conc, "concurrency", 16, "clients (the most requests in flight)")
	fs.IntVar(&o.maxTokens, "max-tokens", 16, "max_tokens of the tokens case's requests")
	fs.DurationVar(&o.sync, "sync-interval", 200*time.Millisecond, "the edges' limit sync interval Δ of the default bound E·r·Δ (the edge's --limits-sync default)")
	fs.Float64Var(&o.bound, "bound", -1, "the allowed overshoot beyond L·1.05, in requests (negative: E·r·Δ)")
	return o
}

// parseCases reads a comma-separated list of cases.
func parseCases(s string) ([]string, error) {
	var out []string
	for c := range strings.SplitSeq(s, ",") {
		switch c = strings.TrimSpace(c); c {
		case "":
		case caseSpread, caseMoved, caseTokens:
			out = append(out, c)
		default:
			return nil, fmt.Errorf("unknown case %q (spread, moved, tokens)", c)
		}
	}
	if len(out) == 0 {
		return nil, fmt.Errorf("no case given")
	}
	return out, nil
}

// scaledLimit is the default limit of a window: defaultLimit for a minute
// or more, in proportion for a shorter one.
func scaledLimit(window time.Duration) int64 {
	return max(1, int64(float64(defaultLimit)*span(window).Seconds()/bench.LimitPeriod.Seconds()))
}

// span is the part of a window one limit's minute covers: the window, or a
// minute of a longer one. The offered load is factor·L per span.
func span(window time.Duration) time.Duration { return min(window, bench.LimitPeriod) }

func (o *limitsOpts) check() error {
	if o.edges <= 0 || o.window < time.Second || o.limit < 0 || o.factor <= 0 || o.conc <= 0 || o.maxTokens <= 0 || o.sync <= 0 {
		return fmt.Errorf("--edges, --factor, --concurrency, --max-tokens and --sync-interval must be positive, --duration at least 1s, --limit at least 0")
	}
	if o.limit == 0 {
		o.limit = scaledLimit(o.window)
	}
	if o.limit > 10_000_000 {
		return fmt.Errorf("--limit must be at most 10000000 (the largest rate_limit)")
	}
	return nil
}

func runLimits(e *env, args []string) int {
	fs := flag.NewFlagSet("bench limits", flag.ContinueOnError)
	o := limitsFlags(fs)
	cases := fs.String("cases", "spread,moved,tokens", "cases to run, comma-separated: spread, moved, tokens")
	out := fs.String("out", "", "report path without extension; default under $TMPDIR/keymesh-bench")
	fs.BoolVar(&o.quiet, "quiet", false, "no progress lines on stderr")
	if code, done := parseFlags(e, fs, limitsAbout, args); done {
		return code
	}
	var err error
	if o.cases, err = parseCases(*cases); err == nil {
		err = o.check()
	}
	if err != nil {
		fmt.Fprintf(e.stderr, "bench limits: %v\n", err)
		return 2
	}
	res, err := limitsStack(e.ctx, e, *o)
	if err != nil {
		fmt.Fprintf(e.stderr, "bench limits: %v\n", err)
		return 1
	}
	fmt.Fprint(e.stdout, bench.LimitsMarkdown(res))
	base := *out
	if base == "" {
		base = defaultOut("limits")
	}
	if err := writeReport(e, bench.Report{Base: base, JSON: res,
		Markdown: "# bench limits\n\nMachine: " + bench.DescribeMachine().Markdown() + "\n\n" + limitsMarkdown(res, "limits"),
		Charts:   map[string]bench.Chart{"limits": bench.LimitsChart(res)}}); err != nil {
		fmt.Fprintf(e.stderr, "bench limits: %v\n", err)
		return 1
	}
	return 0
}

// limitsMarkdown is the report's section: what ran, the table, the chart
// (linked as CHART:chart when chart is non-empty).
func limitsMarkdown(res []*bench.LimitsResult, chart string) string {
	var b strings.Builder
	if len(res) > 0 {
		r := res[0]
		fmt.Fprintf(&b, "A fresh key per case, %d edges on their defaults (an in-process stack, one gossip ring), each case offering "+
			"%.0f requests/s (%d clients, open loop) for a window of %.0f s. ", r.Edges, r.Rate, r.Concurrency, r.WindowS)
		if r.WindowS < bench.LimitPeriod.Seconds() && r.Limit == scaledLimit(time.Duration(r.WindowS*float64(time.Second))) {
			fmt.Fprintf(&b, "The window is shorter than the limits' minute and lies inside one, so the key may spend its whole "+
				"limit in it: L is scaled to the window (600 × %.0f s / 60 s = %d requests per minute), which keeps the offered rate "+
				"and so the sync bound what they are for a minute of 600. ", r.WindowS, r.Limit)
		}
		fmt.Fprintf(&b, "Target: the most admitted in any 60 s ≤ L·1.05 + bound, the bound E·r·Δ = %.0f requests/s × the sync "+
			"interval unless given (here %.1f requests", r.Rate, r.Bound)
		for _, t := range res {
			if t.Unit == bench.UnitTokens && t.MaxTokens > 0 {
				fmt.Fprintf(&b, "; for tokens, the same times max_tokens %d, what each admitted request may hold: %.0f tokens, "+
					"the limit being L × the %d tokens an answer is metered", t.MaxTokens, t.Bound, t.Limit/r.Limit)
				break
			}
		}
		b.WriteString("). Edges that count alone admit about N × L spread and 2 × L moved (each edge its own L, plus its " +
			"refill); edges that share their counts about L.\n\n")
	}
	b.WriteString(bench.LimitsMarkdown(res))
	if chart != "" {
		fmt.Fprintf(&b, "\n![admitted over the window](CHART:%s)\n", chart)
	}
	return b.String()
}

// limitsStack runs o.cases on a new in-process stack.
func limitsStack(ctx context.Context, e *env, o limitsOpts) ([]*bench.LimitsResult, error) {
	// Gossip too: limits travel over NATS and the gossip ring, as in a
	// deployment.
	st, err := startStack(ctx, stackOpts{edges: o.edges, gossip: o.edges > 1})
	if err != nil {
		return nil, err
	}
	defer st.close()
	rate := o.factor * float64(o.limit) / span(o.window).Seconds()
	bound := o.bound
	if bound < 0 {
		bound = bench.SyncBound(rate, o.sync)
	}
	var out []*bench.LimitsResult
	for i, c := range o.cases {
		cfg := bench.LimitsConfig{Name: c, Edges: st.edgeURLs(), Window: o.window, Rate: rate, Concurrency: o.conc,
			Limit: o.limit, Bound: bound, Progress: progressOut(e, o.quiet)}
		in := apiclient.KeyCreate{Name: fmt.Sprintf("limits-%d-%s", i, c), Deployments: []string{st.dep.ID}}
		switch c {
		case caseSpread:
			cfg.Pattern = bench.PatternSpread
			in.RateLimit = &apiclient.RateLimit{RequestsPerMinute: int(o.limit)}
		case caseMoved:
			cfg.Pattern = bench.PatternMoved
			in.RateLimit = &apiclient.RateLimit{RequestsPerMinute: int(o.limit)}
		case caseTokens:
			per, err := st.tokensPerAnswer(ctx, o.maxTokens)
			if err != nil {
				return nil, err
			}
			cfg.Pattern, cfg.Unit, cfg.MaxTokens = bench.PatternSpread, bench.UnitTokens, o.maxTokens
			cfg.Limit = o.limit * per
			cfg.Bound = bound * float64(o.maxTokens)
			in.TokensPerMinute = cfg.Limit
		}
		k, err := st.api.CreateKeyWith(ctx, benchProject, in)
		if err != nil {
			return nil, err
		}
		if err := st.waitApplied(ctx, k.Revision); err != nil {
			return nil, err
		}
		cfg.Secret = k.Secret
		r, err := bench.RunLimits(ctx, cfg)
		if err != nil {
			return nil, err
		}
		out = append(out, r)
	}
	return out, nil
}

// tokensPerAnswer is the metered tokens (usage.total_tokens) of one limits
// request with maxTokens, measured through the first edge with a key
// without bounds.
func (s *stack) tokensPerAnswer(ctx context.Context, maxTokens int) (int64, error) {
	ks, err := s.keys(ctx, 1, "limits-probe")
	if err != nil {
		return 0, err
	}
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, s.edges[0].url+"/v1/chat/completions",
		strings.NewReader(bench.LimitsBody(maxTokens)))
	if err != nil {
		return 0, err
	}
	req.Header.Set("Content-Type", "application/json")
	req.Header.Set("X-API-Key", ks[0].Secret)
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return 0, err
	}
	defer resp.Body.Close()
	var answer struct {
		Usage struct {
			TotalTokens int64 `json:"total_tokens"`
		} `json:"usage"`
	}
	if err := json.NewDecoder(io.LimitReader(resp.Body, 1<<20)).Decode(&answer); err != nil || resp.StatusCode != http.StatusOK {
		return 0, fmt.Errorf("measuring an answer's tokens: status %d, %v", resp.StatusCode, err)
	}
	if answer.Usage.TotalTokens <= 0 {
		return 0, fmt.Errorf("measuring an answer's tokens: the answer reported none")
	}
	return answer.Usage.TotalTokens, nil
}
