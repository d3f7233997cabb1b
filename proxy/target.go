package proxy

import (
	"bytes"
	"errors"
)

// Request-target and path reading. The edge reads the request line once,
// strictly, into a decoded and normalised path; routing, the permission
// checks, the audit record and the URI sent upstream all use that one path,
// so nothing the upstream sees can differ from what the edge decided on.

var (
	errTargetForm   = errors.New("the request target must be a path starting with '/' (origin-form) or an http(s) URL (absolute-form)")
	errTargetUser   = errors.New("the request target must not carry user information")
	errTargetFrag   = errors.New("the request target must not carry a fragment ('#')")
	errTargetHost   = errors.New("the request's host is not a valid host name or address")
	errPathEscape   = errors.New("the request path holds a malformed percent-escape")
	errPathChar     = errors.New(`the request path must not contain ';', '\', '%' (once decoded) or control characters`)
	errQueryChar    = errors.New("the query string holds a control character, a space or a byte that is not ASCII")
	errMethodToken  = errors.New("the request method is not a valid token")
	errTargetLength = errors.New("the request target is too long")
)

// maxTargetLen bounds the request target the edge reads (the header read
// buffer bounds it anyway; this keeps the path buffers small).
const maxTargetLen = 8 << 10

// splitTarget splits a raw request target into the host it names (empty for
// origin-form) and its path and query. Origin-form ("/path?query") and
// absolute-form ("http://host/path?query", any letter case in the scheme)
// are accepted; RFC 9112 says a server must accept the latter and route it
// by its own host. Anything else — authority-form, asterisk-form, a path not
// starting with '/', user information, a fragment — is refused.
func splitTarget(target []byte) (host, path, query []byte, absolute bool, err error) {
	if len(target) > maxTargetLen {
		return nil, nil, nil, false, errTargetLength
	}
	if bytes.IndexByte(target, '#') >= 0 {
		return nil, nil, nil, false, errTargetFrag
	}
	rest := target
	switch {
	case len(rest) > 0 && rest[0] == '/':
	case hasPrefixFold(rest, "http://"), hasPrefixFold(rest, "https://"):
		absolute = true
		rest = rest[bytes.Index(rest, []byte("//"))+2:]
		end := bytes.IndexAny(rest, "/?")
		if end < 0 {
			end = len(rest)
		}
		host, rest = rest[:end], rest[end:]
		if bytes.IndexByte(host, '@') >= 0 {
			return nil, nil, nil, false, errTargetUser
		}
		if len(host) == 0 {
			return nil, nil, nil, false, errTargetHost
		}
		if len(rest) == 0 || rest[0] == '?' {
			path = slash
		}
	default:
		return nil, nil, nil, false, errTargetForm
	}
	if q := bytes.IndexByte(rest, '?'); q >= 0 {
		query = rest[q+1:]
		rest = rest[:q]
	}
	if path == nil {
		path = rest
	}
	for _, c := range query {
		if c <= ' ' || c >= 0x7f {
			return nil, nil, nil, false, errQueryChar
		}
	}
	return host, path, query, absolute, nil
}

var slash = []byte("/")

func hasPrefixFold(b []byte, prefix string) bool {
	return len(b) >= len(prefix) && bytes.EqualFold(b[:len(prefix)], []byte(prefix))
}

// normaliseHost appends the routing form of a Host value (or of an
// absolute-form target's authority) to dst: lower case, without the port
// and without a trailing dot. It refuses anything that is not a host name,
// an IPv4 address or a bracketed IPv6 address with an optional port.
func normaliseHost(dst, host []byte) ([]byte, error) {
	name := host
	if len(host) > 0 && host[0] == '[' {
		end := bytes.IndexByte(host, ']')
		if end < 0 {
			return dst, errTargetHost
		}
		for _, c := range host[1:end] {
			if !(isHex(c) || c == ':' || c == '.') {
				return dst, errTargetHost
			}
		}
		name = host[:end+1]
		if !validPort(host[end+1:]) {
			return dst, errTargetHost
		}
	} else if i := bytes.IndexByte(host, ':'); i >= 0 {
		name = host[:i]
		if !validPort(host[i:]) {
			return dst, errTargetHost
		}
	}
	if len(name) > 1 && name[len(name)-1] == '.' {
		name = name[:len(name)-1]
	}
	if len(name) > 255 {
		return dst, errTargetHost
	}
	start := len(dst)
	for _, c := range name {
		switch {
		case 'A' <= c && c <= 'Z':
			c += 'a' - 'A'
		case 'a' <= c && c <= 'z', '0' <= c && c <= '9', c == '-', c == '.', c == '_':
		case c == '[' || c == ']' || c == ':':
			if name[0] != '[' {
				return dst[:start], errTargetHost
			}
		default:
			return dst[:start], errTargetHost
		}
		dst = append(dst, c)
	}
	return dst, nil
}

// validPort reports whether p is empty or ':' followed by 1-5 digits.
func validPort(p []byte) bool {
	if len(p) == 0 {
		return true
	}
	if p[0] != ':' || len(p) < 2 || len(p) > 6 {
		return false
	}
	for _, c := range p[1:] {
		if c < '0' || c > '9' {
			return false
		}
	}
	return true
}

