package edge

import (
	"bytes"
	"encoding/json"
	"math/rand/v2"
	"testing"
	"time"
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

// A record's time is what AppendFormat makes of it, whether its second was
// formatted last or not, in UTC or not, for any year.
func TestUsageTimeAsFormatted(t *testing.T) {
	check := func(tm time.Time) {
		t.Helper()
		want := tm.AppendFormat([]byte("x"), time.RFC3339Nano)
		for range 2 { // the second formatted, then reused
			if got := appendRFC3339Nano([]byte("x"), tm); !bytes.Equal(got, want) {
				t.Fatalf("%v: %s, AppendFormat %s", tm, got, want)
			}
		}
	}
	base := time.Date(2026, 12, 2, 20, 6, 14, 0, time.UTC)
	for _, ns := range []int{0, 1, 9, 10, 100, 123456789, 100000000, 999999999, 500000, 120000000} {
		check(base.Add(time.Duration(ns)))
		check(base.Add(time.Duration(ns)).In(time.FixedZone("x", 3600)))
		check(base.Add(time.Duration(ns)).In(time.FixedZone("UTC", 0)))
	}
	for _, y := range []int{-1, 0, 1, 1969, 1970, 9999, 10000, 12345} {
		check(time.Date(y, 3, 4, 5, 6, 7, 890, time.UTC))
		check(time.Date(y, 3, 4, 5, 6, 7, 0, time.UTC))
	}
	check(time.Now())
	check(time.Now().UTC())
	r := rand.New(rand.NewPCG(3, 4))
	for range 100000 {
		sec := r.Int64N(253402300800+62135596800) - 62135596800 // years 1 to 9999
		ns := r.Int64N(1e9)
		if r.IntN(3) == 0 {
			ns = 0
		}
		check(time.Unix(sec, ns).UTC())
		check(time.Unix(sec, (ns+1)%1e9).UTC()) // the same second, mostly
	}
}

func BenchmarkUsageJSON(b *testing.B) {
	r := benchRec(1)
	r.ID = "edge-1-0123456789abcdef0123456789abcdef"
	buf := make([]byte, 0, 1024)
	for range b.N {
		buf, _ = appendUsageJSON(buf[:0], r)
	}
}
