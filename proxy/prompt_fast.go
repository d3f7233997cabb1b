package proxy

import (
	"bytes"
	"encoding/binary"
	"math/bits"
	"unicode/utf8"
)

// The body's fast reading. parseBodyFull reads a request body in three
// passes — fastjson validates it, parses it into a tree, and the tree is
// visited for stream, model, max tokens and the prompt characters — each
// about as costly as the others, and more so as prompts grow. The fast
// reading walks the bytes once instead: it checks the grammar as
// fastjson.Validate does and reads on the way what the visit would.
//
// It reads exactly that or nothing: it gives up, and parseBodyFull reads
// the body, on whatever it cannot be sure to read alike — a body that is
// not an object; any error, which parseBodyFull then names (not JSON, or
// a field of the wrong type); a key holding an escape (fastjson matches
// keys decoded); an escape in a "model" or in a content source's "type"
// (matched decoded too); nesting deeper than fastMaxBodyDepth. So it never
// accepts what parseBodyFull refuses, and what it accepts it reads alike:
// TestBodyFastSame compares the two readings on the tests' bodies,
// FuzzBodyFast on arbitrary ones.

// fastMaxBodyDepth bounds the nesting the fast reading follows: well under
// fastjson's MaxDepth (300), past which parseBodyFull refuses a body.
const fastMaxBodyDepth = 200

// How a value walked counts.
const (
	countNone = iota // only checked
	countText        // textChars
	countJSON        // jsonChars
)

// Classes of a key within a text field (textChars), from skipKeys,
// mediaKeys and jsonValueKeys: one lookup instead of three.
const (
	keySkip      = 1 << iota // skipKeys or mediaKeys: counts nothing
	keyJSONValue             // jsonValueKeys: an object counts as JSON
)

var textKeyClass = func() map[string]uint8 {
	m := map[string]uint8{}
	for k := range skipKeys {
		m[k] |= keySkip
	}
	for k := range mediaKeys {
		m[k] |= keySkip
	}
	for k := range jsonValueKeys {
		m[k] |= keyJSONValue
	}
	return m
}()

var keySource = []byte("source")

// parseBodyFast is parseBodyModel's fast reading: ok false when it gave
// up, having changed neither *mt nor *model.
func parseBodyFast(raw []byte, mt *maxTokens, model *[]byte) (chars int, stream, ok bool) {
	b := raw
	i := skipWS(b, 0)
	if i >= len(b) || b[i] != '{' {
		return 0, false, false // null, a value of the wrong type, no JSON
	}
	var (
		w      = bodyWalker{b: b}
		tok    maxTokens
		mdl    []byte
		gotMdl bool
	)
	if mt != nil {
		tok = *mt
	}
	i = skipWS(b, i+1)
	if i < len(b) && b[i] == '}' {
		i++
	} else {
		for {
			key, vs := w.member(i)
			if vs < 0 {
				return 0, false, false
			}
			ve := -1
			switch {
			case len(key) == len(keyStream) && bytes.EqualFold(key, keyStream):
				switch b[vs] {
				case 't':
					ve, stream = literal(b, vs, "true"), true
				case 'f':
					ve = literal(b, vs, "false")
				case 'n':
					ve = literal(b, vs, "null")
				} // anything else is no JSON or errBodyShape: parseBodyFull says which
			case model != nil && string(key) == "model" && b[vs] == '"':
				var esc bool
				if ve, esc = scanBodyString(b, vs); esc {
					return 0, false, false // matched decoded
				}
				if ve > 0 {
					mdl, gotMdl = clip(b[vs+1:ve-1], maxMeterModel), true
				}
			default:
				if mt != nil {
					if f := maxTokensField(key); f >= 0 {
						ve = w.maxTokens(vs, f, &tok)
						break
					}
				}
				var n int
				switch kind, _ := lookupFold(promptFields, key); kind {
				case textField:
					ve, n = w.value(vs, 2, countText)
				case jsonField:
					ve, n = w.value(vs, 2, countJSON)
				default:
					ve, _ = w.value(vs, 2, countNone)
				}
				chars += n
			}
			if ve < 0 {
				return 0, false, false
			}
			i = skipWS(b, ve)
			if i >= len(b) {
				return 0, false, false
			}
			if b[i] == '}' {
				i++
				break
			}
			if b[i] != ',' {
				return 0, false, false
			}
			i = skipWS(b, i+1)
		}
	}
	if skipWS(b, i) != len(b) {
		return 0, false, false
	}
	if mt != nil {
		*mt = tok
	}
	if gotMdl {
		*model = mdl
	}
	return chars, stream, true
}

