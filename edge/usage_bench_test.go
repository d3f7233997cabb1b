package edge

import (
	"encoding/json"
	"runtime"
	"strconv"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/keymesh/keymesh/event"
)

// benchRec is a record shaped as the proxy makes them.
func benchRec(i int) *event.Usage {
	return &event.Usage{ID: "edge-1-" + strconv.Itoa(1_000_000_000+i), Edge: "edge-1", KeyID: "key_4f9a2c1e7b3d",
		Project: "prj_team-ml", Deployment: "dep_8c1f2a", Model: "llama-3.1-70b-instruct",
		PromptTokens: 812, CompletionTokens: 245, CachedTokens: 128, Status: 200, DurationMS: 1834,
		Time: time.Date(2026, 12, 2, 12, 0, 0, i, time.UTC)}
}

// cpuTime is the process's CPU time (user and system) so far.
func cpuTime(b *testing.B) time.Duration {
	var ru syscall.Rusage
	if err := syscall.Getrusage(syscall.RUSAGE_SELF, &ru); err != nil {
		b.Fatal(err)
	}
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}

// measureCPU reports the process's CPU time per op (cpu-ns/op) besides
// the wall time: on a shared machine that is the steadier figure, and
// paced's wall time is mostly its waiting.
func measureCPU(b *testing.B) func() {
	b.ReportAllocs()
	b.ResetTimer()
	c0 := cpuTime(b)
	return func() {
		b.StopTimer()
		b.ReportMetric(float64(cpuTime(b)-c0)/float64(b.N), "cpu-ns/op")
	}
}

// waitUntil polls (sleeping, so that the wait costs little CPU) until ok.
func waitUntil(b *testing.B, ok func() bool) {
	deadline := time.Now().Add(60 * time.Second)
	for !ok() {
		if time.Now().After(deadline) {
			b.Fatal("timed out")
		}
		time.Sleep(100 * time.Microsecond)
	}
}

