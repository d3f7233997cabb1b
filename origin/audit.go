package origin

// The audit log: edges' per-request records (shipped over NATS in batches,
// stored by one replica of the queue group) and the origin's own admin
// actions, in one table written by one goroutine per replica. Its SQL lives
// here, in the subset SQLite and PostgreSQL share (TEXT, BIGINT, INTEGER,
// "?" placeholders rebound by Store.q). Records never hold a secret: edges
// send key ids, never keys; admin records name the actor by username or key
// id and the route by its pattern, never a body, token or query string.
//
// On SQLite the audit writer and pruner share the one writer with the
// mutations: they take Store.lockWrites like every writer, for short
// transactions only (auditTxRows inserted, auditPruneRows deleted), so audit
// load delays a mutation by at most one such transaction.

import (
	"context"
	"database/sql"
	"encoding/json"
	"errors"
	"net/http"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/nats-io/nats.go"

	"github.com/keymesh/keymesh/event"
	"github.com/keymesh/keymesh/internal/apierror"
)

const (
	auditBatch       = 500                    // records the writer takes off the queue at once
	auditTxRows      = 100                    // on SQLite, rows per insert transaction (one statement)
	auditStmtRows    = 100                    // rows per INSERT statement
	auditGather      = 100 * time.Millisecond // how long a record waits for company before it is written
	auditPruneRows   = 500                    // rows per pruning DELETE (and, on SQLite, per transaction)
	maxAuditMessage  = 8 << 20                // bytes of one edge batch accepted
	maxAuditPerBatch = 5000                   // records of one edge batch accepted
	maxAuditField    = 512                    // longer text fields are cut
	auditSourceEdge  = "edge"
	auditSourceAdmin = "admin"
)

var auditSchema = []string{
	`CREATE TABLE IF NOT EXISTS audit_log (
		id TEXT PRIMARY KEY,
		ts BIGINT NOT NULL,
		source TEXT NOT NULL,
		edge TEXT NOT NULL DEFAULT '',
		site TEXT NOT NULL DEFAULT '',
		client_ip TEXT NOT NULL DEFAULT '',
		actor TEXT NOT NULL DEFAULT '',
		key_id TEXT NOT NULL DEFAULT '',
		project TEXT NOT NULL DEFAULT '',
		deployment TEXT NOT NULL DEFAULT '',
		deployment_name TEXT NOT NULL DEFAULT '',
		method TEXT NOT NULL DEFAULT '',
		path TEXT NOT NULL DEFAULT '',
		action TEXT NOT NULL DEFAULT '',
		target TEXT NOT NULL DEFAULT '',
		status INTEGER NOT NULL DEFAULT 0,
		duration_us BIGINT NOT NULL DEFAULT 0,
		request_id TEXT NOT NULL DEFAULT ''
	)`,
	`CREATE INDEX IF NOT EXISTS audit_log_ts ON audit_log (ts)`,
	`CREATE INDEX IF NOT EXISTS audit_log_key ON audit_log (key_id, ts)`,
	`CREATE INDEX IF NOT EXISTS audit_log_deployment ON audit_log (deployment, ts)`,
	`CREATE INDEX IF NOT EXISTS audit_log_project ON audit_log (project, ts)`,
}

// AuditRecord is one stored audit record: an edge's request (source
// "edge") or an admin action of the origin (source "admin").
type AuditRecord struct {
	ID             string    `json:"id"`
	Time           time.Time `json:"time"`
	Source         string    `json:"source"`
	Edge           string    `json:"edge,omitempty"`
	Site           string    `json:"site,omitempty"`
	ClientIP       string    `json:"client_ip"`
	Actor          string    `json:"actor,omitempty"`
	KeyID          string    `json:"key_id,omitempty"`
	Project        string    `json:"project,omitempty"`
	Deployment     string    `json:"deployment,omitempty"`
	DeploymentName string    `json:"deployment_name,omitempty"`
	Method         string    `json:"method"`
	Path           string    `json:"path"`
	Action         string    `json:"action,omitempty"`
	Target         string    `json:"target,omitempty"`
	Status         int       `json:"status"`
	DurationMS     float64   `json:"duration_ms"`
	RequestID      string    `json:"request_id,omitempty"`
}

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
}

// auditLog queues records for one writer goroutine and prunes the table.
type auditLog struct {
	s       *Server
	ch      chan AuditRecord
	dropped atomic.Uint64 // records lost to a full queue
	bad     atomic.Uint64 // edge batches that could not be read
	stored  atomic.Uint64
	stop    chan struct{}
	done    chan struct{}
	once    sync.Once
}

// ensureAuditSchema creates the audit table and its indexes if missing.
func (s *Server) ensureAuditSchema(ctx context.Context) error {
	return s.auditStore.execSchema(ctx, auditSchema)
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
	return s.audit.stored.Load(), s.audit.dropped.Load(), s.audit.bad.Load()
}

