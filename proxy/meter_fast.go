package proxy

import (
	"bytes"
	"encoding/binary"
	"math/bits"
	"unicode/utf8"
)

// The meter's fast reading. Almost every answer the edge meters is an
// OpenAI-shaped chat or completions answer, or one chunk of its stream:
// an object whose "choices" hold the generated text and whose "usage",
// if any, holds the counts. Parsing each whole, into a tree, then looking
// members up one by one, was most of what metering cost a request. The
// fast reading walks the bytes once instead: it checks the grammar as it
// goes, counts the text of the choices in passing, and reads the usage
// object's counts itself when they are plain integers (usageCounts; fastjson
// reads any other usage object). A stream's chunks mostly differ from the
// one before only in their text: such a chunk is read by comparing its
// bytes with that one's (sameShape).
//
// It reads the same as the full reading (chunk, finishDoc) or not at all:
// it gives up — and the full reading is made — on anything it does not
// read exactly as fastjson would (a key holding an escape, which fastjson
// looks up decoded; a \u escape in counted text; nesting deep enough for
// fastjson's depth bound; a number, literal or layout outside strict
// JSON), and on every shape the full reading handles beyond chat and
// completions (the Responses API's "type", TGI's "token", "details",
// "generated_text", a top-level array, "output", tool calls). So it never
// accepts what fastjson refuses, and what it accepts it counts alike:
// FuzzMeterFast and FuzzMeterShape check that on arbitrary input.

// fastMaxDepth bounds the nesting the fast reading follows: well under
// fastjson's MaxDepth (300), past which the full reading refuses a value.
const fastMaxDepth = 200

// fastReading is what the fast reading found in one object.
type fastReading struct {
	usage []byte // the first "usage" member's value, when an object
	// fields are usage's counts, when read on the way (usageRead): as
	// usageCounts reads them.
	fields       usageFields
	usageRead    bool
	choicesEmpty bool // the first "choices" is an empty array
	chars        int  // characters of generated text under "choices"
	// The last string counted: where it starts and ends, and its
	// characters (end 0: none).
	lastStart, lastEnd, lastChars int
}

// fastRead reads b, one JSON value, as an answer (msg "message") or a
// streamed chunk (msg "delta"). ok is false when the full reading must be
// made instead.
func fastRead(b []byte, msg string) (r fastReading, ok bool) {
	i := skipWS(b, 0)
	if i >= len(b) || b[i] != '{' {
		return r, false
	}
	w := walker{b: b, msg: msg}
	end := w.object(i, 1, ctxTop)
	if end < 0 || skipWS(b, end) != len(b) {
		return r, false
	}
	return w.r, true
}

// What an object or array being walked is to the reading.
const (
	ctxOther   = iota // nothing read in it: only checked
	ctxTop            // the answer or chunk
	ctxChoices        // its first "choices", an array
	ctxChoice         // an object in that array
	ctxMsg            // a choice's first msg member, an object
)

// walker is one fast reading: a strict recursive descent that reads, on
// the way, what choicesChars and the usage lookup would.
type walker struct {
	b   []byte
	msg string
	r   fastReading
}

// value walks the value at b[i] (no white space before it) at nesting
// depth, and returns its end, or -1 to give up.
func (w *walker) value(i, depth int, ctx uint8) int {
	b := w.b
	if i >= len(b) {
		return -1
	}
	switch c := b[i]; {
	case c == '"':
		end, _ := scanString(b, i)
		return end
	case c == '{':
		return w.object(i, depth, ctx)
	case c == '[':
		return w.array(i, depth, ctx)
	case c == 't':
		return literal(b, i, "true")
	case c == 'f':
		return literal(b, i, "false")
	case c == 'n':
		return literal(b, i, "null")
	case c == '-' || ('0' <= c && c <= '9'):
		return number(b, i)
	}
	return -1
}