// bodyWalker is one fast reading of a body b: a strict recursive descent
// that checks what fastjson.Validate checks and counts as textChars and
// jsonChars do.
type bodyWalker struct {
	b []byte
}

// member reads an object member's key at b[i] (no white space before it)
// and the colon after it: the key as written, and where its value starts
// (-1: give up).
func (w *bodyWalker) member(i int) (key []byte, vs int) {
	b := w.b
	if i >= len(b) || b[i] != '"' {
		return nil, -1
	}
	j := bodyStringStop(b, i+1)
	if j >= len(b) || b[j] != '"' {
		return nil, -1 // unterminated, a control character, or an escape
	}
	key = b[i+1 : j]
	j = skipWS(b, j+1)
	if j >= len(b) || b[j] != ':' {
		return nil, -1
	}
	vs = skipWS(b, j+1)
	if vs >= len(b) {
		return nil, -1
	}
	return key, vs
}

// value walks the value at b[i] (no white space before it) at nesting
// depth, and returns its end (-1: give up) and its characters as count
// says.
func (w *bodyWalker) value(i, depth int, count uint8) (end, n int) {
	b := w.b
	if i >= len(b) {
		return -1, 0
	}
	switch c := b[i]; {
	case c == '"':
		if count == countNone {
			end, _ = scanBodyString(b, i)
			return end, 0
		}
		end, n = bodyStringChars(b, i)
		if count == countJSON {
			n += 2
		}
		return end, n
	case c == '{':
		return w.object(i, depth, count, nil)
	case c == '[':
		return w.array(i, depth, count)
	case c == 't':
		end, n = literal(b, i, "true"), 4
	case c == 'f':
		end, n = literal(b, i, "false"), 5
	case c == 'n':
		end, n = literal(b, i, "null"), 4
	case c == '-' || ('0' <= c && c <= '9'):
		return number(b, i), min(int(count), 1) // a number counts 1 either way
	default:
		return -1, 0
	}
	if count != countJSON {
		n = 0
	}
	return end, n
}

// sourceTypes tallies a content source's "type" members (sourceChars).
type sourceTypes struct {
	types, media int
	odd          bool // a "type" string holding an escape: matched decoded
}

// object walks the object at b[i]; a non-nil src tallies its "type"
// members too.
func (w *bodyWalker) object(i, depth int, count uint8, src *sourceTypes) (end, n int) {
	if depth > fastMaxBodyDepth {
		return -1, 0
	}
	b := w.b
	i = skipWS(b, i+1)
	if i < len(b) && b[i] == '}' {
		if count == countJSON {
			return i + 1, 2
		}
		return i + 1, 0
	}
	members := 0
	for {
		key, vs := w.member(i)
		if vs < 0 {
			return -1, 0
		}
		var ve, vn int
		switch count {
		case countNone:
			ve, _ = w.value(vs, depth+1, countNone)
		case countJSON:
			ve, vn = w.value(vs, depth+1, countJSON)
			vn += utf8.RuneCount(key) + 3
		default: // as textChars: the first case that applies
			class, _ := lookupFold(textKeyClass, key)
			switch {
			case class&keySkip != 0:
				ve, _ = w.value(vs, depth+1, countNone)
			case bytes.EqualFold(key, keySource):
				ve, vn = w.source(vs, depth+1)
			case class&keyJSONValue != 0 && b[vs] == '{':
				ve, vn = w.object(vs, depth+1, countJSON, nil)
			default:
				ve, vn = w.value(vs, depth+1, countText)
			}
			if src != nil && bytes.EqualFold(key, keyType) && ve > 0 {
				src.types++
				if b[vs] == '"' {
					switch t := b[vs+1 : ve-1]; {
					case bytes.IndexByte(t, '\\') >= 0:
						src.odd = true
					case string(t) == "base64" || string(t) == "url" || string(t) == "file":
						src.media++
					}
				}
			}
		}
		if ve < 0 {
			return -1, 0
		}
		n += vn
		members++
		// What follows a member (and an item, below; and in meter_fast.go's
		// loops) is read inline: a shared function for it is too large to
		// inline (cost 117 > 80) and costs ~260 instructions a request.
		i = skipWS(b, ve)
		if i >= len(b) {
			return -1, 0
		}
		switch b[i] {
		case ',':
			i = skipWS(b, i+1)
		case '}':
			if count == countJSON {
				n += 2 + members - 1
			}
			return i + 1, n
		default:
			return -1, 0
		}
	}
}

