package bench

import (
	"context"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"os"
	"sort"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/valyala/fasthttp"

	"github.com/keymesh/keymesh/apikey"
)

// Key classes of a load's key mix.
const (
	ClassValid     = "valid"
	ClassUnknown   = "unknown"
	ClassMalformed = "malformed"
	ClassRevoked   = "revoked"
	// ClassRevokedAfter reports revoked keys sent after Revoke returned:
	// every one of them must be refused.
	ClassRevokedAfter = "revoked_after"
	ClassNone         = "none" // no credential at all (direct upstream runs)
)

// Credential headers a load can send its key in.
const (
	HeaderXAPIKey = "x-api-key"
	HeaderBearer  = "bearer"
	HeaderBoth    = "both" // half the requests each way
)

// KeyMix weighs the key classes of a load; weights need not add up to 1.
// A zero mix means every request carries a valid key.
type KeyMix struct {
	Valid     float64 `json:"valid"`
	Unknown   float64 `json:"unknown"`
	Malformed float64 `json:"malformed"`
	Revoked   float64 `json:"revoked"`
}

func (m KeyMix) total() float64 { return m.Valid + m.Unknown + m.Malformed + m.Revoked }

// String is "valid=0.9 unknown=0.05 ...", zero weights left out.
func (m KeyMix) String() string {
	var parts []string
	for _, c := range []struct {
		n string
		w float64
	}{{ClassValid, m.Valid}, {ClassUnknown, m.Unknown}, {ClassMalformed, m.Malformed}, {ClassRevoked, m.Revoked}} {
		if c.w > 0 {
			parts = append(parts, fmt.Sprintf("%s=%g", c.n, c.w))
		}
	}
	if len(parts) == 0 {
		return "valid=1"
	}
	return strings.Join(parts, " ")
}

// LoadConfig describes one load run.
type LoadConfig struct {
	// Name labels the run in reports ("keymesh edge", "nginx", ...).
	Name string
	// URL is the target's base URL, e.g. http://127.0.0.1:8080.
	URL string
	// Path is requested on URL; default /v1/chat/completions (POSTed a
	// small chat body; a GET path such as /v1/models sends no body).
	Path string
	// Host, if set, is sent as the Host header.
	Host string
	// Duration of the measured run. Required.
	Duration time.Duration
	// Rate > 0 runs open-loop: requests are due at a fixed rate whatever
	// the answers do, and latency counts from when a request was due (no
	// coordinated omission). Rate == 0 runs closed-loop.
	Rate float64
	// Concurrency is the number of workers (closed loop: requests in
	// flight; open loop: the most in flight). Default 32.
	Concurrency int
	// ValidKeys are keys the target accepts; RevokedKeys are accepted at
	// the start and revoked by Revoke during the run.
	ValidKeys, RevokedKeys []string
	// Mix weighs the key classes (zero: all valid).
	Mix KeyMix
	// UnknownKeys is the size of the pool of well-formed unknown keys
	// (default 1000): each distinct key costs the edge one origin lookup
	// before its negative cache answers.
	UnknownKeys int
	// StreamShare in [0,1] is the share of requests sent with
	// "stream": true; their time to first byte is measured too.
	StreamShare float64
	// StreamChunkInterval, if set, is sent as X-Mock-Chunk-Interval.
	StreamChunkInterval time.Duration
	// CredentialHeader is HeaderXAPIKey (default), HeaderBearer or HeaderBoth.
	CredentialHeader string
	// Timeout bounds one request (default 10s).
	Timeout time.Duration
	// Revoke, if set, is called once, RevokeAfter into the run (default
	// Duration/2), to revoke RevokedKeys.
	Revoke      func(ctx context.Context) error
	RevokeAfter time.Duration
	// Progress, if set, gets a live progress line (\r-updated) and a final
	// newline.
	Progress io.Writer
	// Seed makes key and stream choices repeatable (0: fixed default).
	Seed uint64
}

// ClassResult is what one key class got.
type ClassResult struct {
	Requests int64            `json:"requests"`
	Status   map[string]int64 `json:"status"`
	Latency  Percentiles      `json:"latency"`
}

