package cache

import (
	"context"
	"crypto/sha256"
	"encoding/binary"
	"fmt"
	"runtime"
	"testing"
	"time"

	"github.com/keymesh/keymesh/apikey"
	"github.com/keymesh/keymesh/event"
)

// BenchmarkHitPath is the edge's per-request key check on a cache hit:
// parse (prefix, checksum, SHA-256) and Authorize. Compare with
// BenchmarkBaselineSHA256Map from the same run.
func BenchmarkHitPath(b *testing.B) {
	o := newOrigin(b)
	v, err := New(bounds(Config{Verifier: mustVerifier(b, o), Lookup: o.lookup, MaxKeys: 1000}))
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

// BenchmarkMemoryMillionKeys reports the heap one million cached keys take
// (target: ≤ 400 MiB). Entries are built the way a lookup answer builds
// them: one compiled key with a permission set and two linked deployments.
func BenchmarkMemoryMillionKeys(b *testing.B) {
	const n = 1_000_000
	for b.Loop() {
		o := newOrigin(b)
		runtime.GC()
		var before, after runtime.MemStats
		runtime.ReadMemStats(&before)
		v, err := New(bounds(Config{Verifier: mustVerifier(b, o), Lookup: o.lookup, MaxKeys: n}))
		if err != nil {
			b.Fatal(err)
		}
		deps := []string{"dep_06h0bs4jgj52xtry8wy522cyb0", "dep_06h0bs4jgj52xtry8wy522cyb1"}
		var h apikey.Hash
		for i := range n {
			binary.LittleEndian.PutUint64(h[:], uint64(i)*0x9E3779B97F4A7C15)
			binary.LittleEndian.PutUint64(h[8:], uint64(i))
			k := &event.Key{ID: fmt.Sprintf("key_%026d", i), Project: "prj_06h0bs4hthx9xp8kc2bs30fj5w",
				Secrets: []event.Secret{{Hash: h}}, Permissions: event.DefaultPermissions, Deployments: deps}
			for !v.keys.Set(slot(&h), v.compile(k, 1, time.Now().UnixNano(), h), 1) {
				v.keys.Wait() // the set buffer is full: let it drain rather than drop
			}
		}
		v.keys.Wait()
		runtime.GC()
		runtime.ReadMemStats(&after)
		held := v.keys.Metrics.KeysAdded() - v.keys.Metrics.KeysEvicted()
		b.ReportMetric(float64(after.HeapAlloc-before.HeapAlloc)/(1<<20), "MiB")
		b.ReportMetric(float64(held), "keys")
		v.Close()
	}
}
