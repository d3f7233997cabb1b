package bench

import (
	"context"
	"encoding/json"
	"encoding/xml"
	"fmt"
	"io"
	"math"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/keymesh/keymesh/apikey"
)

func TestLatencyPercentiles(t *testing.T) {
	l := NewLatency()
	for i := 1; i <= 1000; i++ {
		l.Record(time.Duration(i) * time.Millisecond)
	}
	l.Record(0)             // clamped to 1µs, still counted
	l.Record(2 * time.Hour) // clamped to the top, still counted
	s := l.Summary()
	if s.Count != 1002 {
		t.Fatalf("count %d, want 1002", s.Count)
	}
	near := func(name string, got, want float64) {
		t.Helper()
		if math.Abs(got-want) > want*0.01 {
			t.Errorf("%s = %.3f ms, want about %.3f", name, got, want)
		}
	}
	near("p50", s.P50, 500)
	near("p90", s.P90, 900)
	near("p99", s.P99, 990)
	near("p99.9", s.P999, 999)
	near("max", s.Max, float64(time.Minute/time.Millisecond))
	if s.Min > 0.002 {
		t.Errorf("min %.4f ms, want the 1µs floor", s.Min)
	}
	if len(s.Curve) != len(PlotQuantiles) {
		t.Fatalf("curve has %d points, want %d", len(s.Curve), len(PlotQuantiles))
	}
	for i := 1; i < len(s.Curve); i++ {
		if s.Curve[i].Millis < s.Curve[i-1].Millis {
			t.Errorf("curve not monotonic at %v: %v", s.Curve[i].Percentile, s.Curve)
		}
	}
	m := NewLatency()
	m.Merge(l)
	m.Merge(l)
	if m.Count() != 2004 || m.Summary().P50 != s.P50 {
		t.Errorf("merge: count %d p50 %v, want 2004 and %v", m.Count(), m.Summary().P50, s.P50)
	}
	if e := NewLatency().Summary(); e.Count != 0 || e.P99 != 0 || e.Curve != nil {
		t.Error("an empty histogram must summarise to zero")
	}
}

func TestKeyClasses(t *testing.T) {
	for _, k := range MalformedKeys() {
		if _, err := apikey.ParseString(k); err == nil {
			t.Errorf("malformed key %q parses", k)
		}
	}
	ks := UnknownKeys(20)
	seen := map[string]bool{}
	for _, k := range ks {
		if _, err := apikey.ParseString(k); err != nil {
			t.Errorf("unknown key %q does not parse: %v", k, err)
		}
		seen[k] = true
	}
	if len(seen) != 20 {
		t.Errorf("unknown keys repeat: %d distinct of 20", len(seen))
	}
}

func parseXML(t *testing.T, s string) {
	t.Helper()
	d := xml.NewDecoder(strings.NewReader(s))
	for {
		_, err := d.Token()
		if err == io.EOF {
			return
		}
		if err != nil {
			t.Fatalf("not well-formed XML: %v\n%s", err, s)
		}
	}
}

func TestChartSVG(t *testing.T) {
	c := Chart{Title: `p99 <edge> & "nginx"`, XLabel: "percentile", YLabel: "ms",
		X:      []string{"50", "99", "99.9"},
		Series: []Series{{Name: "a", Y: []float64{1, 2, 3}}, {Name: "b<", Y: []float64{0.5, math.NaN(), 7}}}}
	svg := c.SVG()
	parseXML(t, svg)
	if !strings.HasPrefix(svg, "<svg") || strings.Count(svg, "<polyline") != 2 {
		t.Errorf("want an svg with two lines:\n%s", svg)
	}
	if strings.Count(svg, "<circle") != 5 {
		t.Errorf("want 5 points (NaN skipped), got %d", strings.Count(svg, "<circle"))
	}
	if !strings.Contains(svg, "p99 &lt;edge&gt; &amp; &#34;nginx&#34;") {
		t.Error("title not escaped")
	}
	if !strings.Contains(svg, ">10</text>") { // max 7 rounds up to a nice 10
		t.Error("y axis should end at 10")
	}
	c.Bars = true
	bars := c.SVG()
	parseXML(t, bars)
	if strings.Count(bars, "<rect") != 1+5+2 { // background, bars, legend
		t.Errorf("want 5 bars: %d rects", strings.Count(bars, "<rect"))
	}
	parseXML(t, Chart{}.SVG()) // nothing to draw is still a valid picture
	for _, v := range []struct{ in, want float64 }{{0, 1}, {0.7, 1}, {1.2, 2}, {2.2, 2.5}, {3, 5}, {7, 10}, {51, 100}, {0.03, 0.05}} {
		if got := niceCeil(v.in); math.Abs(got-v.want) > 1e-9 {
			t.Errorf("niceCeil(%v) = %v, want %v", v.in, got, v.want)
		}
	}
}

