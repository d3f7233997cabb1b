package origin

import (
	"context"
	"database/sql"
	"fmt"
	"net/url"
	"os"
	"path/filepath"
	"strings"

	_ "modernc.org/sqlite" // driver "sqlite"
)

const sqliteSchema = `
CREATE TABLE IF NOT EXISTS counters (
	name  TEXT PRIMARY KEY,
	value INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS users (
	id            TEXT PRIMARY KEY,
	username      TEXT NOT NULL UNIQUE,
	password_hash TEXT NOT NULL,
	created_at    TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS projects (
	id         TEXT PRIMARY KEY,
	name       TEXT NOT NULL UNIQUE,
	created_at TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS keys (
	id          TEXT PRIMARY KEY,
	project_id  TEXT NOT NULL REFERENCES projects(id),
	name        TEXT NOT NULL,
	description TEXT NOT NULL,
	prefix      TEXT NOT NULL,
	permissions TEXT NOT NULL,
	expires_at  TEXT,
	rate_limit  TEXT,
	disabled    INTEGER NOT NULL,
	created_at  TEXT NOT NULL,
	updated_at  TEXT NOT NULL,
	revision    INTEGER NOT NULL
);
CREATE INDEX IF NOT EXISTS keys_project ON keys(project_id, id);
CREATE TABLE IF NOT EXISTS key_secrets (
	hash      BLOB PRIMARY KEY,
	key_id    TEXT NOT NULL REFERENCES keys(id) ON DELETE CASCADE,
	not_after TEXT
);
CREATE INDEX IF NOT EXISTS key_secrets_key ON key_secrets(key_id);
CREATE TABLE IF NOT EXISTS deployments (
	id                 TEXT PRIMARY KEY,
	project_id         TEXT NOT NULL REFERENCES projects(id),
	name               TEXT NOT NULL,
	hosts              TEXT NOT NULL,
	path_prefix        TEXT NOT NULL,
	upstreams          TEXT NOT NULL,
	auth_enabled       INTEGER NOT NULL,
	invalid_key_status INTEGER NOT NULL,
	upstream_auth      TEXT,
	rate_limit         TEXT,
	max_body_bytes     INTEGER NOT NULL,
	max_prompt_chars   INTEGER NOT NULL,
	created_at         TEXT NOT NULL,
	updated_at         TEXT NOT NULL,
	revision           INTEGER NOT NULL,
	UNIQUE (project_id, name)
);
CREATE TABLE IF NOT EXISTS links (
	key_id        TEXT NOT NULL REFERENCES keys(id) ON DELETE CASCADE,
	deployment_id TEXT NOT NULL REFERENCES deployments(id) ON DELETE CASCADE,
	PRIMARY KEY (key_id, deployment_id)
);
CREATE INDEX IF NOT EXISTS links_deployment ON links(deployment_id);
CREATE TABLE IF NOT EXISTS events (
	revision   INTEGER PRIMARY KEY,
	subject    TEXT NOT NULL,
	payload    BLOB NOT NULL,
	created_at TEXT NOT NULL,
	published  INTEGER NOT NULL
);
CREATE INDEX IF NOT EXISTS events_unpublished ON events(published, revision);
INSERT INTO counters (name, value) VALUES ('revision', 0) ON CONFLICT (name) DO NOTHING;
CREATE TABLE IF NOT EXISTS metadata (
	name  TEXT PRIMARY KEY,
	value TEXT NOT NULL
);
`

// openSQLite opens (creating if needed) the SQLite store at path.
//
// Pragmas: WAL journal; synchronous=FULL, so that a commit the API has
// acknowledged (and whose event may already be on its way to edges) survives
// a power loss — with NORMAL, WAL mode may lose the last transactions; every
// write transaction begins IMMEDIATE, which serialises writers at BEGIN and
// so hands out revisions in commit order.
func openSQLite(path string) (*Store, error) {
	s, err := openSQLiteDB(path, "FULL")
	if err != nil {
		return nil, err
	}
	if _, err := s.db.Exec(sqliteSchema); err != nil {
		s.db.Close()
		return nil, fmt.Errorf("creating sqlite schema: %w", err)
	}
	if err := s.migrate(context.Background()); err != nil {
		s.db.Close()
		return nil, err
	}
	return s, nil
}

// openAuditSQLite opens the audit database that goes with the store at
// storePath (origin.db → origin-audit.db): a database of its own, so that
// storing edges' request records never takes the writer lock mutations
// wait for, with synchronous=NORMAL — a power loss may cost the last
// records, never a change.
func openAuditSQLite(storePath string) (*Store, error) {
	ext := filepath.Ext(storePath)
	return openSQLiteDB(strings.TrimSuffix(storePath, ext)+"-audit"+ext, "NORMAL")
}

// openSQLiteDB opens (creating) the SQLite database at path with the
// pragmas above and the given synchronous level.
func openSQLiteDB(path, synchronous string) (*Store, error) {
	if path == "" {
		return nil, fmt.Errorf("%w: empty sqlite path", ErrInvalidConfig)
	}
	if dir := filepath.Dir(path); dir != "" {
		if err := os.MkdirAll(dir, 0o700); err != nil {
			return nil, fmt.Errorf("creating store directory: %w", err)
		}
	}
	q := url.Values{}
	q.Add("_pragma", "journal_mode(WAL)")
	q.Add("_pragma", "busy_timeout(10000)")
	q.Add("_pragma", "foreign_keys(1)")
	q.Add("_pragma", "synchronous("+synchronous+")")
	q.Set("_txlock", "immediate")
	conn, err := newCachingConnector("file:" + path + "?" + q.Encode())
	if err != nil {
		return nil, fmt.Errorf("opening sqlite store: %w", err)
	}
	db := sql.OpenDB(conn)
	db.SetMaxOpenConns(8)
	db.SetMaxIdleConns(8)
	db.SetConnMaxIdleTime(0)
	return &Store{db: db, dialect: dialectSQLite, path: path}, nil
}
