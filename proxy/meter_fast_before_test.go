package proxy

import (
	"bytes"
	"encoding/binary"
	"math/bits"
	"math/rand/v2"
	"testing"
	"unicode/utf8"
)

// The fast reading (meter_fast.go) as it was before it read the usage on
// the way, skipped the call for string values and counted ASCII text eight
// bytes at a time: the reference FuzzMeterFastAsBefore holds it to, in
// what it reads and in what it gives up on.

// fastReadingBefore is what the fast reading found in one object.
type fastReadingBefore struct {
	usage        []byte // the first "usage" member's value, when an object
	choicesEmpty bool   // the first "choices" is an empty array
	chars        int    // characters of generated text under "choices"
	// The last string counted: where it starts and ends, and its
	// characters (end 0: none).
	lastStart, lastEnd, lastChars int
}

// fastReadBefore reads b, one JSON value, as an answer (msg "message") or a
// streamed chunk (msg "delta"). ok is false when the full reading must be
// made instead.
func fastReadBefore(b []byte, msg string) (r fastReadingBefore, ok bool) {
	i := skipWS(b, 0)
	if i >= len(b) || b[i] != '{' {
		return r, false
	}
	w := walkerBefore{b: b, msg: msg}
	end := w.object(i, 1, ctxTop)
	if end < 0 || skipWS(b, end) != len(b) {
		return r, false
	}
	return w.r, true
}

// walkerBefore is one fast reading: a strict recursive descent that reads, on
// the way, what choicesChars and the usage lookup would.
type walkerBefore struct {
	b   []byte
	msg string
	r   fastReadingBefore
}

// value walks the value at b[i] (no white space before it) at nesting
// depth, and returns its end, or -1 to give up.
func (w *walkerBefore) value(i, depth int, ctx uint8) int {
	b := w.b
	if i >= len(b) {
		return -1
	}
	switch c := b[i]; {
	case c == '"':
		end, _ := scanStringBefore(b, i)
		return end
	case c == '{':
		return w.object(i, depth, ctx)
	case c == '[':
		return w.array(i, depth, ctx)
	case c == 't':
		return literalBefore(b, i, "true")
	case c == 'f':
		return literalBefore(b, i, "false")
	case c == 'n':
		return literalBefore(b, i, "null")
	case c == '-' || ('0' <= c && c <= '9'):
		return numberBefore(b, i)
	}
	return -1
}

