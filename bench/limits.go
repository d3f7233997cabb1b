package bench

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"math"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/valyala/fasthttp"
)

// A limits run offers one key more than its limit through several edges
// and counts what they admitted together: the measure of whether a limit
// means what the operator typed however the load is spread.

// Load patterns of a limits run.
const (
	// PatternSpread sends request i to edge i mod N (round robin).
	PatternSpread = "spread"
	// PatternMoved sends everything to the first edge for the first half
	// of the window, then everything to the second.
	PatternMoved = "moved"
)

// Units a limit counts.
const (
	UnitRequests = "requests"
	UnitTokens   = "tokens"
)

// LimitPeriod is the period of the limits a limits run measures
// (`rate_limit` and `tokens_per_minute` are per minute): the result's
// WindowMax is the most admitted in any interval of this length.
const LimitPeriod = time.Minute

// LimitsConfig describes one limits run.
type LimitsConfig struct {
	// Name labels the run in reports.
	Name string
	// Edges are the edge base URLs the load is spread over. Required;
	// PatternMoved needs two (with one, everything goes to it).
	Edges []string
	// Secret is the key every request carries. Required.
	Secret string
	// Pattern is PatternSpread (default) or PatternMoved.
	Pattern string
	// Unit is what Limit counts: UnitRequests (default; the key's
	// rate_limit) or UnitTokens (its tokens_per_minute: admitted answers
	// count their metered usage.total_tokens).
	Unit string
	// Limit is the key's bound per LimitPeriod, in Unit. Required.
	Limit int64
	// MaxTokens, if > 0, is sent as max_tokens in every request (the
	// edge's reservation under a token bound).
	MaxTokens int
	// Window is how long load is offered. Required.
	Window time.Duration
	// Rate is the offered requests per second over all edges (open loop:
	// requests are due at this rate whatever the answers). Required.
	Rate float64
	// Concurrency is the number of clients (the most requests in flight).
	// Default 16.
	Concurrency int
	// Bound is the overshoot the target allows beyond Limit·1.05, in Unit
	// (the documented sync bound, see LimitsTarget).
	Bound float64
	// Timeout bounds one request (default 10s).
	Timeout time.Duration
	// Progress, if set, gets a live progress line and a final newline.
	Progress io.Writer
}

// LimitsEdge is what one edge got.
type LimitsEdge struct {
	Sent     int64 `json:"sent"`
	Admitted int64 `json:"admitted"`
	Refused  int64 `json:"refused"`
	// AdmittedUnits is the admitted count in the run's unit (requests, or
	// metered tokens).
	AdmittedUnits int64 `json:"admitted_units"`
}

// LimitsResult is the outcome of RunLimits.
type LimitsResult struct {
	Name        string  `json:"name"`
	Pattern     string  `json:"pattern"`
	Unit        string  `json:"unit"`
	Edges       int     `json:"edges"`
	Limit       int64   `json:"limit"` // per LimitPeriod, in Unit
	PeriodS     float64 `json:"period_s"`
	WindowS     float64 `json:"window_s"`
	ElapsedS    float64 `json:"elapsed_s"`
	Rate        float64 `json:"rate"` // offered requests per second
	Concurrency int     `json:"concurrency"`
	MaxTokens   int     `json:"max_tokens,omitempty"`
	// Offered is every request that fell due; Sent those sent (Missed
	// fell due while every client was busy and were not sent).
	Offered int64 `json:"offered"`
	Sent    int64 `json:"sent"`
	Missed  int64 `json:"missed"`
	// Admitted are 2xx answers, Refused 429s; Other is everything else
	// (transport errors as "error"), by status.
	Admitted int64            `json:"admitted"`
	Refused  int64            `json:"refused"`
	Other    map[string]int64 `json:"other,omitempty"`
	// AdmittedUnits is what was admitted in Unit: Admitted for requests,
	// the sum of admitted answers' usage.total_tokens for tokens.
	// OfferedUnits estimates what was offered in Unit (for tokens: Offered
	// times the mean metered tokens of an admitted answer).
	AdmittedUnits int64 `json:"admitted_units"`
	OfferedUnits  int64 `json:"offered_units"`
	// WindowMax is the most admitted (in Unit) in any interval of
	// PeriodS, by send time: the quantity the limit bounds (with a window
	// no longer than the period, all of AdmittedUnits).
	WindowMax int64 `json:"window_max"`
	// AdmittedRatio is AdmittedUnits / Limit; Overshoot is
	// max(0, WindowMax − Limit) / Limit.
	AdmittedRatio float64 `json:"admitted_ratio"`
	Overshoot     float64 `json:"overshoot"`
	// Target is Limit·1.05 + Bound; Met says WindowMax ≤ Target.
	Bound   float64      `json:"bound"`
	Target  float64      `json:"target"`
	Met     bool         `json:"met"`
	PerEdge []LimitsEdge `json:"per_edge"`
	// Timeline is the admitted units per second of the run, cumulative.
	Timeline  []int64 `json:"timeline"`
	LastError string  `json:"last_error,omitempty"`
}

