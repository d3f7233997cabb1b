package proxy

import (
	"crypto/tls"
	"io"
	"net"
	"sync"
	"sync/atomic"
	"time"
)

// Lingering close. When the edge refuses a request before reading its body
// (413 from the declared length, a malformed request), the client is often
// still uploading. Closing a socket with unread input makes the kernel send
// a reset, and a reset can destroy the refusal before the client reads it:
// the client sees "connection reset by peer" instead of a clear 413. So a
// connection marked with lingerOnClose is half-closed after the answer (FIN,
// the answer is delivered), and what the client still sends is read and
// discarded for a short, bounded while before the socket is closed — the
// same remedy as net/http's closeWriteAndWait.
const (
	// lingerTimeout bounds how long a refused upload is drained.
	lingerTimeout = 500 * time.Millisecond
	// lingerMaxBytes bounds how much of it is read; past that, reset.
	lingerMaxBytes = 4 << 20
	// maxLingering bounds the connections drained at once; past that a
	// marked connection is closed at once, as without lingering.
	maxLingering = 256
)

// lingerListener wraps every accepted connection in a lingerConn.
type lingerListener struct {
	net.Listener
	slots chan struct{} // one per connection being drained

	mu      sync.Mutex
	stopped bool // set by wait: no drain starts after it
	wg      sync.WaitGroup
}

func newLingerListener(ln net.Listener) *lingerListener {
	return &lingerListener{Listener: ln, slots: make(chan struct{}, maxLingering)}
}

func (l *lingerListener) Accept() (net.Conn, error) {
	c, err := l.Listener.Accept()
	if err != nil {
		return nil, err
	}
	return &lingerConn{Conn: c, l: l}, nil
}

// wait returns once every drain has ended (each is bounded by
// lingerTimeout); connections closed after it reset at once.
func (l *lingerListener) wait() {
	l.mu.Lock()
	l.stopped = true
	l.mu.Unlock()
	l.wg.Wait()
}

// begin reserves a drain, unless wait has been called or too many run.
func (l *lingerListener) begin() bool {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.stopped {
		return false
	}
	select {
	case l.slots <- struct{}{}:
	default:
		return false
	}
	l.wg.Add(1)
	return true
}

// lingerConn is an accepted connection that can be told to linger on Close.
type lingerConn struct {
	net.Conn
	l      *lingerListener
	linger atomic.Bool
	closed atomic.Bool
}

// lingerOnClose marks the connection under c (plain or TLS) so that its
// Close drains instead of resetting. It does nothing for other connections.
func lingerOnClose(c net.Conn) {
	if tc, ok := c.(*tls.Conn); ok {
		c = tc.NetConn()
	}
	if lc, ok := c.(*lingerConn); ok {
		lc.linger.Store(true)
	}
}

func (c *lingerConn) Close() error {
	if c.closed.Swap(true) {
		return nil
	}
	if !c.linger.Load() {
		return c.Conn.Close()
	}
	if !c.l.begin() {
		return c.Conn.Close() // shutting down, or too many drains: reset, as without lingering
	}
	go func() {
		defer func() { <-c.l.slots; c.l.wg.Done() }()
		if cw, ok := c.Conn.(interface{ CloseWrite() error }); ok {
			_ = cw.CloseWrite()
		}
		_ = c.Conn.SetReadDeadline(time.Now().Add(lingerTimeout))
		_, _ = io.CopyN(io.Discard, c.Conn, lingerMaxBytes)
		_ = c.Conn.Close()
	}()
	return nil
}
