package origin

import (
	"context"
	"math"
	"time"
)

// The edge registry (edges.go) is kept in table edges so that a restarted
// origin, or a replica joining, knows which edges were live and waits for
// them (see edgeRegistry.restore). Rows are written in batches by the
// registry's flusher, never per heartbeat; last_seen is Unix milliseconds
// (an integer orders as time does, on both dialects).

// saveEdges upserts edges in one transaction; a row only moves forward in
// time (replicas sharing a PostgreSQL store each write what they heard).
func (s *Store) saveEdges(ctx context.Context, edges []Edge) error {
	if len(edges) == 0 {
		return nil
	}
	unlock := s.lockWrites()
	defer unlock()
	tx, err := s.db.BeginTx(ctx, nil)
	if err != nil {
		return err
	}
	defer tx.Rollback()
	stmt := s.q(`INSERT INTO edges (id, site, address, applied_revision, relayed_by, last_seen_ms) VALUES (?, ?, ?, ?, ?, ?)
		ON CONFLICT (id) DO UPDATE SET site = excluded.site, address = excluded.address,
			applied_revision = excluded.applied_revision, relayed_by = excluded.relayed_by, last_seen_ms = excluded.last_seen_ms
		WHERE edges.last_seen_ms <= excluded.last_seen_ms`)
	for _, e := range edges {
		// Heartbeats are unsigned: a revision over int64 is clamped, not
		// allowed to fail the batch.
		rev := int64(min(e.AppliedRevision, math.MaxInt64))
		if _, err := tx.ExecContext(ctx, stmt, e.ID, e.Site, e.Address, rev, e.RelayedBy, e.LastSeen.UnixMilli()); err != nil {
			return err
		}
	}
	return tx.Commit()
}

// loadEdges returns every stored edge last seen after since.
func (s *Store) loadEdges(ctx context.Context, since time.Time, limit int) ([]Edge, error) {
	rows, err := s.db.QueryContext(ctx, s.q(`SELECT id, site, address, applied_revision, relayed_by, last_seen_ms FROM edges
		WHERE last_seen_ms > ? ORDER BY last_seen_ms DESC LIMIT ?`), since.UnixMilli(), limit)
	if err != nil {
		return nil, err
	}
	defer rows.Close()
	var out []Edge
	for rows.Next() {
		var e Edge
		var rev, ms int64
		if err := rows.Scan(&e.ID, &e.Site, &e.Address, &rev, &e.RelayedBy, &ms); err != nil {
			return nil, err
		}
		e.AppliedRevision, e.LastSeen = uint64(max(rev, 0)), time.UnixMilli(ms)
		out = append(out, e)
	}
	return out, rows.Err()
}

// forgetEdges deletes the edges last seen before t.
func (s *Store) forgetEdges(ctx context.Context, before time.Time) error {
	unlock := s.lockWrites()
	defer unlock()
	_, err := s.db.ExecContext(ctx, s.q(`DELETE FROM edges WHERE last_seen_ms < ?`), before.UnixMilli())
	return err
}