// LimitsTarget is the bound a limits run is held to: limit·1.05 + bound.
func LimitsTarget(limit int64, bound float64) float64 { return float64(limit)*1.05 + bound }

// SyncBound is the overshoot the edges' count exchange allows at most
// without tightening, in requests: E·r·(Δ + d) (docs/design.md, "Edge:
// limits across edges"), with E·r the total arrival rate (requests per
// second over all edges), Δ the sync interval and d the delivery delay,
// taken as 0 on loopback — what the edges admit between two reports.
func SyncBound(rate float64, sync time.Duration) float64 { return rate * sync.Seconds() }

// LimitsBody is the chat request a limits run sends, with max_tokens when
// maxTokens > 0.
func LimitsBody(maxTokens int) string {
	if maxTokens > 0 {
		return fmt.Sprintf(`{"model":"mock","max_tokens":%d,"messages":[{"role":"user","content":"hi"}]}`, maxTokens)
	}
	return `{"model":"mock","messages":[{"role":"user","content":"hi"}]}`
}

func (c *LimitsConfig) fill() error {
	if len(c.Edges) == 0 || c.Secret == "" || c.Limit <= 0 || c.Window <= 0 || c.Rate <= 0 {
		return errors.New("limits: edges, key, limit, window and rate are required")
	}
	switch c.Pattern {
	case "":
		c.Pattern = PatternSpread
	case PatternSpread, PatternMoved:
	default:
		return fmt.Errorf("limits: unknown pattern %q", c.Pattern)
	}
	switch c.Unit {
	case "":
		c.Unit = UnitRequests
	case UnitRequests, UnitTokens:
	default:
		return fmt.Errorf("limits: unknown unit %q", c.Unit)
	}
	if c.Concurrency <= 0 {
		c.Concurrency = 16
	}
	if c.Timeout <= 0 {
		c.Timeout = 10 * time.Second
	}
	if c.Name == "" {
		c.Name = c.Pattern
	}
	return nil
}

// limitsSample is one request's outcome.
type limitsSample struct {
	at     time.Duration // send time since the start
	edge   int
	status int // 0: transport error
	units  int64
}

// RunLimits offers cfg.Rate requests per second for cfg.Window and counts
// what the edges admitted. It returns what was measured when ctx ends.
func RunLimits(ctx context.Context, cfg LimitsConfig) (*LimitsResult, error) {
	if err := cfg.fill(); err != nil {
		return nil, err
	}
	client := &fasthttp.Client{MaxConnsPerHost: cfg.Concurrency + 4, ReadTimeout: cfg.Timeout, WriteTimeout: cfg.Timeout,
		NoDefaultUserAgentHeader: true, MaxIdleConnDuration: 30 * time.Second}
	defer client.CloseIdleConnections()
	body := LimitsBody(cfg.MaxTokens)
	urls := make([]string, len(cfg.Edges))
	for i, e := range cfg.Edges {
		urls[i] = strings.TrimRight(e, "/") + "/v1/chat/completions"
	}

	start := time.Now()
	runCtx, cancel := context.WithDeadline(ctx, start.Add(cfg.Window))
	defer cancel()
	var seq, done atomic.Int64
	var mu sync.Mutex
	var samples []limitsSample
	var lastErr string
	due := make(chan time.Time, cfg.Concurrency)
	var wg sync.WaitGroup
	for range cfg.Concurrency {
		wg.Add(1)
		go func() {
			defer wg.Done()
			var mine []limitsSample
			var errText string
			for t := range due {
				if runCtx.Err() != nil {
					continue // drain without sending
				}
				at := t.Sub(start)
				edge := cfg.edgeFor(seq.Add(1)-1, at)
				s, err := limitsOne(client, urls[edge], cfg.Secret, body, cfg.Unit == UnitTokens)
				s.at, s.edge = at, edge
				if err != nil {
					errText = err.Error()
				}
				mine = append(mine, s)
				done.Add(1)
			}
			mu.Lock()
			samples = append(samples, mine...)
			if errText != "" {
				lastErr = errText
			}
			mu.Unlock()
		}()
	}
	stopProgress := limitsProgress(cfg, start, &done)
	missed := schedule(runCtx, start, cfg.Rate, due)
	close(due)
	wg.Wait()
	stopProgress()
	elapsed := time.Since(start)

	res := summarizeLimits(cfg, samples, missed)
	res.ElapsedS, res.LastError = elapsed.Seconds(), lastErr
	return res, nil
}

