package origin

// The Store type and what its queries share live in this file; the queries
// are by entity in store_keys.go, store_deployments.go, store_projects.go,
// store_users.go, store_edges.go and outbox.go (revisions and events), shared
// by both dialects; the DDL and the opening of each database are in
// store_sqlite.go and store_postgres.go. Statements are written in the
// common subset of SQLite and PostgreSQL: "?" placeholders (rebound to $n by
// Store.q for PostgreSQL), TEXT timestamps in RFC 3339 UTC, JSON in TEXT
// columns, INTEGER booleans, and UPDATE ... RETURNING for the revision
// counter (which also serialises writers on PostgreSQL through its row lock).
// Reads that must agree with a revision go through readTx (one snapshot).

import (
	"context"
	"database/sql"
	"encoding/json"
	"fmt"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"time"

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

// modelColumns encodes a model allow-list and a concurrency cap as their
// columns: NULL for none (any model; no cap).
func modelColumns(models []string, maxConc int) (any, any, error) {
	var m, c any
	if len(models) > 0 {
		t, err := jsonText(models)
		if err != nil {
			return nil, nil, err
		}
		m = t
	}
	if maxConc > 0 {
		c = int64(maxConc)
	}
	return m, c, nil
}

// scanModels decodes the columns modelColumns wrote.
func scanModels(models sql.NullString, maxConc sql.NullInt64, list *[]string, conc *int) error {
	if models.Valid {
		if err := json.Unmarshal([]byte(models.String), list); err != nil {
			return fmt.Errorf("decoding models: %w", err)
		}
	}
	if maxConc.Valid {
		*conc = int(maxConc.Int64)
	}
	return nil
}

// tokensColumn encodes token bounds as their column: JSON, or NULL for
// none.
func tokensColumn(t *event.TokenLimits) (any, error) {
	if t.Empty() {
		return nil, nil
	}
	return jsonText(t)
}

// scanTokens decodes the column tokensColumn wrote (nil: no bounds).
func scanTokens(col sql.NullString) (*event.TokenLimits, error) {
	if !col.Valid {
		return nil, nil
	}
	var t event.TokenLimits
	if err := json.Unmarshal([]byte(col.String), &t); err != nil {
		return nil, fmt.Errorf("decoding token limits: %w", err)
	}
	if t.Empty() {
		return nil, nil
	}
	return &t, nil
}

// scanPricing decodes a deployment's pricing column (nullJSON: NULL for
// none).
func scanPricing(col sql.NullString) (*event.Pricing, error) {
	if !col.Valid {
		return nil, nil
	}
	var p event.Pricing
	if err := json.Unmarshal([]byte(col.String), &p); err != nil {
		return nil, fmt.Errorf("decoding pricing: %w", err)
	}
	return &p, nil
}

func boolInt(b bool) int {
	if b {
		return 1
	}
	return 0
}

// ---- metadata ----

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
