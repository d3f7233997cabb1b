package bench

import (
	"net"
	"sync"
	"time"
)

// The userspace delay line of bench wan, for kernels without tc netem: a
// TCP forwarder (DelayRelay) and a UDP forwarder (DelayUDP) that hold every
// chunk or datagram they read for a fixed one-way delay before passing it
// on, in order. Each direction is delayed on its own, so a round trip
// through a relay of delay d costs 2d, as across a WAN link of one-way
// delay d. The hold is measured from the moment the chunk was read, so a
// burst does not pile its delays up: a chunk read at t is written at t+d
// (or as soon after as the one before it is written).

// delayQueue bounds the chunks held per direction: past it the reader
// stops reading and TCP's own flow control pushes back on the sender.
const delayQueue = 1024

type heldChunk struct {
	due time.Time
	b   []byte // nil: the source ended (EOF or error) at due
}

// DelayRelay forwards every TCP connection accepted on its listener to a
// new connection from dial, delaying each direction by Delay. Cut closes
// what is relayed and refuses new connections (a lost link); Heal lets
// them through again. Safe for concurrent use.
type DelayRelay struct {
	ln    net.Listener
	dial  func() (net.Conn, error)
	delay time.Duration

	mu     sync.Mutex
	cut    bool
	closed bool
	conns  map[net.Conn]struct{}
	wg     sync.WaitGroup
}

// NewDelayRelay serves ln until Close; ln may be bound in another network
// namespace than dial's connections.
func NewDelayRelay(ln net.Listener, delay time.Duration, dial func() (net.Conn, error)) *DelayRelay {
	r := &DelayRelay{ln: ln, dial: dial, delay: delay, conns: map[net.Conn]struct{}{}}
	r.wg.Add(1)
	go r.accept()
	return r
}

// Addr is where the relay listens.
func (r *DelayRelay) Addr() string { return r.ln.Addr().String() }

func (r *DelayRelay) accept() {
	defer r.wg.Done()
	for {
		c, err := r.ln.Accept()
		if err != nil {
			return
		}
		r.wg.Add(1)
		go r.relay(c)
	}
}

func (r *DelayRelay) relay(c net.Conn) {
	defer r.wg.Done()
	r.mu.Lock()
	cut := r.cut || r.closed
	r.mu.Unlock()
	if cut {
		c.Close()
		return
	}
	up, err := r.dial()
	if err != nil {
		c.Close()
		return
	}
	r.mu.Lock()
	if r.cut || r.closed { // cut while dialling
		r.mu.Unlock()
		c.Close()
		up.Close()
		return
	}
	r.conns[c], r.conns[up] = struct{}{}, struct{}{}
	r.mu.Unlock()
	var pipes sync.WaitGroup
	pipes.Add(2)
	go func() { defer pipes.Done(); delayPipe(up, c, r.delay) }()
	go func() { defer pipes.Done(); delayPipe(c, up, r.delay) }()
	pipes.Wait()
	c.Close()
	up.Close()
	r.mu.Lock()
	delete(r.conns, c)
	delete(r.conns, up)
	r.mu.Unlock()
}

// delayPipe copies src to dst, each chunk written delay after it was read.
// When src ends, dst's write side is closed (after the delay) so that the
// far end sees the end of the stream when it would have; on a write error
// both connections are closed, which ends the other direction too.
func delayPipe(dst, src net.Conn, delay time.Duration) {
	q := make(chan heldChunk, delayQueue)
	go func() {
		defer close(q)
		buf := make([]byte, 32<<10)
		for {
			n, err := src.Read(buf)
			now := time.Now()
			if n > 0 {
				q <- heldChunk{due: now.Add(delay), b: append([]byte(nil), buf[:n]...)}
			}
			if err != nil {
				q <- heldChunk{due: now.Add(delay)}
				return
			}
		}
	}()
	for c := range q {
		if wait := time.Until(c.due); wait > 0 {
			time.Sleep(wait)
		}
		if c.b == nil {
			if cw, ok := dst.(interface{ CloseWrite() error }); ok {
				_ = cw.CloseWrite()
			} else {
				dst.Close()
			}
			break
		}
		if _, err := dst.Write(c.b); err != nil {
			dst.Close()
			src.Close()
			break
		}
	}
	for range q { // let the reader finish (src is closed by now or ends)
	}
}

// Cut closes every relayed connection and refuses new ones.
func (r *DelayRelay) Cut() {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.cut = true
	for c := range r.conns {
		c.Close()
	}
}

// Heal accepts connections again.
func (r *DelayRelay) Heal() {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.cut = false
}

// Close stops listening, closes what is relayed and waits for its
// goroutines.
func (r *DelayRelay) Close() {
	r.mu.Lock()
	r.closed = true
	r.mu.Unlock()
	r.ln.Close()
	r.Cut()
	r.wg.Wait()
}

// DelayUDP joins two UDP sockets, a and b, into a delayed path: every
// datagram read on a is sent from b to bTarget, and every datagram read on
// b is sent from a to aTarget, each Delay after it was read and in the
// order read. bench wan binds a in one edge's namespace to the address of
// a peer, and b in that peer's namespace to the address of the edge, so
// that each sees the other's datagrams come from the other's own address,
// late by the path's delay.
type DelayUDP struct {
	a, b *net.UDPConn
	wg   sync.WaitGroup
}

// NewDelayUDP forwards until Close.
func NewDelayUDP(a, b *net.UDPConn, aTarget, bTarget *net.UDPAddr, delay time.Duration) *DelayUDP {
	u := &DelayUDP{a: a, b: b}
	u.wg.Add(2)
	go func() { defer u.wg.Done(); delayDatagrams(a, b, bTarget, delay) }()
	go func() { defer u.wg.Done(); delayDatagrams(b, a, aTarget, delay) }()
	return u
}

// delayDatagrams reads src until it is closed and sends each datagram from
// dst to target, delay after it was read. A full queue drops datagrams, as
// a congested link would.
func delayDatagrams(src, dst *net.UDPConn, target *net.UDPAddr, delay time.Duration) {
	q := make(chan heldChunk, delayQueue)
	done := make(chan struct{})
	go func() {
		defer close(done)
		for c := range q {
			if wait := time.Until(c.due); wait > 0 {
				time.Sleep(wait)
			}
			_, _ = dst.WriteToUDP(c.b, target) // lost on the way, as UDP is
		}
	}()
	buf := make([]byte, 64<<10)
	for {
		n, _, err := src.ReadFromUDP(buf)
		if err != nil {
			break
		}
		select {
		case q <- heldChunk{due: time.Now().Add(delay), b: append([]byte(nil), buf[:n]...)}:
		default:
		}
	}
	close(q)
	<-done
}

// Close closes both sockets and waits for the forwarders.
func (u *DelayUDP) Close() {
	u.a.Close()
	u.b.Close()
	u.wg.Wait()
}
