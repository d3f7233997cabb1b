package e2e

import (
	"context"
	"net/http"
	"testing"
	"time"

	"github.com/keymesh/keymesh/internal/testutil"
)

// Shutdown stops accepting, lets an open stream finish, then returns.
func TestShutdownDrainsOpenStreams(t *testing.T) {
	s := newStack(t)
	d := s.deployment("demo", nil)
	k := s.key(d.ID)
	e := s.startEdge(edgeOpts{})
	addr := e.Addr()

	type result struct {
		n    int
		done bool
	}
	streamed := make(chan result, 1)
	before := s.upstream.Stats().Requests
	go func() {
		var r result
		defer func() { streamed <- r }() // also if streamLines fails the test
		r.n, r.done = streamLines(t, "http://"+addr, k.Secret, "100ms", 0)
	}()
	// Wait until the stream is under way at the upstream.
	testutil.CheckFor(t, 10*time.Second, 0, func() error {
		if s.upstream.Stats().InFlight == 0 || s.upstream.Stats().Requests == before {
			return errorString("stream not started")
		}
		return nil
	})
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	shut := make(chan error, 1)
	go func() { shut <- e.Shutdown(ctx) }()

	// New connections are refused while the stream drains.
	testutil.CheckFor(t, 10*time.Second, 0, func() error {
		if _, err := (&http.Client{Timeout: time.Second}).Get("http://" + addr + "/health"); err == nil {
			return errorString("still accepting")
		}
		return nil
	})
	r := <-streamed
	if !r.done {
		t.Fatalf("the open stream was cut after %d chunks", r.n)
	}
	if err := <-shut; err != nil {
		t.Fatalf("shutdown: %v", err)
	}
}

type errorString string

func (e errorString) Error() string { return string(e) }
