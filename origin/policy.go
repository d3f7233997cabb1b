package origin

// Upstream targets: what a deployment's upstream URL may be, and the
// operator's per-project policy (allowed_upstreams) restricting it.
//
// A tenant's deployment makes every edge open connections to the URLs it
// names, from inside the GPU sites' networks. Unchecked, a write_config key
// could point an upstream at a cloud metadata service, at the edge's own
// admin listener, or at any internal service the edges can reach, and read
// the answers. The origin therefore holds every upstream URL to two rules:
//
//  1. Syntax (parseUpstreamURL): http or https, a DNS name or a canonical IP
//     literal (no "2852039166" or "0x7f.1" that a resolver might read as an
//     address), an explicit port in 1-65535 if any, a path of visible ASCII
//     without '%' escapes or dot segments, and no credentials, query or
//     fragment.
//  2. Policy (upstreamPolicy.allows), per project, set by an admin user only:
//     null (the default) allows any URL whose host is not a denied address;
//     a list allows only URLs matching one of its entries. Denied addresses
//     are link-local ranges (169.254.0.0/16, fe80::/10: the metadata
//     services of AWS, GCP, Azure and others, and ECS task credentials), the
//     other metadata addresses and names (fd00:ec2::254, 100.100.100.200,
//     metadata.google.internal, ...), unspecified, multicast and broadcast
//     addresses. Wildcard entries never reach a denied address; an entry
//     naming it (its IP, its name, or a CIDR inside its denied range) does.
//
// The origin sees URLs as written, not what their names resolve to at each
// site: a name that resolves to a denied address is the edge's to refuse
// when it connects (edge --upstream-allow). Policy entries are:
//
//	http://host[:port][/path]   scheme http or https; host a name, an IP
//	https://*.suffix[:port]     literal ([v6] in brackets), "*" (any host) or
//	                            "*.suffix" (names strictly under suffix);
//	                            port a number or "*" — omitted means the
//	                            scheme's default port; the URL's path must
//	                            fall under path, if given
//	10.0.0.0/8, fd00::/8        an IP literal host in that range, any scheme,
//	10.1.2.3                    port and path

import (
	"encoding/json"
	"fmt"
	"net/netip"
	"net/url"
	"regexp"
	"strconv"
	"strings"
)

// deniedRanges are addresses no wildcard or default policy reaches.
var deniedRanges = []netip.Prefix{
	netip.MustParsePrefix("169.254.0.0/16"),     // IPv4 link-local: instance metadata, ECS credentials
	netip.MustParsePrefix("fe80::/10"),          // IPv6 link-local
	netip.MustParsePrefix("fd00:ec2::254/128"),  // AWS instance metadata over IPv6
	netip.MustParsePrefix("100.100.100.200/32"), // Alibaba Cloud metadata
	netip.MustParsePrefix("0.0.0.0/8"),          // "this network": 0.0.0.0 reaches the local host
	netip.MustParsePrefix("::/128"),             // unspecified
	netip.MustParsePrefix("224.0.0.0/4"),        // IPv4 multicast
	netip.MustParsePrefix("ff00::/8"),           // IPv6 multicast
	netip.MustParsePrefix("255.255.255.255/32"), // broadcast
}

// deniedNames are metadata service names no wildcard or default policy
// reaches.
var deniedNames = map[string]bool{
	"metadata":                   true, // GCE's short name
	"metadata.google.internal":   true,
	"metadata.goog":              true,
	"instance-data":              true, // EC2
	"instance-data.ec2.internal": true,
}

var nat64 = netip.MustParsePrefix("64:ff9b::/96")

// normAddr maps an IPv4-mapped IPv6 address, or one in the NAT64
// well-known prefix, to the IPv4 address it reaches.
func normAddr(a netip.Addr) netip.Addr {
	a = a.Unmap()
	if nat64.Contains(a) {
		b := a.As16()
		return netip.AddrFrom4([4]byte{b[12], b[13], b[14], b[15]})
	}
	return a
}

