package proxy

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/http"
	"net/netip"
	"net/url"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/keymesh/keymesh/event"
	"github.com/keymesh/keymesh/internal/apierror"
)

// The upstream policy: where this edge may connect on a deployment's behalf.
// Deployments come from the origin, and a tenant with write_config chooses
// their upstream URLs; the edge's operator bounds them here. The address
// checked is the one actually connected to — every address a name resolves
// to is checked as it is dialled (net.Dialer.Control), so a DNS answer cannot
// smuggle a denied address past the policy — and:
//
//   - the edge's own listeners (--listen, --admin-listen, --gossip-listen)
//     are never an upstream;
//   - link-local and cloud-metadata addresses, the unspecified address and
//     multicast are denied unless an --upstream-allow prefix inside them
//     names them (a broad prefix such as 0.0.0.0/0 does not);
//   - with --upstream-allow set, an upstream must match one of its patterns:
//     a CIDR or IP address (the connected address), or a host name or
//     "*.domain", with an optional port and http:// or https:// (the URL's
//     host, port and scheme).
//
// Loopback is allowed by default, so that an edge and its inference server
// on one machine (make run, the tests) need no configuration.

// defaultDenied are the addresses no upstream may be at unless explicitly
// allowed: link-local (where cloud metadata services live), the metadata
// services outside it, "this network" and the unspecified address (which
// reach the local host), multicast and broadcast.
var defaultDenied = func() []netip.Prefix {
	var out []netip.Prefix
	for _, s := range []string{
		"169.254.0.0/16",     // IPv4 link-local: AWS, GCP, Azure, OCI, DigitalOcean metadata (169.254.169.254)
		"fe80::/10",          // IPv6 link-local
		"fd00:ec2::254/128",  // AWS IMDS over IPv6
		"100.100.100.200/32", // Alibaba Cloud metadata
		"168.63.129.16/32",   // Azure WireServer
		"0.0.0.0/8",          // "this network"; 0.0.0.0 reaches the local host
		"::/128",             // unspecified
		"224.0.0.0/4",        // multicast
		"ff00::/8",           // IPv6 multicast
		"255.255.255.255/32",
	} {
		out = append(out, netip.MustParsePrefix(s))
	}
	return out
}()

// nat64 is the well-known NAT64 prefix (RFC 6052): an address in it reaches
// the IPv4 address in its last 32 bits, which is checked too.
var nat64 = netip.MustParsePrefix("64:ff9b::/96")

// ErrUpstreamPolicy is returned by New for an --upstream-allow pattern
// that cannot be used.
var ErrUpstreamPolicy = errors.New("upstream policy")

// upstreamDeniedError is the dial error for an address the policy refuses.
type upstreamDeniedError struct{ reason string }

func (e *upstreamDeniedError) Error() string {
	return "upstream address not allowed by this edge's policy (" + e.reason + ")"
}

var (
	deniedNotAllowed  = &upstreamDeniedError{"not_allowed"}
	deniedAddress     = &upstreamDeniedError{"denied_address"}
	deniedOwnListener = &upstreamDeniedError{"own_listener"}
	deniedReasons     = []*upstreamDeniedError{deniedNotAllowed, deniedAddress, deniedOwnListener}
)

var errUpstreamNotAllowed = apierror.New(http.StatusBadGateway, apierror.UpstreamError,
	"this deployment's upstream is not an address this edge may connect to")

func init() { rendered[errUpstreamNotAllowed] = errUpstreamNotAllowed.Body() }

// hostPattern is a name pattern of --upstream-allow.
type hostPattern struct {
	scheme string // "", "http" or "https"
	exact  string // lower case; or
	suffix string // ".domain" for "*.domain"
	port   uint16 // 0: any
}

// addrPattern is an address pattern: a prefix, and a port (0: any).
type addrPattern struct {
	prefix netip.Prefix
	port   uint16
}

// upstreamPolicy decides which addresses the edge connects to for a
// deployment. Its patterns never change; the edge's own listeners are added
// as they start.
type upstreamPolicy struct {
	names []hostPattern
	addrs []addrPattern

	mu        sync.Mutex
	own       atomic.Pointer[[]netip.AddrPort] // listeners bound to one address
	ownPorts  atomic.Pointer[[]uint16]         // ports of listeners on every local address
	localAddr atomic.Pointer[[]netip.Addr]     // this host's interface addresses
}

