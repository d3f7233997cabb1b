package origin

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"strings"
	"time"

	"github.com/jackc/pgx/v5/pgconn"
	_ "github.com/jackc/pgx/v5/stdlib" // driver "pgx"
)

// postgresSchema mirrors sqliteSchema column for column. Text columns use
// the "C" collation so that ids, names and RFC 3339 timestamps compare and
// sort bytewise, as in SQLite, whatever the database's default collation
// (cursor pagination and the not_after comparisons rely on it).
var postgresSchema = []string{
	`CREATE TABLE IF NOT EXISTS counters (
	name  TEXT COLLATE "C" PRIMARY KEY,
	value BIGINT NOT NULL
)`,
	`CREATE TABLE IF NOT EXISTS users (
	id            TEXT COLLATE "C" PRIMARY KEY,
	username      TEXT COLLATE "C" NOT NULL UNIQUE,
	password_hash TEXT NOT NULL,
	created_at    TEXT COLLATE "C" NOT NULL
)`,
	`CREATE TABLE IF NOT EXISTS projects (
	id         TEXT COLLATE "C" PRIMARY KEY,
	name       TEXT COLLATE "C" NOT NULL UNIQUE,
	created_at TEXT COLLATE "C" NOT NULL
)`,
	`CREATE TABLE IF NOT EXISTS keys (
	id          TEXT COLLATE "C" PRIMARY KEY,
	project_id  TEXT COLLATE "C" NOT NULL REFERENCES projects(id),
	name        TEXT NOT NULL,
	description TEXT NOT NULL,
	prefix      TEXT NOT NULL,
	permissions TEXT NOT NULL,
	expires_at  TEXT COLLATE "C",
	rate_limit  TEXT,
	disabled    INTEGER NOT NULL,
	created_at  TEXT COLLATE "C" NOT NULL,
	updated_at  TEXT COLLATE "C" NOT NULL,
	revision    BIGINT NOT NULL
)`,
	`CREATE INDEX IF NOT EXISTS keys_project ON keys(project_id, id)`,
	`CREATE TABLE IF NOT EXISTS key_secrets (
	hash      BYTEA PRIMARY KEY,
	key_id    TEXT COLLATE "C" NOT NULL REFERENCES keys(id) ON DELETE CASCADE,
	not_after TEXT COLLATE "C"
)`,
	`CREATE INDEX IF NOT EXISTS key_secrets_key ON key_secrets(key_id)`,
	`CREATE TABLE IF NOT EXISTS deployments (
	id                 TEXT COLLATE "C" PRIMARY KEY,
	project_id         TEXT COLLATE "C" NOT NULL REFERENCES projects(id),
	name               TEXT COLLATE "C" NOT NULL,
	hosts              TEXT NOT NULL,
	path_prefix        TEXT NOT NULL,
	upstreams          TEXT NOT NULL,
	auth_enabled       INTEGER NOT NULL,
	invalid_key_status INTEGER NOT NULL,
	upstream_auth      TEXT,
	rate_limit         TEXT,
	max_body_bytes     BIGINT NOT NULL,
	max_prompt_chars   BIGINT NOT NULL,
	created_at         TEXT COLLATE "C" NOT NULL,
	updated_at         TEXT COLLATE "C" NOT NULL,
	revision           BIGINT NOT NULL,
	UNIQUE (project_id, name)
)`,
	`CREATE TABLE IF NOT EXISTS links (
	key_id        TEXT COLLATE "C" NOT NULL REFERENCES keys(id) ON DELETE CASCADE,
	deployment_id TEXT COLLATE "C" NOT NULL REFERENCES deployments(id) ON DELETE CASCADE,
	PRIMARY KEY (key_id, deployment_id)
)`,
	`CREATE INDEX IF NOT EXISTS links_deployment ON links(deployment_id)`,
	`CREATE TABLE IF NOT EXISTS events (
	revision   BIGINT PRIMARY KEY,
	subject    TEXT NOT NULL,
	payload    BYTEA NOT NULL,
	created_at TEXT COLLATE "C" NOT NULL,
	published  INTEGER NOT NULL
)`,
	`CREATE INDEX IF NOT EXISTS events_unpublished ON events(published, revision)`,
	`INSERT INTO counters (name, value) VALUES ('revision', 0) ON CONFLICT (name) DO NOTHING`,
	`CREATE TABLE IF NOT EXISTS metadata (
	name  TEXT COLLATE "C" PRIMARY KEY,
	value TEXT NOT NULL
)`,
}

// schemaLockID is the advisory lock that serialises schema creation when
// several origins start on one database at once (CREATE TABLE IF NOT EXISTS
// is not safe against a concurrent twin).
const schemaLockID = 0x6b65796d657368 // "keymesh"

// openPostgres opens the PostgreSQL store at dsn (a postgres:// URL, see
// pgx's ParseConfig) and creates the schema if missing.
//
// Several origins may share the database: every mutation's first statement
// is the UPDATE of the revision counter row, whose row lock is held until
// commit, so writers from all origins are serialised there and revisions are
// gap-free and committed in order. Reads that must agree with a revision run
// REPEATABLE READ read-only (readTx).
func openPostgres(dsn string) (*Store, error) {
	db, err := sql.Open("pgx", dsn)
	if err != nil {
		// pgx errors may quote the DSN; do not echo it.
		return nil, fmt.Errorf("%w: cannot parse the postgres store URL", ErrInvalidConfig)
	}
	db.SetMaxOpenConns(16)
	db.SetMaxIdleConns(16)
	db.SetConnMaxIdleTime(5 * time.Minute)
	s := &Store{db: db, dialect: dialectPostgres}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	if err := s.createPostgresSchema(ctx); err != nil {
		db.Close()
		return nil, fmt.Errorf("opening postgres store: %w", redactPGError(err))
	}
	return s, nil
}

func (s *Store) createPostgresSchema(ctx context.Context) error {
	if err := s.execSchema(ctx, postgresSchema); err != nil {
		return err
	}
	return s.migrate(ctx)
}

// redactPGError keeps a server error's message and code but drops
// connection errors' text, which can hold the DSN's user and host.
func redactPGError(err error) error {
	var pgErr *pgconn.PgError
	if errors.As(err, &pgErr) {
		return err
	}
	var connErr *pgconn.ConnectError
	if errors.As(err, &connErr) {
		msg := connErr.Unwrap().Error()
		if i := strings.LastIndex(msg, ": "); i >= 0 {
			msg = msg[i+2:]
		}
		return errors.New("cannot connect to postgres: " + msg)
	}
	return err
}

// isUniqueViolation reports a PostgreSQL unique_violation or a SQLite
// UNIQUE constraint failure.
func isUniqueViolation(err error) bool {
	var pgErr *pgconn.PgError
	if errors.As(err, &pgErr) {
		return pgErr.Code == "23505"
	}
	return err != nil && strings.Contains(err.Error(), "UNIQUE constraint failed")
}
