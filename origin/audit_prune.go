package origin

// Audit retention: records older than AuditRetention, then the oldest beyond
// AuditMaxRows, deleted in chunks so that no chunk holds the writer lock long.

import (
	"context"
	"database/sql"
	"errors"
	"time"
)

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
