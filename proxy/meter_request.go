package proxy

import (
	"bytes"

	"github.com/valyala/fastjson"
)

// The request side of metering: the model named, and — for a streamed
// chat or completions request that does not ask for usage itself — the
// body rewritten to ask for it ("stream_options": {"include_usage": true},
// whatever else the client's stream_options held kept), so that the
// upstream reports the stream's usage in a last, usage-only chunk, which
// the edge then removes from what the client receives.
//
// The rewrite is exact or not made: only when the body is one JSON object
// in which "stream" appears once, spelled so, as true, and stream_options
// at most once, spelled so, as an object (or null) with include_usage at
// most once, spelled so, as a boolean or null, and no top-level key (nor a
// key of stream_options) holds an escape. Anything else — a repeated or
// re-cased key, a stream_options that is not an object — is forwarded as
// it came, its stream relayed as the upstream sends it, and metered from
// whatever usage the upstream reports, else estimated: the edge never
// guesses how an upstream reads an ambiguous body.

// Where the client's body stands on usage.
const (
	usageUnread = iota // not rewritable: forwarded as it came
	usageAsked         // the client asked for usage itself
	usageAdded         // the edge rewrote the body to ask for it
)

var (
	includeUsageMember = []byte(`"include_usage":true`)
	streamOptionsAdded = []byte(`"stream_options":{"include_usage":true}`)
	keyStreamOptions   = []byte("stream_options")
	keyIncludeUsage    = []byte("include_usage")
)

// meterRequest makes the meter of a request about to be forwarded, or nil
// when neither a UsageSink takes usage nor a token reservation (settle)
// needs it, or the request is no inference call (only POSTs are). It may
// replace body.raw with the rewritten body.
func (s *Proxy) meterRequest(method []byte, r *request, body *inspected, settle bool) *meter {
	if (s.cfg.Usage == nil && !settle) || string(method) != "POST" {
		return nil
	}
	m := acquireMeter()
	m.promptChars = body.chars
	if !body.json {
		return m
	}
	rewrite := body.stream && usagePath(r.path)
	if !rewrite && body.modelRead {
		m.model = append(m.model[:0], body.model...) // what askUsage would read
		return m
	}
	raw, state := askUsageInto(m.reqBody[:0], body.raw, rewrite, &m.model)
	if state == usageAdded {
		// m.reqBody is reused: the meter outlives forward, which sends
		// the body before it returns.
		body.raw, m.strip, m.reqBody = raw, true, raw
	}
	return m
}

// usagePath reports whether path is one whose streams report usage when
// asked with stream_options: chat completions and completions.
func usagePath(path []byte) bool {
	return bytes.HasSuffix(path, []byte("/chat/completions")) || bytes.HasSuffix(path, []byte("/completions"))
}

// askUsage reads a JSON body (validated already) for its model and, if
// rewrite, returns it asking for usage where that is exact (see above).
func askUsage(raw []byte, rewrite bool, model *[]byte) ([]byte, int) {
	return askUsageInto(nil, raw, rewrite, model)
}

// askUsageInto is askUsage building a rewritten body in dst's memory.
func askUsageInto(dst, raw []byte, rewrite bool, model *[]byte) ([]byte, int) {
	obj := bytes.TrimLeft(raw, " \t\r\n")
	off := len(raw) - len(obj)
	if len(obj) == 0 || obj[0] != '{' {
		return raw, usageUnread
	}
	streams, streamTrue, soCount := 0, false, 0
	escaped, members := false, 0
	soStart, soEnd := -1, -1
	ok := jsonMembers(obj, func(key []byte, vs, ve int) {
		members++
		v := obj[vs:ve]
		if bytes.IndexByte(key, '\\') >= 0 {
			escaped = true
			return
		}
		switch {
		case bytes.EqualFold(key, keyStream):
			streams++
			streamTrue = string(key) == "stream" && string(v) == "true"
		case bytes.EqualFold(key, keyStreamOptions):
			soCount++
			if string(key) != "stream_options" {
				escaped = true // re-cased: ambiguous
			}
			soStart, soEnd = vs, ve
		case string(key) == "model" && len(v) >= 2 && v[0] == '"':
			*model = appendModel((*model)[:0], v)
		}
	})
	if !ok || !rewrite || escaped || streams != 1 || !streamTrue || soCount > 1 {
		return raw, usageUnread
	}
	var out []byte
	if soCount == 0 {
		// {"stream_options":{"include_usage":true}, ...the client's members}
		out = append(dst[:0], raw[:off+1]...)
		out = append(out, streamOptionsAdded...)
		if members > 0 {
			out = append(out, ',')
		}
		return append(out, raw[off+1:]...), usageAdded
	}
	so := obj[soStart:soEnd]
	switch {
	case string(so) == "null":
		return splice(dst, raw, off+soStart, off+soEnd, []byte(`{"include_usage":true}`)), usageAdded
	case so[0] != '{':
		return raw, usageUnread
	}
	ius, iuStart, iuEnd, inner := 0, -1, -1, 0
	ok = jsonMembers(so, func(key []byte, vs, ve int) {
		inner++
		if bytes.IndexByte(key, '\\') >= 0 {
			escaped = true
			return
		}
		if bytes.EqualFold(key, keyIncludeUsage) {
			ius++
			if string(key) != "include_usage" {
				escaped = true
			}
			iuStart, iuEnd = vs, ve
		}
	})
	if !ok || escaped || ius > 1 {
		return raw, usageUnread
	}
	base := off + soStart
	if ius == 0 {
		ins := includeUsageMember
		if inner > 0 {
			ins = append(append([]byte(nil), ins...), ',')
		}
		return splice(dst, raw, base+1, base+1, ins), usageAdded
	}
	switch string(so[iuStart:iuEnd]) {
	case "true":
		return raw, usageAsked
	case "false", "null":
		return splice(dst, raw, base+iuStart, base+iuEnd, []byte("true")), usageAdded
	}
	return raw, usageUnread // a value servers read differently
}

