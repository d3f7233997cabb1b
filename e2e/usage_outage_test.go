package e2e

import (
	"bufio"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/keymesh/keymesh/api"
	"github.com/keymesh/keymesh/bench"
	"github.com/keymesh/keymesh/edge"
	"github.com/keymesh/keymesh/event"
	"github.com/keymesh/keymesh/internal/natsauth"
	"github.com/keymesh/keymesh/internal/testutil"
)

// What the mock upstream reports for every request the outage test sends:
// the prompts are seven whitespace-separated words of JSON (the mock's
// count), the answer its eight tokens.
const (
	outagePromptTokens     = 7
	outageCompletionTokens = 8
	outageChatMessages     = `[{"role": "user", "content": "one two three four"}]`
	outagePrompt           = `"a b c d e f g"`
)

// Issue 14, "usage that loses nothing", end to end, with the origin and the
// edge each in a process of its own: the origin with its embedded NATS,
// SQLite and its data dir on disk; the edge with a data dir. 1,000 metered
// requests pass through the edge: 100 before the origin is killed
// (SIGKILL: nothing drained), 800 during the 30 s it is down — after which
// the edge is killed too, its records in its spool — and 100 after the
// origin and the edge are back on their data dirs. The usage totals must
// equal exactly what was served, and stay so once every record has been
// delivered and stored; then after a graceful edge restart; and after the
// edge re-publishes the 800 records it had had acknowledged (its spool put
// back as the crash had left it: as if it had died right after the PubAcks,
// before saving its position), to an origin restarted meanwhile, so that
// JetStream's own window no longer knows their ids and only the origin's
// ledger can tell the copies.
func TestUsageSurvivesOriginOutage(t *testing.T) {
	t.Parallel()
	const before, during, after = 100, 800, 100
	const outage = 30 * time.Second
	h := newOutageHarness(t)

	h.startEdge(t)
	h.run(t, 0, before, 0)
	// JetStream acknowledged them: from here on they are the origin's.
	h.waitEdge(t, "published", func(st edge.UsageStats) bool { return st.Published == before })

	h.origin.kill()
	down := time.Now()
	t.Logf("origin killed; %d requests through the edge during the outage", during)
	h.run(t, before, during, outage-3*time.Second)
	// Written to the spool (not only queued): a crash of the process keeps
	// them.
	h.waitEdge(t, "spooled", func(st edge.UsageStats) bool {
		return st.Queued == 0 && st.SpooledRecords == during
	})
	h.edge.kill()
	outageClient.CloseIdleConnections()
	snapshot := h.snapshotSpool(t)
	time.Sleep(time.Until(down.Add(outage))) // the outage lasts what the issue says
	h.origin.start()
	t.Logf("origin back after %v", time.Since(down).Round(time.Millisecond))
	h.login(t)

	h.startEdge(t) // publishes what its killed predecessor spooled
	h.run(t, before+during, after, 0)
	h.waitTotals(t, before+during+after)
	h.settled(t, before+during+after)

	// A graceful restart of the edge.
	h.stopEdge(t)
	h.startEdge(t)
	h.settled(t, before+during+after)

	// The edge publishes again what was acknowledged: its spool as the
	// crash left it. The origin restarts first, so that its NATS forgets
	// the ids of the records it has stored (the stream is a work queue:
	// they left it).
	h.stopEdge(t)
	h.origin.stop()
	h.origin.start()
	h.login(t)
	h.restoreSpool(t, snapshot)
	h.startEdge(t)
	h.waitEdge(t, "re-published", func(st edge.UsageStats) bool { return st.Published == during })
	h.settled(t, before+during+after)
	dups := h.duplicates(t)
	t.Logf("the origin found %d re-published records stored before", dups)
	if dups < during {
		t.Fatalf("the origin saw %d duplicates, want at least %d: the copies did not reach its ledger", dups, during)
	}
	h.stopEdge(t)
	h.checkNoSecretLogged(t)
}

// outageHarness is the outage test's deployment: the origin and edge
// processes, the mock upstream, a deployment and a key.
type outageHarness struct {
	origin   *originProcess
	edge     *edgeProcess
	logs     *logSink
	api      *bench.OriginClient
	upstream *bench.Upstream
	edgeDir  string
	key      *bench.Key
}

