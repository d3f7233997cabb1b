package origin

// The audit writer: edge batches arrive on NATS (a queue group, so one
// replica stores each), admin actions are added by mutated; both queue for
// one goroutine that stores them in short transactions and, between them,
// runs the pruner (audit_prune.go).

import (
	"context"
	"encoding/json"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/nats-io/nats.go"

	"github.com/keymesh/keymesh/event"
)

// edgeAuditRecord is one record as an edge ships it (proxy/audit.go).
type edgeAuditRecord struct {
	Time           time.Time `json:"time"`
	Edge           string    `json:"edge"`
	Site           string    `json:"site"`
	ClientIP       string    `json:"client_ip"`
	KeyID          string    `json:"key_id"`
	Project        string    `json:"project"`
	Deployment     string    `json:"deployment"`
	DeploymentName string    `json:"deployment_name"`
	Method         string    `json:"method"`
	Path           string    `json:"path"`
	Status         int       `json:"status"`
	DurationMS     float64   `json:"duration_ms"`
	RequestID      string    `json:"request_id"`
	Reason         string    `json:"reason"`
}

// auditLog queues records for one writer goroutine and prunes the table.
type auditLog struct {
	s       *Server
	ch      chan AuditRecord
	dropped [numAuditDrops]atomic.Uint64 // records not stored, by why
	bad     atomic.Uint64                // edge batches that could not be read
	stored  atomic.Uint64
	stop    chan struct{}
	done    chan struct{}
	once    sync.Once
}

// startAudit starts the writer and the pruner, and subscribes to edge audit
// batches in a queue group so one replica stores each batch.
func (s *Server) startAudit() error {
	a := &auditLog{s: s, ch: make(chan AuditRecord, s.cfg.AuditBuffer), stop: make(chan struct{}), done: make(chan struct{})}
	s.audit = a
	sub, err := s.nc.QueueSubscribe(event.EdgeAuditSubject+".*", event.AuditQueue, a.edgeBatch)
	if err != nil {
		return err
	}
	_ = sub.SetPendingLimits(65536, 64<<20)
	s.subs = append(s.subs, sub)
	go a.run()
	return nil
}

// stopAudit stores what is queued and stops the writer.
func (s *Server) stopAudit() {
	if s.audit == nil {
		return
	}
	s.audit.once.Do(func() {
		close(s.audit.stop)
		<-s.audit.done
	})
}

// AuditStats reports records stored by this replica and records dropped
// because the queue was full or the batch unreadable.
func (s *Server) AuditStats() (stored, dropped, badBatches uint64) {
	if s.audit == nil {
		return 0, 0, 0
	}
	for i := range s.audit.dropped {
		dropped += s.audit.dropped[i].Load()
	}
	return s.audit.stored.Load(), dropped, s.audit.bad.Load()
}

func (a *auditLog) add(r AuditRecord) {
	select {
	case a.ch <- r:
	default:
		a.dropped[auditQueueFull].Add(1)
	}
}

// edgeBatch takes one edge message: a JSON array of records, on the
// sending edge's own subject. The subject is the identity (NATS
// credentials let an edge publish on its own only): a record naming
// another edge is dropped.
func (a *auditLog) edgeBatch(m *nats.Msg) {
	var recs []edgeAuditRecord
	from, ok := event.EdgeFromSubject(event.EdgeAuditSubject, m.Subject)
	if !ok || len(m.Data) > maxAuditMessage || json.Unmarshal(m.Data, &recs) != nil {
		a.bad.Add(1)
		return
	}
	if len(recs) > maxAuditPerBatch {
		a.dropped[auditBatchTooLarge].Add(uint64(len(recs) - maxAuditPerBatch))
		recs = recs[:maxAuditPerBatch]
	}
	now := time.Now()
	for _, e := range recs {
		if e.Edge != from {
			a.dropped[auditWrongEdge].Add(1)
			continue
		}
		t := e.Time
		if t.IsZero() {
			t = now
		}
		a.add(AuditRecord{Time: t, Source: auditSourceEdge, Edge: cut(e.Edge), Site: cut(e.Site),
			ClientIP: cut(e.ClientIP), KeyID: cut(e.KeyID), Project: cut(e.Project), Deployment: cut(e.Deployment),
			DeploymentName: cut(e.DeploymentName), Method: cut(e.Method), Path: cut(e.Path), Status: e.Status,
			DurationMS: e.DurationMS, RequestID: cut(e.RequestID), Reason: cut(e.Reason)})
	}
}

func cut(s string) string {
	if len(s) > maxAuditField {
		return s[:maxAuditField]
	}
	return s
}

