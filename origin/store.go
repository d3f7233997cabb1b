package origin

// The origin's queries live in this file, shared by both dialects; the DDL
// and the opening of each database are in store_sqlite.go and
// store_postgres.go. Statements are written in the
// common subset of SQLite and PostgreSQL: "?" placeholders (rebound to $n by
// Store.q for PostgreSQL), TEXT timestamps in RFC 3339 UTC, JSON in TEXT
// columns, INTEGER booleans, and UPDATE ... RETURNING for the revision
// counter (which also serialises writers on PostgreSQL through its row lock).
// Reads that must agree with a revision go through readTx (one snapshot).

import (
	"context"
	"database/sql"
	"encoding/json"
	"errors"
	"fmt"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/keymesh/keymesh/apikey"
	"github.com/keymesh/keymesh/event"
)

type dialect int

const (
	dialectSQLite dialect = iota
	dialectPostgres
)

// Store is the origin's persistent state. Every mutation runs in one
// transaction that also takes the next revision and writes the sealed event
// (the transactional outbox).
type Store struct {
	db       *sql.DB
	dialect  dialect
	path     string // SQLite: the database file
	seal     func(*event.Record) ([]byte, error)
	onCommit func(rev uint64)
	// notes are what opening the store found worth an operator's
	// attention (see migrate); the origin logs them.
	notes []string

	// wmu queues this process's SQLite writers in Go: SQLite allows one
	// writer, and a writer finding the database locked waits in SQLite's
	// busy handler, which sleeps up to 100 ms between attempts. Unused on
	// PostgreSQL (the revision row lock orders writers there).
	wmu sync.Mutex
}

// lockWrites serialises write transactions on SQLite (see wmu); the
// returned function releases. Same-package writers (other than mutate and
// the outbox marks, which take it already) should hold it too.
func (s *Store) lockWrites() func() {
	if s.dialect != dialectSQLite {
		return func() {}
	}
	s.wmu.Lock()
	return s.wmu.Unlock
}

// execSchema runs DDL statements; on PostgreSQL in one transaction holding
// the schema advisory lock, so origins starting at once on one database
// never race on the catalog.
func (s *Store) execSchema(ctx context.Context, stmts []string) error {
	if s.dialect != dialectPostgres {
		unlock := s.lockWrites()
		defer unlock()
		for _, stmt := range stmts {
			if _, err := s.db.ExecContext(ctx, stmt); err != nil {
				return fmt.Errorf("creating schema: %w", err)
			}
		}
		return nil
	}
	tx, err := s.db.BeginTx(ctx, nil)
	if err != nil {
		return err
	}
	defer tx.Rollback()
	if _, err := tx.ExecContext(ctx, `SELECT pg_advisory_xact_lock($1)`, int64(schemaLockID)); err != nil {
		return err
	}
	for _, stmt := range stmts {
		if _, err := tx.ExecContext(ctx, stmt); err != nil {
			return fmt.Errorf("creating schema: %w", err)
		}
	}
	return tx.Commit()
}

// checkStoreDSN refuses a store the origin cannot open, before anything is
// created. The DSN is never echoed: it may hold a password.
func checkStoreDSN(dsn string) error {
	switch {
	case isPostgresDSN(dsn):
		return nil
	case strings.Contains(dsn, "://") && !strings.HasPrefix(dsn, "sqlite://"):
		return fmt.Errorf("%w: unsupported store scheme (want sqlite:// or postgres://)", ErrInvalidConfig)
	}
	return nil
}

func isPostgresDSN(dsn string) bool {
	return strings.HasPrefix(dsn, "postgres://") || strings.HasPrefix(dsn, "postgresql://")
}

// openStore opens the store named by dsn: "" (SQLite at
// <dataDir>/origin.db), "sqlite://path" or a plain path (SQLite), or
// "postgres://..." / "postgresql://..." (PostgreSQL).
func openStore(dsn, dataDir string) (*Store, error) {
	switch {
	case dsn == "":
		return openSQLite(filepath.Join(dataDir, "origin.db"))
	case strings.HasPrefix(dsn, "sqlite://"):
		return openSQLite(strings.TrimPrefix(dsn, "sqlite://"))
	case isPostgresDSN(dsn):
		return openPostgres(dsn)
	case strings.Contains(dsn, "://"):
		return nil, fmt.Errorf("%w: unsupported store scheme (want sqlite:// or postgres://)", ErrInvalidConfig)
	default:
		return openSQLite(dsn)
	}
}

// openAuditStore returns where audit records go for main: on SQLite a
// database of their own next to it (see openAuditSQLite), on PostgreSQL
// main itself, whose writers do not queue behind one another.
func openAuditStore(main *Store) (*Store, error) {
	if main.dialect != dialectSQLite {
		return main, nil
	}
	return openAuditSQLite(main.path)
}

// readTx begins a read-only transaction whose reads all see one snapshot:
// SQLite's deferred read transaction (WAL) does so at any level; PostgreSQL
// needs REPEATABLE READ (READ COMMITTED takes a snapshot per statement).
func (s *Store) readTx(ctx context.Context) (*sql.Tx, error) {
	opts := &sql.TxOptions{ReadOnly: true}
	if s.dialect == dialectPostgres {
		opts.Isolation = sql.LevelRepeatableRead
	}
	return s.db.BeginTx(ctx, opts)
}

