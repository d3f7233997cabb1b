package proxy

import (
	"bytes"
	"iter"

	"github.com/valyala/fasthttp"

	"github.com/keymesh/keymesh/apikey"
)

var (
	headerAPIKey    = []byte("X-API-Key")
	headerAuth      = []byte(fasthttp.HeaderAuthorization)
	headerRequestID = []byte("X-Request-Id")
	// Canonical (as fasthttp stores names): set with SetCanonical.
	headerForwardedFor    = []byte(fasthttp.HeaderXForwardedFor)
	headerForwardedProto  = []byte(fasthttp.HeaderXForwardedProto)
	protoHTTP, protoHTTPS = []byte("http"), []byte("https")
	bearer                = []byte("bearer ")
)

// credential returns the client's key: X-API-Key if present and non-empty,
// else the token of Authorization: Bearer; fromAuth reports the latter.
// Every value of both headers is looked at, not only the first: ok is false
// when the request carries two different credentials — two different
// X-API-Key values, two different Authorization values, or an X-API-Key and
// a bearer token that are both keymesh keys and differ — since which one an
// upstream (or a proxy before it) would read is anyone's guess. The same
// value sent twice is one credential. (The OpenAI SDK pattern, a placeholder
// bearer token beside the real X-API-Key, is one credential.)
func credential(h *fasthttp.RequestHeader) (cred []byte, fromAuth, ok bool) {
	// One pass over the fields (cheaper than a PeekAll per name).
	var apiKey, auth []byte
	seenAuth := false
	for k, v := range h.All() {
		switch {
		case len(k) == len(headerAPIKey) && bytes.EqualFold(k, headerAPIKey):
			if v = bytes.TrimSpace(v); len(v) == 0 {
				continue
			}
			if apiKey != nil && !bytes.Equal(apiKey, v) {
				return nil, false, false
			}
			apiKey = v
		case len(k) == len(headerAuth) && bytes.EqualFold(k, headerAuth):
			v = bytes.TrimSpace(v)
			if seenAuth && !bytes.Equal(auth, v) {
				return nil, false, false
			}
			auth, seenAuth = v, true
		}
	}
	var token []byte
	if len(auth) > len(bearer) && bytes.EqualFold(auth[:len(bearer)], bearer) {
		token = bytes.TrimSpace(auth[len(bearer):])
	}
	if len(apiKey) > 0 {
		if len(token) > 0 && !bytes.Equal(token, apiKey) && keyShaped(token) && keyShaped(apiKey) {
			return nil, false, false
		}
		return apiKey, false, true
	}
	if len(token) > 0 {
		return token, true, true
	}
	return nil, false, true
}

// keyShaped reports whether b starts like a keymesh key: the prefix and
// then key characters, in either case.
func keyShaped(b []byte) bool {
	return hasPrefixFold(b, apikey.Prefix) && keyCharsFrom(b, len(apikey.Prefix)) >= keyLikeRun
}

// keyLikeRun is how many key characters after "km_" make a string look like
// a keymesh key: well under a key's 59, far more than words hold.
const keyLikeRun = 24

// keyCharsFrom counts the base32 key characters (either case) from b[i].
func keyCharsFrom(b []byte, i int) int {
	n := 0
	for ; i < len(b); i++ {
		c := b[i] | 0x20
		if !('a' <= c && c <= 'z' || '2' <= b[i] && b[i] <= '7') {
			break
		}
		n++
	}
	return n
}

// containsKeyLike reports whether b holds something that looks like a
// keymesh key ("km_" and a long run of key characters, any letter case).
func containsKeyLike(b []byte) bool {
	for off := 0; ; {
		i := bytes.IndexByte(b[off:], '_')
		if i < 0 {
			return false
		}
		i += off
		if i >= 2 && b[i-2]|0x20 == 'k' && b[i-1]|0x20 == 'm' && keyCharsFrom(b, i+1) >= keyLikeRun {
			return true
		}
		off = i + 1
	}
}

// containsKeyLikeEscaped is containsKeyLike over a query string, where the
// key may be percent-encoded ("km%5F…") or '+'-separated: it decodes first.
func containsKeyLikeEscaped(q []byte) bool {
	if bytes.IndexByte(q, '%') < 0 {
		return containsKeyLike(q)
	}
	var buf [512]byte
	dec := buf[:0]
	for i := 0; i < len(q); i++ {
		c := q[i]
		if c == '%' && i+2 < len(q) && isHex(q[i+1]) && isHex(q[i+2]) {
			c = unhex(q[i+1])<<4 | unhex(q[i+2])
			i += 2
		}
		dec = append(dec, c)
	}
	return containsKeyLike(dec)
}