func TestReportWritesJSONMarkdownAndCharts(t *testing.T) {
	dir := t.TempDir()
	res := &LoadResult{Name: "x|y", Mode: "closed", Concurrency: 2, Requests: 10, Throughput: 5,
		Status: map[string]int64{"200": 9, "401": 1}, Latency: Percentiles{P50: 1, P99: 2, Curve: []CurvePoint{{0, 1}, {50, 1}}},
		ByClass: map[string]ClassResult{"valid": {Requests: 9, Status: map[string]int64{"200": 9}}}}
	r := Report{Base: filepath.Join(dir, "sub", "run"), JSON: res,
		Markdown: "# t\n\n" + LoadMarkdown([]*LoadResult{res}, "latency"),
		Charts:   map[string]Chart{"latency": LatencyChart("t", []*LoadResult{res}, nil)}}
	paths, err := r.Write()
	if err != nil {
		t.Fatal(err)
	}
	if len(paths) != 3 {
		t.Fatalf("wrote %v", paths)
	}
	md, err := os.ReadFile(filepath.Join(dir, "sub", "run.md"))
	if err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(string(md), "(run-latency.svg)") || strings.Contains(string(md), "CHART:") {
		t.Errorf("chart link not rewritten:\n%s", md)
	}
	if !strings.Contains(string(md), "| valid | 9 | 200×9 |") {
		t.Errorf("status breakdown missing:\n%s", md)
	}
	svg, err := os.ReadFile(filepath.Join(dir, "sub", "run-latency.svg"))
	if err != nil {
		t.Fatal(err)
	}
	parseXML(t, string(svg))
	var back LoadResult
	b, err := os.ReadFile(filepath.Join(dir, "sub", "run.json"))
	if err != nil {
		t.Fatal(err)
	}
	if err := json.Unmarshal(b, &back); err != nil || back.Requests != 10 || back.Status["401"] != 1 {
		t.Errorf("json round trip: %v %+v", err, back)
	}
}

func TestLoadConfigValidation(t *testing.T) {
	for name, cfg := range map[string]LoadConfig{
		"no url":          {Duration: time.Second},
		"no duration":     {URL: "http://x"},
		"valid, no keys":  {URL: "http://x", Duration: time.Second},
		"revoked no keys": {URL: "http://x", Duration: time.Second, Mix: KeyMix{Revoked: 1}},
		"bad header":      {URL: "http://x", Duration: time.Second, Mix: KeyMix{Malformed: 1}, CredentialHeader: "cookie"},
		"bad share":       {URL: "http://x", Duration: time.Second, Mix: KeyMix{Malformed: 1}, StreamShare: 2},
		"negative mix":    {URL: "http://x", Duration: time.Second, Mix: KeyMix{Malformed: 1, Unknown: -1}},
	} {
		if _, err := RunLoad(context.Background(), cfg); err == nil {
			t.Errorf("%s: want an error", name)
		}
	}
}

