package rfc3339

import (
	"bytes"
	"math/rand/v2"
	"testing"
	"time"
)

// Every time is what AppendFormat makes of it, whether its second was
// formatted last or not, in UTC or not, for any year.
func TestAppendNanoAsFormatted(t *testing.T) {
	var f Formatter
	check := func(tm time.Time) {
		t.Helper()
		want := tm.AppendFormat([]byte("x"), time.RFC3339Nano)
		for range 2 { // the second formatted, then reused
			if got := f.AppendNano([]byte("x"), tm); !bytes.Equal(got, want) {
				t.Fatalf("%v: %s, AppendFormat %s", tm, got, want)
			}
		}
	}
	base := time.Date(2026, 12, 2, 20, 6, 14, 0, time.UTC)
	for _, ns := range []int{0, 1, 9, 10, 100, 123456789, 100000000, 999999999, 500000, 120000000, 10000000} {
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

// Concurrent use: each time comes out whole (run under -race).
func TestAppendNanoConcurrent(t *testing.T) {
	var f Formatter
	done := make(chan struct{})
	for g := range 4 {
		go func() {
			defer func() { done <- struct{}{} }()
			for i := range 2000 {
				tm := time.Unix(1_800_000_000+int64(g*1000+i%7), int64(i)).UTC()
				if got, want := f.AppendNano(nil, tm), tm.AppendFormat(nil, time.RFC3339Nano); !bytes.Equal(got, want) {
					t.Errorf("%s, want %s", got, want)
					return
				}
			}
		}()
	}
	for range 4 {
		<-done
	}
}
