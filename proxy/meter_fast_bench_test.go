package proxy

import (
	"bytes"
	"testing"
)

func BenchmarkMeterFastChunk(b *testing.B) {
	c := bytes.TrimSpace(bytes.TrimPrefix(benchChunks[3], []byte("data: ")))
	b.SetBytes(int64(len(c)))
	for range b.N {
		if _, ok := fastRead(c, "delta"); !ok {
			b.Fatal("not read")
		}
	}
}