func isHex(c byte) bool {
	return '0' <= c && c <= '9' || 'a' <= c && c <= 'f' || 'A' <= c && c <= 'F'
}

func unhex(c byte) byte {
	switch {
	case c <= '9':
		return c - '0'
	case c <= 'F':
		return c - 'A' + 10
	default:
		return c - 'a' + 10
	}
}

// normalisePath appends to dst the decoded, normalised form of a raw path
// (which must start with '/'): percent-escapes decoded once, empty segments
// ("//") collapsed, "." and ".." segments resolved (RFC 3986 §5.2.4, never
// above the root), an encoded '/' read as a separator like a raw one. It
// refuses a malformed escape, and — raw or decoded — ';' and '\' (some
// servers split paths on them: "/v1/models/..;/x"), '%' (a double-encoded
// path, which a server decoding twice would read otherwise) and control
// characters. The result starts with '/'.
func normalisePath(dst, raw []byte) ([]byte, error) {
	if len(raw) == 0 || raw[0] != '/' {
		return dst, errTargetForm
	}
	if cleanPath(raw) {
		return append(dst, raw...), nil // the common case: nothing to decode or resolve
	}
	start := len(dst)
	dst = append(dst, '/')
	seg := len(dst) // dst[seg:] is the segment being read; dst[seg-1] is '/'
	for i := 1; i < len(raw); i++ {
		c := raw[i]
		if c == '%' {
			if i+2 >= len(raw) || !isHex(raw[i+1]) || !isHex(raw[i+2]) {
				return dst[:start], errPathEscape
			}
			c = unhex(raw[i+1])<<4 | unhex(raw[i+2])
			i += 2
		}
		if c == '/' {
			dst, _ = endSegment(dst, start, seg)
			seg = len(dst)
			continue
		}
		if c < ' ' || c == 0x7f || c == ';' || c == '\\' || c == '%' {
			return dst[:start], errPathChar
		}
		dst = append(dst, c)
	}
	// The last segment: a name ends the path; after "", "." or ".." the
	// path keeps its trailing slash ("/a/b/.." is "/a/").
	dst, name := endSegment(dst, start, seg)
	if name {
		dst = dst[:len(dst)-1]
	}
	return dst, nil
}

// cleanPath reports whether raw is already normalised: no escape, no
// refused byte, no empty or dot segment.
func cleanPath(raw []byte) bool {
	prev := byte(0)
	for _, c := range raw {
		if pathCare[c] || (prev == '/' && (c == '/' || c == '.')) {
			return false
		}
		prev = c
	}
	return true
}

// pathCare are the bytes normalisePath must look at: escapes and refused
// bytes.
var pathCare = func() (t [256]bool) {
	for c := range 0x20 {
		t[c] = true
	}
	t[0x7f], t['%'], t[';'], t['\\'] = true, true, true, true
	return t
}()

// endSegment finishes the segment dst[seg:] (dst[seg-1] is '/'): an empty or
// "." segment is dropped, ".." drops the segment before it too (never going
// above dst[start]), and a name is kept and followed by '/'. The result
// always ends with '/'; name reports the last case.
func endSegment(dst []byte, start, seg int) (out []byte, name bool) {
	s := dst[seg:]
	switch {
	case len(s) == 0:
		return dst, false
	case len(s) == 1 && s[0] == '.':
		return dst[:seg], false
	case len(s) == 2 && s[0] == '.' && s[1] == '.':
		dst = dst[:seg]
		if seg-1 > start {
			prev := bytes.LastIndexByte(dst[start:seg-1], '/')
			dst = dst[:start+prev+1]
		}
		return dst, false
	}
	return append(dst, '/'), true
}

// upstreamPathByte reports whether c goes into the upstream path as it is;
// every other byte is percent-encoded. These are RFC 3986's unreserved
// characters, '/' and the sub-delimiters and ':' and '@' that a path segment
// may hold (";" never reaches here): the upstream, decoding once, reads
// exactly the path the edge routed on.
var upstreamPathByte = func() (t [256]bool) {
	for c := 'a'; c <= 'z'; c++ {
		t[c] = true
		t[c-'a'+'A'] = true
	}
	for c := '0'; c <= '9'; c++ {
		t[c] = true
	}
	for _, c := range "-._~/!$&'()*+,=:@" {
		t[c] = true
	}
	return t
}()

// appendEscapedPath appends path with every byte that is not a
// upstreamPathByte percent-encoded.
func appendEscapedPath(dst, path []byte) []byte {
	const hex = "0123456789ABCDEF"
	for _, c := range path {
		if upstreamPathByte[c] {
			dst = append(dst, c)
		} else {
			dst = append(dst, '%', hex[c>>4], hex[c&0xf])
		}
	}
	return dst
}

// methodToken reports whether m is an RFC 9110 token.
func methodToken(m []byte) bool {
	if len(m) == 0 || len(m) > 32 {
		return false
	}
	for _, c := range m {
		if !tchar[c] {
			return false
		}
	}
	return true
}

var tchar = func() (t [256]bool) {
	for c := 'a'; c <= 'z'; c++ {
		t[c] = true
		t[c-'a'+'A'] = true
	}
	for c := '0'; c <= '9'; c++ {
		t[c] = true
	}
	for _, c := range "!#$%&'*+-.^_`|~" {
		t[c] = true
	}
	return t
}()
