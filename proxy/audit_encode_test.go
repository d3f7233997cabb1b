package proxy

import (
	"bytes"
	"math/rand/v2"
	"testing"
	"unicode/utf8"

	"github.com/keymesh/keymesh/cache"
	"github.com/keymesh/keymesh/event"
)

// appendJSONStringBefore is appendJSONString as it was before its
// eight-bytes-at-a-time skip: the reference it must match byte for byte.
func appendJSONStringBefore(dst []byte, s string) []byte {
	const hex = "0123456789abcdef"
	dst = append(dst, '"')
	start := 0
	for i := 0; i < len(s); {
		c := s[i]
		if c >= utf8.RuneSelf {
			r, size := utf8.DecodeRuneInString(s[i:min(i+utf8.UTFMax, len(s))])
			if r == utf8.RuneError && size == 1 {
				dst = append(dst, s[start:i]...)
				dst = append(dst, `\ufffd`...)
				i++
				start = i
				continue
			}
			i += size
			continue
		}
		if c >= 0x20 && c != '"' && c != '\\' {
			i++
			continue
		}
		dst = append(dst, s[start:i]...)
		switch c {
		case '"', '\\':
			dst = append(dst, '\\', c)
		case '\n':
			dst = append(dst, '\\', 'n')
		case '\r':
			dst = append(dst, '\\', 'r')
		case '\t':
			dst = append(dst, '\\', 't')
		default:
			dst = append(dst, '\\', 'u', '0', '0', hex[c>>4], hex[c&0xf])
		}
		i++
		start = i
	}
	dst = append(dst, s[start:]...)
	return append(dst, '"')
}

func checkJSONStringAsBefore(t *testing.T, s string) {
	t.Helper()
	want := appendJSONStringBefore([]byte("x"), s)
	if got := appendJSONString([]byte("x"), s); !bytes.Equal(got, want) {
		t.Fatalf("%q: %q, before %q", s, got, want)
	}
	if got := appendJSONString([]byte("x"), []byte(s)); !bytes.Equal(got, want) {
		t.Fatalf("%q as bytes: %q, before %q", s, got, want)
	}
}

// Every byte value, at every offset of an eight-byte word and of the tail,
// among plain bytes: encoded as before.
func TestAuditStringAsBefore(t *testing.T) {
	for _, s := range []string{"", "a", "/v1/chat/completions", "0123456789abcdef0123456789abcdef", "quote\" back\\slash",
		"ctl\x00\x1f\n\t\r\x7f", "bad \xff utf-8 \xe2\x82", "é\u2028 \U0001F600 long enough to skip", "\xe2\x82\xacabcdefgh\xf0"} {
		checkJSONStringAsBefore(t, s)
	}
	for n := 1; n <= 19; n++ {
		for at := 0; at < n; at++ {
			for c := 0; c < 256; c++ {
				b := bytes.Repeat([]byte{'a'}, n)
				b[at] = byte(c)
				checkJSONStringAsBefore(t, string(b))
			}
		}
	}
	r := rand.New(rand.NewPCG(1, 2))
	alphabet := []byte("abc/-_\"\\\x00\x1f\x20\x7e\x7f\x80\xbf\xc3\xa9\xe2\x80\xa8\xf0\x9f\xff ")
	for range 100000 {
		b := make([]byte, r.IntN(40))
		for i := range b {
			if r.IntN(4) == 0 {
				b[i] = alphabet[r.IntN(len(alphabet))]
			} else {
				b[i] = byte(r.IntN(256))
			}
		}
		checkJSONStringAsBefore(t, string(b))
	}
}

// FuzzAuditStringAsBefore: any string is encoded as before.
func FuzzAuditStringAsBefore(f *testing.F) {
	for _, s := range []string{"/v1/chat/completions", "quote\" back\\slash01234567", "ctl\x00\x1f\n\t", "bad \xff utf-8 \xe2\x82"} {
		f.Add(s)
	}
	f.Fuzz(checkJSONStringAsBefore)
}

func BenchmarkAuditEncode(b *testing.B) {
	a := newAuditRecorder(discardAudit{}, "edge-1", "eu")
	ctx := auditCtx(200)
	ctx.Response.Header.Set("X-Request-Id", "0123456789abcdef0123456789abcdef")
	out := &outcome{req: &request{path: []byte("/v1/chat/completions")}, usage: usageCounts{prompt: 3, completion: 8, ok: true},
		dep: &event.Deployment{ID: "dep_1", Name: "chat", Project: "prj_1"}, key: &cache.Key{ID: "key_1", Project: "prj_1"}}
	buf := make([]byte, 0, auditMaxRecord)
	for range b.N {
		buf = a.encode(buf[:0], ctx, out)
	}
}
