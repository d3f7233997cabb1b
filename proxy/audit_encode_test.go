package proxy

import (
	"bytes"
	"encoding/hex"
	"math/rand/v2"
	"strconv"
	"strings"
	"testing"
	"unicode/utf8"

	"github.com/prometheus/client_golang/prometheus"
	dto "github.com/prometheus/client_model/go"

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

// The record's duration is what AppendFloat made of it.
func TestAuditMillisAsFormatted(t *testing.T) {
	check := func(us int64) {
		t.Helper()
		want := strconv.AppendFloat([]byte("x"), float64(us)/1000, 'f', -1, 64)
		if got := appendMillis([]byte("x"), us); !bytes.Equal(got, want) {
			t.Fatalf("%d µs: %s, AppendFloat %s", us, got, want)
		}
	}
	for us := int64(-1000); us <= 3_000_000; us++ {
		check(us)
	}
	r := rand.New(rand.NewPCG(5, 6))
	for range 1_000_000 {
		check(r.Int64N(maxExactMillis))
		check(maxExactMillis - 1 - r.Int64N(1e6))
	}
	for _, us := range []int64{maxExactMillis, maxExactMillis + 1, 1 << 53, 1<<53 + 1, 1<<63 - 1, -1 << 63} {
		check(us)
	}
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

// The last counter counted is reused only for the same deployment and
// status: counts alternating between them land where they belong.
func TestMetricsCountAlternating(t *testing.T) {
	m := testMetrics(t)
	for _, r := range []struct {
		dep  string
		code int
	}{{"a", 200}, {"a", 200}, {"b", 200}, {"a", 500}, {"a", 200}, {"", 404}, {"b", 200}} {
		m.count(r.dep, r.code)
		m.tokens(r.dep, int64(r.code), 1, 2)
	}
	for _, w := range []struct {
		dep, code string
		n         float64
	}{{"a", "200", 3}, {"b", "200", 2}, {"a", "500", 1}, {"", "404", 1}} {
		if got := counterValue(t, m.requests.WithLabelValues(w.dep, w.code)); got != w.n {
			t.Errorf("requests %s %s: %v, want %v", w.dep, w.code, got, w.n)
		}
	}
	for _, w := range []struct {
		dep               string
		prompt, completed float64
	}{{"a", 1100, 4}, {"b", 400, 2}, {"", 404, 1}} {
		if got := counterValue(t, m.tokenCounts.WithLabelValues(w.dep, "prompt")); got != w.prompt {
			t.Errorf("prompt tokens %s: %v, want %v", w.dep, got, w.prompt)
		}
		if got := counterValue(t, m.tokenCounts.WithLabelValues(w.dep, "completion")); got != w.completed {
			t.Errorf("completion tokens %s: %v, want %v", w.dep, got, w.completed)
		}
		if got := counterValue(t, m.tokenCounts.WithLabelValues(w.dep, "cached")); got != 2*w.completed {
			t.Errorf("cached tokens %s: %v, want %v", w.dep, got, 2*w.completed)
		}
	}
}

func counterValue(t *testing.T, c prometheus.Counter) float64 {
	t.Helper()
	var m dto.Metric
	if err := c.Write(&m); err != nil {
		t.Fatal(err)
	}
	return m.GetCounter().GetValue()
}

// An id the edge makes is its process's prefix, then the mixed counter,
// each as lowercase hex: 32 characters, a new one each time.
func TestRequestIDForm(t *testing.T) {
	seen := map[string]bool{}
	for range 1000 {
		id := string(appendRequestID(nil))
		if len(id) != requestIDLen || id[:16] != hex.EncodeToString(requestIDPrefix[:]) || seen[id] {
			t.Fatalf("id %q", id)
		}
		if _, err := hex.DecodeString(id); err != nil || strings.ToLower(id) != id {
			t.Fatalf("id %q: %v", id, err)
		}
		seen[id] = true
	}
}