func (w *walker) object(i, depth int, ctx uint8) int {
	if depth > fastMaxDepth {
		return -1
	}
	b := w.b
	i = skipWS(b, i+1)
	if i < len(b) && b[i] == '}' {
		return i + 1
	}
	// The first of each member read (fastjson's lookups take the first).
	var seenA, seenB bool
	for {
		if i >= len(b) || b[i] != '"' {
			return -1
		}
		ke, esc := scanString(b, i)
		if ke < 0 || (esc && ctx != ctxOther) {
			return -1 // a key read decoded: the full reading decodes it
		}
		key := b[i+1 : ke-1]
		i = skipWS(b, ke)
		if i >= len(b) || b[i] != ':' {
			return -1
		}
		vs := skipWS(b, i+1)
		sub, count := uint8(ctxOther), false
		switch ctx {
		case ctxTop:
			switch string(key) {
			case "usage":
				if !seenA {
					seenA = true
					if vs < len(b) && b[vs] == '{' {
						w.r.usage = b[vs:vs] // its end is set below
						count = true
					}
				}
			case "choices":
				if !seenB {
					seenB = true
					if vs < len(b) && b[vs] == '[' {
						sub = ctxChoices
					}
				}
			case "type", "token", "details", "response", "generated_text", "output":
				return -1 // read by the full reading only
			}
		case ctxChoice:
			switch {
			case string(key) == "text":
				count, seenA = !seenA, true
			case string(key) == w.msg:
				if !seenB {
					seenB = true
					if vs < len(b) && b[vs] == '{' {
						sub = ctxMsg
					}
				}
			}
		case ctxMsg:
			switch string(key) {
			case "content":
				count, seenA = !seenA, true
			case "reasoning_content":
				count, seenB = !seenB, true
			case "tool_calls":
				return -1 // read by the full reading only
			}
		}
		var ve int
		strEsc := false
		switch {
		case count && ctx == ctxTop: // the usage object, read on the way if it can be
			if ve, w.r.usageRead = w.usageCounts(vs, depth+1); !w.r.usageRead {
				ve = w.value(vs, depth+1, sub)
			}
		case vs < len(b) && b[vs] == '"': // most values: no call to value
			ve, strEsc = scanString(b, vs)
		default:
			ve = w.value(vs, depth+1, sub)
		}
		if ve < 0 {
			return -1
		}
		switch {
		case !count:
		case ctx == ctxTop: // the usage object
			w.r.usage = b[vs:ve]
		case b[vs] == '"':
			n, ok := stringChars(b[vs:ve], strEsc)
			if !ok {
				return -1
			}
			w.r.chars += n
			w.r.lastStart, w.r.lastEnd, w.r.lastChars = vs, ve, n
		}
		if sub == ctxChoices {
			w.r.choicesEmpty = skipWS(b, vs+1) == ve-1
		}
		i = skipWS(b, ve)
		if i >= len(b) {
			return -1
		}
		switch b[i] {
		case ',':
			i = skipWS(b, i+1)
		case '}':
			return i + 1
		default:
			return -1
		}
	}
}

func (w *walker) array(i, depth int, ctx uint8) int {
	if depth > fastMaxDepth {
		return -1
	}
	b := w.b
	i = skipWS(b, i+1)
	if i < len(b) && b[i] == ']' {
		return i + 1
	}
	for {
		sub := uint8(ctxOther)
		if ctx == ctxChoices && i < len(b) && b[i] == '{' {
			sub = ctxChoice
		}
		ve := w.value(i, depth+1, sub)
		if ve < 0 {
			return -1
		}
		i = skipWS(b, ve)
		if i >= len(b) {
			return -1
		}
		switch b[i] {
		case ',':
			i = skipWS(b, i+1)
		case ']':
			return i + 1
		default:
			return -1
		}
	}
}

// objIter walks the members of an object whose '{' is just before b[i]:
// next returns each key (as written, between its quotes) and where its
// value starts; the caller skips or reads the value and calls after with
// its end. Once next reports no more, bad tells whether the object was
// not well formed, and otherwise i is just past its '}'.
type objIter struct {
	b          []byte
	i          int
	bad        bool
	begun, end bool
	esc        bool // the key next returned holds a backslash
}