// CheckUpstreamAllow reports whether patterns can be Config.UpstreamAllow:
// nil, or the first bad pattern wrapped in ErrUpstreamPolicy.
func CheckUpstreamAllow(patterns []string) error {
	_, err := parseUpstreamPolicy(patterns)
	return err
}

// parseUpstreamPolicy parses the --upstream-allow patterns.
func parseUpstreamPolicy(patterns []string) (*upstreamPolicy, error) {
	p := &upstreamPolicy{}
	for _, raw := range patterns {
		s := strings.TrimSpace(raw)
		if s == "" {
			continue
		}
		if pre, err := netip.ParsePrefix(s); err == nil {
			p.addrs = append(p.addrs, addrPattern{prefix: pre.Masked()})
			continue
		}
		if a, err := netip.ParseAddr(s); err == nil {
			p.addrs = append(p.addrs, addrPattern{prefix: netip.PrefixFrom(a.Unmap(), a.Unmap().BitLen())})
			continue
		}
		var hp hostPattern
		if scheme, rest, ok := strings.Cut(s, "://"); ok {
			hp.scheme = strings.ToLower(scheme)
			if hp.scheme != "http" && hp.scheme != "https" {
				return nil, fmt.Errorf("%w: %q: the scheme must be http or https", ErrUpstreamPolicy, raw)
			}
			s = strings.TrimSuffix(rest, "/")
		}
		if strings.ContainsAny(s, "/?#@ ") {
			return nil, fmt.Errorf("%w: %q: give a CIDR, an IP address, or [scheme://]host[:port] (host may be *.domain)", ErrUpstreamPolicy, raw)
		}
		host, port := s, ""
		if h, pt, err := net.SplitHostPort(s); err == nil {
			host, port = h, pt
		}
		if port != "" {
			n, err := strconv.ParseUint(port, 10, 16)
			if err != nil || n == 0 {
				return nil, fmt.Errorf("%w: %q: bad port", ErrUpstreamPolicy, raw)
			}
			hp.port = uint16(n)
		}
		if a, err := netip.ParseAddr(strings.Trim(host, "[]")); err == nil {
			if hp.scheme != "" {
				return nil, fmt.Errorf("%w: %q: an address pattern takes no scheme", ErrUpstreamPolicy, raw)
			}
			a = a.Unmap()
			p.addrs = append(p.addrs, addrPattern{prefix: netip.PrefixFrom(a, a.BitLen()), port: hp.port})
			continue
		}
		host = strings.ToLower(strings.TrimSuffix(host, "."))
		if suffix, ok := strings.CutPrefix(host, "*"); ok {
			if !strings.HasPrefix(suffix, ".") || len(suffix) < 2 {
				return nil, fmt.Errorf("%w: %q: a wildcard is written *.domain", ErrUpstreamPolicy, raw)
			}
			hp.suffix = suffix
		} else if host == "" || strings.Contains(host, "*") {
			return nil, fmt.Errorf("%w: %q: bad host", ErrUpstreamPolicy, raw)
		} else {
			hp.exact = host
		}
		p.names = append(p.names, hp)
	}
	if addrs, err := net.InterfaceAddrs(); err == nil {
		var local []netip.Addr
		for _, a := range addrs {
			if pre, err := netip.ParsePrefix(a.String()); err == nil {
				local = append(local, pre.Addr().Unmap())
			}
		}
		p.localAddr.Store(&local)
	}
	return p, nil
}

// restricted reports whether --upstream-allow lists any pattern.
func (p *upstreamPolicy) restricted() bool { return len(p.names) > 0 || len(p.addrs) > 0 }

// addOwn records a listener of the edge's own: never an upstream.
func (p *upstreamPolicy) addOwn(addr net.Addr) {
	ta, ok := addr.(*net.TCPAddr)
	if !ok {
		if ua, ok := addr.(*net.UDPAddr); ok {
			ta = &net.TCPAddr{IP: ua.IP, Port: ua.Port}
		} else {
			return
		}
	}
	ap := ta.AddrPort()
	ap = netip.AddrPortFrom(ap.Addr().Unmap(), ap.Port())
	p.mu.Lock()
	defer p.mu.Unlock()
	if ap.Addr().IsUnspecified() || !ap.Addr().IsValid() {
		ports := append(append([]uint16{}, p.loadPorts()...), ap.Port())
		p.ownPorts.Store(&ports)
		return
	}
	own := append([]netip.AddrPort{}, p.loadOwn()...)
	own = append(own, ap)
	p.own.Store(&own)
}