// LoadResult is the outcome of RunLoad.
type LoadResult struct {
	Name        string  `json:"name"`
	Target      string  `json:"target"`
	Mode        string  `json:"mode"` // "closed" or "open"
	Concurrency int     `json:"concurrency"`
	Rate        float64 `json:"rate,omitempty"`
	StreamShare float64 `json:"stream_share"`
	Mix         KeyMix  `json:"mix"`
	Started     string  `json:"started"`
	// Elapsed is the measured wall time in seconds.
	Elapsed float64 `json:"elapsed_s"`
	// Requests is every request answered or failed; Errors those that
	// failed in transport or got a 5xx.
	Requests int64 `json:"requests"`
	Errors   int64 `json:"errors"`
	// Missed counts open-loop requests that could not even be queued
	// because every worker was busy and the queue was full; Unsent those
	// queued but still waiting for a worker when the run ended. An open
	// loop schedules exactly Rate × Duration requests (those due before
	// the end): Requests + Missed + Unsent.
	Missed int64 `json:"missed,omitempty"`
	Unsent int64 `json:"unsent,omitempty"`
	// Throughput is Requests / Elapsed.
	Throughput float64 `json:"throughput_rps"`
	// Status counts answers by status code ("error" for transport errors).
	Status  map[string]int64       `json:"status"`
	ByClass map[string]ClassResult `json:"by_class"`
	Latency Percentiles            `json:"latency"`
	// StreamTTFB is the time to the first body byte of streamed requests
	// that got a 200; StreamTotal the time to their last byte.
	StreamTTFB Percentiles `json:"stream_ttfb"`
	// Unary is the latency of requests not streamed (what a comparison's
	// p99 is taken from: a stream's length is the upstream's pace).
	Unary       Percentiles `json:"unary"`
	StreamTotal Percentiles `json:"stream_total"`
	// RevokedAt is when Revoke returned, in seconds into the run.
	RevokedAt float64 `json:"revoked_at_s,omitempty"`
	RevokeErr string  `json:"revoke_error,omitempty"`
	// LastError is one transport error, for the report.
	LastError string `json:"last_error,omitempty"`
	// RoundThroughput is the throughput of each round a merged result
	// (MergeLoad) was made of.
	RoundThroughput []float64 `json:"round_throughput_rps,omitempty"`

	workers []*worker // what the summary is computed from
}

// Request bodies the load sends.
const (
	loadChatBody   = `{"model":"mock-model","messages":[{"role":"user","content":"Say hello."}]}`
	loadStreamBody = `{"model":"mock-model","stream":true,"messages":[{"role":"user","content":"Say hello."}]}`
)

// MalformedKeys are strings an edge must refuse without any lookup: wrong
// prefix, wrong length, bad checksum, bad alphabet.
func MalformedKeys() []string {
	good, _ := apikey.Generate()
	badSum := []byte(good)
	last := badSum[len(badSum)-1]
	if last == 'a' {
		badSum[len(badSum)-1] = 'b'
	} else {
		badSum[len(badSum)-1] = 'a'
	}
	badAlpha := []byte(good)
	badAlpha[len(apikey.Prefix)+3] = '!'
	return []string{
		"sk-not-a-keymesh-key",
		"km_short",
		"xx_" + good[3:],
		string(badSum),
		string(badAlpha),
		good + "extra",
	}
}

// UnknownKeys returns n well-formed keys no origin knows.
func UnknownKeys(n int) []string {
	out := make([]string, n)
	for i := range out {
		k, err := apikey.Generate()
		if err != nil {
			panic(err) // crypto/rand failing is not recoverable
		}
		out[i] = k
	}
	return out
}