func (it *objIter) next() (key []byte, vs int, ok bool) {
	if it.end || it.bad {
		return nil, 0, false
	}
	it.esc = false
	b := it.b
	i := skipWS(b, it.i)
	if !it.begun {
		it.begun = true
		if i < len(b) && b[i] == '}' {
			it.i, it.end = i+1, true
			return nil, 0, false
		}
	}
	if i >= len(b) || b[i] != '"' {
		it.bad = true
		return nil, 0, false
	}
	end, esc := scanString(b, i)
	if end < 0 {
		it.bad = true
		return nil, 0, false
	}
	key, it.esc = b[i+1:end-1], esc
	i = skipWS(b, end)
	if i >= len(b) || b[i] != ':' {
		it.bad = true
		return nil, 0, false
	}
	vs = skipWS(b, i+1)
	if vs >= len(b) {
		it.bad = true
		return nil, 0, false
	}
	return key, vs, true
}

// after moves past a member's value ending at ve (-1: none): to the next
// member, or past the object's '}'. It reports false when what follows
// is neither.
func (it *objIter) after(ve int) bool {
	b := it.b
	if ve < 0 {
		it.bad = true
		return false
	}
	i := skipWS(b, ve)
	if i >= len(b) {
		it.bad = true
		return false
	}
	switch b[i] {
	case ',':
		it.i = i + 1
		return true
	case '}':
		it.i, it.end = i+1, true
		return true
	}
	it.bad = true
	return false
}

// skipValue returns the end of the strict JSON value starting at b[i] at
// nesting depth (the value itself is at depth), or -1 if there is none
// the fast reading accepts.
func skipValue(b []byte, i, depth int) int {
	if i >= len(b) || depth > fastMaxDepth {
		return -1
	}
	switch c := b[i]; {
	case c == '"':
		end, _ := scanString(b, i)
		return end
	case c == '{':
		it := objIter{b: b, i: i + 1}
		for {
			_, vs, more := it.next()
			if !more {
				break
			}
			if !it.after(skipValue(b, vs, depth+1)) {
				return -1
			}
		}
		if it.bad {
			return -1
		}
		return it.i
	case c == '[':
		i = skipWS(b, i+1)
		if i < len(b) && b[i] == ']' {
			return i + 1
		}
		for {
			ve := skipValue(b, i, depth+1)
			if ve < 0 {
				return -1
			}
			i = skipWS(b, ve)
			if i >= len(b) {
				return -1
			}
			switch b[i] {
			case ']':
				return i + 1
			case ',':
				i = skipWS(b, i+1)
			default:
				return -1
			}
		}
	case c == 't':
		return literal(b, i, "true")
	case c == 'f':
		return literal(b, i, "false")
	case c == 'n':
		return literal(b, i, "null")
	case c == '-' || ('0' <= c && c <= '9'):
		return number(b, i)
	}
	return -1
}

func literal(b []byte, i int, lit string) int {
	if len(b)-i < len(lit) || string(b[i:i+len(lit)]) != lit {
		return -1
	}
	return i + len(lit)
}

// number returns the end of the strict JSON number at b[i], or -1.
func number(b []byte, i int) int {
	if b[i] == '-' {
		i++
	}
	switch {
	case i >= len(b):
		return -1
	case b[i] == '0':
		i++
	case '1' <= b[i] && b[i] <= '9':
		i = digits(b, i+1)
	default:
		return -1
	}
	if i < len(b) && b[i] == '.' {
		if i = digits(b, i+1); b[i-1] == '.' {
			return -1
		}
	}
	if i < len(b) && (b[i] == 'e' || b[i] == 'E') {
		i++
		if i < len(b) && (b[i] == '+' || b[i] == '-') {
			i++
		}
		s := i
		if i = digits(b, i); i == s {
			return -1
		}
	}
	return i
}

// digits returns the end of the decimal digits from b[i].
func digits(b []byte, i int) int {
	for i < len(b) && '0' <= b[i] && b[i] <= '9' {
		i++
	}
	return i
}

// stringRunes counts the characters of the JSON string s (quotes
// included) as decoded: false for a \u escape or one no decoder agrees on,
// which the full reading decodes instead.
func stringRunes(s []byte) (int, bool) {
	s = s[1 : len(s)-1]
	if bytes.IndexByte(s, '\\') < 0 {
		return utf8.RuneCount(s), true
	}
	escapes := 0
	for i := 0; i < len(s); i++ {
		if s[i] != '\\' {
			continue
		}
		if i+1 >= len(s) {
			return 0, false
		}
		switch s[i+1] {
		case '"', '\\', '/', 'b', 'f', 'n', 'r', 't':
		default:
			return 0, false
		}
		escapes++ // two bytes, one character (ASCII either way)
		i++
	}
	return utf8.RuneCount(s) - escapes, true
}

