package bench

import (
	"context"
	"net"
	"net/http"
	"sync/atomic"
	"testing"
	"time"

	"github.com/valyala/fasthttp"
)

// changingEdge answers the prober as an edge would: 200 (after accepted, as an
// accepted request waits for the upstream) until the change at changeAt,
// then 401 at once. It counts the polls it saw before notBefore.
type changingEdge struct {
	t0       time.Time
	changeAt time.Duration
	accepted time.Duration
	early    time.Duration // polls before this count as early
	polls    atomic.Int64
	tooEarly atomic.Int64
}

func (f *changingEdge) serve(t *testing.T) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	srv := &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) {
		f.polls.Add(1)
		since := time.Since(f.t0)
		if since < f.early {
			f.tooEarly.Add(1)
		}
		if since >= f.changeAt {
			w.WriteHeader(http.StatusUnauthorized)
			return
		}
		time.Sleep(f.accepted)
		w.WriteHeader(http.StatusOK)
	})}
	go func() { _ = srv.Serve(ln) }()
	t.Cleanup(func() { _ = srv.Close() })
	return "http://" + ln.Addr().String()
}

func testProber(cfg *PropagationConfig) *prober {
	return &prober{cfg: cfg, client: &fasthttp.Client{MaxConnsPerHost: max(4, cfg.InFlight), ReadTimeout: 5 * time.Second}}
}

// With overlapping polls, a change is timed by the first poll sent after
// it, not after the slow (accepted) answer to a poll sent before it: one
// poll at a time, the refusal 200 ms after t0 is seen only once a poll
// that left before it is answered, a second later. The bound, half that
// second, is far from both (a loaded runner's scheduling is not judged).
func TestProberOverlappingPolls(t *testing.T) {
	f := &changingEdge{t0: time.Now(), changeAt: 200 * time.Millisecond, accepted: time.Second}
	cfg := &PropagationConfig{Edges: []string{f.serve(t)}, Poll: 20 * time.Millisecond, InFlight: 60, Timeout: 5 * time.Second}
	delays, _, err := testProber(cfg).waitAll(context.Background(), false, f.t0)
	if err != nil {
		t.Fatal(err)
	}
	if d := delays[0]; d < f.changeAt || d >= f.changeAt+f.accepted/2 {
		t.Fatalf("refusal at %v timed at %v: want well within the slow answer's %v after it (a 20 ms poll interval and a fast answer)", f.changeAt, d, f.accepted)
	}
}

// NotBefore holds the first poll back, and a change already there by then
// is timed at that poll, never earlier.
func TestProberNotBefore(t *testing.T) {
	for _, inFlight := range []int{1, 4} {
		f := &changingEdge{t0: time.Now(), changeAt: 0, early: 50 * time.Millisecond}
		cfg := &PropagationConfig{Edges: []string{f.serve(t)}, Poll: time.Millisecond, InFlight: inFlight,
			NotBefore: []time.Duration{f.early}, Timeout: 5 * time.Second}
		delays, _, err := testProber(cfg).waitAll(context.Background(), false, f.t0)
		if err != nil {
			t.Fatal(err)
		}
		if n := f.tooEarly.Load(); n > 0 {
			t.Fatalf("in flight %d: %d polls before NotBefore", inFlight, n)
		}
		if delays[0] < f.early {
			t.Fatalf("in flight %d: timed at %v, before the first poll was allowed (%v)", inFlight, delays[0], f.early)
		}
	}
}