func (a *auditLog) add(r AuditRecord) {
	select {
	case a.ch <- r:
	default:
		a.dropped.Add(1)
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
		a.dropped.Add(uint64(len(recs) - maxAuditPerBatch))
		recs = recs[:maxAuditPerBatch]
	}
	now := time.Now()
	for _, e := range recs {
		if e.Edge != from {
			a.dropped.Add(1)
			continue
		}
		t := e.Time
		if t.IsZero() {
			t = now
		}
		a.add(AuditRecord{Time: t, Source: auditSourceEdge, Edge: cut(e.Edge), Site: cut(e.Site),
			ClientIP: cut(e.ClientIP), KeyID: cut(e.KeyID), Project: cut(e.Project), Deployment: cut(e.Deployment),
			DeploymentName: cut(e.DeploymentName), Method: cut(e.Method), Path: cut(e.Path), Status: e.Status,
			DurationMS: e.DurationMS, RequestID: cut(e.RequestID)})
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

const auditColumns = `id, ts, source, edge, site, client_ip, actor, key_id, project, deployment, deployment_name, method, path, action, target, status, duration_us, request_id`

// auditRow is the VALUES group of one record (18 columns).
const auditRow = `(?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)`

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
			args := make([]any, 0, 18*len(chunk))
			for i := range chunk {
				r := &chunk[i]
				args = append(args, newID("aud"), r.Time.UnixMicro(), r.Source, r.Edge, r.Site, r.ClientIP, r.Actor,
					r.KeyID, r.Project, r.Deployment, r.DeploymentName, r.Method, r.Path, r.Action, r.Target, r.Status,
					int64(r.DurationMS*1000), r.RequestID)
			}
			values := strings.TrimSuffix(strings.Repeat(auditRow+",", len(chunk)), ",")
			if _, err := tx.ExecContext(ctx, st.q(`INSERT INTO audit_log (`+auditColumns+`) VALUES `+values), args...); err != nil {
				return err
			}
		}
		return tx.Commit()
	}()
	if err != nil {
		a.dropped.Add(uint64(len(rows)))
		a.s.log.Error("storing audit records", "records", len(rows), "err", err)
		return
	}
	a.stored.Add(uint64(len(rows)))
}

// prune deletes records older than AuditRetention, then the oldest beyond
// AuditMaxRows, auditPruneRows at a time (see pruneChunk).
func (a *auditLog) prune() {
	st := a.s.auditStore
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	cutoff := time.Now().Add(-a.s.cfg.AuditRetention).UnixMicro()
	if err := a.pruneWhere(ctx, `ts < ?`, cutoff); err != nil {
		a.s.log.Warn("pruning audit log", "err", err)
		return
	}
	var ts int64
	err := st.db.QueryRowContext(ctx, st.q(`SELECT ts FROM audit_log ORDER BY ts DESC LIMIT 1 OFFSET ?`), a.s.cfg.AuditMaxRows).Scan(&ts)
	if errors.Is(err, sql.ErrNoRows) {
		return
	}
	if err == nil {
		err = a.pruneWhere(ctx, `ts <= ?`, ts)
	}
	if err != nil {
		a.s.log.Warn("pruning audit log", "err", err)
	}
}

// pruneWhere deletes the records matching cond (on column ts, one argument)
// in chunks until none is left.
func (a *auditLog) pruneWhere(ctx context.Context, cond string, arg int64) error {
	for {
		n, err := a.pruneChunk(ctx, cond, arg)
		if err != nil || n < auditPruneRows {
			return err
		}
	}
}

// pruneChunk deletes at most auditPruneRows of the oldest records matching
// cond, holding the SQLite writer lock for that one statement only, so that
// pruning a large backlog never keeps a mutation waiting long.
func (a *auditLog) pruneChunk(ctx context.Context, cond string, arg int64) (int64, error) {
	st := a.s.auditStore
	unlock := st.lockWrites()
	defer unlock()
	res, err := st.db.ExecContext(ctx, st.q(`DELETE FROM audit_log WHERE id IN (SELECT id FROM audit_log WHERE `+cond+` ORDER BY ts LIMIT ?)`), arg, auditPruneRows)
	if err != nil {
		return 0, err
	}
	return res.RowsAffected()
}