func (p *upstreamPolicy) loadOwn() []netip.AddrPort {
	if o := p.own.Load(); o != nil {
		return *o
	}
	return nil
}

func (p *upstreamPolicy) loadPorts() []uint16 {
	if o := p.ownPorts.Load(); o != nil {
		return *o
	}
	return nil
}

// isOwn reports whether ap is (or reaches) one of the edge's own listeners.
// A listener bound to one address is reached at that address, and — when
// that is a loopback or unspecified one — at any loopback or unspecified
// address; one bound to every address, at any local address.
func (p *upstreamPolicy) isOwn(ap netip.AddrPort) bool {
	a := ap.Addr()
	local := a.IsLoopback() || a.IsUnspecified()
	for _, o := range p.loadOwn() {
		if o.Port() != ap.Port() {
			continue
		}
		if o.Addr() == a || (local && (o.Addr().IsLoopback() || o.Addr().IsUnspecified())) {
			return true
		}
	}
	for _, port := range p.loadPorts() {
		if port != ap.Port() {
			continue
		}
		if local {
			return true
		}
		if l := p.localAddr.Load(); l != nil {
			for _, la := range *l {
				if la == a {
					return true
				}
			}
		}
	}
	return false
}

// allowsURL is the part of the policy a URL alone decides: with patterns
// set, some pattern must be able to match it (an address pattern may, once
// the name is resolved; a name pattern must match its scheme, host and
// port). It returns nil or the denial.
func (p *upstreamPolicy) allowsURL(u *url.URL) *upstreamDeniedError {
	if !p.restricted() || len(p.addrs) > 0 {
		return nil
	}
	port := urlPort(u)
	for _, hp := range p.names {
		if (hp.scheme == "" || hp.scheme == u.Scheme) && hp.matches(u.Hostname(), port) {
			return nil
		}
	}
	return deniedNotAllowed
}

func urlPort(u *url.URL) uint16 {
	if n, err := strconv.ParseUint(u.Port(), 10, 16); err == nil {
		return uint16(n)
	}
	if u.Scheme == "https" {
		return 443
	}
	return 80
}

func (hp hostPattern) matches(host string, port uint16) bool {
	if hp.port != 0 && hp.port != port {
		return false
	}
	host = strings.ToLower(strings.TrimSuffix(host, "."))
	if hp.exact != "" {
		return host == hp.exact
	}
	return len(host) > len(hp.suffix) && strings.HasSuffix(host, hp.suffix)
}

// check decides a connection to ap made for the upstream named host: nil,
// or why not.
func (p *upstreamPolicy) check(host string, ap netip.AddrPort) *upstreamDeniedError {
	// Without its zone: a zoned address (fe80::1%eth0) matches no prefix.
	a := ap.Addr().Unmap().WithZone("")
	ap = netip.AddrPortFrom(a, ap.Port())
	if p.isOwn(ap) {
		return deniedOwnListener
	}
	if p.defaultDenied(a) {
		return deniedAddress
	}
	if nat64.Contains(a) {
		b := a.As16()
		v4 := netip.AddrFrom4([4]byte{b[12], b[13], b[14], b[15]})
		if p.isOwn(netip.AddrPortFrom(v4, ap.Port())) {
			return deniedOwnListener
		}
		if p.defaultDenied(v4) {
			return deniedAddress
		}
	}
	if !p.restricted() {
		return nil
	}
	for _, ap2 := range p.addrs {
		if ap2.prefix.Contains(a) && (ap2.port == 0 || ap2.port == ap.Port()) {
			return nil
		}
	}
	for _, hp := range p.names {
		if hp.matches(host, ap.Port()) {
			return nil
		}
	}
	return deniedNotAllowed
}

// defaultDenied reports whether a is in a default-denied range that no
// allow prefix inside that range re-allows.
func (p *upstreamPolicy) defaultDenied(a netip.Addr) bool {
	for _, d := range defaultDenied {
		if !d.Contains(a) {
			continue
		}
		for _, ap := range p.addrs {
			if ap.prefix.Contains(a) && ap.prefix.Bits() >= d.Bits() {
				return false
			}
		}
		return true
	}
	return false
}

