package origin

// The audit log: edges' per-request records (shipped over NATS in batches,
// stored by one replica of the queue group) and the origin's own admin
// actions, in one table written by one goroutine per replica. Its schema
// and record type are here; the subscriber and writer in audit_writer.go, the
// pruner in audit_prune.go, the listing in audit_list.go. Its SQL is the
// subset SQLite and PostgreSQL share (TEXT, BIGINT, INTEGER, "?"
// placeholders rebound by Store.q). Records never hold a secret: edges
// send key ids, never keys; admin records name the actor by username or key
// id and the route by its pattern, never a body, token or query string.
//
// On SQLite the audit writer and pruner share the one writer with the
// mutations: they take Store.lockWrites like every writer, for short
// transactions only (auditTxRows inserted, auditPruneRows deleted), so audit
// load delays a mutation by at most one such transaction.

import (
	"context"
	"fmt"
	"time"
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
		request_id TEXT NOT NULL DEFAULT '',
		reason TEXT NOT NULL DEFAULT '',
		changed TEXT NOT NULL DEFAULT ''
	)`,
	`CREATE INDEX IF NOT EXISTS audit_log_ts ON audit_log (ts)`,
	`CREATE INDEX IF NOT EXISTS audit_log_key ON audit_log (key_id, ts)`,
	`CREATE INDEX IF NOT EXISTS audit_log_deployment ON audit_log (deployment, ts)`,
	`CREATE INDEX IF NOT EXISTS audit_log_project ON audit_log (project, ts)`,
}

// auditAdded are the columns added to audit_log after its first schema
// (issue 16): an older table gets them, empty, before the indexes on them
// are made. reason is an edge record's refusal reason; changed is an admin
// record's changed fields, comma-separated.
var (
	auditAdded = []string{"reason", "changed"}
	auditLater = []string{`CREATE INDEX IF NOT EXISTS audit_log_reason ON audit_log (reason, ts)`}
)

// AuditRecord is one stored audit record: an edge's request (source
// "edge") or an admin action of the origin (source "admin"). GET /v1/audit
// answers it as an api.AuditRecord (auditAnswer).
type AuditRecord struct {
	ID             string
	Time           time.Time
	Source         string
	Edge           string
	Site           string
	ClientIP       string
	Actor          string
	KeyID          string
	Project        string
	Deployment     string
	DeploymentName string
	Method         string
	Path           string
	Action         string
	Target         string
	Status         int
	DurationMS     float64
	RequestID      string
	Reason         string   // an edge record's refusal reason (docs/api.md); "" when let through
	Changed        []string // an admin record's changed fields, names only
}

// ensureAuditSchema creates the audit table and its indexes if missing,
// and adds the columns an older table lacks. The audit table is not under
// the store's schema version: on SQLite it is a database of its own.
func (s *Server) ensureAuditSchema(ctx context.Context) error {
	st := s.auditStore
	if err := st.execSchema(ctx, auditSchema); err != nil {
		return err
	}
	var add []string
	for _, col := range auditAdded {
		if st.dialect == dialectPostgres {
			add = append(add, `ALTER TABLE audit_log ADD COLUMN IF NOT EXISTS `+col+` TEXT NOT NULL DEFAULT ''`)
			continue
		}
		var n int
		if err := st.db.QueryRowContext(ctx, `SELECT COUNT(*) FROM pragma_table_info('audit_log') WHERE name = ?`, col).Scan(&n); err != nil {
			return fmt.Errorf("reading the audit schema: %w", err)
		}
		if n == 0 {
			add = append(add, `ALTER TABLE audit_log ADD COLUMN `+col+` TEXT NOT NULL DEFAULT ''`)
		}
	}
	return st.execSchema(ctx, append(add, auditLater...))
}

const auditColumns = `id, ts, source, edge, site, client_ip, actor, key_id, project, deployment, deployment_name, method, path, action, target, status, duration_us, request_id, reason, changed`