func (w *bodyWalker) array(i, depth int, count uint8) (end, n int) {
	if depth > fastMaxBodyDepth {
		return -1, 0
	}
	b := w.b
	i = skipWS(b, i+1)
	if i < len(b) && b[i] == ']' {
		if count == countJSON {
			return i + 1, 2
		}
		return i + 1, 0
	}
	items := 0
	for {
		ve, vn := w.value(i, depth+1, count)
		if ve < 0 {
			return -1, 0
		}
		n += vn
		items++
		i = skipWS(b, ve)
		if i >= len(b) {
			return -1, 0
		}
		switch b[i] {
		case ',':
			i = skipWS(b, i+1)
		case ']':
			if count == countJSON {
				n += 2 + items - 1
			}
			return i + 1, n
		default:
			return -1, 0
		}
	}
}

// source walks a content source at b[i] as sourceChars counts it: an
// object all of whose "type" members name media counts nothing, anything
// else as text.
func (w *bodyWalker) source(i, depth int) (end, n int) {
	if w.b[i] != '{' {
		return w.value(i, depth, countText)
	}
	var src sourceTypes
	end, n = w.object(i, depth, countText, &src)
	if src.odd {
		return -1, 0
	}
	if src.types > 0 && src.media == src.types {
		n = 0
	}
	return end, n
}

// maxTokens reads the value at b[i] of max tokens field f into m as
// maxTokens.json does (fastjson's Int64: an integer, "-0" too; anything
// else, a fraction or an exponent, is no count), and returns its end.
func (w *bodyWalker) maxTokens(i, f int, m *maxTokens) int {
	if m.seen[f]++; m.seen[f] > 1 {
		m.bad = true
	}
	b := w.b
	switch c := b[i]; {
	case c == 'n':
		return literal(b, i, "null")
	case c == '-' || ('0' <= c && c <= '9'):
		end := number(b, i)
		if end < 0 {
			return -1
		}
		num := b[i:end]
		if string(num) == "-0" {
			num = num[1:]
		}
		if len(num) > 10 { // no leading zeros: more than maxReservation
			m.bad = true
			return end
		}
		var n int64
		for _, d := range num {
			if d < '0' || d > '9' {
				m.bad = true // negative, a fraction, an exponent
				return end
			}
			n = n*10 + int64(d-'0')
		}
		if n > maxReservation {
			m.bad = true
			return end
		}
		m.n, m.named = max(m.n, n), true
		return end
	}
	m.bad = true // a string, say: some servers coerce it, others refuse
	end, _ := w.value(i, 2, countNone)
	return end
}

// scanBodyString returns the end of the JSON string at b[i] (just past its
// closing quote; -1 for one fastjson.Validate refuses: unterminated, a
// control character, an unknown or short escape) and whether it holds an
// escape.
func scanBodyString(b []byte, i int) (end int, esc bool) {
	j := i + 1
	for {
		j = bodyStringStop(b, j)
		if j >= len(b) || b[j] < 0x20 {
			return -1, esc
		}
		if b[j] == '"' {
			return j + 1, esc
		}
		esc = true
		k, _ := bodyEscape(b, j)
		if k < 0 {
			return -1, esc
		}
		j = k
	}
}

// bodyStringChars is scanBodyString counting the string's characters as
// textChars does: the runes (utf8.RuneCount's, an invalid byte one) of
// the string as fastjson decodes it (unescapeStringBestEffort). An escape
// is ASCII as written and decodes to whole runes, and no rune's encoding
// holds an ASCII byte: the runes of the text between escapes, counted one
// by one, and of the escapes add up to those of the whole.
func bodyStringChars(b []byte, i int) (end, n int) {
	j := i + 1
	for {
		k := plainASCII(b[j:])
		n, j = n+k, j+k
		if j >= len(b) {
			return -1, 0
		}
		switch c := b[j]; {
		case c >= utf8.RuneSelf:
			_, size := utf8.DecodeRune(b[j:])
			n, j = n+1, j+size
		case c == '"':
			return j + 1, n
		case c == '\\':
			k, r := bodyEscape(b, j)
			if k < 0 {
				return -1, 0
			}
			n, j = n+r, k
		case c < 0x20:
			return -1, 0
		default:
			n, j = n+1, j+1
		}
	}
}

