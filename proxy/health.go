package proxy

import (
	"errors"
	"net"
	"sync"
	"sync/atomic"
	"time"

	"github.com/valyala/fasthttp"
)

// health is the passive health of one upstream: after a connection failure
// it rests, for a period that doubles with each consecutive failure (from
// restMin to restMax), and any success ends the rest.
type health struct {
	failures atomic.Int32
	until    atomic.Int64 // unix nanoseconds; resting until then
}

const (
	restMin = 500 * time.Millisecond
	restMax = 30 * time.Second
)

func (h *health) usable(now time.Time) bool { return now.UnixNano() >= h.until.Load() }

func (h *health) failed(now time.Time) {
	n := h.failures.Add(1)
	if n > 16 {
		h.failures.Store(16) // the rest is restMax from here on; never overflow
	}
	rest := restMax
	if n < 16 {
		rest = min(restMin<<(n-1), restMax)
	}
	h.until.Store(now.Add(rest).UnixNano())
}

func (h *health) succeeded() {
	if h.failures.Load() != 0 {
		h.failures.Store(0)
		h.until.Store(0)
	}
}

// healthTable keeps health per upstream base URL across router rebuilds.
// It holds one entry per distinct upstream ever configured.
type healthTable struct{ m sync.Map }

func (t *healthTable) get(base string) *health {
	h, _ := t.m.LoadOrStore(base, &health{})
	return h.(*health)
}

// isConnectError reports whether err happened before the request could
// reach the upstream (so retrying it elsewhere cannot run it twice).
func isConnectError(err error) bool {
	var op *net.OpError
	return errors.Is(err, fasthttp.ErrDialTimeout) || (errors.As(err, &op) && op.Op == "dial")
}

// idleConn cuts a connection that has been silent for idle: every read
// must make progress within idle, however long the whole response takes,
// and so must every write (an upstream that stops reading a request body).
// A healthy generation that streams tokens is never cut; a stuck one is.
// Pushing a deadline out costs a timer update, so it is done at most once
// per idle/16: a silent upstream is cut after 15/16 to 16/16 of idle.
// Reads come from one goroutine at a time, and so do writes.
type idleConn struct {
	net.Conn
	idle         time.Duration
	armed, wrote time.Time // when the read and write deadlines were last pushed out
}

func (c *idleConn) Write(p []byte) (int, error) {
	if time.Since(c.wrote) >= c.idle/16 { // one clock read (monotonic), not Now's two
		now := time.Now()
		if err := c.Conn.SetWriteDeadline(now.Add(c.idle)); err != nil {
			return 0, err
		}
		c.wrote = now
	}
	return c.Conn.Write(p)
}

func (c *idleConn) Read(p []byte) (int, error) {
	if time.Since(c.armed) >= c.idle/16 {
		now := time.Now()
		if err := c.Conn.SetReadDeadline(now.Add(c.idle)); err != nil {
			return 0, err
		}
		c.armed = now
	}
	return c.Conn.Read(p)
}
