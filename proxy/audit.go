package proxy

import (
	"fmt"
	"log/slog"
	"net"
	"os"
	"strconv"
	"sync"
	"sync/atomic"
	"time"
	"unicode/utf8"

	"github.com/nats-io/nats.go"
	"github.com/valyala/fasthttp"

	"github.com/keymesh/keymesh/event"
)

const (
	// auditBatchRecords and auditBatchBytes bound one NATS message of
	// audit records (well under NATS's default 1 MiB payload limit).
	auditBatchRecords = 500
	auditBatchBytes   = 256 << 10
	// auditMaxPath and auditMaxRequestID cut long values before they are
	// queued.
	auditMaxPath      = 512
	auditMaxRequestID = 128
)

// auditWire is an audit record as shipped to the origin and written to the
// audit file.
type auditWire struct {
	Time           time.Time `json:"time"`
	Edge           string    `json:"edge"`
	Site           string    `json:"site"`
	ClientIP       string    `json:"client_ip"`
	KeyID          string    `json:"key_id,omitempty"`
	Project        string    `json:"project,omitempty"`
	Deployment     string    `json:"deployment,omitempty"`
	DeploymentName string    `json:"deployment_name,omitempty"`
	Method         string    `json:"method"`
	Path           string    `json:"path"`
	Status         int       `json:"status"`
	DurationMS     float64   `json:"duration_ms"`
	RequestID      string    `json:"request_id,omitempty"`
}

// auditor takes records from the request path and ships them in batches
// from one goroutine: over NATS to the origin, and as JSON lines to a file
// if configured. A request encodes its record straight into the pending
// batch, under a mutex held for a copy: no allocation, no reflection, and
// no goroutine woken per request (the shipper runs on its interval, or when
// a batch is full). At most max records wait; past that a record is dropped
// and counted, and the request never waits.
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
	edgeSite []byte // `"edge":"…","site":"…"`, encoded once
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

func newAuditor(nc *nats.Conn, edge, site string, buffer int, path string, interval time.Duration, log *slog.Logger) (*auditor, error) {
	a := &auditor{max: max(buffer, 1), ready: make(chan struct{}, 1), nc: nc, interval: interval, log: log,
		stop: make(chan struct{}), done: make(chan struct{}), subject: event.EdgeSubject(event.EdgeAuditSubject, edge)}
	a.edgeSite = append(a.edgeSite, `"edge":`...)
	a.edgeSite = appendJSONString(a.edgeSite, edge)
	a.edgeSite = append(a.edgeSite, `,"site":`...)
	a.edgeSite = appendJSONString(a.edgeSite, site)
	if path != "" {
		f, err := os.OpenFile(path, os.O_WRONLY|os.O_APPEND|os.O_CREATE, 0o600)
		if err != nil {
			return nil, fmt.Errorf("opening audit file: %w", err)
		}
		a.file = f
	}
	return a, nil
}

// auditMaxRecord bounds one encoded record: the longest path and request
// id plus every other field.
const auditMaxRecord = 2*auditMaxPath + 2*auditMaxRequestID + 1024

// record queues the audit record of the request ctx has been answered with.
func (a *auditor) record(ctx *fasthttp.RequestCtx, out *outcome) {
	if a == nil {
		return
	}
	var scratch [auditMaxRecord]byte
	rec := a.encode(scratch[:0], ctx, out)
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

// encode appends the JSON object of one request's record (the shape of
// auditWire) to dst. It never holds the credential: the path is cut before
// its query, the request id is the edge's own header.
func (a *auditor) encode(dst []byte, ctx *fasthttp.RequestCtx, out *outcome) []byte {
	start := ctx.Time()
	dst = append(dst, `{"time":"`...)
	dst = start.UTC().AppendFormat(dst, time.RFC3339Nano)
	dst = append(dst, `",`...)
	dst = append(dst, a.edgeSite...)
	dst = append(dst, `,"client_ip":"`...)
	if ta, ok := ctx.RemoteAddr().(*net.TCPAddr); ok {
		dst = ta.AddrPort().Addr().Unmap().AppendTo(dst)
	}
	dst = append(dst, '"')
	project := ""
	if out.key != nil {
		dst = appendJSONField(dst, "key_id", out.key.ID)
		project = out.key.Project
	}
	if out.dep != nil {
		if project == "" {
			project = out.dep.Project
		}
		dst = appendJSONField(dst, "deployment", out.dep.ID)
		dst = appendJSONField(dst, "deployment_name", out.dep.Name)
	}
	dst = appendJSONField(dst, "project", project)
	dst = appendJSONField(dst, "method", clip(ctx.Method(), 16))
	// The path the edge read (nothing for a request it could not read or
	// refused from its line and headers: the raw bytes might hold a key).
	if r := out.req; r != nil && (r.refusal == nil || r.refusal == errNoDeployment) {
		dst = appendJSONField(dst, "path", clip(r.path, auditMaxPath))
	}
	dst = append(dst, `,"status":`...)
	dst = strconv.AppendInt(dst, int64(ctx.Response.StatusCode()), 10)
	dst = append(dst, `,"duration_ms":`...)
	dst = strconv.AppendFloat(dst, float64(time.Since(start).Microseconds())/1000, 'f', -1, 64)
	dst = appendJSONField(dst, "request_id", clip(ctx.Response.Header.PeekBytes(headerRequestID), auditMaxRequestID))
	return append(dst, '}')
}

func clip[T string | []byte](b T, n int) T {
	if len(b) > n {
		b = b[:n]
	}
	return b
}

// appendJSONField appends `,"name":"value"`; an empty value is left out.
func appendJSONField[T string | []byte](dst []byte, name string, value T) []byte {
	if len(value) == 0 {
		return dst
	}
	dst = append(dst, ',', '"')
	dst = append(dst, name...)
	dst = append(dst, '"', ':')
	return appendJSONString(dst, value)
}

// appendJSONString appends s as a JSON string: quotes, backslashes and
// control characters escaped, invalid UTF-8 replaced by U+FFFD (as
// encoding/json does).
func appendJSONString[T string | []byte](dst []byte, s T) []byte {
	const hex = "0123456789abcdef"
	dst = append(dst, '"')
	start := 0
	for i := 0; i < len(s); {
		c := s[i]
		if c >= utf8.RuneSelf {
			r, size := utf8.DecodeRuneInString(string(s[i:min(i+utf8.UTFMax, len(s))]))
			if r == utf8.RuneError && size == 1 {
				dst = append(dst, s[start:i]...)
				dst = append(dst, `\ufffd`...)
				i++
				start = i
				continue
			}
			i += size
			continue
		}
		if c >= 0x20 && c != '"' && c != '\\' {
			i++
			continue
		}
		dst = append(dst, s[start:i]...)
		switch c {
		case '"', '\\':
			dst = append(dst, '\\', c)
		case '\n':
			dst = append(dst, '\\', 'n')
		case '\r':
			dst = append(dst, '\\', 'r')
		case '\t':
			dst = append(dst, '\\', 't')
		default:
			dst = append(dst, '\\', 'u', '0', '0', hex[c>>4], hex[c&0xf])
		}
		i++
		start = i
	}
	dst = append(dst, s[start:]...)
	return append(dst, '"')
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
func (s *Server) AuditStats() (shipped, dropped, failed uint64) {
	if s.audit == nil {
		return 0, 0, 0
	}
	return s.audit.shipped.Load(), s.audit.dropped.Load(), s.audit.failed.Load()
}
