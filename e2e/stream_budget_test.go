package e2e

import (
	"bufio"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/keymesh/keymesh/edge"
	"github.com/keymesh/keymesh/internal/testutil"
)

// longStream is an inference server whose every streamed answer is
// chunks events of 40 characters (10 tokens as the edge estimates them),
// paced, and that counts the streams whose client went away before the end
// (the edge closing the connection) and those it finished.
type longStream struct {
	chunks         int
	gone, finished atomic.Int64
}

const longChunk = `data: {"choices":[{"index":0,"delta":{"content":"abcdefghijabcdefghijabcdefghijabcdefghij"}}]}` + "\n\n"

func (u *longStream) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	_, _ = io.Copy(io.Discard, r.Body)
	w.Header().Set("Content-Type", "text/event-stream")
	for range u.chunks {
		if _, err := io.WriteString(w, longChunk); err != nil {
			u.gone.Add(1)
			return
		}
		w.(http.Flusher).Flush()
		select {
		case <-r.Context().Done():
			u.gone.Add(1)
			return
		case <-time.After(200 * time.Microsecond):
		}
	}
	_, _ = io.WriteString(w, "data: [DONE]\n\n")
	u.finished.Add(1)
}

// streamBudget spends a key's tokens_per_day with streamed requests (no
// max_tokens: each reserves nothing) from workers clients spread over
// edges until every edge refuses, and checks the hard budget: the tokens
// the edges metered are at most the budget plus one step per stream that
// was in flight, the streams crossing it were cut with the SSE error and
// [DONE], and the upstream saw each cut stream's connection closed (but
// for a stream it had already written whole). Over
// several edges, tolerance (a fraction of the budget) is added to the
// bound: what the edges admit and extend in one sync interval before they
// hear of each other (docs/design.md, the global counters' bound).
func streamBudget(t *testing.T, s *stack, edges []*edge.Node, budget int64, workers int, tolerance float64) {
	t.Helper()
	up := &longStream{chunks: 400} // 4,000 tokens a stream
	srv := httptest.NewServer(up)
	t.Cleanup(srv.Close)
	d := s.deployment("budget", map[string]any{"upstreams": map[string][]string{"*": {srv.URL}}})
	k := s.key(d.ID)
	rev := s.call(http.MethodPatch, "/v1/projects/"+project+"/keys/"+k.ID, map[string]any{"tokens_per_day": budget}, nil)
	waitApplied(t, rev, edges...)

	const body = `{"model": "mock-model", "stream": true, "messages": [{"role": "user", "content": "Tell me everything."}]}`
	var cut, whole, refused, other atomic.Int64
	var wg sync.WaitGroup
	start := time.Now()
	for w := range workers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			e := edges[w%len(edges)]
			retries := 0
			for {
				req, _ := http.NewRequest(http.MethodPost, "http://"+e.Addr()+"/v1/chat/completions", strings.NewReader(body))
				req.Header.Set("Content-Type", "application/json")
				req.Header.Set("X-API-Key", k.Secret)
				resp, err := httpClient.Do(req)
				if err != nil {
					other.Add(1)
					return
				}
				b, err := io.ReadAll(bufio.NewReader(resp.Body))
				resp.Body.Close()
				got := string(b)
				switch {
				case resp.StatusCode == http.StatusTooManyRequests:
					// Near the limit an edge spends only its share a sync
					// round (Retry-After: the next round): a client retries
					// a few of those, then takes the refusal as final.
					if ra, _ := strconv.Atoi(resp.Header.Get("Retry-After")); ra <= 1 && retries < 5 && len(edges) > 1 {
						retries++
						time.Sleep(globalSync)
						continue
					}
					refused.Add(1)
					return
				case err != nil || resp.StatusCode != http.StatusOK:
					other.Add(1)
					return
				case strings.HasSuffix(got, "\"type\":\"insufficient_quota\",\"param\":null,\"code\":\"insufficient_quota\"}}\n\ndata: [DONE]\n\n"):
					cut.Add(1)
				case strings.HasSuffix(got, "data: [DONE]\n\n") && strings.Count(got, longChunk) == up.chunks:
					whole.Add(1)
				default:
					other.Add(1)
					return
				}
			}
		}()
	}
	wg.Wait()
	elapsed := time.Since(start)
	if other.Load() != 0 || cut.Load() == 0 || refused.Load() != int64(workers) {
		t.Fatalf("streams: %d whole, %d cut, %d refused, %d other", whole.Load(), cut.Load(), refused.Load(), other.Load())
	}
	// Every cut stream's upstream connection is closed — unless the
	// upstream had already written all of it (into the sockets' buffers)
	// when the edge cut it: such a stream counts as finished there though
	// its client was cut. So each stream either went away or finished at
	// the upstream, and those finished are the whole ones and those few.
	testutil.CheckFor(t, 10*time.Second, 0, func() error {
		g, f := up.gone.Load(), up.finished.Load()
		if g+f != cut.Load()+whole.Load() || g == 0 || f < whole.Load() {
			return fmt.Errorf("the upstream saw %d clients go away and finished %d streams; %d streams were cut, %d whole", g, f, cut.Load(), whole.Load())
		}
		return nil
	})
	if late := up.finished.Load() - whole.Load(); late > 0 {
		t.Logf("%d of %d cut streams had been written whole by the upstream before the cut", late, cut.Load())
	}
	var served float64
	testutil.CheckFor(t, 10*time.Second, 0, func() error {
		served = 0
		cuts := 0.0
		for _, e := range edges {
			for _, kind := range []string{"prompt", "completion"} {
				served += metricSum(t, e, "keymesh_edge_tokens_total", map[string]string{"deployment": "budget", "kind": kind})
			}
			cuts += metricSum(t, e, "keymesh_edge_streams_cut_total", nil)
		}
		if cuts != float64(cut.Load()) {
			return fmt.Errorf("%v cuts counted, %d seen", cuts, cut.Load())
		}
		if served == 0 {
			return fmt.Errorf("nothing metered yet")
		}
		return nil
	})
	// The budget refills evenly over the day: what it gave back while the
	// test ran is part of the bound.
	refill := float64(budget) * elapsed.Seconds() / (24 * 3600)
	slack := float64(workers*64) + tolerance*float64(budget) // one step (the least extension) per stream in flight
	t.Logf("budget %d tokens/day over %d edges, %d clients: served %.0f tokens (overshoot %.0f, %.2f%%; bound %.0f) in %d whole and %d cut streams, %v",
		budget, len(edges), workers, served, served-float64(budget), 100*(served-float64(budget))/float64(budget), slack+refill,
		whole.Load(), cut.Load(), elapsed.Round(time.Millisecond))
	if served > float64(budget)+slack+refill+1 {
		t.Fatalf("served %.0f tokens of a budget of %d: over the bound (%v)", served, budget, slack)
	}
	if served < float64(budget)-slack {
		t.Fatalf("served %.0f tokens of a budget of %d: the budget was not spent", served, budget)
	}
}