// checkOwnPatterns refuses patterns that name one of the edge's own
// listeners (given as configured, "host:port"): an operator allowing the
// admin port as an upstream has made a mistake worth stopping for.
func (p *upstreamPolicy) checkOwnPatterns(listeners map[string]string) error {
	for flag, l := range listeners {
		if l == "" {
			continue
		}
		host, portStr, err := net.SplitHostPort(l)
		if err != nil {
			continue
		}
		port, err := strconv.ParseUint(portStr, 10, 16)
		if err != nil || port == 0 {
			continue // a random port cannot be named in advance
		}
		addrs := listenerAddrs(host)
		for _, ap := range p.addrs {
			if ap.port != uint16(port) {
				continue
			}
			for _, a := range addrs {
				if ap.prefix.Contains(a) || (a.IsUnspecified() && ap.prefix.Addr().IsLoopback()) {
					return fmt.Errorf("%w: --upstream-allow %s names this edge's own %s listener", ErrUpstreamPolicy, ap.prefix.Addr(), flag)
				}
			}
		}
		for _, hp := range p.names {
			if hp.port != uint16(port) || hp.suffix != "" {
				continue
			}
			if hp.exact == "localhost" || hp.exact == strings.ToLower(host) {
				return fmt.Errorf("%w: --upstream-allow %s:%d names this edge's own %s listener", ErrUpstreamPolicy, hp.exact, port, flag)
			}
		}
	}
	return nil
}

// listenerAddrs returns the addresses a listener's host means.
func listenerAddrs(host string) []netip.Addr {
	if host == "" {
		return []netip.Addr{netip.IPv4Unspecified(), netip.IPv6Unspecified()}
	}
	if a, err := netip.ParseAddr(host); err == nil {
		return []netip.Addr{a.Unmap()}
	}
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
	defer cancel()
	addrs, _ := net.DefaultResolver.LookupNetIP(ctx, "ip", host)
	for i := range addrs {
		addrs[i] = addrs[i].Unmap()
	}
	return addrs
}

// dialer returns the fasthttp client's Dial: a TCP dial that checks every
// address it connects to against the policy before connecting, and after
// (a connection whose far end is its own near end reached this host, which
// is denied on the edge's own ports), and wraps the connection in idleConn.
func (p *upstreamPolicy) dialer(connectTimeout, idle time.Duration) func(addr string) (net.Conn, error) {
	return func(addr string) (net.Conn, error) {
		host, _, err := net.SplitHostPort(addr)
		if err != nil {
			return nil, err
		}
		d := net.Dialer{Timeout: connectTimeout, Control: func(_, address string, _ syscall.RawConn) error {
			ap, err := netip.ParseAddrPort(address)
			if err != nil {
				return deniedNotAllowed
			}
			if denied := p.check(host, ap); denied != nil {
				return denied
			}
			return nil
		}}
		c, err := d.Dial("tcp", addr)
		if err != nil {
			return nil, err
		}
		if la, ok := c.LocalAddr().(*net.TCPAddr); ok {
			if ra, ok := c.RemoteAddr().(*net.TCPAddr); ok && la.IP.Equal(ra.IP) &&
				p.isOwnPort(uint16(ra.Port)) {
				c.Close()
				return nil, &net.OpError{Op: "dial", Net: "tcp", Addr: ra, Err: deniedOwnListener}
			}
		}
		return &idleConn{Conn: c, idle: idle}, nil
	}
}

// isOwnPort reports whether port is the port of any of the edge's listeners.
func (p *upstreamPolicy) isOwnPort(port uint16) bool {
	for _, o := range p.loadOwn() {
		if o.Port() == port {
			return true
		}
	}
	for _, o := range p.loadPorts() {
		if o == port {
			return true
		}
	}
	return false
}

// upstreamDenied counts a refused upstream and says so once per upstream
// (per deployment set): which deployment, which upstream host, and why —
// configuration, never a secret.
func (s *Proxy) upstreamDenied(dep *event.Deployment, up *upstream, why *upstreamDeniedError) {
	s.metrics.upstreamDenied.WithLabelValues(why.reason).Inc()
	if up.deniedLogged.CompareAndSwap(false, true) {
		s.log.Warn("upstream refused by the upstream policy (--upstream-allow)", "deployment", dep.Name,
			"upstream", up.host, "reason", why.reason)
	}
}
