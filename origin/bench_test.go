package origin

// Benchmarks of the origin's write path (targets on the 2-core development
// machine: >= 1,000 key creations/s on SQLite, commit-to-JetStream p99 <=
// 10 ms). Run with:
//
//	go test ./origin/ -run '^$' -bench . -benchtime 2000x
//
// Custom metrics: keys/s, and p50-ms / p99-ms / max-ms of the time from a
// mutation's commit to its event being delivered by a JetStream consumer
// (so stored in the stream, which is when the publisher gets its ack).

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"slices"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/keymesh/keymesh/apikey"
	"github.com/keymesh/keymesh/event"
)

// benchClient posts key creations to s's API from many goroutines.
type benchClient struct {
	base, token string
	hc          *http.Client
}

func newBenchClient(b *testing.B, s *Server) *benchClient {
	b.Helper()
	hc := &http.Client{Transport: &http.Transport{MaxIdleConnsPerHost: 64, MaxConnsPerHost: 64}}
	bc := &benchClient{base: "http://" + s.Addr(), hc: hc}
	var r struct{ Token string }
	if err := bc.post("/v1/auth/login", map[string]string{"username": "admin", "password": testPassword}, 200, &r); err != nil {
		b.Fatal(err)
	}
	bc.token = r.Token
	return bc
}

func (bc *benchClient) post(path string, body any, want int, out any) error {
	raw, _ := json.Marshal(body)
	req, err := http.NewRequest("POST", bc.base+path, bytes.NewReader(raw))
	if err != nil {
		return err
	}
	req.Header.Set("Content-Type", "application/json")
	if bc.token != "" {
		req.Header.Set("Authorization", "Bearer "+bc.token)
	}
	resp, err := bc.hc.Do(req)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	if resp.StatusCode != want {
		return fmt.Errorf("POST %s: %d %s", path, resp.StatusCode, b)
	}
	if out != nil {
		return json.Unmarshal(b, out)
	}
	return nil
}

func startBenchServer(b *testing.B, store func(dir string) string) *Server {
	b.Helper()
	dir := b.TempDir()
	cfg := testConfig(dir)
	cfg.PollInterval = time.Second // commits wake the publisher
	if store != nil {
		cfg.Store = store(dir)
	}
	return startServer(b, cfg)
}

// benchKeyCreation creates b.N keys through the HTTP API from 8 concurrent
// clients, with the publisher running, and reports keys/s.
func benchKeyCreation(b *testing.B, s *Server) {
	bc := newBenchClient(b, s)
	b.SetParallelism(4) // 4 x GOMAXPROCS clients
	b.ResetTimer()
	start := time.Now()
	var failed atomic.Value
	b.RunParallel(func(pb *testing.PB) {
		for pb.Next() {
			if err := bc.post("/v1/projects/default/keys", map[string]any{"name": "bench"}, 201, nil); err != nil {
				failed.Store(err)
				return
			}
		}
	})
	elapsed := time.Since(start)
	b.StopTimer()
	if err, _ := failed.Load().(error); err != nil {
		b.Fatal(err)
	}
	b.ReportMetric(float64(b.N)/elapsed.Seconds(), "keys/s")
}

func BenchmarkKeyCreateSQLite(b *testing.B) {
	benchKeyCreation(b, startBenchServer(b, nil))
}

func BenchmarkKeyCreatePostgres(b *testing.B) {
	dsn := postgresDSN(b)
	benchKeyCreation(b, startBenchServer(b, func(string) string { return dsn }))
}

// BenchmarkStoreCreateKeySQLite is the store's create path alone (no HTTP,
// no publisher): one transaction with the key, its hash, the revision and
// the sealed event.
func BenchmarkStoreCreateKeySQLite(b *testing.B) {
	dir := b.TempDir()
	st, err := openStore("", dir)
	if err != nil {
		b.Fatal(err)
	}
	defer st.Close()
	priv, _ := event.GenerateKey()
	signer, _ := event.NewSigner(priv)
	st.seal = signer.Seal
	ctx := context.Background()
	if err := st.ensureProject(ctx, "default"); err != nil {
		b.Fatal(err)
	}
	p, _ := st.project(ctx, "default")
	b.SetParallelism(2)
	b.ResetTimer()
	start := time.Now()
	var failed atomic.Value
	b.RunParallel(func(pb *testing.PB) {
		for pb.Next() {
			h := apikey.Hash(sha256.Sum256([]byte(newID("s"))))
			k := &Key{ID: newID("key"), ProjectID: p.ID, Prefix: "km_bench", Permissions: []string{event.PermRunInference}}
			if _, err := st.createKey(ctx, k, h, nil); err != nil {
				failed.Store(err)
				return
			}
		}
	})
	elapsed := time.Since(start)
	b.StopTimer()
	if err, _ := failed.Load().(error); err != nil {
		b.Fatal(err)
	}
	b.ReportMetric(float64(b.N)/elapsed.Seconds(), "keys/s")
}