func (c *LoadConfig) fill() error {
	if c.URL == "" {
		return errors.New("load: URL is required")
	}
	if c.Duration <= 0 {
		return errors.New("load: Duration must be positive")
	}
	if c.Path == "" {
		c.Path = "/v1/chat/completions"
	}
	if c.Concurrency <= 0 {
		c.Concurrency = 32
	}
	if c.UnknownKeys <= 0 {
		c.UnknownKeys = 1000
	}
	if c.Timeout <= 0 {
		c.Timeout = 10 * time.Second
	}
	if c.CredentialHeader == "" {
		c.CredentialHeader = HeaderXAPIKey
	}
	switch c.CredentialHeader {
	case HeaderXAPIKey, HeaderBearer, HeaderBoth:
	default:
		return fmt.Errorf("load: credential header %q: want %s, %s or %s", c.CredentialHeader, HeaderXAPIKey, HeaderBearer, HeaderBoth)
	}
	if c.StreamShare < 0 || c.StreamShare > 1 {
		return errors.New("load: stream share must be in [0,1]")
	}
	if c.Rate < 0 {
		return errors.New("load: rate must not be negative")
	}
	m := c.Mix
	if m.Valid < 0 || m.Unknown < 0 || m.Malformed < 0 || m.Revoked < 0 {
		return errors.New("load: key mix weights must not be negative")
	}
	if m.total() == 0 {
		c.Mix = KeyMix{Valid: 1}
	}
	if c.Mix.Valid > 0 && len(c.ValidKeys) == 0 {
		return errors.New("load: the mix has valid keys but none were given")
	}
	if c.Mix.Revoked > 0 && len(c.RevokedKeys) == 0 {
		return errors.New("load: the mix has revoked keys but none were given")
	}
	if c.RevokeAfter <= 0 {
		c.RevokeAfter = c.Duration / 2
	}
	if c.Seed == 0 {
		c.Seed = 0x6b65796d657368 // "keymesh"
	}
	return nil
}

// NewLoadClients returns the fasthttp clients a load uses: one buffering
// whole answers, one streaming them (for "stream": true requests).
func newLoadClients(conc int, timeout time.Duration) (plain, stream *fasthttp.Client) {
	mk := func(streaming bool) *fasthttp.Client {
		return &fasthttp.Client{
			MaxConnsPerHost:               conc + 8,
			ReadTimeout:                   timeout,
			WriteTimeout:                  timeout,
			MaxIdleConnDuration:           30 * time.Second,
			NoDefaultUserAgentHeader:      true,
			DisableHeaderNamesNormalizing: false,
			StreamResponseBody:            streaming,
			Dial:                          (&fasthttp.TCPDialer{Concurrency: 0}).Dial,
		}
	}
	return mk(false), mk(true)
}

// worker holds one load worker's private state; merged at the end.
type worker struct {
	rng        *rand.Rand
	status     map[string]map[int]int64 // class → status → count (0 = transport error)
	lat        *Latency
	classLat   map[string]*Latency
	ttfb, strm *Latency
	unary      *Latency
	lastErr    string
}

type loadRun struct {
	cfg           LoadConfig
	url           string
	plain, stream *fasthttp.Client
	malformed     []string
	unknown       []string
	revokedNow    atomic.Bool
	done, errs    atomic.Int64
}

