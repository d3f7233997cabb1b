package origin

// Schema migrations. The base schema (store_sqlite.go, store_postgres.go)
// is version 1, as every store before migrations had it; each migration
// below brings a store one version further, in one transaction (on
// PostgreSQL under the schema advisory lock, so replicas starting at once
// migrate once). The version is kept in metadata "schema_version". A fresh
// store is created at version 1 and migrated like an old one, so the
// migration path is the one every test runs. An origin refuses a store of
// a newer version than it knows.

import (
	"context"
	"database/sql"
	"encoding/json"
	"errors"
	"fmt"
	"strconv"

	"github.com/keymesh/keymesh/event"
)

// schemaVersion is the version this origin's queries need.
const schemaVersion = 8

type migration struct {
	sqlite, postgres []string
	// after runs in the same transaction, after the statements.
	after func(ctx context.Context, s *Store, tx *sql.Tx) error
}

// migrations[i] takes a store from version i+1 to i+2.
var migrations = []migration{
	{ // 2: tenant isolation and quotas, user token versions.
		sqlite: []string{
			`ALTER TABLE users ADD COLUMN token_version INTEGER NOT NULL DEFAULT 0`,
			`ALTER TABLE projects ADD COLUMN allowed_upstreams TEXT`,
			`ALTER TABLE projects ADD COLUMN max_keys INTEGER`,
			`ALTER TABLE projects ADD COLUMN max_deployments INTEGER`,
			`ALTER TABLE projects ADD COLUMN max_links_per_key INTEGER`,
			`ALTER TABLE projects ADD COLUMN key_count INTEGER NOT NULL DEFAULT 0`,
			`ALTER TABLE projects ADD COLUMN deployment_count INTEGER NOT NULL DEFAULT 0`,
			`CREATE TABLE deployment_claims (
				deployment_id TEXT NOT NULL REFERENCES deployments(id) ON DELETE CASCADE,
				project_id    TEXT NOT NULL,
				kind          TEXT NOT NULL,
				host_key      TEXT NOT NULL,
				path_prefix   TEXT NOT NULL,
				PRIMARY KEY (deployment_id, kind, host_key)
			)`,
			`CREATE INDEX deployment_claims_host ON deployment_claims(host_key)`,
		},
		postgres: []string{
			`ALTER TABLE users ADD COLUMN token_version BIGINT NOT NULL DEFAULT 0`,
			`ALTER TABLE projects ADD COLUMN allowed_upstreams TEXT`,
			`ALTER TABLE projects ADD COLUMN max_keys BIGINT`,
			`ALTER TABLE projects ADD COLUMN max_deployments BIGINT`,
			`ALTER TABLE projects ADD COLUMN max_links_per_key BIGINT`,
			`ALTER TABLE projects ADD COLUMN key_count BIGINT NOT NULL DEFAULT 0`,
			`ALTER TABLE projects ADD COLUMN deployment_count BIGINT NOT NULL DEFAULT 0`,
			`CREATE TABLE deployment_claims (
				deployment_id TEXT COLLATE "C" NOT NULL REFERENCES deployments(id) ON DELETE CASCADE,
				project_id    TEXT COLLATE "C" NOT NULL,
				kind          TEXT COLLATE "C" NOT NULL,
				host_key      TEXT COLLATE "C" NOT NULL,
				path_prefix   TEXT COLLATE "C" NOT NULL,
				PRIMARY KEY (deployment_id, kind, host_key)
			)`,
			`CREATE INDEX deployment_claims_host ON deployment_claims(host_key)`,
		},
		after: backfillV2,
	},
	{ // 3: the edge registry survives a restart (store_edges.go).
		sqlite: []string{
			`CREATE TABLE edges (
				id               TEXT PRIMARY KEY,
				site             TEXT NOT NULL,
				address          TEXT NOT NULL,
				applied_revision INTEGER NOT NULL,
				relayed_by       TEXT NOT NULL,
				last_seen_ms     INTEGER NOT NULL
			)`,
		},
		postgres: []string{
			`CREATE TABLE edges (
				id               TEXT COLLATE "C" PRIMARY KEY,
				site             TEXT NOT NULL,
				address          TEXT NOT NULL,
				applied_revision BIGINT NOT NULL,
				relayed_by       TEXT NOT NULL,
				last_seen_ms     BIGINT NOT NULL
			)`,
		},
	},
	{ // 4: the usage ledger (usage_store.go).
		sqlite:   usageSchema(""),
		postgres: usageSchema(` COLLATE "C"`),
	},
	{ // 5: model allow-lists and concurrency caps of keys and deployments
		// (issue 14). NULL: any model, no cap — what every key and
		// deployment before them had.
		sqlite: []string{
			`ALTER TABLE keys ADD COLUMN models TEXT`,
			`ALTER TABLE keys ADD COLUMN max_concurrency INTEGER`,
			`ALTER TABLE deployments ADD COLUMN models TEXT`,
			`ALTER TABLE deployments ADD COLUMN max_concurrency INTEGER`,
		},
		postgres: []string{
			`ALTER TABLE keys ADD COLUMN models TEXT`,
			`ALTER TABLE keys ADD COLUMN max_concurrency BIGINT`,
			`ALTER TABLE deployments ADD COLUMN models TEXT`,
			`ALTER TABLE deployments ADD COLUMN max_concurrency BIGINT`,
		},
	},
	{ // 6: token limits and quotas of keys, deployments and projects, and
		// a deployment's default reservation (issue 14). tokens is the
		// JSON of event.TokenLimits; NULL: no bound, what everything
		// before them had.
		sqlite: []string{
			`ALTER TABLE keys ADD COLUMN tokens TEXT`,
			`ALTER TABLE deployments ADD COLUMN tokens TEXT`,
			`ALTER TABLE deployments ADD COLUMN default_max_tokens INTEGER`,
			`ALTER TABLE projects ADD COLUMN tokens TEXT`,
		},
		postgres: []string{
			`ALTER TABLE keys ADD COLUMN tokens TEXT`,
			`ALTER TABLE deployments ADD COLUMN tokens TEXT`,
			`ALTER TABLE deployments ADD COLUMN default_max_tokens BIGINT`,
			`ALTER TABLE projects ADD COLUMN tokens TEXT`,
		},
	},
	{ // 7: a deployment's strip_prefix (issue 16). 0: the path is
		// forwarded as sent, what every deployment before it did.
		sqlite:   []string{`ALTER TABLE deployments ADD COLUMN strip_prefix INTEGER NOT NULL DEFAULT 0`},
		postgres: []string{`ALTER TABLE deployments ADD COLUMN strip_prefix INTEGER NOT NULL DEFAULT 0`},
	},
	{ // 8: a deployment's pricing and the ledger's cost (issue 15).
		// pricing is the JSON of event.Pricing, NULL: unpriced; cost is
		// nano-units of the pricing currency, 0 for the rows stored before
		// (they were never priced). Budgets ride in the tokens columns.
		sqlite: []string{
			`ALTER TABLE deployments ADD COLUMN pricing TEXT`,
			`ALTER TABLE usage_hourly ADD COLUMN cost INTEGER NOT NULL DEFAULT 0`,
			`ALTER TABLE usage_daily ADD COLUMN cost INTEGER NOT NULL DEFAULT 0`,
		},
		postgres: []string{
			`ALTER TABLE deployments ADD COLUMN pricing TEXT`,
			`ALTER TABLE usage_hourly ADD COLUMN cost BIGINT NOT NULL DEFAULT 0`,
			`ALTER TABLE usage_daily ADD COLUMN cost BIGINT NOT NULL DEFAULT 0`,
		},
	},
}