// BenchmarkCommitToPublished* create keys through the API from 4
// concurrent clients and measures, for every revision, the time from its
// commit (the store's commit hook) to its event arriving from a JetStream
// consumer on the stream.
func BenchmarkCommitToPublishedSQLite(b *testing.B) {
	benchCommitToPublished(b, startBenchServer(b, nil))
}

func BenchmarkCommitToPublishedPostgres(b *testing.B) {
	dsn := postgresDSN(b)
	benchCommitToPublished(b, startBenchServer(b, func(string) string { return dsn }))
}

func benchCommitToPublished(b *testing.B, s *Server) {
	var mu sync.Mutex
	committed := map[uint64]time.Time{}
	orig := s.store.onCommit
	s.store.onCommit = func(rev uint64) {
		mu.Lock()
		committed[rev] = time.Now()
		mu.Unlock()
		orig(rev)
	}
	nc, err := nats.Connect(s.NATSURL(), natsAuth(b, s)...)
	if err != nil {
		b.Fatal(err)
	}
	defer nc.Close()
	js, _ := jetstream.New(nc)
	ctx := context.Background()
	var stream jetstream.Stream
	for deadline := time.Now().Add(10 * time.Second); ; {
		if stream, err = js.Stream(ctx, event.StreamName); err == nil {
			break
		}
		if time.Now().After(deadline) {
			b.Fatal("no event stream")
		}
		time.Sleep(10 * time.Millisecond)
	}
	start := s.Revision()
	cons, err := stream.OrderedConsumer(ctx, jetstream.OrderedConsumerConfig{DeliverPolicy: jetstream.DeliverNewPolicy})
	if err != nil {
		b.Fatal(err)
	}
	var latMu sync.Mutex
	var lats []time.Duration
	var seen atomic.Uint64
	cc, err := cons.Consume(func(m jetstream.Msg) {
		now := time.Now()
		md, err := m.Metadata()
		if err != nil {
			return
		}
		mu.Lock()
		t0, ok := committed[md.Sequence.Stream]
		mu.Unlock()
		if ok {
			latMu.Lock()
			lats = append(lats, now.Sub(t0))
			latMu.Unlock()
		}
		seen.Store(md.Sequence.Stream)
	})
	if err != nil {
		b.Fatal(err)
	}
	defer cc.Stop()

	bc := newBenchClient(b, s)
	b.SetParallelism(2)
	b.ResetTimer()
	var failed atomic.Value
	b.RunParallel(func(pb *testing.PB) {
		for pb.Next() {
			if err := bc.post("/v1/projects/default/keys", map[string]any{"name": "bench"}, 201, nil); err != nil {
				failed.Store(err)
				return
			}
		}
	})
	b.StopTimer()
	if err, _ := failed.Load().(error); err != nil {
		b.Fatal(err)
	}
	want := start + uint64(b.N)
	for deadline := time.Now().Add(30 * time.Second); seen.Load() < want; {
		if time.Now().After(deadline) {
			b.Fatalf("stream reached %d of %d", seen.Load(), want)
		}
		time.Sleep(time.Millisecond)
	}
	latMu.Lock()
	defer latMu.Unlock()
	slices.Sort(lats)
	pct := func(p float64) float64 {
		return float64(lats[min(len(lats)-1, int(p*float64(len(lats))))]) / float64(time.Millisecond)
	}
	b.ReportMetric(pct(0.50), "p50-ms")
	b.ReportMetric(pct(0.99), "p99-ms")
	b.ReportMetric(pct(1), "max-ms")
}