// edgeFor is the edge the i-th request (due at offset at) goes to.
func (c *LimitsConfig) edgeFor(i int64, at time.Duration) int {
	if c.Pattern == PatternMoved {
		if at < c.Window/2 || len(c.Edges) < 2 {
			return 0
		}
		return 1
	}
	return int(i % int64(len(c.Edges)))
}

// limitsOne sends one chat request; for tokens it reads the answer's
// usage.total_tokens.
func limitsOne(client *fasthttp.Client, url, secret, body string, tokens bool) (limitsSample, error) {
	req := fasthttp.AcquireRequest()
	resp := fasthttp.AcquireResponse()
	defer fasthttp.ReleaseRequest(req)
	defer fasthttp.ReleaseResponse(resp)
	req.SetRequestURI(url)
	req.Header.SetMethod(fasthttp.MethodPost)
	req.Header.SetContentType("application/json")
	req.Header.Set("X-API-Key", secret)
	req.SetBodyString(body)
	if err := client.Do(req, resp); err != nil {
		return limitsSample{}, err
	}
	s := limitsSample{status: resp.StatusCode()}
	if s.status/100 != 2 {
		return s, nil
	}
	s.units = 1
	if tokens {
		var answer struct {
			Usage struct {
				TotalTokens int64 `json:"total_tokens"`
			} `json:"usage"`
		}
		if err := json.Unmarshal(resp.Body(), &answer); err != nil {
			return s, fmt.Errorf("an admitted answer without usage: %w", err)
		}
		s.units = answer.Usage.TotalTokens
	}
	return s, nil
}

func summarizeLimits(cfg LimitsConfig, samples []limitsSample, missed int64) *LimitsResult {
	slices.SortFunc(samples, func(a, b limitsSample) int { return int(a.at - b.at) })
	res := &LimitsResult{Name: cfg.Name, Pattern: cfg.Pattern, Unit: cfg.Unit, Edges: len(cfg.Edges), Limit: cfg.Limit,
		PeriodS: LimitPeriod.Seconds(), WindowS: cfg.Window.Seconds(), Rate: cfg.Rate, Concurrency: cfg.Concurrency,
		MaxTokens: cfg.MaxTokens, Missed: missed, Bound: cfg.Bound, PerEdge: make([]LimitsEdge, len(cfg.Edges))}
	seconds := int(math.Ceil(cfg.Window.Seconds()))
	res.Timeline = make([]int64, seconds)
	var inWindow int64
	lo := 0
	for _, s := range samples {
		res.Sent++
		pe := &res.PerEdge[s.edge]
		pe.Sent++
		switch {
		case s.status/100 == 2:
			res.Admitted++
			res.AdmittedUnits += s.units
			pe.Admitted++
			pe.AdmittedUnits += s.units
			if i := int(s.at / time.Second); i < len(res.Timeline) {
				res.Timeline[i] += s.units
			}
		case s.status == fasthttp.StatusTooManyRequests:
			res.Refused++
			pe.Refused++
		default:
			if res.Other == nil {
				res.Other = map[string]int64{}
			}
			res.Other[statusKey(s.status)]++
		}
	}
	// The most admitted in any LimitPeriod: a window ending at each
	// admitted sample (samples are sorted by send time).
	for _, s := range samples {
		if s.status/100 != 2 {
			continue
		}
		inWindow += s.units
		for ; samples[lo].at <= s.at-LimitPeriod; lo++ {
			if samples[lo].status/100 == 2 {
				inWindow -= samples[lo].units
			}
		}
		res.WindowMax = max(res.WindowMax, inWindow)
	}
	for i := 1; i < len(res.Timeline); i++ {
		res.Timeline[i] += res.Timeline[i-1]
	}
	res.Offered = res.Sent + missed
	res.OfferedUnits = res.Offered
	if cfg.Unit == UnitTokens && res.Admitted > 0 {
		res.OfferedUnits = int64(math.Round(float64(res.Offered) * float64(res.AdmittedUnits) / float64(res.Admitted)))
	}
	res.AdmittedRatio = float64(res.AdmittedUnits) / float64(cfg.Limit)
	res.Overshoot = max(0, float64(res.WindowMax-cfg.Limit)) / float64(cfg.Limit)
	res.Target = LimitsTarget(cfg.Limit, cfg.Bound)
	res.Met = float64(res.WindowMax) <= res.Target
	return res
}