// backfillV2 counts each project's keys and deployments and records the
// claims of the deployments that exist. Deployments of different projects
// that already overlap are kept (which one is legitimate is the operator's
// call); they are counted in Store.notes, and a later change to either is
// refused while it still overlaps.
func backfillV2(ctx context.Context, s *Store, tx *sql.Tx) error {
	if _, err := tx.ExecContext(ctx, `UPDATE projects SET
		key_count = (SELECT COUNT(*) FROM keys WHERE keys.project_id = projects.id),
		deployment_count = (SELECT COUNT(*) FROM deployments WHERE deployments.project_id = projects.id)`); err != nil {
		return err
	}
	deps, err := claimsV2(ctx, s, tx)
	if err != nil {
		return err
	}
	overlaps := 0
	for i := range deps {
		d := &deps[i]
		if s.claimConflict(ctx, tx, d) != nil {
			overlaps++
		}
		if err := s.writeClaims(ctx, tx, d); err != nil {
			return err
		}
	}
	if overlaps > 0 {
		s.notes = append(s.notes, fmt.Sprintf("%d deployment(s) overlap the hosts and paths of another project's deployments; "+
			"a change to one is refused until it no longer overlaps", overlaps))
	}
	return nil
}

// claimsV2 reads what backfillV2 needs of every deployment (id, project,
// hosts, path prefix) from the columns a version-1 store has: the columns
// later migrations add do not exist yet when it runs.
func claimsV2(ctx context.Context, s *Store, tx *sql.Tx) ([]event.Deployment, error) {
	rows, err := tx.QueryContext(ctx, `SELECT id, project_id, hosts, path_prefix FROM deployments ORDER BY id`)
	if err != nil {
		return nil, err
	}
	defer rows.Close()
	var out []event.Deployment
	for rows.Next() {
		var d event.Deployment
		var hosts string
		if err := rows.Scan(&d.ID, &d.Project, &hosts, &d.PathPrefix); err != nil {
			return nil, err
		}
		if err := json.Unmarshal([]byte(hosts), &d.Hosts); err != nil {
			return nil, fmt.Errorf("decoding hosts: %w", err)
		}
		out = append(out, d)
	}
	return out, rows.Err()
}

