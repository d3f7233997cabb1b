package edge

import (
	"fmt"
	"log/slog"
	"os"
	"sync"
	"sync/atomic"
	"time"

	"github.com/nats-io/nats.go"

	"github.com/keymesh/keymesh/event"
	"github.com/keymesh/keymesh/proxy"
)

const (
	// auditBatchRecords and auditBatchBytes bound one NATS message of
	// audit records (well under NATS's default 1 MiB payload limit).
	auditBatchRecords = 500
	auditBatchBytes   = 256 << 10
)

// auditor is the data plane's proxy.AuditSink: it takes the records the
// proxy encodes and ships them in batches from one goroutine: over NATS to
// the origin, and as JSON lines to a file if configured. A record is
// copied into the pending batch under a mutex held for the copy: no
// allocation and no goroutine woken per request (the shipper runs on its
// interval, or when a batch is full). At most max records wait; past that
// a record is dropped and counted, and the request never waits.
type auditor struct {
	mu      sync.Mutex
	pending auditBatch
	max     int
	subject string        // this edge's own audit subject (event.EdgeSubject)
	ready   chan struct{} // cap 1: a full batch is waiting

	dropped  atomic.Uint64
	shipped  atomic.Uint64
	failed   atomic.Uint64
	nc       *nats.Conn
	file     *os.File
	interval time.Duration
	log      *slog.Logger

	stopOnce sync.Once
	stop     chan struct{}
	done     chan struct{}
}

// auditBatch holds encoded records back to back; ends[i] is where record i
// ends in buf.
type auditBatch struct {
	buf  []byte
	ends []int
}

func (b *auditBatch) reset() { b.buf, b.ends = b.buf[:0], b.ends[:0] }

func newAuditor(nc *nats.Conn, edge string, buffer int, path string, interval time.Duration, log *slog.Logger) (*auditor, error) {
	a := &auditor{max: max(buffer, 1), ready: make(chan struct{}, 1), nc: nc, interval: interval, log: log,
		stop: make(chan struct{}), done: make(chan struct{}), subject: event.EdgeSubject(event.EdgeAuditSubject, edge)}
	if path != "" {
		f, err := os.OpenFile(path, os.O_WRONLY|os.O_APPEND|os.O_CREATE, 0o600)
		if err != nil {
			return nil, fmt.Errorf("opening audit file: %w", err)
		}
		a.file = f
	}
	return a, nil
}

var _ proxy.AuditSink = (*auditor)(nil)

// Record queues one encoded audit record (proxy.AuditSink), copying it.
func (a *auditor) Record(rec []byte) {
	a.mu.Lock()
	n := len(a.pending.ends)
	if n >= a.max {
		a.mu.Unlock()
		a.dropped.Add(1)
		return
	}
	a.pending.buf = append(a.pending.buf, rec...)
	a.pending.ends = append(a.pending.ends, len(a.pending.buf))
	a.mu.Unlock()
	if (n+1)%auditBatchRecords == 0 {
		select {
		case a.ready <- struct{}{}:
		default:
		}
	}
}

func (a *auditor) start() { go a.run() }

func (a *auditor) run() {
	defer close(a.done)
	t := time.NewTicker(a.interval)
	defer t.Stop()
	var spare auditBatch
	flush := func() {
		a.mu.Lock()
		a.pending, spare = spare, a.pending
		a.mu.Unlock()
		a.ship(&spare)
		spare.reset()
	}
	for {
		select {
		case <-a.ready:
			flush()
		case <-t.C:
			flush()
		case <-a.stop:
			flush()
			return
		}
	}
}

// ship publishes a batch in messages (JSON arrays) of at most
// auditBatchRecords records and auditBatchBytes bytes, and appends it to
// the audit file as JSON lines.
func (a *auditor) ship(b *auditBatch) {
	if len(b.ends) == 0 {
		return
	}
	var msg, lines []byte
	n := 0
	publish := func() {
		if n == 0 {
			return
		}
		msg = append(msg, ']')
		var err error
		if a.nc != nil { // nil in tests: the file is the only sink
			err = a.nc.Publish(a.subject, msg)
		}
		if err != nil {
			a.failed.Add(uint64(n))
			a.log.Warn("audit records not shipped", "records", n, "err", err)
		} else {
			a.shipped.Add(uint64(n))
		}
		msg, n = msg[:0], 0
	}
	from := 0
	for _, end := range b.ends {
		rec := b.buf[from:end]
		from = end
		if n == auditBatchRecords || (n > 0 && len(msg)+len(rec)+2 > auditBatchBytes) {
			publish()
		}
		if n == 0 {
			msg = append(msg, '[')
		} else {
			msg = append(msg, ',')
		}
		msg = append(msg, rec...)
		n++
		if a.file != nil {
			lines = append(lines, rec...)
			lines = append(lines, '\n')
		}
	}
	publish()
	if len(lines) > 0 {
		if _, err := a.file.Write(lines); err != nil {
			a.log.Warn("writing audit file", "err", err)
		}
	}
}

// shutdown ships what is queued, flushes NATS and closes the file. Records
// queued after it wait for nothing and are lost with the process.
func (a *auditor) shutdown(started bool) {
	if a == nil {
		return
	}
	a.stopOnce.Do(func() {
		close(a.stop)
		if started {
			<-a.done
		}
		if a.nc != nil && a.nc.IsConnected() {
			if err := a.nc.FlushTimeout(2 * time.Second); err != nil {
				a.log.Warn("flushing audit records", "err", err)
			}
		}
		if a.file != nil {
			_ = a.file.Close()
		}
	})
}

// AuditStats reports the edge's audit pipeline: records shipped to NATS,
// dropped because the buffer was full, and lost to publish errors.
func (n *Node) AuditStats() (shipped, dropped, failed uint64) {
	return n.audit.shipped.Load(), n.audit.dropped.Load(), n.audit.failed.Load()
}