// deniedRange returns the denied range holding a, if any.
func deniedRange(a netip.Addr) (netip.Prefix, bool) {
	a = normAddr(a)
	for _, p := range deniedRanges {
		if p.Contains(a) {
			return p, true
		}
	}
	return netip.Prefix{}, false
}

var (
	dnsLabelRE   = regexp.MustCompile(`^[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?$`)
	numericishRE = regexp.MustCompile(`^(0x[0-9a-f]*|[0-9]+)$`)
)

// checkHostName reports why h (lower case) is not an acceptable DNS name for
// an upstream, or "".
func checkHostName(h string) string {
	if len(h) > maxHostLen {
		return "host name too long"
	}
	if strings.HasSuffix(h, ".") {
		return "host name must not end with a dot"
	}
	labels := strings.Split(h, ".")
	numeric := true
	for _, l := range labels {
		if !dnsLabelRE.MatchString(l) {
			return "host is not a DNS name (letters, digits and '-' between dots) or an IP address"
		}
		numeric = numeric && numericishRE.MatchString(l)
	}
	if numeric {
		// inet_aton reads "2852039166", "0251.0376.0251.0376" or
		// "0xa9.0xfe.0xa9.0xfe" as 169.254.169.254; refuse what is not
		// a canonical address but could be read as one.
		return "host looks like an IP address written in a non-canonical form; write it as a.b.c.d"
	}
	return ""
}

// upstreamHost is an upstream URL's host, parsed.
type upstreamHost struct {
	name string     // lower case, without brackets
	addr netip.Addr // valid when name is an IP literal
}

// parseUpstreamURL checks raw against the upstream URL syntax (see above).
func parseUpstreamURL(raw string) (*url.URL, upstreamHost, error) {
	bad := func(why string) (*url.URL, upstreamHost, error) {
		return nil, upstreamHost{}, fmt.Errorf("%q: %s", truncate(raw, 80), why)
	}
	if len(raw) > maxUpstreamURLLen {
		return bad(fmt.Sprintf("longer than %d bytes", maxUpstreamURLLen))
	}
	for i := 0; i < len(raw); i++ {
		if raw[i] <= ' ' || raw[i] >= 0x7f {
			return bad("must be visible ASCII (no spaces or control characters)")
		}
	}
	if strings.Contains(raw, "%") {
		return bad("must not contain %-escapes")
	}
	u, err := url.Parse(raw)
	if err != nil {
		return bad("not a URL")
	}
	switch {
	case u.Scheme != "http" && u.Scheme != "https":
		return bad("scheme must be http or https")
	case u.Opaque != "" || u.Host == "":
		return bad("needs a host")
	case u.User != nil:
		return bad("must not carry credentials (use upstream_auth)")
	case u.RawQuery != "" || u.ForceQuery || u.Fragment != "" || strings.Contains(raw, "#"):
		return bad("must not have a query or fragment")
	}
	host := upstreamHost{name: strings.ToLower(u.Hostname())}
	if port := u.Port(); port != "" || strings.HasSuffix(u.Host, ":") {
		if n, err := strconv.Atoi(port); err != nil || n < 1 || n > 65535 {
			return bad("port must be between 1 and 65535")
		}
	}
	if a, err := netip.ParseAddr(host.name); err == nil {
		if a.Zone() != "" {
			return bad("an IPv6 zone is not allowed")
		}
		if a.Is6() && !strings.HasPrefix(u.Host, "[") {
			return bad("an IPv6 address must be in brackets")
		}
		host.addr = a
	} else if strings.HasPrefix(u.Host, "[") {
		return bad("not an IPv6 address in brackets")
	} else if why := checkHostName(host.name); why != "" {
		return bad(why)
	}
	for _, seg := range strings.Split(u.Path, "/") {
		if seg == "." || seg == ".." {
			return bad("path must not have . or .. segments")
		}
	}
	return u, host, nil
}

// upstreamPolicy is a project's allowed_upstreams; a nil *upstreamPolicy is
// the default policy.
type upstreamPolicy struct {
	entries []policyEntry
}

