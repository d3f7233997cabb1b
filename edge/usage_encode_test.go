package edge

import (
	"bytes"
	"encoding/json"
	"math/rand/v2"
	"testing"
)

func checkUsageString(t *testing.T, s string) {
	t.Helper()
	want, _ := json.Marshal(s)
	if got := appendJSONString(nil, s); !bytes.Equal(got, want) {
		t.Fatalf("%q: %s, json.Marshal %s", s, got, want)
	}
}

// Every byte value, at every offset of an eight-byte word and of the tail,
// among safe bytes, and random strings: encoded as json.Marshal does.
func TestUsageStringAsMarshal(t *testing.T) {
	for _, s := range hostileStrings {
		checkUsageString(t, s)
	}
	for n := 1; n <= 19; n++ {
		for at := 0; at < n; at++ {
			for c := 0; c < 256; c++ {
				b := bytes.Repeat([]byte{'a'}, n)
				b[at] = byte(c)
				checkUsageString(t, string(b))
			}
		}
	}
	r := rand.New(rand.NewPCG(1, 2))
	alphabet := []byte("ab-_\"\\<>&\x00\x1f\x20\x7e\x7f\x80\xbf\xc3\xa9\xe2\x80\xa8\xa9\xf0\x9f\xff ")
	for range 50000 {
		b := make([]byte, r.IntN(40))
		for i := range b {
			if r.IntN(4) == 0 {
				b[i] = alphabet[r.IntN(len(alphabet))]
			} else {
				b[i] = byte(r.IntN(256))
			}
		}
		checkUsageString(t, string(b))
	}
}

// BenchmarkUsageJSON is one record through the writer's encoder under a
// steady load: each field but the id as in the record before.
func BenchmarkUsageJSON(b *testing.B) {
	r := benchRec(1)
	r.ID = "edge-1-0123456789abcdef0123456789abcdef"
	buf := make([]byte, 0, 1024)
	var enc usageEncoder
	for range b.N {
		buf, _ = enc.appendUsageJSON(buf[:0], r)
	}
}