// plainASCII returns how many bytes s starts with that are ASCII and no
// quote, backslash or control character: eight at a time to the first
// word holding another, then the lowest byte of it whose high bit a term
// sets (a borrow only runs up from such a byte).
func plainASCII(s []byte) int {
	all := len(s)
	for len(s) >= 16 {
		w, v := binary.LittleEndian.Uint64(s), binary.LittleEndian.Uint64(s[8:])
		if m := stopBytes(w); m != 0 {
			return all - len(s) + bits.TrailingZeros64(m)/8
		}
		if m := stopBytes(v); m != 0 {
			return all - len(s) + 8 + bits.TrailingZeros64(m)/8
		}
		s = s[16:]
	}
	for len(s) >= 8 {
		if m := stopBytes(binary.LittleEndian.Uint64(s)); m != 0 {
			return all - len(s) + bits.TrailingZeros64(m)/8
		}
		s = s[8:]
	}
	for i, c := range s {
		if c >= utf8.RuneSelf || c == '"' || c == '\\' || c < 0x20 {
			return all - len(s) + i
		}
	}
	return all
}

// stopBytes has the high bit set of the bytes of w (little-endian) that
// are not ASCII or are a quote, a backslash or a control character, and
// maybe of bytes above them; of none below.
func stopBytes(w uint64) uint64 {
	q, bs, ctl := (w^(swarOnes*'"'))-swarOnes, (w^(swarOnes*'\\'))-swarOnes, w-swarOnes*0x20
	return (w | q | bs | ctl) & swarHigh
}

// bodyStringStop returns the index of the first quote, backslash or
// control character at or after b[j] (len(b): none).
func bodyStringStop(b []byte, j int) int {
	// Eight bytes at a time: each term has the high bit of a byte set
	// where it is a quote, a backslash or below 0x20 — exactly for the
	// first such byte, as a borrow only runs up from one.
	for j+8 <= len(b) {
		w := binary.LittleEndian.Uint64(b[j:])
		q, bs := w^(swarOnes*'"'), w^(swarOnes*'\\')
		m := ((q - swarOnes) &^ q) | ((bs - swarOnes) &^ bs) | ((w - swarOnes*0x20) &^ w)
		if m &= swarHigh; m != 0 {
			return j + bits.TrailingZeros64(m)/8
		}
		j += 8
	}
	for j < len(b) && b[j] != '"' && b[j] != '\\' && b[j] >= 0x20 {
		j++
	}
	return j
}

// bodyEscape reads the escape at b[j] (a backslash) as fastjson does:
// where what follows it starts (-1: fastjson.Validate refuses it) and how
// many characters unescapeStringBestEffort makes of it.
func bodyEscape(b []byte, j int) (next, runes int) {
	if j+1 >= len(b) {
		return -1, 0
	}
	switch b[j+1] {
	case '"', '\\', '/', 'b', 'f', 'n', 'r', 't':
		return j + 2, 1
	case 'u':
		x, ok := hex4(b, j+2)
		if !ok {
			return -1, 0
		}
		j += 6
		if x < 0xd800 || x > 0xdfff {
			return j, 1
		}
		// A surrogate followed by another \u escape decodes with it to
		// one rune (U+FFFD if they are no pair); alone, it is kept as
		// written: six characters.
		if j+1 < len(b) && b[j] == '\\' && b[j+1] == 'u' {
			if _, ok := hex4(b, j+2); !ok {
				return -1, 0
			}
			return j + 6, 1
		}
		return j, 6
	}
	return -1, 0
}

// hex4 reads the four hexadecimal digits at b[i].
func hex4(b []byte, i int) (rune, bool) {
	if i+4 > len(b) {
		return 0, false
	}
	var x rune
	for _, c := range b[i : i+4] {
		switch {
		case '0' <= c && c <= '9':
			c -= '0'
		case 'a' <= c && c <= 'f':
			c -= 'a' - 10
		case 'A' <= c && c <= 'F':
			c -= 'A' - 10
		default:
			return 0, false
		}
		x = x<<4 | rune(c)
	}
	return x, true
}