func newOutageHarness(t *testing.T) *outageHarness {
	t.Helper()
	h := &outageHarness{logs: &logSink{}, edgeDir: filepath.Join(t.TempDir(), "edge")}
	up, err := bench.StartUpstream(bench.UpstreamConfig{Logger: h.logs.logger(), ChunkInterval: time.Millisecond}, "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	h.upstream = up
	t.Cleanup(func() { _ = up.Shutdown(context.Background()) })

	h.origin = newOriginProcess(t, filepath.Join(t.TempDir(), "origin"))
	h.origin.start()
	h.login(t)
	d, err := h.api.EnsureDeployment(context.Background(), project, "metered", []string{up.URL()})
	if err != nil {
		t.Fatal(err)
	}
	if h.key, err = h.api.CreateKey(context.Background(), project, "metered", d.ID); err != nil {
		t.Fatal(err)
	}
	keys, err := natsauth.Load(h.origin.dir)
	if err != nil {
		t.Fatal(err)
	}
	b, err := keys.Creds(natsauth.RoleEdge, "usage-edge")
	if err != nil {
		t.Fatal(err)
	}
	creds := filepath.Join(t.TempDir(), "edge.creds")
	if err := os.WriteFile(creds, b, 0o600); err != nil {
		t.Fatal(err)
	}
	// The edge runs open-cached: in the default mode, closed, an edge
	// refuses cached keys once it has not heard from the origin for
	// MaxStaleness (10s), so no request would pass through most of the
	// outage.
	h.edge = newEdgeProcess(t, h.edgeDir, h.origin.natsURL(), creds, filepath.Join(h.origin.dir, "signing.pub"))
	return h
}

func (h *outageHarness) login(t *testing.T) {
	t.Helper()
	h.api = &bench.OriginClient{BaseURL: h.origin.url()}
	if err := h.api.Login(context.Background(), "admin", adminPassword); err != nil {
		t.Fatal(err)
	}
}

// startEdge starts the edge (on its data dir: the same id each time) and
// waits until it has applied the key.
func (h *outageHarness) startEdge(t *testing.T) {
	t.Helper()
	h.edge.start()
	testutil.CheckFor(t, 30*time.Second, 10*time.Millisecond, func() error {
		st, err := h.edge.status()
		if err != nil {
			return err
		}
		if st.AppliedRevision < h.key.Revision || !st.NATSConnected {
			return fmt.Errorf("edge applied %d, want %d; NATS connected: %v", st.AppliedRevision, h.key.Revision, st.NATSConnected)
		}
		return nil
	})
}

// stopEdge stops the edge gracefully (SIGTERM).
func (h *outageHarness) stopEdge(t *testing.T) {
	t.Helper()
	h.edge.stop()
	if t.Failed() {
		t.FailNow()
	}
	outageClient.CloseIdleConnections() // they were the old process's
}

// run sends n metered requests through e, numbered from first (which picks
// the shape: chat or completions, streamed or not, asking for usage or
// not), spread over spread (0: as fast as the clients go). Every one must
// be answered 200 with the upstream's answer.
//
// 32 clients: while the origin is down, a stale edge re-validates each
// cached key it serves by a lookup that takes LookupTimeout to fail
// (nothing answers a disconnected NATS connection) before it serves the
// key open-cached; the requests must still keep to spread.
func (h *outageHarness) run(t *testing.T, first, n int, spread time.Duration) {
	t.Helper()
	start := time.Now()
	sem := make(chan struct{}, 32)
	var wg sync.WaitGroup
	var mu sync.Mutex
	var errs []error
	for i := first; i < first+n; i++ {
		if spread > 0 {
			time.Sleep(time.Until(start.Add(spread * time.Duration(i-first) / time.Duration(n))))
		}
		sem <- struct{}{}
		wg.Go(func() {
			defer func() { <-sem }()
			if err := h.request(i); err != nil {
				mu.Lock()
				errs = append(errs, fmt.Errorf("request %d: %w", i, err))
				mu.Unlock()
			}
		})
	}
	wg.Wait()
	if len(errs) > 0 {
		t.Fatalf("%d of %d requests failed, first: %v", len(errs), n, errs[0])
	}
	st, err := h.edge.status()
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("%d requests in %v (the edge has served %d stale keys open-cached)", n, time.Since(start).Round(time.Millisecond),
		st.Cache.StaleServed)
}

var outageClient = &http.Client{Timeout: 20 * time.Second, Transport: &http.Transport{MaxIdleConnsPerHost: 32}}

// request sends request i and checks the answer. Its shape is i%4: a chat
// completion; a streamed one (the edge asks the upstream for usage and
// removes the chunk); a streamed one asking for usage itself (relayed as
// it is); a streamed completion.
func (h *outageHarness) request(i int) error {
	path, body := "/v1/chat/completions", `{"model": "mock-model", "messages": `+outageChatMessages
	if i%4 == 3 {
		path, body = "/v1/completions", `{"model": "mock-model", "prompt": `+outagePrompt
	}
	streamed, askUsage := i%4 != 0, i%4 == 2
	switch {
	case askUsage:
		body += `, "stream": true, "stream_options": {"include_usage": true}}`
	case streamed:
		body += `, "stream": true}`
	default:
		body += `}`
	}
	req, err := http.NewRequest(http.MethodPost, "http://"+h.edge.listen+path, strings.NewReader(body))
	if err != nil {
		return err
	}
	req.Header.Set("Content-Type", "application/json")
	req.Header.Set("X-API-Key", h.key.Secret)
	resp, err := outageClient.Do(req)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		return err
	}
	if resp.StatusCode != http.StatusOK {
		return fmt.Errorf("status %d: %s", resp.StatusCode, b)
	}
	if !streamed {
		var got struct{ Usage api.UsageCounts }
		if err := json.Unmarshal(b, &got); err != nil {
			return err
		}
		if got.Usage.PromptTokens != outagePromptTokens || got.Usage.CompletionTokens != outageCompletionTokens {
			return fmt.Errorf("the upstream reported %+v", got.Usage)
		}
		return nil
	}
	if !strings.HasSuffix(string(b), "data: [DONE]\n\n") {
		return fmt.Errorf("stream cut: %q", b)
	}
	// The edge asks for usage when the client did not, and removes the
	// chunk that makes the upstream send.
	if has := strings.Contains(string(b), `"usage"`); has != askUsage {
		return fmt.Errorf("usage in the stream: %v, asked: %v", has, askUsage)
	}
	return nil
}

