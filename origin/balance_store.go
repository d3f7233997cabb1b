package origin

// The store's side of the balance publisher (balance.go): which keys,
// deployments and projects carry long-period bounds, and what the usage
// ledger says one of them used over a range of days. Every query is
// index-backed: a key's rows by usage_daily_key (key_id, day), a
// deployment's and a project's by the primary key's (project_id, day)
// prefix. SQL is the subset SQLite and PostgreSQL share.

import (
	"context"
	"database/sql"
	"errors"

	"github.com/keymesh/keymesh/event"
)

// balanceOwner is a key, deployment or project whose bounds may need
// balances. Project is the owner's project (the id itself for a project).
type balanceOwner struct {
	Scope       event.LimitScope
	ID, Project string
}

// boundedOwners lists every key, deployment and project with token
// bounds (a full read of the three tables: the publisher does it at start
// and when its queue of changed owners overflowed, never per tick).
func (s *Store) boundedOwners(ctx context.Context) ([]balanceOwner, error) {
	var out []balanceOwner
	for _, q := range []struct {
		scope event.LimitScope
		query string
	}{
		{event.LimitScopeKey, `SELECT id, project_id FROM keys WHERE tokens IS NOT NULL`},
		{event.LimitScopeDeployment, `SELECT id, project_id FROM deployments WHERE tokens IS NOT NULL`},
		{event.LimitScopeProject, `SELECT id, id FROM projects WHERE tokens IS NOT NULL`},
	} {
		rows, err := s.db.QueryContext(ctx, s.q(q.query))
		if err != nil {
			return nil, err
		}
		for rows.Next() {
			o := balanceOwner{Scope: q.scope}
			if err := rows.Scan(&o.ID, &o.Project); err != nil {
				rows.Close()
				return nil, err
			}
			out = append(out, o)
		}
		rows.Close()
		if err := rows.Err(); err != nil {
			return nil, err
		}
	}
	return out, nil
}

// ownerBounds returns o's token bounds (nil: none, or o is gone), read by
// primary key.
func (s *Store) ownerBounds(ctx context.Context, o balanceOwner) (*event.TokenLimits, error) {
	table := map[event.LimitScope]string{event.LimitScopeKey: "keys", event.LimitScopeDeployment: "deployments", event.LimitScopeProject: "projects"}[o.Scope]
	if table == "" {
		return nil, nil
	}
	var col sql.NullString
	err := s.db.QueryRowContext(ctx, s.q(`SELECT tokens FROM `+table+` WHERE id = ?`), o.ID).Scan(&col)
	if errors.Is(err, sql.ErrNoRows) {
		return nil, nil
	}
	if err != nil {
		return nil, err
	}
	return scanTokens(col)
}

// ledgerSums is what the ledger holds of an owner over some days.
type ledgerSums struct{ tokens, requests, cost int64 }

// ledgerUsed sums what the ledger holds of o over the UTC days starting
// at unix seconds since <= day < until: its tokens (prompt plus
// completion, estimated ones included, as the edges settle them), its
// metered requests and their cost (nano-units, priced at ingest). until 0
// is no end.
func (s *Store) ledgerUsed(ctx context.Context, o balanceOwner, since, until int64) (ledgerSums, error) {
	var where string
	var args []any
	switch o.Scope {
	case event.LimitScopeKey:
		where, args = `key_id = ?`, []any{o.ID}
	case event.LimitScopeDeployment:
		where, args = `project_id = ? AND deployment_id = ?`, []any{o.Project, o.ID}
	case event.LimitScopeProject:
		where, args = `project_id = ?`, []any{o.ID}
	default:
		return ledgerSums{}, nil
	}
	where += ` AND day >= ?`
	args = append(args, since)
	if until > 0 {
		where += ` AND day < ?`
		args = append(args, until)
	}
	var t, r, c sql.NullInt64
	err := s.db.QueryRowContext(ctx, s.q(`SELECT CAST(SUM(prompt_tokens + completion_tokens) AS BIGINT), CAST(SUM(requests) AS BIGINT),
		CAST(SUM(cost) AS BIGINT) FROM usage_daily WHERE `+where), args...).Scan(&t, &r, &c)
	return ledgerSums{t.Int64, r.Int64, c.Int64}, err
}