// splice returns a new body, in dst's memory: raw with raw[i:j] replaced
// by with.
func splice(dst, raw []byte, i, j int, with []byte) []byte {
	out := append(dst[:0], raw[:i]...)
	out = append(out, with...)
	return append(out, raw[j:]...)
}

// appendModel appends the model named by a JSON string value, cut to
// maxMeterModel bytes.
func appendModel(dst, v []byte) []byte {
	s := v[1 : len(v)-1]
	if bytes.IndexByte(s, '\\') >= 0 {
		var p fastjson.Parser
		pv, err := p.ParseBytes(v)
		if err != nil {
			return dst
		}
		s = pv.GetStringBytes()
	}
	return append(dst, clip(s, maxMeterModel)...)
}

// jsonMembers calls fn with each member of the JSON object at the start of
// obj (well-formed: it was validated): the key as written (between its
// quotes, escapes undecoded) and where its value starts and ends in obj.
// It reports false if obj is not read to the object's end.
func jsonMembers(obj []byte, fn func(key []byte, vs, ve int)) bool {
	i := skipWS(obj, 1)
	if i < len(obj) && obj[i] == '}' {
		return true
	}
	for i < len(obj) {
		if obj[i] != '"' {
			return false
		}
		n := stringEnd(obj[i:])
		if n <= 0 {
			return false
		}
		key := obj[i+1 : i+n-1]
		i = skipWS(obj, i+n)
		if i >= len(obj) || obj[i] != ':' {
			return false
		}
		vs := skipWS(obj, i+1)
		n = valueEnd(obj[vs:])
		if n <= 0 {
			return false
		}
		fn(key, vs, vs+n)
		i = skipWS(obj, vs+n)
		if i >= len(obj) {
			return false
		}
		switch obj[i] {
		case '}':
			return true
		case ',':
			i = skipWS(obj, i+1)
		default:
			return false
		}
	}
	return false
}

func skipWS(b []byte, i int) int {
	for i < len(b) && (b[i] == ' ' || b[i] == '\t' || b[i] == '\r' || b[i] == '\n') {
		i++
	}
	return i
}

// stringEnd returns the length of the JSON string at the start of b,
// quotes included, or 0 if it does not end in b.
func stringEnd(b []byte) int {
	for i := 1; i < len(b); i++ {
		switch b[i] {
		case '\\':
			i++
		case '"':
			return i + 1
		}
	}
	return 0
}

// valueEnd returns the length of the JSON value at the start of b, or 0
// if it does not end in b (a scalar ends at the first delimiter).
func valueEnd(b []byte) int {
	if len(b) == 0 {
		return 0
	}
	switch b[0] {
	case '"':
		return stringEnd(b)
	case '{', '[':
		depth := 0
		for i := 0; i < len(b); i++ {
			switch b[i] {
			case '"':
				n := stringEnd(b[i:])
				if n == 0 {
					return 0
				}
				i += n - 1
			case '{', '[':
				depth++
			case '}', ']':
				if depth--; depth == 0 {
					return i + 1
				}
			}
		}
		return 0
	}
	for i := 0; i < len(b); i++ {
		switch b[i] {
		case ',', '}', ']', ' ', '\t', '\r', '\n':
			return i
		}
	}
	return len(b)
}
