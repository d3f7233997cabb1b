// Package netcut cuts links on purpose, for tests (and bench runs) of
// partitions in one process: a memberlist transport whose switch cuts every
// gossip link of one node (Transport), and a TCP relay whose switch severs
// one client's link to a server such as NATS (Relay).
package netcut

import (
	"errors"
	"io"
	"log"
	"net"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	"github.com/hashicorp/memberlist"
)

// ErrCut is returned by dials while the link is cut.
var ErrCut = errors.New("netcut: link cut")

// Transport is memberlist's NetTransport on 127.0.0.1 (any free port) with
// a switch that drops every packet and stream in both directions, as a
// network partition would. It overrides the node-aware methods too:
// memberlist calls WriteToAddress and DialAddressTimeout, which would
// otherwise be promoted from NetTransport and bypass the cut.
type Transport struct {
	*memberlist.NetTransport
	cut     atomic.Bool
	closing chan struct{} // closed first by Shutdown: drain, forward nothing
	closeMu sync.Once
	packets chan *memberlist.Packet
	streams chan net.Conn
	stop    chan struct{}
	once    sync.Once
}

var _ memberlist.NodeAwareTransport = (*Transport)(nil)

// New binds a transport on 127.0.0.1 and starts forwarding.
func New() (*Transport, error) {
	nt, err := memberlist.NewNetTransport(&memberlist.NetTransportConfig{BindAddrs: []string{"127.0.0.1"},
		Logger: log.New(io.Discard, "", 0)})
	if err != nil {
		return nil, err
	}
	t := &Transport{NetTransport: nt, packets: make(chan *memberlist.Packet), streams: make(chan net.Conn),
		stop: make(chan struct{}), closing: make(chan struct{})}
	go t.forwardPackets()
	go t.forwardStreams()
	return t, nil
}

// Addr is the host:port the transport is bound to.
func (t *Transport) Addr() string { return "127.0.0.1:" + strconv.Itoa(t.GetAutoBindPort()) }

// Cut drops everything from now on; Heal lets it through again.
func (t *Transport) Cut()  { t.cut.Store(true) }
func (t *Transport) Heal() { t.cut.Store(false) }

func (t *Transport) forwardPackets() {
	for {
		select {
		case <-t.stop:
			return
		case p := <-t.NetTransport.PacketCh():
			if t.cut.Load() {
				continue
			}
			select {
			case t.packets <- p:
			case <-t.closing:
			case <-t.stop:
				return
			}
		}
	}
}

func (t *Transport) forwardStreams() {
	for {
		select {
		case <-t.stop:
			return
		case c := <-t.NetTransport.StreamCh():
			if t.cut.Load() {
				c.Close()
				continue
			}
			select {
			case t.streams <- c:
			case <-t.closing:
				c.Close()
			case <-t.stop:
				c.Close()
				return
			}
		}
	}
}

func (t *Transport) PacketCh() <-chan *memberlist.Packet { return t.packets }
func (t *Transport) StreamCh() <-chan net.Conn           { return t.streams }

func (t *Transport) WriteTo(b []byte, addr string) (time.Time, error) {
	if t.cut.Load() {
		return time.Now(), nil // lost on the way, as UDP is
	}
	return t.NetTransport.WriteTo(b, addr)
}

func (t *Transport) WriteToAddress(b []byte, a memberlist.Address) (time.Time, error) {
	if t.cut.Load() {
		return time.Now(), nil
	}
	return t.NetTransport.WriteToAddress(b, a)
}

func (t *Transport) DialTimeout(addr string, timeout time.Duration) (net.Conn, error) {
	if t.cut.Load() {
		return nil, ErrCut
	}
	return t.NetTransport.DialTimeout(addr, timeout)
}

func (t *Transport) DialAddressTimeout(a memberlist.Address, timeout time.Duration) (net.Conn, error) {
	if t.cut.Load() {
		return nil, ErrCut
	}
	return t.NetTransport.DialAddressTimeout(a, timeout)
}

// Shutdown closes the sockets, then stops forwarding: NetTransport's
// listeners may be blocked handing over a packet or stream until then.
func (t *Transport) Shutdown() error {
	t.closeMu.Do(func() { close(t.closing) })
	err := t.NetTransport.Shutdown()
	t.once.Do(func() { close(t.stop) })
	return err
}