// Close closes the database.
func (s *Store) Close() error { return s.db.Close() }

// q rebinds "?" placeholders for the dialect.
func (s *Store) q(query string) string {
	if s.dialect != dialectPostgres {
		return query
	}
	var b strings.Builder
	n := 0
	for _, c := range query {
		if c == '?' {
			n++
			b.WriteString("$" + strconv.Itoa(n))
			continue
		}
		b.WriteRune(c)
	}
	return b.String()
}

type querier interface {
	QueryContext(ctx context.Context, query string, args ...any) (*sql.Rows, error)
	QueryRowContext(ctx context.Context, query string, args ...any) *sql.Row
	ExecContext(ctx context.Context, query string, args ...any) (sql.Result, error)
}

// ---- values ----

func ts(t time.Time) string { return t.UTC().Format(time.RFC3339Nano) }

func parseTS(s string) (time.Time, error) { return time.Parse(time.RFC3339Nano, s) }

func nullTS(t *time.Time) any {
	if t == nil {
		return nil
	}
	return ts(*t)
}

func parseNullTS(ns sql.NullString) (*time.Time, error) {
	if !ns.Valid {
		return nil, nil
	}
	t, err := parseTS(ns.String)
	if err != nil {
		return nil, err
	}
	return &t, nil
}

// jsonText encodes a column value without HTML escaping (see event.Marshal),
// so that stored sizes are the validated ones.
func jsonText(v any) (string, error) {
	b, err := event.Marshal(v)
	return string(b), err
}

func nullJSON(v any, isNil bool) (any, error) {
	if isNil {
		return nil, nil
	}
	return jsonText(v)
}

func boolInt(b bool) int {
	if b {
		return 1
	}
	return 0
}

// ---- users and projects ----

// Project is a tenant grouping keys and deployments.
type Project struct {
	ID        string    `json:"id"`
	Name      string    `json:"name"`
	CreatedAt time.Time `json:"created_at"`
}

func (s *Store) userCount(ctx context.Context) (int, error) {
	var n int
	err := s.db.QueryRowContext(ctx, s.q(`SELECT COUNT(*) FROM users`)).Scan(&n)
	return n, err
}

// createUser stores a user unless one of that name exists, and reports
// whether it did: replicas starting at once on one store may all try to
// create the first admin, and exactly one does.
func (s *Store) createUser(ctx context.Context, username, passwordHash string) (created bool, err error) {
	unlock := s.lockWrites()
	defer unlock()
	res, err := s.db.ExecContext(ctx, s.q(`INSERT INTO users (id, username, password_hash, created_at) VALUES (?, ?, ?, ?) ON CONFLICT (username) DO NOTHING`),
		newID("usr"), username, passwordHash, ts(time.Now()))
	if err != nil {
		return false, fmt.Errorf("creating user: %w", err)
	}
	n, err := res.RowsAffected()
	if err != nil {
		return false, fmt.Errorf("creating user: %w", err)
	}
	return n == 1, nil
}

// claimMetadata stores value under name unless the store holds a value
// there already, and returns the value the store holds (value itself, the
// first time). Replicas use it to agree on what must be the same for all.
func (s *Store) claimMetadata(ctx context.Context, name, value string) (string, error) {
	unlock := s.lockWrites()
	defer unlock()
	if _, err := s.db.ExecContext(ctx, s.q(`INSERT INTO metadata (name, value) VALUES (?, ?) ON CONFLICT (name) DO NOTHING`), name, value); err != nil {
		return "", fmt.Errorf("writing store metadata: %w", err)
	}
	var stored string
	if err := s.db.QueryRowContext(ctx, s.q(`SELECT value FROM metadata WHERE name = ?`), name).Scan(&stored); err != nil {
		return "", fmt.Errorf("reading store metadata: %w", err)
	}
	return stored, nil
}

func (s *Store) ensureProject(ctx context.Context, name string) error {
	unlock := s.lockWrites()
	defer unlock()
	_, err := s.db.ExecContext(ctx, s.q(`INSERT INTO projects (id, name, created_at) VALUES (?, ?, ?) ON CONFLICT (name) DO NOTHING`),
		newID("prj"), name, ts(time.Now()))
	return err
}

// createProject stores a new project and returns it with the revision of
// the store when it was created. A project is no event (edges know keys and
// deployments only), so it takes no revision of its own.
func (s *Store) createProject(ctx context.Context, name string) (*Project, uint64, error) {
	unlock := s.lockWrites()
	defer unlock()
	tx, err := s.db.BeginTx(ctx, nil)
	if err != nil {
		return nil, 0, err
	}
	defer tx.Rollback()
	// Ordered with every other writer (see lockedTx), so that the scope
	// check below holds against replicas creating projects at once.
	if _, err := tx.ExecContext(ctx, s.q(`UPDATE counters SET value = value WHERE name = 'revision'`)); err != nil {
		return nil, 0, err
	}
	if err := s.checkProjectScope(ctx, tx, name); err != nil {
		return nil, 0, err
	}
	var n int
	if err := tx.QueryRowContext(ctx, s.q(`SELECT COUNT(*) FROM projects WHERE name = ?`), name).Scan(&n); err != nil {
		return nil, 0, err
	}
	if n > 0 {
		return nil, 0, fmt.Errorf("%w: a project named %q exists", ErrConflict, name)
	}
	p := &Project{ID: newID("prj"), Name: name, CreatedAt: time.Now().UTC()}
	if _, err := tx.ExecContext(ctx, s.q(`INSERT INTO projects (id, name, created_at) VALUES (?, ?, ?)`), p.ID, p.Name, ts(p.CreatedAt)); err != nil {
		if isUniqueViolation(err) { // created meanwhile by another origin
			return nil, 0, fmt.Errorf("%w: a project named %q exists", ErrConflict, name)
		}
		return nil, 0, err
	}
	rev, err := s.revision(ctx, tx)
	if err != nil {
		return nil, 0, err
	}
	return p, rev, tx.Commit()
}