// waitEdge waits until the edge's usage pipeline is as ok says, and checks
// that it dropped nothing.
func (h *outageHarness) waitEdge(t *testing.T, what string, ok func(edge.UsageStats) bool) {
	t.Helper()
	var last edge.UsageStats
	testutil.CheckFor(t, 60*time.Second, 10*time.Millisecond, func() error {
		st, err := h.edge.status()
		if err != nil {
			return err
		}
		if last = st.Usage; !ok(last) {
			return fmt.Errorf("usage records not %s: %+v", what, last)
		}
		return nil
	})
	for reason, n := range last.Dropped {
		if n > 0 {
			t.Fatalf("the edge dropped %d usage records (%s)", n, reason)
		}
	}
}

// totals is GET /v1/usage: every project's sums over the last day.
func (h *outageHarness) totals(t *testing.T) api.UsageCounts {
	t.Helper()
	var rep api.UsageReport
	if _, err := h.api.Do(context.Background(), http.MethodGet, "/v1/usage", nil, &rep); err != nil {
		t.Fatalf("GET /v1/usage: %v", err)
	}
	var sum api.UsageCounts
	for _, r := range rep.Items {
		sum.Requests += r.Requests
		sum.PromptTokens += r.PromptTokens
		sum.CompletionTokens += r.CompletionTokens
		sum.CachedTokens += r.CachedTokens
		sum.EstimatedRequests += r.EstimatedRequests
	}
	return sum
}

func outageWant(n int) api.UsageCounts {
	return api.UsageCounts{Requests: int64(n), PromptTokens: int64(n) * outagePromptTokens,
		CompletionTokens: int64(n) * outageCompletionTokens}
}

