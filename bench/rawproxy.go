package bench

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"
)

// RawProxy is the least a Go HTTP/1.1 proxy can do: a goroutine per client
// connection, with an upstream connection of its own, relays each request
// and its answer as bytes, reading no more of them than their framing — the
// head up to its blank line and a Content-Length body. It rewrites nothing,
// pools nothing, parses no header but the framing ones and keeps no timers,
// so what it costs is what a Go program pays for the sockets, the netpoller
// and the scheduler at all: the floor under any Go proxy, fasthttp's and
// the edge's included, in the same run as nginx. What it cannot frame it
// refuses: a chunked request (501), a head over 64 KiB (431), a body over
// 16 MiB (413), an answer without a length or an interim (1xx) one (502).
// A benchmark's yardstick, never a proxy to run.
type RawProxy struct {
	ln       net.Listener
	upstream string // host:port
	closing  atomic.Bool
	wg       sync.WaitGroup

	mu    sync.Mutex
	conns map[net.Conn]struct{}
}

// Limits of what a RawProxy relays.
const (
	rawMaxHead = 64 << 10
	rawMaxBody = 16 << 20
)

// Framing errors of a request or an answer.
var (
	errRawHeadTooLarge = errors.New("head too large")
	errRawChunked      = errors.New("transfer-encoding is not relayed")
	errRawBodyTooLarge = errors.New("body too large")
	errRawMalformed    = errors.New("malformed head or content-length")
	errRawNoLength     = errors.New("answer without content-length, or interim")
)

// StartRawProxy serves a RawProxy to upstream (http://host:port) on addr.
func StartRawProxy(upstream, addr string) (*RawProxy, error) {
	host, ok := strings.CutPrefix(upstream, "http://")
	host = strings.TrimSuffix(host, "/")
	if _, _, err := net.SplitHostPort(host); !ok || err != nil || strings.ContainsAny(host, "/?#@") {
		return nil, fmt.Errorf("raw proxy: upstream %q: want http://host:port", upstream)
	}
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		return nil, err
	}
	p := &RawProxy{ln: ln, upstream: host, conns: map[net.Conn]struct{}{}}
	p.wg.Add(1)
	go p.accept()
	return p, nil
}

// URL is where the proxy listens.
func (p *RawProxy) URL() string { return "http://" + p.ln.Addr().String() }

// Shutdown stops accepting, ends every connection between requests (and
// any whose request is still arriving), lets answers in flight finish,
// and waits for that until ctx ends.
func (p *RawProxy) Shutdown(ctx context.Context) error {
	p.closing.Store(true)
	_ = p.ln.Close()
	p.mu.Lock()
	for c := range p.conns {
		_ = c.SetReadDeadline(time.Now()) // wakes a read of the next request
	}
	p.mu.Unlock()
	done := make(chan struct{})
	go func() { p.wg.Wait(); close(done) }()
	select {
	case <-done:
		return nil
	case <-ctx.Done():
		return ctx.Err()
	}
}

func (p *RawProxy) accept() {
	defer p.wg.Done()
	for {
		c, err := p.ln.Accept()
		if err != nil {
			return // closed by Shutdown, or the listener failed
		}
		p.mu.Lock()
		if p.closing.Load() {
			p.mu.Unlock()
			_ = c.Close()
			return
		}
		p.conns[c] = struct{}{}
		p.wg.Add(1)
		p.mu.Unlock()
		go p.serve(c)
	}
}

// rawMsg is one request or answer as read: its bytes (head and body) and
// what its framing said.
type rawMsg struct {
	buf    []byte
	length int64 // -1: none given
	close  bool  // Connection: close, or HTTP/1.0
	status int   // an answer's status
	// head: a request's method is HEAD (read from its start line); for an
	// answer, the caller's say that it answers HEAD (and has no body).
	head bool
}

func (p *RawProxy) serve(c net.Conn) {
	var up net.Conn
	defer func() {
		if up != nil {
			_ = up.Close()
		}
		p.mu.Lock()
		delete(p.conns, c)
		p.mu.Unlock()
		_ = c.Close()
		p.wg.Done()
	}()
	cr := bufio.NewReaderSize(c, 8<<10)
	var ur *bufio.Reader
	var req, ans rawMsg
	for !p.closing.Load() {
		if err := readRawMsg(cr, &req, true); err != nil {
			switch {
			case errors.Is(err, errRawHeadTooLarge):
				rawRefuse(c, 431, "Request Header Fields Too Large")
			case errors.Is(err, errRawChunked):
				rawRefuse(c, 501, "Not Implemented")
			case errors.Is(err, errRawBodyTooLarge):
				rawRefuse(c, 413, "Content Too Large")
			case errors.Is(err, errRawMalformed):
				rawRefuse(c, 400, "Bad Request")
			}
			return
		}
		if up == nil {
			var err error
			if up, err = net.Dial("tcp", p.upstream); err != nil {
				rawRefuse(c, 502, "Bad Gateway")
				return
			}
			ur = bufio.NewReaderSize(up, 8<<10)
		}
		if _, err := up.Write(req.buf); err != nil {
			rawRefuse(c, 502, "Bad Gateway")
			return
		}
		ans.head = req.head
		if err := readRawMsg(ur, &ans, false); err != nil {
			rawRefuse(c, 502, "Bad Gateway")
			return
		}
		if _, err := c.Write(ans.buf); err != nil || req.close || ans.close {
			return
		}
	}
}

