package origin

// The revision counter and the transactional outbox: every mutation takes
// the next revision and stores its sealed event in the same transaction
// (mutate; a change of a project's token bounds takes one revision and
// event for each of its deployments, setRules); the publisher
// (publisher.go) reads the unpublished events back
// in order and marks them published once NATS has them.

import (
	"context"
	"database/sql"
	"fmt"
	"time"

	"github.com/keymesh/keymesh/event"
)

// mutate runs fn in one write transaction holding the next revision; the
// record fn returns (with Revision and Time filled in here) is sealed and
// stored as the event of that revision.
func (s *Store) mutate(ctx context.Context, fn func(tx *sql.Tx, rev uint64, now time.Time) (*event.Record, error)) (uint64, error) {
	unlock := s.lockWrites()
	defer unlock()
	tx, err := s.db.BeginTx(ctx, nil)
	if err != nil {
		return 0, fmt.Errorf("beginning transaction: %w", err)
	}
	defer tx.Rollback()
	var rev uint64
	if err := tx.QueryRowContext(ctx, s.q(`UPDATE counters SET value = value + 1 WHERE name = 'revision' RETURNING value`)).Scan(&rev); err != nil {
		return 0, fmt.Errorf("taking revision: %w", err)
	}
	now := time.Now().UTC()
	rec, err := fn(tx, rev, now)
	if err != nil {
		return 0, err
	}
	if err := s.storeEvent(ctx, tx, rec, rev, now); err != nil {
		return 0, err
	}
	if err := tx.Commit(); err != nil {
		return 0, fmt.Errorf("committing: %w", err)
	}
	if s.onCommit != nil {
		s.onCommit(rev)
	}
	return rev, nil
}

// storeEvent seals rec as the event of revision rev (filling in its
// Revision and Time) and stores it in the outbox, in tx. A sealed event
// over MaxEventBytes is refused, and so is the whole transaction's change.
func (s *Store) storeEvent(ctx context.Context, tx *sql.Tx, rec *event.Record, rev uint64, now time.Time) error {
	rec.Revision, rec.Time = rev, now
	payload, err := s.seal(rec)
	if err != nil {
		return err
	}
	if len(payload) > MaxEventBytes {
		// Refused before commit: NATS would refuse it (or an edge choke on
		// it), and every later change of every project would queue behind.
		return &DetailedError{Err: ErrTooLarge, Details: map[string]any{"event_bytes": len(payload), "max_event_bytes": MaxEventBytes},
			Message: fmt.Sprintf("the change's event would be %d bytes, over the limit of %d; make the deployment or key smaller", len(payload), MaxEventBytes)}
	}
	if _, err := tx.ExecContext(ctx, s.q(`INSERT INTO events (revision, subject, payload, created_at, published) VALUES (?, ?, ?, ?, 0)`),
		rev, event.Subject(rec.Kind, rev), payload, ts(now)); err != nil {
		return fmt.Errorf("writing event: %w", err)
	}
	return nil
}

// nextRevision takes the next revision in tx (which then holds the
// counter's row lock until it ends).
func (s *Store) nextRevision(ctx context.Context, tx *sql.Tx) (uint64, error) {
	var rev uint64
	if err := tx.QueryRowContext(ctx, s.q(`UPDATE counters SET value = value + 1 WHERE name = 'revision' RETURNING value`)).Scan(&rev); err != nil {
		return 0, fmt.Errorf("taking revision: %w", err)
	}
	return rev, nil
}

func (s *Store) revision(ctx context.Context, q querier) (uint64, error) {
	var rev uint64
	err := q.QueryRowContext(ctx, s.q(`SELECT value FROM counters WHERE name = 'revision'`)).Scan(&rev)
	return rev, err
}

type outboxEvent struct {
	Revision uint64
	Subject  string
	Payload  []byte
}

func (s *Store) unpublished(ctx context.Context, limit int) ([]outboxEvent, error) {
	rows, err := s.db.QueryContext(ctx, s.q(`SELECT revision, subject, payload FROM events WHERE published = 0 ORDER BY revision LIMIT ?`), limit)
	if err != nil {
		return nil, err
	}
	defer rows.Close()
	var out []outboxEvent
	for rows.Next() {
		var e outboxEvent
		if err := rows.Scan(&e.Revision, &e.Subject, &e.Payload); err != nil {
			return nil, err
		}
		out = append(out, e)
	}
	return out, rows.Err()
}

func (s *Store) markPublished(ctx context.Context, rev uint64) error {
	return s.markPublishedRange(ctx, rev, rev)
}

// markPublishedRange marks the events from first to last (inclusive)
// published, in one statement.
func (s *Store) markPublishedRange(ctx context.Context, first, last uint64) error {
	unlock := s.lockWrites()
	defer unlock()
	_, err := s.db.ExecContext(ctx, s.q(`UPDATE events SET published = 1 WHERE revision >= ? AND revision <= ? AND published = 0`), first, last)
	return err
}

// markUnpublishedAfter queues every event after rev again (the stream lost
// them, e.g. it was deleted and recreated).
func (s *Store) markUnpublishedAfter(ctx context.Context, rev uint64) error {
	unlock := s.lockWrites()
	defer unlock()
	_, err := s.db.ExecContext(ctx, s.q(`UPDATE events SET published = 0 WHERE revision > ?`), rev)
	return err
}

// firstEventRevision is the lowest revision the outbox still holds (0 when
// it is empty).
func (s *Store) firstEventRevision(ctx context.Context) (uint64, error) {
	var first sql.NullInt64
	if err := s.db.QueryRowContext(ctx, s.q(`SELECT MIN(revision) FROM events`)).Scan(&first); err != nil {
		return 0, err
	}
	return uint64(first.Int64), nil
}

// pruneEvents deletes, among the limit oldest published events, those
// created before before, and reports how many it deleted; called until it
// deletes fewer than limit, it prunes every published event older than
// before in short transactions. Unpublished events are never deleted.
func (s *Store) pruneEvents(ctx context.Context, before time.Time, limit int) (int64, error) {
	unlock := s.lockWrites()
	defer unlock()
	res, err := s.db.ExecContext(ctx, s.q(`DELETE FROM events WHERE revision IN (SELECT revision FROM events WHERE published = 1 ORDER BY revision LIMIT ?) AND created_at < ?`),
		limit, ts(before))
	if err != nil {
		return 0, fmt.Errorf("pruning the outbox: %w", err)
	}
	return res.RowsAffected()
}

// publishedRevision is the highest revision below which every event is
// published.
func (s *Store) publishedRevision(ctx context.Context) (uint64, error) {
	var first sql.NullInt64
	if err := s.db.QueryRowContext(ctx, s.q(`SELECT MIN(revision) FROM events WHERE published = 0`)).Scan(&first); err != nil {
		return 0, err
	}
	if first.Valid {
		return uint64(first.Int64) - 1, nil
	}
	return s.revision(ctx, s.db)
}

// snapshot returns the current revision and every live deployment, read in
// one transaction.
func (s *Store) snapshot(ctx context.Context) (uint64, []event.Deployment, error) {
	tx, err := s.readTx(ctx)
	if err != nil {
		return 0, nil, err
	}
	defer tx.Rollback()
	rev, err := s.revision(ctx, tx)
	if err != nil {
		return 0, nil, err
	}
	deps, err := s.listDeployments(ctx, tx, "")
	return rev, deps, err
}