// RunLoad runs one load and returns its result. It ends when Duration has
// passed or ctx ends (what was measured so far is returned then).
func RunLoad(ctx context.Context, cfg LoadConfig) (*LoadResult, error) {
	if err := cfg.fill(); err != nil {
		return nil, err
	}
	r := &loadRun{cfg: cfg, url: strings.TrimRight(cfg.URL, "/") + cfg.Path, malformed: MalformedKeys()}
	if cfg.Mix.Unknown > 0 {
		r.unknown = UnknownKeys(cfg.UnknownKeys)
	}
	r.plain, r.stream = newLoadClients(cfg.Concurrency, cfg.Timeout)
	defer r.plain.CloseIdleConnections()
	defer r.stream.CloseIdleConnections()

	res := &LoadResult{
		Name: cfg.Name, Target: r.url, Mode: "closed", Concurrency: cfg.Concurrency,
		Rate: cfg.Rate, StreamShare: cfg.StreamShare, Mix: cfg.Mix,
	}
	if cfg.Rate > 0 {
		res.Mode = "open"
	}
	start := time.Now()
	res.Started = start.UTC().Format(time.RFC3339)
	deadline := start.Add(cfg.Duration)
	runCtx, cancel := context.WithDeadline(ctx, deadline)
	defer cancel()

	var revokeWG sync.WaitGroup
	if cfg.Revoke != nil {
		revokeWG.Add(1)
		go func() {
			defer revokeWG.Done()
			t := time.NewTimer(cfg.RevokeAfter)
			defer t.Stop()
			select {
			case <-runCtx.Done():
				return
			case <-t.C:
			}
			rctx, rcancel := context.WithTimeout(ctx, 30*time.Second)
			defer rcancel()
			if err := cfg.Revoke(rctx); err != nil {
				res.RevokeErr = err.Error()
				return
			}
			res.RevokedAt = time.Since(start).Seconds()
			r.revokedNow.Store(true)
		}()
	}

	stopProgress := r.progress(start, cfg.Duration)
	workers := make([]*worker, cfg.Concurrency)
	for i := range workers {
		workers[i] = &worker{
			rng:      rand.New(rand.NewPCG(cfg.Seed, uint64(i)+1)),
			status:   map[string]map[int]int64{},
			lat:      NewLatency(),
			classLat: map[string]*Latency{},
			ttfb:     NewLatency(),
			strm:     NewLatency(),
			unary:    NewLatency(),
		}
	}
	var wg sync.WaitGroup
	var unsent atomic.Int64 // open loop: due, queued, not sent by the end
	if cfg.Rate <= 0 {
		for _, w := range workers {
			wg.Add(1)
			go func() {
				defer wg.Done()
				for runCtx.Err() == nil {
					r.one(w, time.Now())
				}
			}()
		}
	} else {
		due := make(chan time.Time, cfg.Concurrency*4)
		for _, w := range workers {
			wg.Add(1)
			go func() {
				defer wg.Done()
				for t := range due {
					if runCtx.Err() != nil {
						unsent.Add(1) // drain without sending
						continue
					}
					r.one(w, t)
				}
			}()
		}
		res.Missed = schedule(runCtx, start, cfg.Rate, due)
		close(due)
	}
	wg.Wait()
	res.Unsent = unsent.Load()
	elapsed := time.Since(start)
	stopProgress()
	cancel()
	revokeWG.Wait()

	res.Elapsed = elapsed.Seconds()
	res.workers = workers
	res.summarize()
	return res, nil
}

// MergeLoad combines runs of one load against one target — the rounds of
// a comparison — into one result: requests, status codes and latency
// histograms added up, throughput over the summed measured time. The first
// run names the result; RoundThroughput lists each run's throughput.
func MergeLoad(runs []*LoadResult) *LoadResult {
	if len(runs) == 0 {
		return nil
	}
	out := *runs[0]
	out.workers, out.Elapsed, out.Missed, out.RoundThroughput = nil, 0, 0, nil
	for _, r := range runs {
		out.workers = append(out.workers, r.workers...)
		out.Elapsed += r.Elapsed
		out.Missed += r.Missed
		out.RoundThroughput = append(out.RoundThroughput, r.Throughput)
		if r.LastError != "" {
			out.LastError = r.LastError
		}
	}
	out.summarize()
	return &out
}

// summarize derives the counts and percentiles of res from its workers.
func (res *LoadResult) summarize() {
	all, ttfb, strm, unary := NewLatency(), NewLatency(), NewLatency(), NewLatency()
	classLat := map[string]*Latency{}
	res.Status = map[string]int64{}
	res.ByClass = map[string]ClassResult{}
	res.Requests, res.Errors = 0, 0
	classStatus := map[string]map[string]int64{}
	for _, w := range res.workers {
		all.Merge(w.lat)
		ttfb.Merge(w.ttfb)
		strm.Merge(w.strm)
		unary.Merge(w.unary)
		for c, l := range w.classLat {
			if classLat[c] == nil {
				classLat[c] = NewLatency()
			}
			classLat[c].Merge(l)
		}
		for c, m := range w.status {
			if classStatus[c] == nil {
				classStatus[c] = map[string]int64{}
			}
			for code, n := range m {
				k := statusKey(code)
				classStatus[c][k] += n
				res.Status[k] += n
				res.Requests += n
				if code == 0 || code >= 500 {
					res.Errors += n
				}
			}
		}
		if w.lastErr != "" && res.LastError == "" {
			res.LastError = w.lastErr
		}
	}
	for c, st := range classStatus {
		var n int64
		for _, v := range st {
			n += v
		}
		cr := ClassResult{Requests: n, Status: st}
		if classLat[c] != nil {
			cr.Latency = classLat[c].Summary()
			cr.Latency.Curve = nil
		}
		res.ByClass[c] = cr
	}
	res.Latency = all.Summary()
	res.StreamTTFB = ttfb.Summary()
	res.StreamTotal = strm.Summary()
	res.Unary = unary.Summary()
	res.Throughput = 0
	if res.Elapsed > 0 {
		res.Throughput = float64(res.Requests) / res.Elapsed
	}
}