// migrate brings the store to schemaVersion.
func (s *Store) migrate(ctx context.Context) error {
	unlock := s.lockWrites()
	defer unlock()
	tx, err := s.db.BeginTx(ctx, nil)
	if err != nil {
		return err
	}
	defer tx.Rollback()
	if s.dialect == dialectPostgres {
		if _, err := tx.ExecContext(ctx, `SELECT pg_advisory_xact_lock($1)`, int64(schemaLockID)); err != nil {
			return err
		}
	}
	v := 1
	var raw string
	err = tx.QueryRowContext(ctx, s.q(`SELECT value FROM metadata WHERE name = 'schema_version'`)).Scan(&raw)
	switch {
	case errors.Is(err, sql.ErrNoRows):
	case err != nil:
		return fmt.Errorf("reading the schema version: %w", err)
	default:
		if v, err = strconv.Atoi(raw); err != nil || v < 1 {
			return fmt.Errorf("store metadata schema_version %q is not a version", raw)
		}
	}
	if v > schemaVersion {
		return fmt.Errorf("%w: the store's schema is version %d, newer than this origin's (%d): upgrade the origin", ErrInvalidConfig, v, schemaVersion)
	}
	if v == schemaVersion {
		return nil
	}
	for ; v < schemaVersion; v++ {
		m := migrations[v-1]
		stmts := m.sqlite
		if s.dialect == dialectPostgres {
			stmts = m.postgres
		}
		for _, stmt := range stmts {
			if _, err := tx.ExecContext(ctx, stmt); err != nil {
				return fmt.Errorf("migrating the store to version %d: %w", v+1, err)
			}
		}
		if m.after != nil {
			if err := m.after(ctx, s, tx); err != nil {
				return fmt.Errorf("migrating the store to version %d: %w", v+1, err)
			}
		}
	}
	if _, err := tx.ExecContext(ctx, s.q(`INSERT INTO metadata (name, value) VALUES ('schema_version', ?) ON CONFLICT (name) DO UPDATE SET value = excluded.value`),
		strconv.Itoa(schemaVersion)); err != nil {
		return fmt.Errorf("recording the schema version: %w", err)
	}
	return tx.Commit()
}

// jsonStrings encodes a string list column (nil: NULL).
func jsonStrings(v []string) (any, error) {
	if v == nil {
		return nil, nil
	}
	b, err := json.Marshal(v)
	return string(b), err
}