// BenchmarkUsageSink measures what one record costs the sink end to end,
// the spool on disk: queued, encoded, spooled (written; fsynced every
// 100 ms) and published to an embedded JetStream until its PubAck.
//
//   - paced: one record at a time (each published before the next), as
//     at moderate load where the writer and the publisher see records
//     alone; this is the edge's steady state.
//   - bare: paced's floor without a sink (see there).
//   - burst: records as fast as Usage takes them (batches of up to 256).
//   - disconnected: NATS down, records only spooled.
//
// Everything measured (time, CPU, allocations) includes the embedded
// server's work for each message, the same before and after a change to
// the sink. For figures that a shared machine does not blur, count
// instructions: run the test binary under valgrind --tool=callgrind
// (GODEBUG=asyncpreemptoff=1) with -test.benchtime=Nx for two N and take
// the difference per op. With the server in the process even those
// drift with the wall time an op takes (its timers); the sink's own
// instructions are steadier collected only inside the calls that do its
// work and never park: --toggle-collect= for '*edge.(?usageSink).Usage',
// '*edge.(?usageSink).flushQueue', '*edge.(?diskSpool).peek',
// '*edge.(?diskSpool).ack' and '*jetstream.(?jetStream).PublishMsgAsync'.
func BenchmarkUsageSink(b *testing.B) {
	b.Run("paced", func(b *testing.B) {
		ns := startJS(b)
		usageStream(b, ns.client())
		s := newTestSink(b, ns.url(), b.TempDir(), 1<<30, usageQueueRecords, true)
		// Each record is awaited as it reaches the server (a blocking
		// wait, not a poll, so that waiting costs the same whatever the
		// sink does); its PubAck is handled while the next one comes.
		nc, err := nats.Connect(ns.url())
		if err != nil {
			b.Fatal(err)
		}
		defer nc.Close()
		got := make(chan *nats.Msg, 16)
		if _, err := nc.ChanSubscribe(event.UsageStreamSubjects, got); err != nil {
			b.Fatal(err)
		}
		if err := nc.Flush(); err != nil {
			b.Fatal(err)
		}
		defer measureCPU(b)()
		for i := range b.N {
			s.Usage(benchRec(i))
			<-got // (a lost record hangs here until the test's -timeout)
		}
		waitUntil(b, func() bool { return s.published.Load() == uint64(b.N) })
	})
	// bare is paced's floor, without a sink: each record's JSON published
	// as the sink publishes it, awaited the same way, and its PubAck
	// awaited before the next. paced minus bare is what the sink adds
	// (queue, encoding, spool, its goroutines); the server's part of
	// both is the same.
	b.Run("bare", func(b *testing.B) {
		ns := startJS(b)
		usageStream(b, ns.client())
		nc, err := nats.Connect(ns.url())
		if err != nil {
			b.Fatal(err)
		}
		defer nc.Close()
		js, err := jetstream.New(nc)
		if err != nil {
			b.Fatal(err)
		}
		got := make(chan *nats.Msg, 16)
		if _, err := nc.ChanSubscribe(event.UsageStreamSubjects, got); err != nil {
			b.Fatal(err)
		}
		if err := nc.Flush(); err != nil {
			b.Fatal(err)
		}
		subject := event.EdgeSubject(event.EdgeUsageSubject, "e1")
		data := make([][]byte, b.N) // encoded beforehand: not measured
		for i := range data {
			data[i], _ = json.Marshal(benchRec(i))
		}
		defer measureCPU(b)()
		for i := range b.N {
			r := benchRec(i)
			m := &nats.Msg{Subject: subject, Data: data[i], Header: nats.Header{}}
			f, err := js.PublishMsgAsync(m, jetstream.WithMsgID(r.ID), jetstream.WithExpectStream(event.UsageStreamName))
			if err != nil {
				b.Fatal(err)
			}
			<-got
			select {
			case <-f.Ok():
			case err := <-f.Err():
				b.Fatal(err)
			}
		}
	})
	// steady is the edge under load: a record every 50 µs (20,000
	// requests a second), none awaited, the producer yielding between
	// them as request handlers do (run it with -cpu 1 too: the edge's
	// single-core case, where the writer runs whenever a handler parks). It reports the JetStream messages
	// per record: each costs a spool write, a publish and a PubAck, so the
	// writer gathering records for usageCoalesce makes it a fraction of 1.
	b.Run("steady", func(b *testing.B) {
		ns := startJS(b)
		usageStream(b, ns.client())
		s := newTestSink(b, ns.url(), b.TempDir(), 1<<30, usageQueueRecords, true)
		nc, err := nats.Connect(ns.url())
		if err != nil {
			b.Fatal(err)
		}
		defer nc.Close()
		var msgs atomic.Int64
		if _, err := nc.Subscribe(event.UsageStreamSubjects, func(*nats.Msg) { msgs.Add(1) }); err != nil {
			b.Fatal(err)
		}
		if err := nc.Flush(); err != nil {
			b.Fatal(err)
		}
		done := measureCPU(b)
		next := time.Now()
		for i := range b.N {
			for time.Now().Before(next) {
				// Paced without a timer per record, and yielding as a
				// request handler parks on its connection.
				runtime.Gosched()
			}
			next = next.Add(50 * time.Microsecond)
			s.Usage(benchRec(i))
		}
		waitUntil(b, func() bool { return s.published.Load() == uint64(b.N) })
		done()
		b.ReportMetric(float64(msgs.Load())/float64(b.N), "msgs/record")
	})
	b.Run("burst", func(b *testing.B) {
		ns := startJS(b)
		usageStream(b, ns.client())
		s := newTestSink(b, ns.url(), b.TempDir(), 1<<30, usageQueueRecords, true)
		defer measureCPU(b)()
		for i := range b.N {
			s.Usage(benchRec(i))
			if i%usageBatch == usageBatch-1 { // the queue is not to overflow
				waitUntil(b, func() bool { return s.published.Load()+4*usageBatch > uint64(i) })
			}
		}
		waitUntil(b, func() bool { return s.published.Load() == uint64(b.N) })
	})
	b.Run("disconnected", func(b *testing.B) {
		s := newTestSink(b, deadURL(b), b.TempDir(), 1<<30, usageQueueRecords, true)
		defer measureCPU(b)()
		for i := range b.N {
			s.Usage(benchRec(i))
			if i%usageBatch == usageBatch-1 {
				waitUntil(b, func() bool { r, _ := s.sp.depth(); return r+4*usageBatch > int64(i) })
			}
		}
		waitUntil(b, func() bool { r, _ := s.sp.depth(); return r == int64(b.N) })
		if s.queueFull.Load()+s.spoolFull.Load() != 0 {
			b.Fatal("dropped")
		}
	})
}