func statusKey(code int) string {
	if code == 0 {
		return "error"
	}
	return strconv.Itoa(code)
}

// schedule sends the due time of each open-loop request to due until ctx
// ends; when due is full the request is counted as missed. Only requests
// due before ctx's deadline are scheduled, however late this goroutine
// runs: their number is the rate's, whatever the machine's load.
func schedule(ctx context.Context, start time.Time, rate float64, due chan<- time.Time) (missed int64) {
	interval := time.Duration(float64(time.Second) / rate)
	if interval <= 0 {
		interval = 1
	}
	deadline, bounded := ctx.Deadline()
	next := start
	for {
		now := time.Now()
		if bounded && !now.Before(deadline) {
			now = deadline.Add(-1) // a late wake-up schedules nothing due after the end
		}
		for !next.After(now) {
			select {
			case due <- next:
			default:
				missed++
			}
			next = next.Add(interval)
		}
		wait := next.Sub(now)
		t := time.NewTimer(wait)
		select {
		case <-ctx.Done():
			t.Stop()
			return missed
		case <-t.C:
		}
	}
}

// pickClass draws a key class from the mix.
func (r *loadRun) pickClass(rng *rand.Rand) string {
	m := r.cfg.Mix
	x := rng.Float64() * m.total()
	switch {
	case x < m.Valid:
		return ClassValid
	case x < m.Valid+m.Unknown:
		return ClassUnknown
	case x < m.Valid+m.Unknown+m.Malformed:
		return ClassMalformed
	default:
		return ClassRevoked
	}
}

func pick(rng *rand.Rand, keys []string) string { return keys[rng.IntN(len(keys))] }

// one sends one request due at t and records it.
func (r *loadRun) one(w *worker, t time.Time) {
	cfg := &r.cfg
	class := r.pickClass(w.rng)
	var key string
	switch class {
	case ClassValid:
		key = pick(w.rng, cfg.ValidKeys)
	case ClassUnknown:
		key = pick(w.rng, r.unknown)
	case ClassMalformed:
		key = pick(w.rng, r.malformed)
	case ClassRevoked:
		key = pick(w.rng, cfg.RevokedKeys)
	}
	streaming := cfg.StreamShare > 0 && w.rng.Float64() < cfg.StreamShare
	if class == ClassRevoked && r.revokedNow.Load() {
		class = ClassRevokedAfter // sent after the revocation's API response
	}

	req := fasthttp.AcquireRequest()
	resp := fasthttp.AcquireResponse()
	defer fasthttp.ReleaseRequest(req)
	defer fasthttp.ReleaseResponse(resp)
	req.SetRequestURI(r.url)
	if cfg.Host != "" {
		req.UseHostHeader = true
		req.Header.SetHost(cfg.Host)
	}
	header := cfg.CredentialHeader
	if header == HeaderBoth {
		header = HeaderXAPIKey
		if w.rng.IntN(2) == 0 {
			header = HeaderBearer
		}
	}
	if header == HeaderBearer {
		req.Header.Set("Authorization", "Bearer "+key)
	} else {
		req.Header.Set("X-API-Key", key)
	}
	if strings.HasPrefix(cfg.Path, "/v1/models") || cfg.Path == "/health" {
		req.Header.SetMethod(fasthttp.MethodGet)
	} else {
		req.Header.SetMethod(fasthttp.MethodPost)
		req.Header.SetContentType("application/json")
		if streaming {
			req.SetBodyString(loadStreamBody)
			if cfg.StreamChunkInterval > 0 {
				req.Header.Set(HeaderMockChunkInterval, cfg.StreamChunkInterval.String())
			}
		} else {
			req.SetBodyString(loadChatBody)
		}
	}

	client := r.plain
	if streaming {
		client = r.stream
	}
	err := client.Do(req, resp)
	code := 0
	var ttfb time.Duration
	if err == nil {
		code = resp.StatusCode()
		if streaming {
			ttfb, err = drainStream(resp, t)
		}
	}
	elapsed := time.Since(t)
	if err != nil {
		code = 0
		w.lastErr = err.Error()
	}
	r.done.Add(1)
	if code == 0 || code >= 500 {
		r.errs.Add(1)
	}
	if w.status[class] == nil {
		w.status[class] = map[int]int64{}
	}
	w.status[class][code]++
	if code == 0 {
		return
	}
	w.lat.Record(elapsed)
	cl := w.classLat[class]
	if cl == nil {
		cl = NewLatency()
		w.classLat[class] = cl
	}
	cl.Record(elapsed)
	if streaming && code == fasthttp.StatusOK {
		w.ttfb.Record(ttfb)
		w.strm.Record(elapsed)
	} else if !streaming {
		w.unary.Record(elapsed)
	}
}

