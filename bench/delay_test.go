package bench

import (
	"bufio"
	"encoding/binary"
	"io"
	"net"
	"testing"
	"time"
)

// echoServer echoes every TCP connection until the test ends.
func echoServer(t *testing.T) net.Listener {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ln.Close() })
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			go func() { defer c.Close(); _, _ = io.Copy(c, c) }()
		}
	}()
	return ln
}

func startDelayRelay(t *testing.T, target string, d time.Duration) *DelayRelay {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	r := NewDelayRelay(ln, d, func() (net.Conn, error) { return net.DialTimeout("tcp", target, time.Second) })
	t.Cleanup(r.Close)
	return r
}

// A round trip through the relay costs its delay twice (once each way),
// and hardly more.
func TestDelayRelayAddsOneWayDelayPerDirection(t *testing.T) {
	const d = 20 * time.Millisecond
	r := startDelayRelay(t, echoServer(t).Addr().String(), d)
	c, err := net.Dial("tcp", r.Addr())
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	fastest := time.Hour
	buf := make([]byte, 5)
	for range 5 {
		t0 := time.Now()
		if _, err := c.Write([]byte("hello")); err != nil {
			t.Fatal(err)
		}
		if _, err := io.ReadFull(c, buf); err != nil {
			t.Fatal(err)
		}
		rtt := time.Since(t0)
		if rtt < 2*d {
			t.Fatalf("round trip %v through a relay of one-way delay %v: less than %v", rtt, d, 2*d)
		}
		fastest = min(fastest, rtt)
	}
	// The fastest of five, so that one scheduling hiccup on a loaded CI
	// machine does not fail it; the overhead of a relay itself is well
	// under a millisecond.
	if fastest > 2*d+8*time.Millisecond {
		t.Fatalf("fastest round trip %v, want < %v", fastest, 2*d+8*time.Millisecond)
	}
}

// Chunks come out in the order they went in, even when written faster
// than the delay, and a burst is not delayed once per chunk.
func TestDelayRelayKeepsOrder(t *testing.T) {
	const d, n = 10 * time.Millisecond, 2000
	r := startDelayRelay(t, echoServer(t).Addr().String(), d)
	c, err := net.Dial("tcp", r.Addr())
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	t0 := time.Now()
	go func() {
		var b [4]byte
		for i := range uint32(n) {
			binary.BigEndian.PutUint32(b[:], i)
			if _, err := c.Write(b[:]); err != nil {
				return
			}
		}
	}()
	br := bufio.NewReader(c)
	var b [4]byte
	for i := range uint32(n) {
		if _, err := io.ReadFull(br, b[:]); err != nil {
			t.Fatalf("after %d numbers: %v", i, err)
		}
		if got := binary.BigEndian.Uint32(b[:]); got != i {
			t.Fatalf("number %d came back as %d", i, got)
		}
	}
	if el := time.Since(t0); el > time.Second {
		t.Fatalf("%d small writes took %v through a %v relay: delays piled up", n, el, d)
	}
}

// Cut closes relayed connections and refuses new ones; Heal lets them in.
func TestDelayRelayCut(t *testing.T) {
	r := startDelayRelay(t, echoServer(t).Addr().String(), time.Millisecond)
	c, err := net.Dial("tcp", r.Addr())
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	if _, err := c.Write([]byte("x")); err != nil {
		t.Fatal(err)
	}
	if _, err := io.ReadFull(c, make([]byte, 1)); err != nil {
		t.Fatal(err)
	}
	r.Cut()
	_ = c.SetReadDeadline(time.Now().Add(5 * time.Second))
	if _, err := c.Read(make([]byte, 1)); err == nil || isTimeout(err) {
		t.Fatalf("a relayed connection survived the cut: %v", err)
	}
	c2, err := net.Dial("tcp", r.Addr())
	if err != nil {
		t.Fatal(err)
	}
	defer c2.Close()
	_ = c2.SetReadDeadline(time.Now().Add(5 * time.Second))
	if _, err := c2.Read(make([]byte, 1)); err == nil || isTimeout(err) {
		t.Fatalf("a connection made while cut was relayed: %v", err)
	}
	r.Heal()
	c3, err := net.Dial("tcp", r.Addr())
	if err != nil {
		t.Fatal(err)
	}
	defer c3.Close()
	_ = c3.SetDeadline(time.Now().Add(5 * time.Second))
	if _, err := c3.Write([]byte("y")); err != nil {
		t.Fatal(err)
	}
	if _, err := io.ReadFull(c3, make([]byte, 1)); err != nil {
		t.Fatalf("after Heal: %v", err)
	}
}

func isTimeout(err error) bool {
	ne, ok := err.(net.Error)
	return ok && ne.Timeout()
}

func udpListen(t *testing.T) *net.UDPConn {
	t.Helper()
	c, err := net.ListenUDP("udp", &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1)})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	return c
}

// Datagrams through DelayUDP: delayed once each way, in order, and they
// arrive from the relay's other socket.
func TestDelayUDP(t *testing.T) {
	const d, n = 15 * time.Millisecond, 200
	client, server := udpListen(t), udpListen(t)
	a, b := udpListen(t), udpListen(t)
	u := NewDelayUDP(a, b, client.LocalAddr().(*net.UDPAddr), server.LocalAddr().(*net.UDPAddr), d)
	defer u.Close()
	go func() { // echo to whoever sent
		buf := make([]byte, 2048)
		for {
			n, from, err := server.ReadFromUDP(buf)
			if err != nil {
				return
			}
			_, _ = server.WriteToUDP(buf[:n], from)
		}
	}()
	buf := make([]byte, 2048)
	t0 := time.Now()
	if _, err := client.WriteToUDP([]byte("ping"), a.LocalAddr().(*net.UDPAddr)); err != nil {
		t.Fatal(err)
	}
	_ = client.SetReadDeadline(time.Now().Add(5 * time.Second))
	k, from, err := client.ReadFromUDP(buf)
	if err != nil {
		t.Fatal(err)
	}
	rtt := time.Since(t0)
	if string(buf[:k]) != "ping" || from.String() != a.LocalAddr().String() {
		t.Fatalf("got %q from %v, want ping from %v", buf[:k], from, a.LocalAddr())
	}
	// The lower bound is the delay; one sample's upper bound would measure
	// the machine's load (the TCP test holds the fastest of five to it).
	if rtt < 2*d {
		t.Fatalf("round trip %v, want at least %v", rtt, 2*d)
	}
	for i := range uint32(n) {
		var b [4]byte
		binary.BigEndian.PutUint32(b[:], i)
		if _, err := client.WriteToUDP(b[:], a.LocalAddr().(*net.UDPAddr)); err != nil {
			t.Fatal(err)
		}
	}
	last := -1
	for range n {
		k, _, err := client.ReadFromUDP(buf)
		if err != nil {
			t.Fatalf("after %d datagrams: %v", last+1, err)
		}
		got := int(binary.BigEndian.Uint32(buf[:k]))
		if got <= last {
			t.Fatalf("datagram %d after %d: out of order", got, last)
		}
		last = got
	}
}
