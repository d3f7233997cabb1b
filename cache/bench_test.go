package cache

import (
	"context"
	"crypto/sha256"
	"testing"

	"github.com/keymesh/keymesh/apikey"
)

// BenchmarkHitPath is the edge's per-request key check on a cache hit:
// parse (prefix, checksum, SHA-256) and Authorize. Compare with
// BenchmarkBaselineSHA256Map from the same run.
func BenchmarkHitPath(b *testing.B) {
	o := newOrigin(b)
	v, err := New(Config{Verifier: mustVerifier(b, o), Lookup: o.lookup, MaxKeys: 1000})
	if err != nil {
		b.Fatal(err)
	}
	defer v.Close()
	key, _ := apikey.Generate()
	h, _ := apikey.ParseString(key)
	o.change(linked(h, "d1"))
	if _, err := v.Authorize(context.Background(), h); err != nil {
		b.Fatal(err)
	}
	v.keys.Wait()
	raw := []byte(key)
	ctx := context.Background()
	b.ReportAllocs()
	b.ResetTimer()
	for b.Loop() {
		h, err := apikey.Parse(raw)
		if err != nil {
			b.Fatal(err)
		}
		k, err := v.Authorize(ctx, h)
		if err != nil || !k.Linked("d1") {
			b.Fatal(err)
		}
	}
	if s := v.Stats(); s.Lookups != 1 {
		b.Fatalf("benchmark missed the cache: %+v", s)
	}
}

// BenchmarkBaselineSHA256Map is the floor the hit path is measured against:
// a SHA-256 of the key and a Go map lookup.
func BenchmarkBaselineSHA256Map(b *testing.B) {
	key, _ := apikey.Generate()
	raw := []byte(key)
	m := map[[32]byte]*Key{sha256.Sum256(raw): {ID: "k"}}
	b.ReportAllocs()
	for b.Loop() {
		if m[sha256.Sum256(raw)] == nil {
			b.Fatal("miss")
		}
	}
}