// forwardDropped are the headers scrubRequest removes from every
// forwarded request by name (any letter case), besides the hop-by-hop ones
// and every name holding an underscore: the credentials a client key can
// travel in, Expect (the edge has read the body), and the headers the edge
// sets itself — every copy, so that the one it sets is the only one an
// upstream can read (a second X-Forwarded-For left beside the edge's puts
// the client's claim last, where an upstream trusting its proxy reads the
// client's address).
var forwardDropped = [][]byte{
	headerAPIKey, headerAuth, []byte(fasthttp.HeaderProxyAuthorization), []byte(fasthttp.HeaderExpect),
	headerRequestID, headerForwardedFor, headerForwardedProto,
}

var (
	headerContentEncoding = []byte(fasthttp.HeaderContentEncoding)
	headerAcceptEncoding  = []byte(fasthttp.HeaderAcceptEncoding)
)

// scrubRequest removes from h, a request about to be forwarded, in one pass
// over its fields: the hop-by-hop headers (and those Connection names),
// forwardDropped, every header whose name holds an underscore — look-alikes
// such as X_API_Key, which CGI, WSGI and some proxies read as X-API-Key
// (nginx drops such headers by default, and so does the edge, whatever
// their name) — and, when asked, Content-Encoding (the body forwarded is
// the decoded one) and Accept-Encoding (the edge must read the answer).
// Only what is there is deleted: a delete costs a scan of its own.
func scrubRequest(h *fasthttp.RequestHeader, contentEncoding, acceptEncoding bool) {
	hop := false
	var drop [][]byte
	var scratch [8][]byte
	for k := range h.All() {
		switch class := forwardNames.class(k); {
		case class == nameHopByHop:
			hop = true
		case class == nameDropped, bytes.IndexByte(k, '_') >= 0,
			contentEncoding && class == nameContentEncoding,
			acceptEncoding && class == nameAcceptEncoding:
			if drop == nil {
				drop = scratch[:0]
			}
			drop = append(drop, k)
		}
	}
	if hop {
		stripHopByHop(h)
	}
	for _, k := range drop {
		// Deleting while iterating is not allowed; the names alias the
		// header's storage, so copy each before deleting.
		var name [128]byte
		h.DelBytes(append(name[:0], k...))
	}
}

// nameClass is what scrubRequest and stripResponseHopByHop make of a
// header name.
type nameClass uint8

const (
	nameOther nameClass = iota
	nameHopByHop
	nameDropped // forwardDropped
	nameContentEncoding
	nameAcceptEncoding
)

// nameTable classes header names in any letter case. The names of each
// length are kept together, so a name is compared only with the few of
// its own length (most with none): one lookup per field instead of a
// comparison with every name of every list.
type nameTable [maxClassedName + 1][]classedName

const maxClassedName = 24 // the longest name classed, and then some

type classedName struct {
	name  []byte
	class nameClass
}

// forwardNames holds hopByHop, forwardDropped, Content-Encoding and
// Accept-Encoding; a name in two lists (Proxy-Authorization) is hop-by-hop.
var forwardNames = func() *nameTable {
	t := new(nameTable)
	add := func(class nameClass, names ...[]byte) {
		for _, n := range names {
			if len(n) > maxClassedName {
				panic("proxy: header name " + string(n) + " longer than maxClassedName")
			}
			if t.class(n) == nameOther {
				t[len(n)] = append(t[len(n)], classedName{n, class})
			}
		}
	}
	add(nameHopByHop, hopByHopBytes...)
	add(nameDropped, forwardDropped...)
	add(nameContentEncoding, headerContentEncoding)
	add(nameAcceptEncoding, headerAcceptEncoding)
	return t
}()

func (t *nameTable) class(k []byte) nameClass {
	if len(k) >= len(t) {
		return nameOther
	}
	for _, c := range t[len(k)] {
		if bytes.EqualFold(k, c.name) {
			return c.class
		}
	}
	return nameOther
}

// fieldValues yields the value of every field of h named name, in any
// letter case, in order: PeekAll's answer in one pass over the fields,
// without normalising name into a copy first as PeekAll does.
func fieldValues(h *fasthttp.RequestHeader, name []byte) iter.Seq[[]byte] {
	return func(yield func([]byte) bool) {
		for k, v := range h.All() {
			if len(k) == len(name) && bytes.EqualFold(k, name) && !yield(v) {
				return
			}
		}
	}
}