func (a *auditLog) run() {
	defer close(a.done)
	// Retention is applied every AuditPruneInterval, the first time one
	// interval after start (not at once: a large backlog must not compete
	// with a starting origin, nor with its tests).
	prune := time.NewTicker(a.s.cfg.AuditPruneInterval)
	defer prune.Stop()
	batch := make([]AuditRecord, 0, auditBatch)
	for {
		select {
		case r := <-a.ch:
			// Gather for up to auditGather before writing, so that records
			// arriving one by one (an admin action per mutation) make one
			// transaction, not one each: fewer writes to compete with the
			// store's fsyncs.
			batch = append(batch[:0], r)
			gather := time.NewTimer(auditGather)
		fill:
			for len(batch) < auditBatch {
				select {
				case r := <-a.ch:
					batch = append(batch, r)
				case <-gather.C:
					break fill
				case <-a.stop:
					break fill
				}
			}
			gather.Stop()
			a.insert(batch)
		case <-prune.C:
			a.prune()
		case <-a.stop:
			for {
				batch = batch[:0]
			drain:
				for len(batch) < auditBatch {
					select {
					case r := <-a.ch:
						batch = append(batch, r)
					default:
						break drain
					}
				}
				if len(batch) == 0 {
					return
				}
				a.insert(batch)
			}
		}
	}
}

// insert stores batch. On SQLite the audit log is a database of its own
// (openAuditStore), so storing never holds the writer lock mutations wait
// for; it writes transactions of at most auditTxRows rows, each holding the
// audit database's writer lock, so that pruning interleaves. Records that
// cannot be stored are dropped and counted.
func (a *auditLog) insert(batch []AuditRecord) {
	per := len(batch)
	if a.s.auditStore.dialect == dialectSQLite {
		per = auditTxRows
	}
	for len(batch) > 0 {
		n := min(per, len(batch))
		a.insertTx(batch[:n])
		batch = batch[n:]
	}
}

// auditRow is the VALUES group of one record (20 columns).
const auditRow = `(?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)`

func (a *auditLog) insertTx(rows []AuditRecord) {
	st := a.s.auditStore
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	err := func() error {
		unlock := st.lockWrites()
		defer unlock()
		tx, err := st.db.BeginTx(ctx, nil)
		if err != nil {
			return err
		}
		defer tx.Rollback()
		for chunk := range slices.Chunk(rows, auditStmtRows) {
			args := make([]any, 0, 20*len(chunk))
			for i := range chunk {
				r := &chunk[i]
				args = append(args, newID("aud"), r.Time.UnixMicro(), r.Source, r.Edge, r.Site, r.ClientIP, r.Actor,
					r.KeyID, r.Project, r.Deployment, r.DeploymentName, r.Method, r.Path, r.Action, r.Target, r.Status,
					int64(r.DurationMS*1000), r.RequestID, r.Reason, strings.Join(r.Changed, ","))
			}
			values := strings.TrimSuffix(strings.Repeat(auditRow+",", len(chunk)), ",")
			if _, err := tx.ExecContext(ctx, st.q(`INSERT INTO audit_log (`+auditColumns+`) VALUES `+values), args...); err != nil {
				return err
			}
		}
		return tx.Commit()
	}()
	if err != nil {
		a.dropped[auditStoreError].Add(uint64(len(rows)))
		a.s.log.Error("storing audit records", "records", len(rows), "err", err)
		return
	}
	a.stored.Add(uint64(len(rows)))
}

// auditTarget is what an admin mutation acted on, as its audit record names
// it; the handler, which knows, says. Project, when set, is the project the
// target is in (a created project: itself); when empty the record carries
// the call's project, if any.
type auditTarget struct {
	Target, KeyID, Deployment, Project string
	// Changed names the fields a change set (names only, never values).
	Changed []string
}

// auditAdmin records a successful admin mutation: who (username or key id),
// what (the route pattern and the target), when, and from where.
func (s *Server) auditAdmin(c *call, status int, t auditTarget) {
	if s.audit == nil {
		return
	}
	r := AuditRecord{Time: time.Now(), Source: auditSourceAdmin, ClientIP: clientAddr(c.r), Method: c.r.Method,
		Path: cut(c.r.URL.Path), Action: c.r.Pattern, Status: status, RequestID: cut(c.r.Header.Get("X-Request-Id")),
		Target: t.Target, KeyID: t.KeyID, Deployment: t.Deployment, Changed: t.Changed}
	if c.who != nil {
		switch {
		case c.who.User != "":
			r.Actor = "user:" + c.who.User
		case c.who.KeyID != "":
			r.Actor = "key:" + c.who.KeyID
		}
	}
	if c.project != nil {
		r.Project = c.project.ID
	}
	if t.Project != "" {
		r.Project = t.Project
	}
	s.audit.add(r)
}