// auditAdmin records a successful admin mutation: who (username or key id),
// what (the route pattern and the target id), when, and from where.
func (s *Server) auditAdmin(c *call, status int, body any) {
	if s.audit == nil {
		return
	}
	r := AuditRecord{Time: time.Now(), Source: auditSourceAdmin, ClientIP: clientAddr(c.r), Method: c.r.Method,
		Path: cut(c.r.URL.Path), Action: c.r.Pattern, Status: status, RequestID: cut(c.r.Header.Get("X-Request-Id"))}
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
	switch v := body.(type) {
	case *keyView:
		r.KeyID, r.Target, r.Project = v.ID, v.ID, v.Project
	case *deploymentView:
		r.Deployment, r.Target, r.Project = v.ID, v.ID, v.Project
	case map[string]any:
		if id, ok := v["id"].(string); ok {
			r.Target = id
			if c.project == nil && strings.HasPrefix(id, "prj_") {
				r.Project = id // a project created
			}
		}
	}
	pattern := c.r.Pattern
	switch {
	case strings.Contains(pattern, "/keys/{key_id}"):
		r.KeyID, r.Target = c.r.PathValue("key_id"), c.r.PathValue("key_id")
		if r.Deployment == "" {
			r.Deployment = c.r.PathValue("id")
		}
	case body == nil && strings.Contains(pattern, "/deployments/{id}"):
		r.Deployment, r.Target = c.r.PathValue("id"), c.r.PathValue("id")
	case body == nil && strings.Contains(pattern, "/keys/{id}"):
		r.KeyID, r.Target = c.r.PathValue("id"), c.r.PathValue("id")
	}
	s.audit.add(r)
}

// listAudit serves GET /v1/audit?project=&key_id=&deployment=&since=&limit=
// (and source=edge|admin): matching records, newest first.
func (s *Server) listAudit(c *call) error {
	q := c.r.URL.Query()
	where := []string{"1 = 1"}
	var args []any
	project := q.Get("project")
	if project != "" {
		id := project
		if p, err := s.store.project(c.ctx(), project); err == nil {
			id = p.ID
		} else if !errors.Is(err, ErrNotFound) {
			return err
		}
		project = id
	}
	if c.who.ProjectID != "" {
		if project != "" && project != c.who.ProjectID {
			return apierror.New(http.StatusForbidden, apierror.PermissionDenied, "this key may only read its own project's audit records")
		}
		project = c.who.ProjectID
	}
	if project != "" {
		where, args = append(where, "project = ?"), append(args, project)
	}
	if v := q.Get("key_id"); v != "" {
		where, args = append(where, "key_id = ?"), append(args, v)
	}
	if v := q.Get("deployment"); v != "" {
		where, args = append(where, "(deployment = ? OR deployment_name = ?)"), append(args, v, v)
	}
	if v := q.Get("source"); v != "" {
		if v != auditSourceEdge && v != auditSourceAdmin {
			return validation("source", "must be edge or admin")
		}
		where, args = append(where, "source = ?"), append(args, v)
	}
	if v := q.Get("since"); v != "" {
		t, err := parseSince(v, time.Now())
		if err != nil {
			return err
		}
		where, args = append(where, "ts >= ?"), append(args, t.UnixMicro())
	}
	limit := 100
	if v := q.Get("limit"); v != "" {
		n, err := strconv.Atoi(v)
		if err != nil || n < 1 || n > 1000 {
			return validation("limit", "must be a number between 1 and 1000")
		}
		limit = n
	}
	args = append(args, limit)
	rows, err := s.auditStore.db.QueryContext(c.ctx(), s.auditStore.q(`SELECT id, ts, source, edge, site, client_ip, actor, key_id,
		project, deployment, deployment_name, method, path, action, target, status, duration_us, request_id
		FROM audit_log WHERE `+strings.Join(where, " AND ")+` ORDER BY ts DESC, id DESC LIMIT ?`), args...)
	if err != nil {
		return err
	}
	defer rows.Close()
	out := []AuditRecord{}
	for rows.Next() {
		var r AuditRecord
		var ts, dur int64
		if err := rows.Scan(&r.ID, &ts, &r.Source, &r.Edge, &r.Site, &r.ClientIP, &r.Actor, &r.KeyID, &r.Project,
			&r.Deployment, &r.DeploymentName, &r.Method, &r.Path, &r.Action, &r.Target, &r.Status, &dur, &r.RequestID); err != nil {
			return err
		}
		r.Time = time.UnixMicro(ts).UTC()
		r.DurationMS = float64(dur) / 1000
		out = append(out, r)
	}
	if err := rows.Err(); err != nil {
		return err
	}
	writeJSON(c.w, http.StatusOK, out)
	return nil
}

// parseSince reads since= as an RFC 3339 time, a YYYY-MM-DD date (00:00
// UTC) or a duration back from now (e.g. 1h).
func parseSince(v string, now time.Time) (time.Time, error) {
	if t, err := time.Parse(time.RFC3339Nano, v); err == nil {
		return t, nil
	}
	if t, err := time.Parse(time.DateOnly, v); err == nil {
		return t, nil
	}
	if d, err := time.ParseDuration(v); err == nil && d >= 0 {
		return now.Add(-d), nil
	}
	return time.Time{}, validation("since", "must be an RFC 3339 time, a YYYY-MM-DD date or a duration such as 1h")
}