type policyEntry struct {
	raw string
	// CIDR entries
	cidr netip.Prefix
	// URL entries
	scheme   string
	anyHost  bool
	wildcard string // "*.example.com" → "example.com"
	host     upstreamHost
	port     string // "" = the scheme's default, "*" = any, else a number
	path     string // "" = any
}

func (e *policyEntry) isCIDR() bool { return e.cidr.IsValid() }

// parsePolicy parses allowed_upstreams entries.
func parsePolicy(raws []string) (*upstreamPolicy, error) {
	if len(raws) > maxPolicyEntries {
		return nil, validation("allowed_upstreams", fmt.Sprintf("at most %d entries", maxPolicyEntries))
	}
	p := &upstreamPolicy{entries: []policyEntry{}}
	for _, raw := range raws {
		e, err := parsePolicyEntry(raw)
		if err != nil {
			return nil, validation("allowed_upstreams", err.Error())
		}
		p.entries = append(p.entries, e)
	}
	return p, nil
}

func parsePolicyEntry(raw string) (policyEntry, error) {
	e := policyEntry{raw: raw}
	bad := func(why string) (policyEntry, error) {
		return e, fmt.Errorf("entry %q: %s", truncate(raw, 80), why)
	}
	if raw == "" || len(raw) > maxPolicyEntryLen {
		return bad(fmt.Sprintf("must be 1-%d bytes", maxPolicyEntryLen))
	}
	for i := 0; i < len(raw); i++ {
		if raw[i] <= ' ' || raw[i] >= 0x7f || raw[i] == '%' {
			return bad("must be visible ASCII without %-escapes")
		}
	}
	scheme, rest, isURL := strings.Cut(raw, "://")
	if !isURL {
		if pfx, err := netip.ParsePrefix(raw); err == nil {
			if pfx.Addr().Zone() != "" || pfx.Masked() != pfx {
				return bad("a CIDR must have no bits set past its length (e.g. " + pfx.Masked().String() + ")")
			}
			e.cidr = netip.PrefixFrom(normAddr(pfx.Addr()), pfx.Bits())
			if pfx.Addr().Is4In6() {
				e.cidr = netip.PrefixFrom(pfx.Addr().Unmap(), pfx.Bits()-96)
			}
			return e, nil
		}
		if a, err := netip.ParseAddr(raw); err == nil && a.Zone() == "" {
			a = normAddr(a)
			e.cidr = netip.PrefixFrom(a, a.BitLen())
			return e, nil
		}
		return bad(`want a URL pattern (http://host[:port][/path], host may be "*" or "*.suffix") or an IP address or CIDR`)
	}
	scheme = strings.ToLower(scheme)
	if scheme != "http" && scheme != "https" {
		return bad("scheme must be http or https")
	}
	e.scheme = scheme
	hostport, path, hasPath := strings.Cut(rest, "/")
	if hasPath && path != "" {
		e.path = "/" + path
		for _, seg := range strings.Split(e.path, "/") {
			if seg == "." || seg == ".." {
				return bad("path must not have . or .. segments")
			}
		}
	}
	if strings.ContainsAny(hostport, "?#@") {
		return bad("must not have credentials, a query or a fragment")
	}
	host := hostport
	if strings.HasPrefix(hostport, "[") {
		end := strings.Index(hostport, "]")
		if end < 0 {
			return bad("unclosed [")
		}
		host = hostport[1:end]
		rest := hostport[end+1:]
		if rest != "" {
			p, ok := strings.CutPrefix(rest, ":")
			if !ok {
				return bad("junk after ]")
			}
			e.port = p
			if p == "" {
				return bad("empty port")
			}
		}
		a, err := netip.ParseAddr(host)
		if err != nil || !a.Is6() || a.Zone() != "" {
			return bad("not an IPv6 address in brackets")
		}
		e.host = upstreamHost{name: strings.ToLower(host), addr: a}
	} else {
		if i := strings.LastIndex(hostport, ":"); i >= 0 {
			host, e.port = hostport[:i], hostport[i+1:]
			if e.port == "" {
				return bad("empty port")
			}
		}
		host = strings.ToLower(host)
		switch {
		case host == "*":
			e.anyHost = true
		case strings.HasPrefix(host, "*."):
			e.wildcard = host[2:]
			if !dnsSuffixOK(e.wildcard) {
				return bad("*.suffix needs a DNS name as suffix")
			}
		default:
			if a, err := netip.ParseAddr(host); err == nil {
				if a.Is6() {
					return bad("an IPv6 address must be in brackets")
				}
				e.host = upstreamHost{name: host, addr: a}
			} else if why := checkHostName(host); why != "" {
				return bad(why)
			} else {
				e.host = upstreamHost{name: host}
			}
		}
	}
	if e.port != "" && e.port != "*" {
		if n, err := strconv.Atoi(e.port); err != nil || n < 1 || n > 65535 {
			return bad(`port must be a number between 1 and 65535, or "*"`)
		}
	}
	return e, nil
}