func (s *Store) listProjects(ctx context.Context) ([]Project, error) {
	rows, err := s.db.QueryContext(ctx, s.q(`SELECT id, name, created_at FROM projects ORDER BY name`))
	if err != nil {
		return nil, err
	}
	defer rows.Close()
	out := []Project{}
	for rows.Next() {
		var p Project
		var c string
		if err := rows.Scan(&p.ID, &p.Name, &c); err != nil {
			return nil, err
		}
		p.CreatedAt, _ = parseTS(c)
		out = append(out, p)
	}
	return out, rows.Err()
}

// project resolves a project by id or name.
func (s *Store) project(ctx context.Context, ref string) (*Project, error) {
	var p Project
	var c string
	err := s.db.QueryRowContext(ctx, s.q(`SELECT id, name, created_at FROM projects WHERE id = ? OR name = ? ORDER BY CASE WHEN id = ? THEN 0 ELSE 1 END LIMIT 1`),
		ref, ref, ref).Scan(&p.ID, &p.Name, &c)
	if errors.Is(err, sql.ErrNoRows) {
		return nil, fmt.Errorf("%w: no project %q", ErrNotFound, ref)
	}
	if err != nil {
		return nil, err
	}
	p.CreatedAt, _ = parseTS(c)
	return &p, nil
}