// limitsProgress prints a progress line every second (terminals only)
// until the returned func is called.
func limitsProgress(cfg LimitsConfig, start time.Time, done *atomic.Int64) func() {
	if cfg.Progress == nil {
		return func() {}
	}
	stop := make(chan struct{})
	var wg sync.WaitGroup
	if isTerminal(cfg.Progress) {
		wg.Add(1)
		go func() {
			defer wg.Done()
			t := time.NewTicker(time.Second)
			defer t.Stop()
			for {
				select {
				case <-stop:
					return
				case <-t.C:
					fmt.Fprintf(cfg.Progress, "\rlimits %-8s %5.1fs/%.0fs  %d sent   ", cfg.Name,
						time.Since(start).Seconds(), cfg.Window.Seconds(), done.Load())
				}
			}
		}()
	}
	return func() {
		close(stop)
		wg.Wait()
		if !isTerminal(cfg.Progress) {
			fmt.Fprintf(cfg.Progress, "limits %s: %d sent in %.1fs", cfg.Name, done.Load(), time.Since(start).Seconds())
		}
		fmt.Fprintln(cfg.Progress)
	}
}

// LimitsMarkdown renders limits results as one table, a row per run, and
// a verdict line per run.
func LimitsMarkdown(results []*LimitsResult) string {
	var b strings.Builder
	b.WriteString("| case | unit | edges | window s | offered | sent | admitted (2xx) | refused (429) | other | limit | admitted/limit | max in any 60 s | overshoot | target ≤ | verdict |\n")
	b.WriteString("|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|\n")
	for _, r := range results {
		var other int64
		for _, n := range r.Other {
			other += n
		}
		admitted := fmt.Sprint(r.Admitted)
		offered := fmt.Sprint(r.Offered)
		if r.Unit == UnitTokens {
			admitted = fmt.Sprintf("%d (%d tokens)", r.Admitted, r.AdmittedUnits)
			offered = fmt.Sprintf("%d (~%d tokens)", r.Offered, r.OfferedUnits)
		}
		verdict := "met"
		if !r.Met {
			verdict = "**MISSED**"
		}
		fmt.Fprintf(&b, "| %s | %s | %d | %.0f | %s | %d | %s | %d | %d | %d | %.2fx | %d | %.1f%% | %.0f | %s |\n",
			r.Name, r.Unit, r.Edges, r.WindowS, offered, r.Sent, admitted, r.Refused, other, r.Limit,
			r.AdmittedRatio, r.WindowMax, 100*r.Overshoot, r.Target, verdict)
	}
	b.WriteString("\nAdmitted per edge:\n\n| case | edge | sent | admitted | refused |\n|---|---:|---:|---:|---:|\n")
	for _, r := range results {
		for i, e := range r.PerEdge {
			if e.Sent > 0 {
				fmt.Fprintf(&b, "| %s | %d | %d | %d | %d |\n", r.Name, i+1, e.Sent, e.Admitted, e.Refused)
			}
		}
		if r.LastError != "" {
			fmt.Fprintf(&b, "| %s | (a transport error: %s) | | | |\n", r.Name, strings.ReplaceAll(r.LastError, "|", "/"))
		}
	}
	return b.String()
}

// LimitsChart draws each run's cumulative admitted units (as a share of
// its limit) second by second.
func LimitsChart(results []*LimitsResult) Chart {
	c := Chart{Title: "bench limits: admitted over the window (% of the limit)", XLabel: "seconds into the window",
		YLabel: "admitted, % of the limit"}
	n := 0
	for _, r := range results {
		n = max(n, len(r.Timeline))
	}
	step := max(1, n/10) // at most about ten labels
	for i := range n {
		if i%step == step-1 || i == n-1 {
			c.X = append(c.X, fmt.Sprint(i+1))
		} else {
			c.X = append(c.X, "")
		}
	}
	for _, r := range results {
		s := Series{Name: r.Name}
		for _, v := range r.Timeline {
			s.Y = append(s.Y, 100*float64(v)/float64(r.Limit))
		}
		c.Series = append(c.Series, s)
	}
	return c
}