func (w *walkerBefore) object(i, depth int, ctx uint8) int {
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
		ke, esc := scanStringBefore(b, i)
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
		ve := w.value(vs, depth+1, sub)
		if ve < 0 {
			return -1
		}
		switch {
		case !count:
		case ctx == ctxTop: // the usage object
			w.r.usage = b[vs:ve]
		case b[vs] == '"':
			n, ok := stringRunesBefore(b[vs:ve])
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

func (w *walkerBefore) array(i, depth int, ctx uint8) int {
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

// objIterBefore walks the members of an object whose '{' is just before b[i]:
// next returns each key (as written, between its quotes) and where its
// value starts; the caller skips or reads the value and calls after with
// its end. Once next reports no more, bad tells whether the object was
// not well formed, and otherwise i is just past its '}'.
type objIterBefore struct {
	b          []byte
	i          int
	bad        bool
	begun, end bool
	esc        bool // the key next returned holds a backslash
}

func (it *objIterBefore) next() (key []byte, vs int, ok bool) {
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
	end, esc := scanStringBefore(b, i)
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
func (it *objIterBefore) after(ve int) bool {
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

// skipValueBefore returns the end of the strict JSON value starting at b[i] at
// nesting depth (the value itself is at depth), or -1 if there is none
// the fast reading accepts.
func skipValueBefore(b []byte, i, depth int) int {
	if i >= len(b) || depth > fastMaxDepth {
		return -1
	}
	switch c := b[i]; {
	case c == '"':
		end, _ := scanStringBefore(b, i)
		return end
	case c == '{':
		it := objIterBefore{b: b, i: i + 1}
		for {
			_, vs, more := it.next()
			if !more {
				break
			}
			if !it.after(skipValueBefore(b, vs, depth+1)) {
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
			ve := skipValueBefore(b, i, depth+1)
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
		return literalBefore(b, i, "true")
	case c == 'f':
		return literalBefore(b, i, "false")
	case c == 'n':
		return literalBefore(b, i, "null")
	case c == '-' || ('0' <= c && c <= '9'):
		return numberBefore(b, i)
	}
	return -1
}

func literalBefore(b []byte, i int, lit string) int {
	if len(b)-i < len(lit) || string(b[i:i+len(lit)]) != lit {
		return -1
	}
	return i + len(lit)
}

// numberBefore returns the end of the strict JSON numberBefore at b[i], or -1.
func numberBefore(b []byte, i int) int {
	if b[i] == '-' {
		i++
	}
	digits := func() bool {
		s := i
		for i < len(b) && '0' <= b[i] && b[i] <= '9' {
			i++
		}
		return i > s
	}
	switch {
	case i < len(b) && b[i] == '0':
		i++
	case !digits():
		return -1
	}
	if i < len(b) && b[i] == '.' {
		i++
		if !digits() {
			return -1
		}
	}
	if i < len(b) && (b[i] == 'e' || b[i] == 'E') {
		i++
		if i < len(b) && (b[i] == '+' || b[i] == '-') {
			i++
		}
		if !digits() {
			return -1
		}
	}
	return i
}

// stringRunesBefore counts the characters of the JSON string s (quotes
// included) as decoded: false for a \u escape or one no decoder agrees on,
// which the full reading decodes instead.
func stringRunesBefore(s []byte) (int, bool) {
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

// fastChunk is line's fast reading of a streamed chunk's payload: what
// chunk would have found, or ok false (nothing read) for the full reading.
func fastChunkBefore(m *meter, payload []byte) (usageOnly, ok bool) {
	if n, ok := sameShapeBefore(m, payload); ok {
		m.relayedChars += n
		return false, true
	}
	r, ok := fastReadBefore(payload, "delta")
	m.shape = m.shape[:0]
	if !ok {
		return false, false
	}
	if r.usage == nil && r.lastEnd > 0 && len(payload) <= maxShape {
		m.shape = append(m.shape, payload...)
		m.shapeStart, m.shapeEnd, m.shapeChars = r.lastStart, r.lastEnd, r.chars-r.lastChars
	}
	if r.usage != nil {
		if f, ok := usageFastBefore(r.usage); ok {
			m.takeUsage(&f)
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
func fastDocBefore(m *meter) bool {
	r, ok := fastReadBefore(m.doc, "message")
	if !ok {
		return false
	}
	var one meter
	if r.usage != nil {
		if f, ok := usageFastBefore(r.usage); ok {
			one.takeUsage(&f)
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

// scanStringBefore returns the end of the JSON string at b[i] (its closing
// quote's index + 1, or -1 if it has none) and whether it holds a
// backslash.
func scanStringBefore(b []byte, i int) (end int, esc bool) {
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

// usageFastBefore reads a usage object (one fastReadBefore found well formed) as
// usage does, when each count it holds is null or a plain integer of at
// most ten digits and no key holds an escape; ok false otherwise.
func usageFastBefore(b []byte) (f usageFields, ok bool) {
	var seen [len(usagePaths)]bool
	w := walkerBefore{b: b}
	i := skipWS(b, 1)
	if i < len(b) && b[i] == '}' {
		return f, true
	}
	for {
		if i >= len(b) || b[i] != '"' {
			return f, false
		}
		ke, esc := scanStringBefore(b, i)
		if ke < 0 || esc {
			return f, false
		}
		key := b[i+1 : ke-1]
		i = skipWS(b, ke)
		if i >= len(b) || b[i] != ':' {
			return f, false
		}
		vs := skipWS(b, i+1)
		ve := w.value(vs, 2, ctxOther)
		if ve < 0 {
			return f, false
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
			v := b[vs:ve]
			if k >= 4 { // {"cached_tokens": n}; not an object: none
				if v[0] != '{' {
					v = nil
				} else if v, ok = firstMemberBefore(v, "cached_tokens"); !ok {
					return f, false
				}
			}
			if v != nil {
				if f[k].n, f[k].ok, f[k].bad, ok = plainCountBefore(v); !ok {
					return f, false
				}
			}
		}
		i = skipWS(b, ve)
		if i >= len(b) {
			return f, false
		}
		switch b[i] {
		case ',':
			i = skipWS(b, i+1)
		case '}':
			return f, true
		default:
			return f, false
		}
	}
}

// firstMemberBefore returns the value of obj's first member named key (nil:
// none); ok false for a key holding an escape.
func firstMemberBefore(obj []byte, key string) (v []byte, ok bool) {
	it := objIterBefore{b: obj, i: 1}
	for {
		k, vs, more := it.next()
		if !more {
			return nil, !it.bad
		}
		if it.esc {
			return nil, false
		}
		ve := skipValueBefore(obj, vs, 2)
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

// plainCountBefore reads a count as tokens does: null is none, digits a count
// (bad past maxReportedTokens); ok false for anything else.
func plainCountBefore(v []byte) (n int64, present, bad, ok bool) {
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

// sameShape reads a chunk that is the last one read fast (m.shape) with
// only its last counted string changed — as a stream's chunks are, one
// token's text after another: the bytes before and after that string the
// same, and between them exactly one string. The walk would then go the
// same way through the same bytes and read the same, but for that
// string's characters: it is not made. (No chunk with a usage is kept.)
func sameShapeBefore(m *meter, p []byte) (chars int, ok bool) {
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
	if end, _ := scanStringBefore(str, 0); end != len(str) {
		return 0, false
	}
	n, ok := stringRunesBefore(str)
	if !ok {
		return 0, false
	}
	return m.shapeChars + n, true
}

// meterFastSeeds are answers and chunks of the shapes the fast reading
// reads and of those it gives up on.
func meterFastSeeds() [][]byte {
	seeds := [][]byte{[]byte(benchAnswer), bytes.TrimSpace(bytes.TrimPrefix([]byte(benchUsageChunk), []byte("data: ")))}
	for _, c := range benchChunks {
		seeds = append(seeds, bytes.TrimSpace(bytes.TrimPrefix(c, []byte("data: "))))
	}
	for _, s := range []string{`{"choices":[{"text":"a\nb\"c","delta":{"content":"é\t","reasoning_content":"x"}}],"usage":{"prompt_tokens":1}}`,
		`{"choices":[{"message":{"content":"\u00e9"}}]}`, `{"choices":[1,[],{"text":"ab","text":"abc"}],"choices":[]}`,
		`{"usage":null,"usage":{"prompt_tokens":2,"completion_tokens":3,"prompt_tokens_details":{"cached_tokens":9}}}`,
		`{"choices":[],"usage":{"prompt_tokens":-1}}`, `{"us\u0061ge":{"prompt_tokens":1}}`, ` {"choices" : [ ] } `,
		`{"choices":[{"delta":{"tool_calls":[{"function":{"arguments":"{}"}}]}}]}`, `{"a":[1e5,-0.5,true,false,null,0,-0,1E+2,2e-3,10.25]}`,
		`{"a":01}`, `{"a":1.}`, `{"a":-}`, `{"a":1e}`, `{"a":.5}`, `{"a":1,}`, `{"usage":{"prompt_tokens":1.0,"completion_tokens":3,"input_tokens_details":{"cached_tokens":1}}}`,
		`{"usage":{"input_tokens":5,"output_tokens":null,"prompt_tokens_details":[1],"prompt_tokens_details":{"cached_tokens":2}}}`,
		`{"usage":{"prompt_tokens":2000000000,"completion_tokens":"3"}}`, `{"usage":{"pr\u006fmpt_tokens":5,"completion_tokens":3}}`,
		`{"usage":{"prompt_tokens":5,"completion_tokens":3,"x":{"y":[{"z":1}]}},"choices":[{"message":{"content":"日本語 text that is long enough"}}]}`,
		`{"usage":{"prompt_tokens":5,"prompt_tokens_details":{"c\u0061ched_tokens":1}}}`, `{"usage":{"prompt_tokens":5,"prompt_tokens_details":{"cached_tokens":1,}}}`,
		`{"usage":{"prompt_tokens":12345678901}}`, `{"usage":{}}`, `{"usage":{ }}`, `{"usage":{"prompt_tokens":1 ,"completion_tokens" : 2 } }`,
		`{"choices":[{"message":"x","message":{"content":"y"}}]}`, `[]`, `{"a":"\x01"}`, "{\"choices\":[{\"text\":\"\xff\xfe ascii then \xc3\xa9\"}]}"} {
		seeds = append(seeds, []byte(s))
	}
	return seeds
}

// checkFastAsBefore: b is read fast as before — the same reading or the
// same refusal — as an answer and as a chunk.
func checkFastAsBefore(t *testing.T, b []byte) {
	t.Helper()
	for _, msg := range []string{"delta", "message"} {
		r, ok := fastRead(b, msg)
		r0, ok0 := fastReadBefore(b, msg)
		if ok != ok0 {
			t.Fatalf("%q (%s): read fast %v, before %v", b, msg, ok, ok0)
		}
		if !ok {
			continue
		}
		if r.chars != r0.chars || r.choicesEmpty != r0.choicesEmpty || r.lastStart != r0.lastStart || r.lastEnd != r0.lastEnd ||
			r.lastChars != r0.lastChars || (r.usage == nil) != (r0.usage == nil) || !bytes.Equal(r.usage, r0.usage) {
			t.Fatalf("%q (%s): read %+v, before %+v", b, msg, r, r0)
		}
		if r.usage != nil {
			f0, ok0 := usageFastBefore(r0.usage)
			if r.usageRead != ok0 || (ok0 && r.fields != f0) {
				t.Fatalf("%q (%s): usage read %v %+v, before %v %+v", b, msg, r.usageRead, r.fields, ok0, f0)
			}
		}
	}
	var m, m0 meter
	only, ok := m.fastChunk(b)
	only0, ok0 := fastChunkBefore(&m0, b)
	if only != only0 || ok != ok0 || meterCounts(&m) != meterCounts(&m0) || !bytes.Equal(m.shape, m0.shape) ||
		m.shapeStart != m0.shapeStart || m.shapeEnd != m0.shapeEnd || m.shapeChars != m0.shapeChars {
		t.Fatalf("%q as a chunk: %v %v %+v, before %v %v %+v", b, only, ok, meterCounts(&m), only0, ok0, meterCounts(&m0))
	}
	m, m0 = meter{mode: meterJSON, doc: b}, meter{mode: meterJSON, doc: b}
	if ok, ok0 := m.fastDoc(), fastDocBefore(&m0); ok != ok0 || meterCounts(&m) != meterCounts(&m0) {
		t.Fatalf("%q as an answer: %v %+v, before %v %+v", b, ok, meterCounts(&m), ok0, meterCounts(&m0))
	}
}

// FuzzMeterFastAsBefore: whatever the bytes, the fast reading reads them,
// or gives up on them, as it did before.
func FuzzMeterFastAsBefore(f *testing.F) {
	for _, s := range meterFastSeeds() {
		f.Add(s)
	}
	f.Fuzz(checkFastAsBefore)
}

// The seeds, and many edits of them (JSON's own characters put in, taken
// out, replaced anywhere), are read fast as before.
func TestMeterFastAsBefore(t *testing.T) {
	alphabet := []byte("{}[]:,\" \\\t\n0123456789-+.eEtrufalsn\x01\x7f\xc3\xa9\xe2\x80\xff")
	r := rand.New(rand.NewPCG(7, 8))
	for _, seed := range meterFastSeeds() {
		checkFastAsBefore(t, seed)
		for range 5000 {
			b := append([]byte(nil), seed...)
			for range 1 + r.IntN(3) {
				i := r.IntN(len(b) + 1)
				c := alphabet[r.IntN(len(alphabet))]
				switch r.IntN(3) {
				case 0:
					b = append(b[:i], append([]byte{c}, b[i:]...)...)
				case 1:
					if i < len(b) {
						b = append(b[:i], b[i+1:]...)
					}
				default:
					if i < len(b) {
						b[i] = c
					}
				}
			}
			checkFastAsBefore(t, b)
		}
	}
}