// drainStream reads a streamed body to its end and returns the time from
// t to its first byte.
func drainStream(resp *fasthttp.Response, t time.Time) (time.Duration, error) {
	bs := resp.BodyStream()
	if bs == nil { // answered whole (an error body with a length)
		return time.Since(t), nil
	}
	defer func() { _ = resp.CloseBodyStream() }()
	buf := make([]byte, 4096)
	var ttfb time.Duration
	for {
		n, err := bs.Read(buf)
		if n > 0 && ttfb == 0 {
			ttfb = time.Since(t)
		}
		if errors.Is(err, io.EOF) {
			if ttfb == 0 {
				ttfb = time.Since(t)
			}
			return ttfb, nil
		}
		if err != nil {
			return ttfb, err
		}
	}
}

// progress prints a live line to cfg.Progress every 250ms; the returned
// func stops it and ends the line.
func (r *loadRun) progress(start time.Time, total time.Duration) func() {
	out := r.cfg.Progress
	if out == nil {
		return func() {}
	}
	name := r.cfg.Name
	if name == "" {
		name = "load"
	}
	live := isTerminal(out) // into a log, one line per run, not one per tick
	stop := make(chan struct{})
	var wg sync.WaitGroup
	wg.Add(1)
	print := func() {
		el := time.Since(start)
		frac := min(float64(el)/float64(total), 1)
		const width = 24
		bar := strings.Repeat("=", int(frac*width)) + strings.Repeat(" ", width-int(frac*width))
		done := r.done.Load()
		rps := 0.0
		if el > 0 {
			rps = float64(done) / el.Seconds()
		}
		cr := "\r"
		if !live {
			cr = ""
		}
		fmt.Fprintf(out, "%s%-14s [%s] %5.1fs/%.0fs  %9d req  %8.0f rps  %6d err ",
			cr, name, bar, el.Seconds(), total.Seconds(), done, rps, r.errs.Load())
	}
	go func() {
		defer wg.Done()
		tk := time.NewTicker(250 * time.Millisecond)
		defer tk.Stop()
		for {
			select {
			case <-stop:
				print()
				fmt.Fprintln(out)
				return
			case <-tk.C:
				if live {
					print()
				}
			}
		}
	}()
	return func() { close(stop); wg.Wait() }
}

// isTerminal reports whether w is a terminal, where a \r-updated line is
// a progress bar rather than clutter.
func isTerminal(w io.Writer) bool {
	f, ok := w.(*os.File)
	if !ok {
		return false
	}
	fi, err := f.Stat()
	return err == nil && fi.Mode()&os.ModeCharDevice != 0
}

// sortedKeys returns m's keys in order.
func sortedKeys[V any](m map[string]V) []string {
	out := make([]string, 0, len(m))
	for k := range m {
		out = append(out, k)
	}
	sort.Strings(out)
	return out
}