// TestClosedLoopAgainstMockUpstream runs the closed loop for about a
// second against the mock upstream, streams included.
func TestClosedLoopAgainstMockUpstream(t *testing.T) {
	var xkey, bearer atomic.Int64
	u := startUpstream(t, UpstreamConfig{ChunkInterval: time.Millisecond, StreamChunks: 4,
		OnRequest: func(r *http.Request, _ []byte) {
			if r.Header.Get("X-API-Key") != "" {
				xkey.Add(1)
			}
			if strings.HasPrefix(r.Header.Get("Authorization"), "Bearer ") {
				bearer.Add(1)
			}
		}})
	var progress strings.Builder
	res, err := RunLoad(context.Background(), LoadConfig{
		Name: "mock", URL: u.URL(), Duration: time.Second, Concurrency: 4,
		ValidKeys: []string{"k1", "k2"}, Mix: KeyMix{Valid: 0.8, Malformed: 0.2},
		StreamShare: 0.3, CredentialHeader: HeaderBoth, Progress: &progress,
	})
	if err != nil {
		t.Fatal(err)
	}
	if res.Requests < 50 || res.Errors != 0 || res.Status["200"] != res.Requests {
		t.Fatalf("requests %d errors %d status %v (last error %q)", res.Requests, res.Errors, res.Status, res.LastError)
	}
	if res.Mode != "closed" || res.Elapsed < 0.9 || res.Elapsed > 3 {
		t.Errorf("mode %s elapsed %.2fs", res.Mode, res.Elapsed)
	}
	if math.Abs(res.Throughput-float64(res.Requests)/res.Elapsed) > 1e-6 {
		t.Errorf("throughput %.1f != requests/elapsed", res.Throughput)
	}
	if res.Latency.Count != res.Requests {
		t.Errorf("latency count %d != requests %d", res.Latency.Count, res.Requests)
	}
	if res.StreamTTFB.Count == 0 || res.StreamTTFB.Count+res.Unary.Count != res.Requests {
		t.Errorf("streams %d + unary %d != %d", res.StreamTTFB.Count, res.Unary.Count, res.Requests)
	}
	// 4 chunks 1ms apart: a whole stream takes at least 3ms, its first byte less.
	if res.StreamTotal.P50 < 3 || res.StreamTTFB.P50 >= res.StreamTotal.P50 {
		t.Errorf("stream ttfb p50 %.3f total p50 %.3f", res.StreamTTFB.P50, res.StreamTotal.P50)
	}
	if res.ByClass[ClassValid].Requests == 0 || res.ByClass[ClassMalformed].Requests == 0 {
		t.Errorf("by class: %+v", res.ByClass)
	}
	if xkey.Load() == 0 || bearer.Load() == 0 {
		t.Errorf("both credential headers should be used: x-api-key %d bearer %d", xkey.Load(), bearer.Load())
	}
	if !strings.Contains(progress.String(), "rps") || !strings.HasSuffix(progress.String(), "\n") {
		t.Errorf("progress line: %q", progress.String())
	}
	if st := u.Stats(); st.InFlight != 0 {
		t.Errorf("requests still in flight at the upstream: %+v", st)
	}
}

// TestOpenLoopKeepsItsRate: 200 requests/s for 0.5s is about 100
// requests, whatever the answers take.
func TestOpenLoopKeepsItsRate(t *testing.T) {
	u := startUpstream(t, UpstreamConfig{})
	res, err := RunLoad(context.Background(), LoadConfig{URL: u.URL(), Path: "/v1/models", Duration: 500 * time.Millisecond,
		Rate: 200, Concurrency: 8, Mix: KeyMix{Unknown: 1}, UnknownKeys: 5})
	if err != nil {
		t.Fatal(err)
	}
	// 200/s for 0.5 s schedules exactly 100, however loaded the machine:
	// each is sent, missed (the queue was full) or left unsent at the end.
	// How many are sent depends on the CPU, so only that some are is held.
	if n := res.Requests + res.Missed + res.Unsent; res.Mode != "open" || n != 100 || res.Requests == 0 {
		t.Errorf("mode %s: %d requests, %d missed, %d unsent: want 100 scheduled, some sent", res.Mode, res.Requests, res.Missed, res.Unsent)
	}
	if res.Status["200"] != res.Requests {
		t.Errorf("status %v", res.Status)
	}
}