// A 100,000 tokens/day budget spent by streamed requests on one edge: the
// edge serves at most the budget plus one step per stream in flight, and
// ends the streams that cross it with the SSE insufficient_quota error,
// closing their upstream connections.
func TestStreamBudgetOneEdge(t *testing.T) {
	s := newStack(t)
	e := s.startEdge(edgeOpts{})
	streamBudget(t, s, []*edge.Node{e}, 100_000, 8, 0)
}

// The same budget over 4 edges exchanging their counts (--limits-sync),
// the clients spread over them: each edge alone would serve the whole
// budget (400,000 tokens in all); together they serve it once, within
// 5% (as the request limits over 4 edges) plus a step per stream in
// flight, the overshoot measured and printed.
func TestStreamBudgetFourEdges(t *testing.T) {
	s := newStack(t)
	edges, _ := s.gossipEdgesWith(globalEdges, gossipOpts{configure: func(_ int, c *edge.Config) {
		c.LimitsSync = globalSync
	}})
	testutil.CheckFor(t, 10*time.Second, 0, func() error {
		for _, e := range edges {
			if n := metricSum(t, e, reportsReceived, map[string]string{"result": "merged"}); n < globalEdges-1 {
				return errorf("edge %s merged %v reports", e.ID(), n)
			}
		}
		return nil
	})
	streamBudget(t, s, edges, 100_000, 8, 0.05)
}
