package proxy

import (
	"bytes"
	"encoding/json"
	"fmt"
	"log/slog"
	"net"
	"net/netip"
	"os"
	"sync"
	"sync/atomic"
	"time"

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

// auditRecord is one request as the hot path queues it: plain values, no
// encoding. It never holds the credential.
type auditRecord struct {
	start     time.Time
	dur       time.Duration
	ip        netip.Addr
	keyID     string
	project   string
	depID     string
	depName   string
	method    string
	path      string
	requestID string
	status    int
}

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

// auditor takes records from the request path into a bounded queue and
// ships them in batches from one goroutine: over NATS to the origin, and as
// JSON lines to a file if configured. A full queue drops the record and
// counts it; the request never waits.
type auditor struct {
	ch       chan auditRecord
	dropped  atomic.Uint64
	shipped  atomic.Uint64
	failed   atomic.Uint64
	nc       *nats.Conn
	file     *os.File
	edge     string
	site     string
	interval time.Duration
	log      *slog.Logger

	stopOnce sync.Once
	stop     chan struct{}
	done     chan struct{}
}

func newAuditor(nc *nats.Conn, edge, site string, buffer int, path string, interval time.Duration, log *slog.Logger) (*auditor, error) {
	a := &auditor{ch: make(chan auditRecord, buffer), nc: nc, edge: edge, site: site, interval: interval, log: log,
		stop: make(chan struct{}), done: make(chan struct{})}
	if path != "" {
		f, err := os.OpenFile(path, os.O_WRONLY|os.O_APPEND|os.O_CREATE, 0o600)
		if err != nil {
			return nil, fmt.Errorf("opening audit file: %w", err)
		}
		a.file = f
	}
	return a, nil
}

// record queues the audit record of the request ctx has been answered with.
// It never blocks and allocates only the copied path and request id.
func (a *auditor) record(ctx *fasthttp.RequestCtx, out *outcome) {
	if a == nil {
		return
	}
	if len(a.ch) == cap(a.ch) {
		a.dropped.Add(1)
		return
	}
	start := ctx.Time()
	r := auditRecord{start: start, dur: time.Since(start), status: ctx.Response.StatusCode(),
		method: methodString(ctx.Method()), path: clip(ctx.Path(), auditMaxPath),
		requestID: clip(ctx.Response.Header.PeekBytes(headerRequestID), auditMaxRequestID)}
	if ta, ok := ctx.RemoteAddr().(*net.TCPAddr); ok {
		r.ip = ta.AddrPort().Addr().Unmap()
	}
	if out.dep != nil {
		r.depID, r.depName, r.project = out.dep.ID, out.dep.Name, out.dep.Project
	}
	if out.key != nil {
		r.keyID, r.project = out.key.ID, out.key.Project
	}
	select {
	case a.ch <- r:
	default:
		a.dropped.Add(1)
	}
}

func clip(b []byte, n int) string {
	if len(b) > n {
		b = b[:n]
	}
	return string(b)
}

// methodString returns common methods without allocating.
func methodString(m []byte) string {
	switch string(m) {
	case fasthttp.MethodGet:
		return fasthttp.MethodGet
	case fasthttp.MethodPost:
		return fasthttp.MethodPost
	case fasthttp.MethodPut:
		return fasthttp.MethodPut
	case fasthttp.MethodDelete:
		return fasthttp.MethodDelete
	case fasthttp.MethodPatch:
		return fasthttp.MethodPatch
	case fasthttp.MethodHead:
		return fasthttp.MethodHead
	case fasthttp.MethodOptions:
		return fasthttp.MethodOptions
	}
	return clip(m, 16)
}

func (a *auditor) start() { go a.run() }

func (a *auditor) run() {
	defer close(a.done)
	t := time.NewTicker(a.interval)
	defer t.Stop()
	batch := make([]auditRecord, 0, auditBatchRecords)
	for {
		select {
		case r := <-a.ch:
			batch = append(batch, r)
			if len(batch) == auditBatchRecords {
				a.ship(batch)
				batch = batch[:0]
			}
		case <-t.C:
			if len(batch) > 0 {
				a.ship(batch)
				batch = batch[:0]
			}
		case <-a.stop:
		drain:
			for {
				select {
				case r := <-a.ch:
					batch = append(batch, r)
					if len(batch) == auditBatchRecords {
						a.ship(batch)
						batch = batch[:0]
					}
				default:
					break drain
				}
			}
			if len(batch) > 0 {
				a.ship(batch)
			}
			return
		}
	}
}

// ship encodes a batch once, publishes it in messages of at most
// auditBatchBytes and appends it to the audit file.
func (a *auditor) ship(batch []auditRecord) {
	var msg, lines bytes.Buffer
	msg.WriteByte('[')
	n := 0
	publish := func() {
		if n == 0 {
			return
		}
		msg.WriteByte(']')
		var err error
		if a.nc != nil { // nil in tests: the file is the only sink
			err = a.nc.Publish(event.EdgeAuditSubject, msg.Bytes())
		}
		if err != nil {
			a.failed.Add(uint64(n))
			a.log.Warn("audit records not shipped", "records", n, "err", err)
		} else {
			a.shipped.Add(uint64(n))
		}
		msg.Reset()
		msg.WriteByte('[')
		n = 0
	}
	for i := range batch {
		r := &batch[i]
		w := auditWire{Time: r.start.UTC(), Edge: a.edge, Site: a.site, KeyID: r.keyID, Project: r.project,
			Deployment: r.depID, DeploymentName: r.depName, Method: r.method, Path: r.path, Status: r.status,
			DurationMS: float64(r.dur.Microseconds()) / 1000, RequestID: r.requestID}
		if r.ip.IsValid() {
			w.ClientIP = r.ip.String()
		}
		b, err := json.Marshal(&w)
		if err != nil {
			continue
		}
		if msg.Len()+len(b)+2 > auditBatchBytes {
			publish()
		}
		if n > 0 {
			msg.WriteByte(',')
		}
		msg.Write(b)
		n++
		if a.file != nil {
			lines.Write(b)
			lines.WriteByte('\n')
		}
	}
	publish()
	if a.file != nil && lines.Len() > 0 {
		if _, err := a.file.Write(lines.Bytes()); err != nil {
			a.log.Warn("writing audit file", "err", err)
		}
	}
}

// shutdown ships what is queued, flushes NATS and closes the file. Records
// queued after it are dropped with the queue.
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