// rawRefuse answers what the proxy cannot relay; the connection closes.
func rawRefuse(c net.Conn, code int, text string) {
	_, _ = fmt.Fprintf(c, "HTTP/1.1 %d %s\r\nContent-Type: text/plain\r\nContent-Length: %d\r\nConnection: close\r\n\r\n%s\n",
		code, text, len(text)+1, text)
}

// readRawMsg reads one request (or answer) into m.buf, reusing it: its head
// line by line to the blank line, then as many body bytes as its
// Content-Length says (an answer to HEAD, 204 and 304 have none). An
// interim 1xx answer has no length, so it is refused with the answers
// without one; taken for a whole answer, it would leave the final one to
// be read as the next request's.
func readRawMsg(r *bufio.Reader, m *rawMsg, request bool) error {
	m.buf, m.length, m.close, m.status = m.buf[:0], -1, false, 0
	first := true
	for {
		line, err := r.ReadSlice('\n')
		if errors.Is(err, bufio.ErrBufferFull) {
			return errRawHeadTooLarge
		}
		if err != nil {
			return err
		}
		if len(m.buf)+len(line) > rawMaxHead {
			return errRawHeadTooLarge
		}
		m.buf = append(m.buf, line...)
		if first {
			first = false
			if err := m.startLine(line, request); err != nil {
				return err
			}
			continue
		}
		if n := len(line); n == 1 || n == 2 && line[0] == '\r' {
			break // the blank line
		}
		if err := m.field(line); err != nil {
			return err
		}
	}
	n := m.length
	switch {
	case request && n < 0:
		n = 0
	case !request && (m.head || m.status == 204 || m.status == 304):
		n = 0
	case !request && n < 0:
		return errRawNoLength
	}
	if n > rawMaxBody {
		return errRawBodyTooLarge
	}
	l := len(m.buf)
	m.buf = append(m.buf, make([]byte, n)...)
	_, err := io.ReadFull(r, m.buf[l:])
	return err
}

// startLine reads what framing needs from a request or status line.
func (m *rawMsg) startLine(line []byte, request bool) error {
	line = bytes.TrimSuffix(bytes.TrimSuffix(line, []byte("\n")), []byte("\r"))
	if request {
		sp := bytes.IndexByte(line, ' ')
		if sp <= 0 {
			return errRawMalformed
		}
		m.head = string(line[:sp]) == "HEAD"
		m.close = !bytes.HasSuffix(line, []byte(" HTTP/1.1"))
		return nil
	}
	// HTTP/1.1 200 OK
	if len(line) < 12 || line[8] != ' ' || len(line) > 12 && line[12] != ' ' {
		return errRawMalformed
	}
	m.close = string(line[:8]) != "HTTP/1.1"
	s, err := strconv.Atoi(string(line[9:12]))
	if err != nil || s < 100 {
		return errRawMalformed
	}
	m.status = s
	return nil
}

// field reads Content-Length, Transfer-Encoding and Connection; the names
// are told apart by their length before they are compared.
func (m *rawMsg) field(line []byte) error {
	colon := bytes.IndexByte(line, ':')
	if colon <= 0 || bytes.IndexByte(line[:colon], ' ') >= 0 || bytes.IndexByte(line[:colon], '\t') >= 0 {
		return errRawMalformed // a name the upstream might read otherwise
	}
	name := line[:colon]
	switch len(name) {
	case len("Content-Length"):
		if !bytes.EqualFold(name, []byte("Content-Length")) {
			return nil
		}
		value := bytes.TrimSpace(line[colon+1:])
		n, err := strconv.ParseInt(string(value), 10, 64)
		if err != nil || n < 0 || value[0] == '+' || m.length >= 0 && m.length != n {
			return errRawMalformed
		}
		m.length = n
	case len("Transfer-Encoding"):
		if bytes.EqualFold(name, []byte("Transfer-Encoding")) {
			return errRawChunked
		}
	case len("Connection"):
		if !bytes.EqualFold(name, []byte("Connection")) {
			return nil
		}
		for _, t := range bytes.Split(line[colon+1:], []byte(",")) {
			if bytes.EqualFold(bytes.TrimSpace(t), []byte("close")) {
				m.close = true
			}
		}
	}
	return nil
}