// ---- revisions and the outbox ----

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
	rec.Revision, rec.Time = rev, now
	payload, err := s.seal(rec)
	if err != nil {
		return 0, err
	}
	if len(payload) > MaxEventBytes {
		// Refused before commit: NATS would refuse it (or an edge choke on
		// it), and every later change of every project would queue behind.
		return 0, &DetailedError{Err: ErrTooLarge, Details: map[string]any{"event_bytes": len(payload), "max_event_bytes": MaxEventBytes},
			Message: fmt.Sprintf("the change's event would be %d bytes, over the limit of %d; make the deployment or key smaller", len(payload), MaxEventBytes)}
	}
	if _, err := tx.ExecContext(ctx, s.q(`INSERT INTO events (revision, subject, payload, created_at, published) VALUES (?, ?, ?, ?, 0)`),
		rev, event.Subject(rec.Kind, rev), payload, ts(now)); err != nil {
		return 0, fmt.Errorf("writing event: %w", err)
	}
	if err := tx.Commit(); err != nil {
		return 0, fmt.Errorf("committing: %w", err)
	}
	if s.onCommit != nil {
		s.onCommit(rev)
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

// ---- keys ----

// Key is a stored API key (never its secret).
type Key struct {
	ID          string
	ProjectID   string
	Name        string
	Description string
	Prefix      string
	Permissions []string
	Deployments []string
	ExpiresAt   *time.Time
	RateLimit   *event.RateLimit
	Disabled    bool
	CreatedAt   time.Time
	UpdatedAt   time.Time
	Revision    uint64
	Secrets     []event.Secret
}

func (k *Key) record(deleted bool) *event.Record {
	ek := &event.Key{
		ID: k.ID, Project: k.ProjectID, Secrets: k.Secrets, Permissions: k.Permissions,
		Deployments: k.Deployments, ExpiresAt: k.ExpiresAt, RateLimit: k.RateLimit,
		Disabled: k.Disabled, Deleted: deleted,
	}
	if ek.Secrets == nil {
		ek.Secrets = []event.Secret{}
	}
	if ek.Deployments == nil || deleted {
		ek.Deployments = []string{}
	}
	return &event.Record{Kind: event.KindKey, Key: ek}
}

const keyColumns = `id, project_id, name, description, prefix, permissions, expires_at, rate_limit, disabled, created_at, updated_at, revision`

func scanKey(sc interface{ Scan(...any) error }) (*Key, error) {
	var k Key
	var perms, created, updated string
	var expires, rl sql.NullString
	var disabled int
	if err := sc.Scan(&k.ID, &k.ProjectID, &k.Name, &k.Description, &k.Prefix, &perms, &expires, &rl, &disabled, &created, &updated, &k.Revision); err != nil {
		return nil, err
	}
	if err := json.Unmarshal([]byte(perms), &k.Permissions); err != nil {
		return nil, fmt.Errorf("decoding permissions: %w", err)
	}
	var err error
	if k.ExpiresAt, err = parseNullTS(expires); err != nil {
		return nil, err
	}
	if rl.Valid {
		k.RateLimit = new(event.RateLimit)
		if err := json.Unmarshal([]byte(rl.String), k.RateLimit); err != nil {
			return nil, fmt.Errorf("decoding rate limit: %w", err)
		}
	}
	k.Disabled = disabled != 0
	k.CreatedAt, _ = parseTS(created)
	k.UpdatedAt, _ = parseTS(updated)
	return &k, nil
}

// fillKey loads the key's secrets and linked deployments.
func (s *Store) fillKey(ctx context.Context, q querier, k *Key) error {
	rows, err := q.QueryContext(ctx, s.q(`SELECT hash, not_after FROM key_secrets WHERE key_id = ? ORDER BY not_after IS NOT NULL, not_after, hash`), k.ID)
	if err != nil {
		return err
	}
	k.Secrets = []event.Secret{}
	for rows.Next() {
		var h []byte
		var na sql.NullString
		if err := rows.Scan(&h, &na); err != nil {
			rows.Close()
			return err
		}
		var sec event.Secret
		copy(sec.Hash[:], h)
		if sec.NotAfter, err = parseNullTS(na); err != nil {
			rows.Close()
			return err
		}
		k.Secrets = append(k.Secrets, sec)
	}
	rows.Close()
	if err := rows.Err(); err != nil {
		return err
	}
	rows, err = q.QueryContext(ctx, s.q(`SELECT deployment_id FROM links WHERE key_id = ? ORDER BY deployment_id`), k.ID)
	if err != nil {
		return err
	}
	defer rows.Close()
	k.Deployments = []string{}
	for rows.Next() {
		var d string
		if err := rows.Scan(&d); err != nil {
			return err
		}
		k.Deployments = append(k.Deployments, d)
	}
	return rows.Err()
}

func (s *Store) loadKey(ctx context.Context, q querier, projectID, id string) (*Key, error) {
	k, err := scanKey(q.QueryRowContext(ctx, s.q(`SELECT `+keyColumns+` FROM keys WHERE id = ? AND project_id = ?`), id, projectID))
	if errors.Is(err, sql.ErrNoRows) {
		return nil, fmt.Errorf("%w: no key %q in this project", ErrNotFound, id)
	}
	if err != nil {
		return nil, err
	}
	return k, s.fillKey(ctx, q, k)
}

func (s *Store) getKey(ctx context.Context, projectID, id string) (*Key, error) {
	tx, err := s.readTx(ctx)
	if err != nil {
		return nil, err
	}
	defer tx.Rollback()
	return s.loadKey(ctx, tx, projectID, id)
}

// listKeys returns up to limit keys with id > after, and whether more exist.
func (s *Store) listKeys(ctx context.Context, projectID, after string, limit int) ([]*Key, bool, error) {
	tx, err := s.readTx(ctx)
	if err != nil {
		return nil, false, err
	}
	defer tx.Rollback()
	rows, err := tx.QueryContext(ctx, s.q(`SELECT `+keyColumns+` FROM keys WHERE project_id = ? AND id > ? ORDER BY id LIMIT ?`), projectID, after, limit+1)
	if err != nil {
		return nil, false, err
	}
	var keys []*Key
	for rows.Next() {
		k, err := scanKey(rows)
		if err != nil {
			rows.Close()
			return nil, false, err
		}
		keys = append(keys, k)
	}
	rows.Close()
	if err := rows.Err(); err != nil {
		return nil, false, err
	}
	more := len(keys) > limit
	if more {
		keys = keys[:limit]
	}
	for _, k := range keys {
		if err := s.fillKey(ctx, tx, k); err != nil {
			return nil, false, err
		}
	}
	return keys, more, nil
}

// resolveDeployments maps deployment ids or names within the project to ids.
func (s *Store) resolveDeployments(ctx context.Context, q querier, projectID string, refs []string) ([]string, error) {
	seen := map[string]bool{}
	out := []string{}
	for _, ref := range refs {
		id, err := s.deploymentID(ctx, q, projectID, ref)
		if errors.Is(err, ErrNotFound) {
			return nil, &FieldError{Field: "deployments", Message: fmt.Sprintf("no deployment %q in this project", ref)}
		}
		if err != nil {
			return nil, err
		}
		if !seen[id] {
			seen[id] = true
			out = append(out, id)
		}
	}
	sort.Strings(out)
	return out, nil
}

func (s *Store) writeKey(ctx context.Context, tx *sql.Tx, k *Key, insert bool) error {
	perms, err := jsonText(k.Permissions)
	if err != nil {
		return err
	}
	rl, err := nullJSON(k.RateLimit, k.RateLimit == nil)
	if err != nil {
		return err
	}
	if insert {
		_, err = tx.ExecContext(ctx, s.q(`INSERT INTO keys (`+keyColumns+`) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)`),
			k.ID, k.ProjectID, k.Name, k.Description, k.Prefix, perms, nullTS(k.ExpiresAt), rl, boolInt(k.Disabled), ts(k.CreatedAt), ts(k.UpdatedAt), k.Revision)
	} else {
		_, err = tx.ExecContext(ctx, s.q(`UPDATE keys SET name = ?, description = ?, prefix = ?, permissions = ?, expires_at = ?, rate_limit = ?, disabled = ?, updated_at = ?, revision = ? WHERE id = ?`),
			k.Name, k.Description, k.Prefix, perms, nullTS(k.ExpiresAt), rl, boolInt(k.Disabled), ts(k.UpdatedAt), k.Revision, k.ID)
	}
	if err != nil {
		return fmt.Errorf("writing key: %w", err)
	}
	return nil
}

func (s *Store) setLinks(ctx context.Context, tx *sql.Tx, keyID string, deps []string) error {
	if _, err := tx.ExecContext(ctx, s.q(`DELETE FROM links WHERE key_id = ?`), keyID); err != nil {
		return err
	}
	for _, d := range deps {
		if _, err := tx.ExecContext(ctx, s.q(`INSERT INTO links (key_id, deployment_id) VALUES (?, ?)`), keyID, d); err != nil {
			return fmt.Errorf("linking: %w", err)
		}
	}
	return nil
}

func (s *Store) addSecret(ctx context.Context, tx *sql.Tx, keyID string, h apikey.Hash) error {
	if _, err := tx.ExecContext(ctx, s.q(`INSERT INTO key_secrets (hash, key_id, not_after) VALUES (?, ?, NULL)`), h[:], keyID); err != nil {
		return fmt.Errorf("storing key hash: %w", err)
	}
	return nil
}

// createKey stores k (ID, ProjectID, fields) with secret hash h, linked to
// the deployments named by depRefs.
func (s *Store) createKey(ctx context.Context, k *Key, h apikey.Hash, depRefs []string) (*Key, error) {
	_, err := s.mutate(ctx, func(tx *sql.Tx, rev uint64, now time.Time) (*event.Record, error) {
		deps, err := s.resolveDeployments(ctx, tx, k.ProjectID, depRefs)
		if err != nil {
			return nil, err
		}
		if err := s.checkKeyCreate(ctx, tx, k.ProjectID); err != nil {
			return nil, err
		}
		k.CreatedAt, k.UpdatedAt, k.Revision = now, now, rev
		if err := s.writeKey(ctx, tx, k, true); err != nil {
			return nil, err
		}
		if err := s.addSecret(ctx, tx, k.ID, h); err != nil {
			return nil, err
		}
		if err := s.setLinks(ctx, tx, k.ID, deps); err != nil {
			return nil, err
		}
		if err := s.fillKey(ctx, tx, k); err != nil {
			return nil, err
		}
		if err := s.checkKeyLinks(ctx, tx, k); err != nil {
			return nil, err
		}
		return k.record(false), nil
	})
	if err != nil {
		return nil, err
	}
	return k, nil
}

// updateKey applies patch to the key and, if depRefs is not nil, replaces
// its links.
func (s *Store) updateKey(ctx context.Context, projectID, id string, patch func(*Key) error, depRefs *[]string) (*Key, error) {
	var out *Key
	_, err := s.mutate(ctx, func(tx *sql.Tx, rev uint64, now time.Time) (*event.Record, error) {
		k, err := s.loadKey(ctx, tx, projectID, id)
		if err != nil {
			return nil, err
		}
		if patch != nil {
			if err := patch(k); err != nil {
				return nil, err
			}
		}
		if depRefs != nil {
			deps, err := s.resolveDeployments(ctx, tx, projectID, *depRefs)
			if err != nil {
				return nil, err
			}
			if err := s.setLinks(ctx, tx, k.ID, deps); err != nil {
				return nil, err
			}
		}
		k.UpdatedAt, k.Revision = now, rev
		if err := s.writeKey(ctx, tx, k, false); err != nil {
			return nil, err
		}
		if err := s.fillKey(ctx, tx, k); err != nil {
			return nil, err
		}
		if depRefs != nil {
			if err := s.checkKeyLinks(ctx, tx, k); err != nil {
				return nil, err
			}
		}
		out = k
		return k.record(false), nil
	})
	return out, err
}

// keyGuard is asked, inside a mutation's transaction, whether the caller
// may change the key as it is stored; its error aborts the mutation (no
// revision is taken). nil allows everything.
type keyGuard func(*Key) error

func (g keyGuard) check(k *Key) error {
	if g == nil {
		return nil
	}
	return g(k)
}

// rotateKey adds secret h (with display prefix) to the key; the secrets it
// had stay valid until now+grace.
func (s *Store) rotateKey(ctx context.Context, projectID, id string, h apikey.Hash, prefix string, grace time.Duration, guard keyGuard) (*Key, error) {
	var out *Key
	_, err := s.mutate(ctx, func(tx *sql.Tx, rev uint64, now time.Time) (*event.Record, error) {
		k, err := s.loadKey(ctx, tx, projectID, id)
		if err != nil {
			return nil, err
		}
		if err := guard.check(k); err != nil {
			return nil, err
		}
		// Secrets already past their end are dropped; the current ones end at
		// now+grace (kept in the record so edges revoke them by hash).
		if _, err := tx.ExecContext(ctx, s.q(`DELETE FROM key_secrets WHERE key_id = ? AND not_after IS NOT NULL AND not_after < ?`), k.ID, ts(now)); err != nil {
			return nil, err
		}
		if _, err := tx.ExecContext(ctx, s.q(`UPDATE key_secrets SET not_after = ? WHERE key_id = ? AND (not_after IS NULL OR not_after > ?)`),
			ts(now.Add(grace)), k.ID, ts(now.Add(grace))); err != nil {
			return nil, err
		}
		var live int
		if err := tx.QueryRowContext(ctx, s.q(`SELECT COUNT(*) FROM key_secrets WHERE key_id = ? AND (not_after IS NULL OR not_after > ?)`), k.ID, ts(now)).Scan(&live); err != nil {
			return nil, err
		}
		if live >= maxLiveKeySecrets {
			return nil, &DetailedError{Err: ErrConflict, Details: map[string]any{"live_secrets": live, "max_live_secrets": maxLiveKeySecrets},
				Message: fmt.Sprintf("this key has %d secrets still within their grace period, the most it may hold with a new one is %d: rotate with grace_seconds 0, or wait", live, maxLiveKeySecrets)}
		}
		if err := s.addSecret(ctx, tx, k.ID, h); err != nil {
			return nil, err
		}
		k.Prefix, k.UpdatedAt, k.Revision = prefix, now, rev
		if err := s.writeKey(ctx, tx, k, false); err != nil {
			return nil, err
		}
		if err := s.fillKey(ctx, tx, k); err != nil {
			return nil, err
		}
		out = k
		return k.record(false), nil
	})
	return out, err
}

func (s *Store) deleteKey(ctx context.Context, projectID, id string, guard keyGuard) (uint64, error) {
	return s.mutate(ctx, func(tx *sql.Tx, rev uint64, now time.Time) (*event.Record, error) {
		k, err := s.loadKey(ctx, tx, projectID, id)
		if err != nil {
			return nil, err
		}
		if err := guard.check(k); err != nil {
			return nil, err
		}
		for _, q := range []string{`DELETE FROM links WHERE key_id = ?`, `DELETE FROM key_secrets WHERE key_id = ?`, `DELETE FROM keys WHERE id = ?`} {
			if _, err := tx.ExecContext(ctx, s.q(q), k.ID); err != nil {
				return nil, fmt.Errorf("deleting key: %w", err)
			}
		}
		if err := s.addCount(ctx, tx, k.ProjectID, "key_count", -1); err != nil {
			return nil, err
		}
		k.UpdatedAt, k.Revision = now, rev
		return k.record(true), nil
	})
}

// keyByHash returns the key owning hash h and that secret's end, in one read
// transaction together with the current revision.
func (s *Store) keyByHash(ctx context.Context, h apikey.Hash) (rev uint64, k *Key, notAfter *time.Time, err error) {
	tx, err := s.readTx(ctx)
	if err != nil {
		return 0, nil, nil, err
	}
	defer tx.Rollback()
	if rev, err = s.revision(ctx, tx); err != nil {
		return 0, nil, nil, err
	}
	var keyID string
	var na sql.NullString
	err = tx.QueryRowContext(ctx, s.q(`SELECT key_id, not_after FROM key_secrets WHERE hash = ?`), h[:]).Scan(&keyID, &na)
	if errors.Is(err, sql.ErrNoRows) {
		return rev, nil, nil, nil
	}
	if err != nil {
		return 0, nil, nil, err
	}
	if notAfter, err = parseNullTS(na); err != nil {
		return 0, nil, nil, err
	}
	k, err = scanKey(tx.QueryRowContext(ctx, s.q(`SELECT `+keyColumns+` FROM keys WHERE id = ?`), keyID))
	if err != nil {
		return 0, nil, nil, err
	}
	if err := s.fillKey(ctx, tx, k); err != nil {
		return 0, nil, nil, err
	}
	return rev, k, notAfter, nil
}

// ---- deployments ----

const deploymentColumns = `id, project_id, name, hosts, path_prefix, upstreams, auth_enabled, invalid_key_status, upstream_auth, rate_limit, max_body_bytes, max_prompt_chars, revision`

// deploymentSelect reads a deployment's columns and its project's name,
// which the records edges get carry (edges scope secrets by it).
const deploymentSelect = deploymentColumns + `, (SELECT name FROM projects WHERE projects.id = deployments.project_id)`

func scanDeployment(sc interface{ Scan(...any) error }) (*event.Deployment, error) {
	var d event.Deployment
	var hosts, ups string
	var ua, rl sql.NullString
	var auth int
	var projectName sql.NullString
	if err := sc.Scan(&d.ID, &d.Project, &d.Name, &hosts, &d.PathPrefix, &ups, &auth, &d.InvalidKeyStatus, &ua, &rl, &d.MaxBodyBytes, &d.MaxPromptChars, &d.Revision, &projectName); err != nil {
		return nil, err
	}
	if err := json.Unmarshal([]byte(hosts), &d.Hosts); err != nil {
		return nil, fmt.Errorf("decoding hosts: %w", err)
	}
	if err := json.Unmarshal([]byte(ups), &d.Upstreams); err != nil {
		return nil, fmt.Errorf("decoding upstreams: %w", err)
	}
	d.AuthEnabled = auth != 0
	d.ProjectName = projectName.String
	if ua.Valid {
		d.UpstreamAuth = new(event.UpstreamAuth)
		if err := json.Unmarshal([]byte(ua.String), d.UpstreamAuth); err != nil {
			return nil, fmt.Errorf("decoding upstream_auth: %w", err)
		}
	}
	if rl.Valid {
		d.RateLimit = new(event.RateLimit)
		if err := json.Unmarshal([]byte(rl.String), d.RateLimit); err != nil {
			return nil, fmt.Errorf("decoding rate_limit: %w", err)
		}
	}
	return &d, nil
}

func (s *Store) deploymentID(ctx context.Context, q querier, projectID, ref string) (string, error) {
	var id string
	err := q.QueryRowContext(ctx, s.q(`SELECT id FROM deployments WHERE project_id = ? AND (id = ? OR name = ?) ORDER BY CASE WHEN id = ? THEN 0 ELSE 1 END LIMIT 1`),
		projectID, ref, ref, ref).Scan(&id)
	if errors.Is(err, sql.ErrNoRows) {
		return "", fmt.Errorf("%w: no deployment %q in this project", ErrNotFound, ref)
	}
	return id, err
}

func (s *Store) loadDeployment(ctx context.Context, q querier, projectID, ref string) (*event.Deployment, error) {
	id, err := s.deploymentID(ctx, q, projectID, ref)
	if err != nil {
		return nil, err
	}
	return scanDeployment(q.QueryRowContext(ctx, s.q(`SELECT `+deploymentSelect+` FROM deployments WHERE id = ?`), id))
}

func (s *Store) getDeployment(ctx context.Context, projectID, ref string) (*event.Deployment, error) {
	return s.loadDeployment(ctx, s.db, projectID, ref)
}

func (s *Store) listDeployments(ctx context.Context, q querier, projectID string) ([]event.Deployment, error) {
	query, args := `SELECT `+deploymentSelect+` FROM deployments ORDER BY id`, []any{}
	if projectID != "" {
		query, args = `SELECT `+deploymentSelect+` FROM deployments WHERE project_id = ? ORDER BY id`, []any{projectID}
	}
	rows, err := q.QueryContext(ctx, s.q(query), args...)
	if err != nil {
		return nil, err
	}
	defer rows.Close()
	out := []event.Deployment{}
	for rows.Next() {
		d, err := scanDeployment(rows)
		if err != nil {
			return nil, err
		}
		out = append(out, *d)
	}
	return out, rows.Err()
}

func (s *Store) writeDeployment(ctx context.Context, tx *sql.Tx, d *event.Deployment, now time.Time, insert bool) error {
	var n int
	if err := tx.QueryRowContext(ctx, s.q(`SELECT COUNT(*) FROM deployments WHERE project_id = ? AND name = ? AND id <> ?`), d.Project, d.Name, d.ID).Scan(&n); err != nil {
		return err
	}
	if n > 0 {
		return fmt.Errorf("%w: a deployment named %q exists in this project", ErrConflict, d.Name)
	}
	hosts, err := jsonText(d.Hosts)
	if err != nil {
		return err
	}
	ups, err := jsonText(d.Upstreams)
	if err != nil {
		return err
	}
	ua, err := nullJSON(d.UpstreamAuth, d.UpstreamAuth == nil)
	if err != nil {
		return err
	}
	rl, err := nullJSON(d.RateLimit, d.RateLimit == nil)
	if err != nil {
		return err
	}
	if insert {
		_, err = tx.ExecContext(ctx, s.q(`INSERT INTO deployments (`+deploymentColumns+`, created_at, updated_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)`),
			d.ID, d.Project, d.Name, hosts, d.PathPrefix, ups, boolInt(d.AuthEnabled), d.InvalidKeyStatus, ua, rl, d.MaxBodyBytes, d.MaxPromptChars, d.Revision, ts(now), ts(now))
	} else {
		_, err = tx.ExecContext(ctx, s.q(`UPDATE deployments SET name = ?, hosts = ?, path_prefix = ?, upstreams = ?, auth_enabled = ?, invalid_key_status = ?, upstream_auth = ?, rate_limit = ?, max_body_bytes = ?, max_prompt_chars = ?, revision = ?, updated_at = ? WHERE id = ?`),
			d.Name, hosts, d.PathPrefix, ups, boolInt(d.AuthEnabled), d.InvalidKeyStatus, ua, rl, d.MaxBodyBytes, d.MaxPromptChars, d.Revision, ts(now), d.ID)
	}
	if isUniqueViolation(err) {
		return fmt.Errorf("%w: a deployment named %q exists in this project", ErrConflict, d.Name)
	}
	if err != nil {
		return fmt.Errorf("writing deployment: %w", err)
	}
	return nil
}

func (s *Store) createDeployment(ctx context.Context, d *event.Deployment) (*event.Deployment, error) {
	_, err := s.mutate(ctx, func(tx *sql.Tx, rev uint64, now time.Time) (*event.Record, error) {
		d.Revision = rev
		if err := s.writeDeployment(ctx, tx, d, now, true); err != nil {
			return nil, err
		}
		if err := s.beforeDeploymentWrite(ctx, tx, d, true); err != nil {
			return nil, err
		}
		c := *d
		return &event.Record{Kind: event.KindDeployment, Deployment: &c}, nil
	})
	if err != nil {
		return nil, err
	}
	return d, nil
}

func (s *Store) updateDeployment(ctx context.Context, projectID, ref string, patch func(*event.Deployment) error) (*event.Deployment, error) {
	var out *event.Deployment
	_, err := s.mutate(ctx, func(tx *sql.Tx, rev uint64, now time.Time) (*event.Record, error) {
		d, err := s.loadDeployment(ctx, tx, projectID, ref)
		if err != nil {
			return nil, err
		}
		if err := patch(d); err != nil {
			return nil, err
		}
		d.Revision = rev
		if err := s.writeDeployment(ctx, tx, d, now, false); err != nil {
			return nil, err
		}
		if err := s.beforeDeploymentWrite(ctx, tx, d, false); err != nil {
			return nil, err
		}
		out = d
		c := *d
		return &event.Record{Kind: event.KindDeployment, Deployment: &c}, nil
	})
	return out, err
}

// deleteDeployment removes the deployment and its links; the one event is
// the deployment's deletion (edges drop links to a deleted deployment).
func (s *Store) deleteDeployment(ctx context.Context, projectID, ref string) (uint64, error) {
	return s.mutate(ctx, func(tx *sql.Tx, rev uint64, now time.Time) (*event.Record, error) {
		d, err := s.loadDeployment(ctx, tx, projectID, ref)
		if err != nil {
			return nil, err
		}
		// Keys that were linked get this revision: their state changed.
		if _, err := tx.ExecContext(ctx, s.q(`UPDATE keys SET revision = ?, updated_at = ? WHERE id IN (SELECT key_id FROM links WHERE deployment_id = ?)`), rev, ts(now), d.ID); err != nil {
			return nil, err
		}
		if err := s.afterDeploymentDelete(ctx, tx, d); err != nil {
			return nil, err
		}
		for _, q := range []string{`DELETE FROM links WHERE deployment_id = ?`, `DELETE FROM deployments WHERE id = ?`} {
			if _, err := tx.ExecContext(ctx, s.q(q), d.ID); err != nil {
				return nil, fmt.Errorf("deleting deployment: %w", err)
			}
		}
		d.Revision, d.Deleted = rev, true
		// A deletion carries the deployment's identity only: edges need no
		// more to drop it, and so a deployment stored before events were
		// bounded (MaxEventBytes) can always be deleted.
		gone := &event.Deployment{ID: d.ID, Project: d.Project, Name: d.Name, Hosts: []string{}, PathPrefix: d.PathPrefix,
			Upstreams: map[string][]string{}, Revision: rev, Deleted: true}
		return &event.Record{Kind: event.KindDeployment, Deployment: gone}, nil
	})
}

// link adds (or with on=false removes) the link between a key and a
// deployment, publishing the key's new state.
func (s *Store) link(ctx context.Context, projectID, depRef, keyID string, on bool, guard keyGuard) (*Key, error) {
	var out *Key
	_, err := s.mutate(ctx, func(tx *sql.Tx, rev uint64, now time.Time) (*event.Record, error) {
		depID, err := s.deploymentID(ctx, tx, projectID, depRef)
		if err != nil {
			return nil, err
		}
		k, err := s.loadKey(ctx, tx, projectID, keyID)
		if err != nil {
			return nil, err
		}
		if err := guard.check(k); err != nil {
			return nil, err
		}
		if on {
			_, err = tx.ExecContext(ctx, s.q(`INSERT INTO links (key_id, deployment_id) VALUES (?, ?) ON CONFLICT (key_id, deployment_id) DO NOTHING`), k.ID, depID)
		} else {
			_, err = tx.ExecContext(ctx, s.q(`DELETE FROM links WHERE key_id = ? AND deployment_id = ?`), k.ID, depID)
		}
		if err != nil {
			return nil, fmt.Errorf("updating link: %w", err)
		}
		k.UpdatedAt, k.Revision = now, rev
		if err := s.writeKey(ctx, tx, k, false); err != nil {
			return nil, err
		}
		if err := s.fillKey(ctx, tx, k); err != nil {
			return nil, err
		}
		if on {
			if err := s.checkKeyLinks(ctx, tx, k); err != nil {
				return nil, err
			}
		}
		out = k
		return k.record(false), nil
	})
	return out, err
}

// deploymentKeys lists the keys linked to a deployment.
func (s *Store) deploymentKeys(ctx context.Context, projectID, depRef string) ([]*Key, error) {
	tx, err := s.readTx(ctx)
	if err != nil {
		return nil, err
	}
	defer tx.Rollback()
	depID, err := s.deploymentID(ctx, tx, projectID, depRef)
	if err != nil {
		return nil, err
	}
	rows, err := tx.QueryContext(ctx, s.q(`SELECT `+keyColumns+` FROM keys WHERE id IN (SELECT key_id FROM links WHERE deployment_id = ?) ORDER BY id`), depID)
	if err != nil {
		return nil, err
	}
	keys := []*Key{}
	for rows.Next() {
		k, err := scanKey(rows)
		if err != nil {
			rows.Close()
			return nil, err
		}
		keys = append(keys, k)
	}
	rows.Close()
	if err := rows.Err(); err != nil {
		return nil, err
	}
	for _, k := range keys {
		if err := s.fillKey(ctx, tx, k); err != nil {
			return nil, err
		}
	}
	return keys, nil
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