// dnsSuffixOK reports whether s is a sequence of DNS labels.
func dnsSuffixOK(s string) bool {
	if s == "" || len(s) > maxHostLen {
		return false
	}
	for _, l := range strings.Split(s, ".") {
		if !dnsLabelRE.MatchString(l) {
			return false
		}
	}
	return true
}

func defaultPort(scheme string) string {
	if scheme == "https" {
		return "443"
	}
	return "80"
}

// allows reports whether the policy allows the upstream URL u with host h
// (both from parseUpstreamURL).
func (p *upstreamPolicy) allows(u *url.URL, h upstreamHost) bool {
	var deny netip.Prefix
	denied := deniedNames[h.name]
	if h.addr.IsValid() {
		deny, denied = deniedRange(h.addr)
	}
	if p == nil {
		return !denied
	}
	port := u.Port()
	if port == "" {
		port = defaultPort(u.Scheme)
	}
	path := u.Path
	if path == "" {
		path = "/"
	}
	for i := range p.entries {
		e := &p.entries[i]
		if e.isCIDR() {
			if !h.addr.IsValid() || !e.cidr.Contains(normAddr(h.addr)) {
				continue
			}
			// A CIDR reaches a denied address only from within its denied
			// range: 0.0.0.0/0 does not name 169.254.169.254.
			if denied && !(e.cidr.Bits() >= deny.Bits() && deny.Contains(e.cidr.Addr())) {
				continue
			}
			return true
		}
		if e.scheme != u.Scheme {
			continue
		}
		switch e.port {
		case "*":
		case "":
			if port != defaultPort(e.scheme) {
				continue
			}
		default:
			if port != e.port {
				continue
			}
		}
		if e.path != "" && e.path != "/" && !underPrefix(path, e.path) {
			continue
		}
		switch {
		case e.anyHost:
			if denied {
				continue
			}
		case e.wildcard != "":
			if denied || h.addr.IsValid() || !strings.HasSuffix(h.name, "."+e.wildcard) {
				continue
			}
		case e.host.addr.IsValid():
			if !h.addr.IsValid() || normAddr(h.addr) != normAddr(e.host.addr) {
				continue
			}
		default:
			if h.name != e.host.name {
				continue
			}
		}
		return true
	}
	return false
}

// strings returns the policy's entries as given (nil for the default).
func (p *upstreamPolicy) strings() []string {
	if p == nil {
		return nil
	}
	out := make([]string, 0, len(p.entries))
	for _, e := range p.entries {
		out = append(out, e.raw)
	}
	return out
}

// decodePolicy reads a stored allowed_upstreams column (NULL: default).
func decodePolicy(col *string) (*upstreamPolicy, error) {
	if col == nil {
		return nil, nil
	}
	var raws []string
	if err := json.Unmarshal([]byte(*col), &raws); err != nil {
		return nil, fmt.Errorf("decoding allowed_upstreams: %w", err)
	}
	p, err := parsePolicy(raws)
	if err != nil {
		return nil, fmt.Errorf("stored allowed_upstreams: %w", err)
	}
	return p, nil
}

// truncate cuts s to n bytes for a message.
func truncate(s string, n int) string {
	if len(s) <= n {
		return s
	}
	return s[:n] + "..."
}
