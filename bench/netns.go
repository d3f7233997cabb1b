package bench

import (
	"context"
	"fmt"
	"net"
	"runtime"
	"time"

	"golang.org/x/sys/unix"
)

// InNetns runs f on an OS thread that has entered the named network
// namespace (/run/netns/<name>, as `ip netns add` makes). A socket created
// by f belongs to that namespace for its whole life, whichever thread uses
// it later: this is how bench wan listens and dials inside each edge's
// namespace from one process. Needs CAP_SYS_ADMIN (root).
func InNetns(name string, f func() error) error {
	errc := make(chan error, 1)
	go func() {
		// The thread is locked for f and returned to the scheduler only if
		// it could be switched back; otherwise it dies with the goroutine.
		runtime.LockOSThread()
		self, err := unix.Open("/proc/thread-self/ns/net", unix.O_RDONLY|unix.O_CLOEXEC, 0)
		if err != nil {
			errc <- fmt.Errorf("netns: own namespace: %w", err)
			return
		}
		defer unix.Close(self)
		target, err := unix.Open("/run/netns/"+name, unix.O_RDONLY|unix.O_CLOEXEC, 0)
		if err != nil {
			runtime.UnlockOSThread()
			errc <- fmt.Errorf("netns %s: %w", name, err)
			return
		}
		defer unix.Close(target)
		if err := unix.Setns(target, unix.CLONE_NEWNET); err != nil {
			runtime.UnlockOSThread()
			errc <- fmt.Errorf("netns %s: setns: %w", name, err)
			return
		}
		ferr := f()
		if err := unix.Setns(self, unix.CLONE_NEWNET); err == nil {
			runtime.UnlockOSThread()
		}
		errc <- ferr
	}()
	return <-errc
}

// ListenIn listens on addr (tcp) inside namespace ns ("" is this
// process's own).
func ListenIn(ns, addr string) (net.Listener, error) {
	var ln net.Listener
	err := inNetns(ns, func() (err error) { ln, err = net.Listen("tcp", addr); return })
	return ln, err
}

// ListenUDPIn binds a UDP socket to addr inside namespace ns.
func ListenUDPIn(ns string, addr *net.UDPAddr) (*net.UDPConn, error) {
	var c *net.UDPConn
	err := inNetns(ns, func() (err error) { c, err = net.ListenUDP("udp", addr); return })
	return c, err
}

// DialIn connects to addr (tcp) from inside namespace ns, from local
// address laddr when it is not nil.
func DialIn(ns, addr string, laddr *net.TCPAddr, timeout time.Duration) (net.Conn, error) {
	var c net.Conn
	err := inNetns(ns, func() (err error) {
		d := net.Dialer{Timeout: timeout}
		if laddr != nil {
			d.LocalAddr = laddr
		}
		c, err = d.DialContext(context.Background(), "tcp", addr)
		return
	})
	return c, err
}

func inNetns(ns string, f func() error) error {
	if ns == "" {
		return f()
	}
	return InNetns(ns, f)
}