// stringChars is stringRunes(s), scanString having said whether s holds
// a backslash (esc): without one, its characters are counted eight bytes
// at a time while they are ASCII (one character each), then by utf8.
func stringChars(s []byte, esc bool) (int, bool) {
	if esc {
		return stringRunes(s)
	}
	s = s[1 : len(s)-1]
	i := 0
	for i+8 <= len(s) && binary.LittleEndian.Uint64(s[i:])&swarHigh == 0 {
		i += 8
	}
	return i + utf8.RuneCount(s[i:]), true
}

// fastChunk is line's fast reading of a streamed chunk's payload: what
// chunk would have found, or ok false (nothing read) for the full reading.
func (m *meter) fastChunk(payload []byte) (usageOnly, ok bool) {
	if n, ok := m.sameShape(payload); ok {
		m.relayedChars += n
		return false, true
	}
	r, ok := fastRead(payload, "delta")
	m.shape = m.shape[:0]
	if !ok {
		return false, false
	}
	if r.usage == nil && r.lastEnd > 0 && len(payload) <= maxShape {
		m.shape = append(m.shape, payload...)
		m.shapeStart, m.shapeEnd, m.shapeChars = r.lastStart, r.lastEnd, r.chars-r.lastChars
	}
	if r.usage != nil {
		if r.usageRead {
			m.takeUsage(&r.fields)
		} else if u, err := m.parser.ParseBytes(r.usage); err == nil {
			m.usage(u)
		} else {
			return false, false
		}
		usageOnly = r.choicesEmpty
	}
	m.relayedChars += r.chars
	return usageOnly, true
}

// fastDoc is finishDoc's fast reading of a whole answer: false (nothing
// read) for the full reading.
func (m *meter) fastDoc() bool {
	r, ok := fastRead(m.doc, "message")
	if !ok {
		return false
	}
	var one meter
	if r.usage != nil {
		if r.usageRead {
			one.takeUsage(&r.fields)
		} else if u, err := m.parser.ParseBytes(r.usage); err == nil {
			one.usage(u)
		} else {
			return false
		}
	}
	// As finishDocFull for a document that is one object without details.
	m.invalid = m.invalid || one.invalid
	m.cached = one.cached
	m.relayedChars += r.chars
	if one.promptExact || one.complExact {
		m.prompt, m.completion = one.prompt, one.completion
		m.promptExact, m.complExact = one.promptExact, one.complExact
	}
	return true
}

// scanString returns the end of the JSON string at b[i] (its closing
// quote's index + 1, or -1 if it has none) and whether it holds a
// backslash.
func scanString(b []byte, i int) (end int, esc bool) {
	j := i + 1
	for {
		// Eight bytes at a time to the next quote or backslash: x has a
		// zero byte where a byte of the word equals c, and the lowest bit
		// the trick sets marks the first of them exactly.
		for j+8 <= len(b) {
			w := binary.LittleEndian.Uint64(b[j:])
			q, bs := w^(swarOnes*'"'), w^(swarOnes*'\\')
			if m := ((q - swarOnes) &^ q & swarHigh) | ((bs - swarOnes) &^ bs & swarHigh); m != 0 {
				j += bits.TrailingZeros64(m) / 8
				break
			}
			j += 8
		}
		for j < len(b) && b[j] != '"' && b[j] != '\\' {
			j++
		}
		if j >= len(b) {
			return -1, esc
		}
		if b[j] == '"' {
			return j + 1, esc
		}
		esc = true
		j += 2
	}
}

const (
	swarOnes = 0x0101010101010101
	swarHigh = 0x8080808080808080
)