// TestRevokeRunsMidway: the revoke callback runs once, and revoked keys
// sent after it are reported on their own.
func TestRevokeRunsMidway(t *testing.T) {
	var revoked atomic.Bool
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.Header.Get("X-API-Key") == "gone" && revoked.Load() {
			w.WriteHeader(http.StatusUnauthorized)
			return
		}
		w.WriteHeader(http.StatusOK)
	}))
	defer srv.Close()
	var calls atomic.Int64
	res, err := RunLoad(context.Background(), LoadConfig{URL: srv.URL, Duration: 600 * time.Millisecond, Concurrency: 2,
		ValidKeys: []string{"ok"}, RevokedKeys: []string{"gone"}, Mix: KeyMix{Valid: 1, Revoked: 1},
		RevokeAfter: 200 * time.Millisecond,
		Revoke: func(context.Context) error {
			calls.Add(1)
			revoked.Store(true)
			return nil
		}})
	if err != nil {
		t.Fatal(err)
	}
	if calls.Load() != 1 || res.RevokedAt < 0.15 || res.RevokedAt > 0.5 {
		t.Fatalf("revoke calls %d at %.2fs", calls.Load(), res.RevokedAt)
	}
	after := res.ByClass[ClassRevokedAfter]
	if after.Requests == 0 || after.Status["401"] != after.Requests {
		t.Errorf("revoked keys after the revocation: %+v", after)
	}
	if res.ByClass[ClassRevoked].Status["200"] == 0 {
		t.Errorf("revoked keys before the revocation: %+v", res.ByClass[ClassRevoked])
	}
}

func TestParseCounter(t *testing.T) {
	text := `# HELP keymesh_edge_lookups_total Lookups sent to the origin.
# TYPE keymesh_edge_lookups_total counter
keymesh_edge_lookups_total_extra 99
keymesh_edge_lookups_totally{a="b"} 98
keymesh_edge_lookups_total 1.234e+06
`
	v, err := parseCounter(strings.NewReader(text), LookupsMetric)
	if err != nil || v != 1234000 {
		t.Fatalf("got %v, %v", v, err)
	}
	if _, err := parseCounter(strings.NewReader("other 1\n"), LookupsMetric); err == nil {
		t.Error("a missing metric must be an error")
	}
}

// fakeEdge refuses every key with 401, counting a "lookup" for each
// well-formed key it has not seen (a negative cache), like an edge.
type fakeEdge struct {
	lookups atomic.Int64
	seen    map[string]bool
	mu      chan struct{}
}

func (f *fakeEdge) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	if r.URL.Path == "/metrics" {
		fmt.Fprintf(w, "# TYPE %s counter\n%s %d\n", LookupsMetric, LookupsMetric, f.lookups.Load())
		return
	}
	key := r.Header.Get("X-API-Key")
	if key == "valid" {
		w.WriteHeader(http.StatusOK)
		return
	}
	if _, err := apikey.ParseString(key); err == nil {
		f.mu <- struct{}{}
		if !f.seen[key] {
			f.seen[key] = true
			f.lookups.Add(1)
		}
		<-f.mu
	}
	w.WriteHeader(http.StatusUnauthorized)
}

func TestFloodCountsRefusalsAndLookups(t *testing.T) {
	f := &fakeEdge{seen: map[string]bool{}, mu: make(chan struct{}, 1)}
	srv := httptest.NewServer(f)
	defer srv.Close()
	res, err := RunFlood(context.Background(), FloodConfig{URL: srv.URL, MetricsURL: srv.URL + "/metrics",
		Duration: 300 * time.Millisecond, Concurrency: 4, UnknownKeys: 7, ValidKeys: []string{"valid"}})
	if err != nil {
		t.Fatal(err)
	}
	if len(res.Phases) != 3 {
		t.Fatalf("phases: %+v", res.Phases)
	}
	mal, unk, val := res.Phases[0], res.Phases[1], res.Phases[2]
	if mal.Class != ClassMalformed || mal.Requests == 0 || mal.Refused != mal.Requests || mal.Lookups != 0 {
		t.Errorf("malformed phase: %+v", mal)
	}
	if unk.Class != ClassUnknown || unk.Refused != unk.Requests || unk.Lookups != 7 {
		t.Errorf("unknown phase: want 7 lookups (one per distinct key): %+v", unk)
	}
	if val.Class != ClassValid || val.Rate <= 0 || res.RefusalRatio <= 0 {
		t.Errorf("valid phase %+v ratio %v", val, res.RefusalRatio)
	}
	md := FloodMarkdown(res)
	if !strings.Contains(md, "Origin lookups caused by malformed keys: 0 (target 0: met)") {
		t.Errorf("markdown:\n%s", md)
	}
}

