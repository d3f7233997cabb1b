package apikey

import (
	"crypto/sha256"
	"errors"
	"strings"
	"testing"
)

func TestGenerateParseRoundTrip(t *testing.T) {
	seen := map[string]bool{}
	for i := 0; i < 100; i++ {
		k, err := Generate()
		if err != nil {
			t.Fatal(err)
		}
		if len(k) != Len || !strings.HasPrefix(k, Prefix) {
			t.Fatalf("bad shape %d", len(k))
		}
		if seen[k] {
			t.Fatal("duplicate key generated")
		}
		seen[k] = true
		h, err := ParseString(k)
		if err != nil {
			t.Fatalf("parse generated key: %v", err)
		}
		if h != Hash(sha256.Sum256([]byte(k))) {
			t.Fatal("hash is not sha256 of the key text")
		}
	}
}

func TestParseRejects(t *testing.T) {
	k, _ := Generate()
	flip := func(i int) string {
		b := []byte(k)
		if b[i] == 'a' {
			b[i] = 'b'
		} else {
			b[i] = 'a'
		}
		return string(b)
	}
	// upper upper-cases the first letter of the body (digits have no case).
	upper := func(k string) string {
		i := strings.IndexAny(k[len(Prefix):], "abcdefghijklmnopqrstuvwxyz") + len(Prefix)
		return k[:i] + strings.ToUpper(k[i:i+1]) + k[i+1:]
	}
	tests := []struct {
		name string
		in   string
		want error
	}{
		{"empty", "", ErrPrefix},
		{"openai style", "sk-" + k[3:], ErrPrefix},
		{"short", k[:Len-1], ErrLength},
		{"long", k + "a", ErrLength},
		{"bad alphabet", k[:10] + "1" + k[11:], ErrEncoding},
		{"upper case", upper(k), ErrEncoding},
		{"body typo", flip(20), ErrChecksum},
		{"non-canonical trailing bits", k[:len(Prefix)+bodyLen-1] + "b" + k[len(Prefix)+bodyLen:], ErrEncoding},
		{"checksum typo", flip(Len - 2), ErrChecksum},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, err := ParseString(tt.in)
			if !errors.Is(err, tt.want) {
				t.Fatalf("got %v, want %v", err, tt.want)
			}
			if err != nil && len(tt.in) > 10 && strings.Contains(err.Error(), tt.in[3:13]) {
				t.Fatal("error message echoes the key")
			}
		})
	}
}

func TestHashText(t *testing.T) {
	k, _ := Generate()
	h, _ := ParseString(k)
	b, _ := h.MarshalText()
	var back Hash
	if err := back.UnmarshalText(b); err != nil || back != h || !back.Equal(h) {
		t.Fatalf("round trip: %v", err)
	}
	if err := back.UnmarshalText([]byte("abc")); err == nil {
		t.Fatal("short hex accepted")
	}
}

func TestParseDoesNotAllocate(t *testing.T) {
	k := []byte(mustGenerate(t))
	allocs := testing.AllocsPerRun(100, func() {
		if _, err := Parse(k); err != nil {
			t.Fatal(err)
		}
	})
	if allocs != 0 {
		t.Fatalf("Parse allocates %v times", allocs)
	}
}

func mustGenerate(t testing.TB) string {
	k, err := Generate()
	if err != nil {
		t.Fatal(err)
	}
	return k
}

func BenchmarkParse(b *testing.B) {
	k := []byte(mustGenerate(b))
	b.ReportAllocs()
	for b.Loop() {
		if _, err := Parse(k); err != nil {
			b.Fatal(err)
		}
	}
}

func FuzzParse(f *testing.F) {
	f.Add(mustGenerate(f))
	f.Add("km_")
	f.Add("")
	f.Fuzz(func(t *testing.T, s string) {
		h, err := ParseString(s)
		if err == nil && h != Hash(sha256.Sum256([]byte(s))) {
			t.Fatal("accepted key hashes wrongly")
		}
	})
}

// FuzzDecode holds the hand-written base32 decoder to encoding/base32: the
// same bytes out, and the same verdict — where the canonical encoding (no
// stray trailing bits) is what encoding/base32 writes for those bytes.
func FuzzDecode(f *testing.F) {
	k := mustGenerate(f)
	f.Add(k[len(Prefix) : len(Prefix)+bodyLen])
	f.Add(k[len(Prefix)+bodyLen:])
	f.Add("aaaaaaab")
	f.Add("zz")
	f.Fuzz(func(t *testing.T, s string) {
		// Lengths no encoding has (1, 3, 6 mod 8) never reach decode: keys
		// have two fixed lengths.
		if rem := len(s) % 8; rem == 1 || rem == 3 || rem == 6 {
			return
		}
		want, err := enc.DecodeString(s)
		refOK := err == nil && enc.EncodeToString(want) == s
		got := make([]byte, len(s)*5/8)
		ok := decode(got, []byte(s))
		if ok != refOK || (ok && string(got) != string(want)) {
			t.Fatalf("%q: decode %v %x, encoding/base32 %v %x", s, ok, got, refOK, want)
		}
	})
}