// waitTotals waits until the totals are those of n requests; a count past
// them fails at once (counted twice).
func (h *outageHarness) waitTotals(t *testing.T, n int) {
	t.Helper()
	want := outageWant(n)
	start := time.Now()
	testutil.CheckFor(t, 90*time.Second, 50*time.Millisecond, func() error {
		got := h.totals(t)
		if got.Requests > want.Requests || got.PromptTokens > want.PromptTokens || got.CompletionTokens > want.CompletionTokens {
			t.Fatalf("usage %+v, more than the %d requests served (%+v)", got, n, want)
		}
		if got != want {
			return fmt.Errorf("usage %+v, want %+v", got, want)
		}
		return nil
	})
	t.Logf("usage exact %v after the last request", time.Since(start).Round(time.Millisecond))
}

// settled waits until nothing is left to count — e's spool empty, the
// usage stream empty (a work queue: every record in it has been stored and
// acknowledged) — and checks that the totals are still those of n
// requests.
func (h *outageHarness) settled(t *testing.T, n int) {
	t.Helper()
	h.waitEdge(t, "all acknowledged", func(st edge.UsageStats) bool { return st.Queued == 0 && st.SpooledRecords == 0 })
	keys, err := natsauth.Load(h.origin.dir)
	if err != nil {
		t.Fatal(err)
	}
	b, err := keys.Creds(natsauth.RoleOrigin, "usage-test")
	if err != nil {
		t.Fatal(err)
	}
	creds := filepath.Join(t.TempDir(), "origin.creds")
	if err := os.WriteFile(creds, b, 0o600); err != nil {
		t.Fatal(err)
	}
	nc, err := nats.Connect(h.origin.natsURL(), nats.UserCredentials(creds))
	if err != nil {
		t.Fatal(err)
	}
	defer nc.Close()
	js, err := jetstream.New(nc)
	if err != nil {
		t.Fatal(err)
	}
	testutil.CheckFor(t, 60*time.Second, 20*time.Millisecond, func() error {
		st, err := js.Stream(context.Background(), event.UsageStreamName)
		if err != nil {
			return err
		}
		if msgs := st.CachedInfo().State.Msgs; msgs > 0 {
			return fmt.Errorf("%d usage records not yet stored", msgs)
		}
		return nil
	})
	if got, want := h.totals(t), outageWant(n); got != want {
		t.Fatalf("settled usage %+v, want %+v", got, want)
	}
}

// duplicates is the origin's count of records it found stored before.
func (h *outageHarness) duplicates(t *testing.T) int {
	t.Helper()
	resp, err := http.Get(h.origin.url() + "/metrics")
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	sc := bufio.NewScanner(resp.Body)
	const metric = `keymesh_origin_usage_records_total{result="duplicate"} `
	for sc.Scan() {
		if v, ok := strings.CutPrefix(sc.Text(), metric); ok {
			n, err := strconv.ParseFloat(v, 64)
			if err != nil {
				t.Fatalf("%s%s: %v", metric, v, err)
			}
			return int(n)
		}
	}
	t.Fatalf("no %s in the origin's metrics", metric)
	return 0
}

// snapshotSpool copies the (stopped or killed) edge's spool directory.
func (h *outageHarness) snapshotSpool(t *testing.T) string {
	t.Helper()
	src := filepath.Join(h.edgeDir, "usage")
	if _, err := os.Stat(src); err != nil {
		t.Fatalf("the edge keeps no usage spool in its data dir: %v", err)
	}
	dst := filepath.Join(t.TempDir(), "usage")
	if err := os.CopyFS(dst, os.DirFS(src)); err != nil {
		t.Fatal(err)
	}
	return dst
}

// restoreSpool puts a snapshot back in place of the (stopped) edge's spool.
func (h *outageHarness) restoreSpool(t *testing.T, snapshot string) {
	t.Helper()
	dir := filepath.Join(h.edgeDir, "usage")
	if err := os.RemoveAll(dir); err != nil {
		t.Fatal(err)
	}
	if err := os.CopyFS(dir, os.DirFS(snapshot)); err != nil {
		t.Fatal(err)
	}
}

// checkNoSecretLogged: neither the key, the admin password nor the admin
// token appears in the edge's, the origin's or the upstream's logs.
func (h *outageHarness) checkNoSecretLogged(t *testing.T) {
	t.Helper()
	logs := h.logs.String() + h.origin.output() + h.edge.output()
	for _, secret := range []string{h.key.Secret, adminPassword, h.api.Token} {
		if strings.Contains(logs, secret) {
			t.Errorf("a secret (%s...) appears in the logs", secret[:6])
		}
	}
}
