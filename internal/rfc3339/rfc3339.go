// Package rfc3339 formats times exactly as t.AppendFormat(b,
// time.RFC3339Nano) does, cheaply for the times records carry: many in the
// same second, in UTC. Formatting the date and the clock is most of what
// AppendFormat costs, and records of one second share them.
package rfc3339

import (
	"sync/atomic"
	"time"
)

// Formatter appends times as RFC 3339 with nanoseconds. For a time in UTC
// of a year of four digits it reuses the second it formatted last, then
// appends the fraction (its trailing zeros cut; none: no dot) and "Z"; any
// other time goes to AppendFormat. The zero Formatter is ready to use and
// safe for concurrent use.
type Formatter struct {
	last atomic.Pointer[second]
}

// second is a second (Unix time) formatted as RFC 3339 in UTC, to the
// second.
type second struct {
	unix int64
	text [len("2006-01-02T15:04:05")]byte
}

// AppendNano appends t as t.AppendFormat(b, time.RFC3339Nano) would.
func (f *Formatter) AppendNano(b []byte, t time.Time) []byte {
	if t.Location() != time.UTC {
		return t.AppendFormat(b, time.RFC3339Nano)
	}
	sec := t.Unix()
	s := f.last.Load()
	if s == nil || s.unix != sec {
		s = &second{unix: sec}
		if len(t.AppendFormat(s.text[:0], "2006-01-02T15:04:05")) != len(s.text) {
			return t.AppendFormat(b, time.RFC3339Nano) // a year not of four digits
		}
		f.last.Store(s)
	}
	b = append(b, s.text[:]...)
	if ns := t.Nanosecond(); ns != 0 {
		var frac [10]byte
		frac[0] = '.'
		for i := 9; i > 0; i-- {
			frac[i] = byte('0' + ns%10)
			ns /= 10
		}
		n := len(frac)
		for frac[n-1] == '0' {
			n--
		}
		b = append(b, frac[:n]...)
	}
	return append(b, 'Z')
}