// usageCounts reads the usage object at b[i] (at nesting depth) on the
// way, into w.r.fields: as usage does, when each count it holds is null or
// a plain integer of at most ten digits and no key holds an escape. It
// returns the object's end and true, or false (nothing read: the walk
// goes over it again, and fastjson reads it) otherwise.
func (w *walker) usageCounts(i, depth int) (int, bool) {
	if depth > fastMaxDepth {
		return -1, false
	}
	b, f := w.b, &w.r.fields
	var seen [len(usagePaths)]bool
	i = skipWS(b, i+1)
	if i < len(b) && b[i] == '}' {
		return i + 1, true
	}
	for {
		if i >= len(b) || b[i] != '"' {
			return -1, false
		}
		ke, esc := scanString(b, i)
		if ke < 0 || esc {
			return -1, false
		}
		key := b[i+1 : ke-1]
		i = skipWS(b, ke)
		if i >= len(b) || b[i] != ':' {
			return -1, false
		}
		vs := skipWS(b, i+1)
		ve := w.value(vs, depth+1, ctxOther)
		if ve < 0 {
			return -1, false
		}
		k := -1
		switch string(key) {
		case "prompt_tokens":
			k = 0
		case "input_tokens":
			k = 1
		case "completion_tokens":
			k = 2
		case "output_tokens":
			k = 3
		case "prompt_tokens_details":
			k = 4
		case "input_tokens_details":
			k = 5
		}
		if k >= 0 && !seen[k] {
			seen[k] = true
			v, ok := b[vs:ve], false
			if k >= 4 { // {"cached_tokens": n}; not an object: none
				if v[0] != '{' {
					v = nil
				} else if v, ok = firstMember(v, "cached_tokens"); !ok {
					return -1, false
				}
			}
			if v != nil {
				if f[k].n, f[k].ok, f[k].bad, ok = plainCount(v); !ok {
					return -1, false
				}
			}
		}
		i = skipWS(b, ve)
		if i >= len(b) {
			return -1, false
		}
		switch b[i] {
		case ',':
			i = skipWS(b, i+1)
		case '}':
			return i + 1, true
		default:
			return -1, false
		}
	}
}

// firstMember returns the value of obj's first member named key (nil:
// none); ok false for a key holding an escape.
func firstMember(obj []byte, key string) (v []byte, ok bool) {
	it := objIter{b: obj, i: 1}
	for {
		k, vs, more := it.next()
		if !more {
			return nil, !it.bad
		}
		if it.esc {
			return nil, false
		}
		ve := skipValue(obj, vs, 2)
		if ve < 0 {
			return nil, false
		}
		if string(k) == key {
			return obj[vs:ve], true
		}
		if !it.after(ve) {
			return nil, false
		}
	}
}

// plainCount reads a count as tokens does: null is none, digits a count
// (bad past maxReportedTokens); ok false for anything else.
func plainCount(v []byte) (n int64, present, bad, ok bool) {
	if string(v) == "null" {
		return 0, false, false, true
	}
	if len(v) == 0 || len(v) > 10 {
		return 0, false, false, false
	}
	for _, c := range v {
		if c < '0' || c > '9' {
			return 0, false, false, false
		}
		n = n*10 + int64(c-'0')
	}
	if n > maxReportedTokens {
		return 0, true, true, true
	}
	return n, true, false, true
}

// maxShape bounds the chunk kept as the stream's shape.
const maxShape = 4 << 10

// sameShape reads a chunk that is the last one read fast (m.shape) with
// only its last counted string changed — as a stream's chunks are, one
// token's text after another: the bytes before and after that string the
// same, and between them exactly one string. The walk would then go the
// same way through the same bytes and read the same, but for that
// string's characters: it is not made. (No chunk with a usage is kept.)
func (m *meter) sameShape(p []byte) (chars int, ok bool) {
	t := m.shape
	if len(t) == 0 {
		return 0, false
	}
	pre, suf := t[:m.shapeStart], t[m.shapeEnd:]
	if len(p) < len(pre)+len(suf)+2 || !bytes.Equal(p[:len(pre)], pre) || !bytes.Equal(p[len(p)-len(suf):], suf) {
		return 0, false
	}
	str := p[len(pre) : len(p)-len(suf)]
	if str[0] != '"' {
		return 0, false
	}
	if end, _ := scanString(str, 0); end != len(str) {
		return 0, false
	}
	n, ok := stringRunes(str)
	if !ok {
		return 0, false
	}
	return m.shapeChars + n, true
}