func TestCompareMarkdownRatiosAndVerdicts(t *testing.T) {
	mk := func(name string, rps, p99, ttfb float64) *LoadResult {
		return &LoadResult{Name: name, Throughput: rps, Unary: Percentiles{P99: p99},
			StreamTTFB: Percentiles{Count: 1, P50: ttfb}}
	}
	c := &CompareResult{Runs: []*LoadResult{mk(TargetDirect, 1000, 1, 0.2), mk(TargetKeymesh, 800, 2, 0.5), mk(TargetNginx, 900, 1.5, 0.3)}}
	md := CompareMarkdown(c, "")
	for _, want := range []string{"| keymesh | 0 | 800.0 |", "0.80x", "0.89x", "1.33x",
		"keymesh throughput 0.89x nginx (target ≥ 1.0x): **MISSED**", "keymesh p99 1.33x nginx (target ≤ 1.1x): **MISSED**",
		"(+0.300 ms; target ≤ +1 ms): met"} {
		if !strings.Contains(md, want) {
			t.Errorf("missing %q in:\n%s", want, md)
		}
	}
	parseXML(t, ThroughputChart(c).SVG())
}

func TestPropagationChartAndMarkdown(t *testing.T) {
	r := &PropagationResult{Edges: 3, Iterations: 2, PollMs: 1, Timeouts: 1, Samples: []PropagationSample{
		{Op: "unlink", Millis: 3}, {Op: "relink", Millis: 4}, {Op: "unlink", Millis: 1}, {Op: "relink", Millis: 9}}}
	c := PropagationChart(r)
	if len(c.Series) != 2 || c.Series[0].Y[0] != 1 || c.Series[1].Y[1] != 9 {
		t.Errorf("series not sorted: %+v", c.Series)
	}
	parseXML(t, c.SVG())
	if md := PropagationMarkdown(r, "p"); !strings.Contains(md, "**1 changes timed out**") || !strings.Contains(md, "(CHART:p)") {
		t.Errorf("markdown:\n%s", md)
	}
}

// MergeLoad adds rounds up: requests, codes and histograms summed,
// throughput over the summed time, each round's throughput kept.
func TestMergeLoadAddsRoundsUp(t *testing.T) {
	up := startUpstream(t, UpstreamConfig{}).URL()
	var runs []*LoadResult
	for range 3 {
		r, err := RunLoad(context.Background(), LoadConfig{URL: up, Duration: 200 * time.Millisecond, Concurrency: 2,
			ValidKeys: []string{"k"}, Mix: KeyMix{Valid: 1}})
		if err != nil {
			t.Fatal(err)
		}
		runs = append(runs, r)
	}
	m := MergeLoad(runs)
	var reqs int64
	var elapsed float64
	for _, r := range runs {
		reqs += r.Requests
		elapsed += r.Elapsed
	}
	if m.Requests != reqs || m.Status["200"] != reqs || m.Latency.Count != reqs || m.Elapsed != elapsed ||
		math.Abs(m.Throughput-float64(reqs)/elapsed) > 1e-9 || len(m.RoundThroughput) != 3 || m.RoundThroughput[1] != runs[1].Throughput {
		t.Fatalf("merged %+v from %d requests over %v s", m, reqs, elapsed)
	}
}
