package origin

// Deployments and the links between them and keys. Every change is one
// mutate (outbox.go).

import (
	"context"
	"database/sql"
	"encoding/json"
	"errors"
	"fmt"
	"time"

	"github.com/keymesh/keymesh/event"
)

const deploymentColumns = `id, project_id, name, hosts, path_prefix, upstreams, auth_enabled, invalid_key_status, upstream_auth, rate_limit, max_body_bytes, max_prompt_chars, revision, models, max_concurrency, tokens, default_max_tokens, strip_prefix, pricing`

// deploymentSelect reads a deployment's columns and its project's name and
// token bounds, which the records edges get carry (edges scope secrets by
// the name, and hold the project's tokens to its bounds).
const deploymentSelect = deploymentColumns + `, (SELECT name FROM projects WHERE projects.id = deployments.project_id)` +
	`, (SELECT tokens FROM projects WHERE projects.id = deployments.project_id)`

func scanDeployment(sc interface{ Scan(...any) error }) (*event.Deployment, error) {
	var d event.Deployment
	var hosts, ups string
	var ua, rl sql.NullString
	var auth, strip int
	var projectName, models, tokens, projectTokens, pricing sql.NullString
	var maxConc, defMax sql.NullInt64
	if err := sc.Scan(&d.ID, &d.Project, &d.Name, &hosts, &d.PathPrefix, &ups, &auth, &d.InvalidKeyStatus, &ua, &rl, &d.MaxBodyBytes, &d.MaxPromptChars, &d.Revision,
		&models, &maxConc, &tokens, &defMax, &strip, &pricing, &projectName, &projectTokens); err != nil {
		return nil, err
	}
	var err error
	if d.Pricing, err = scanPricing(pricing); err != nil {
		return nil, err
	}
	if d.Tokens, err = scanTokens(tokens); err != nil {
		return nil, err
	}
	if d.ProjectTokens, err = scanTokens(projectTokens); err != nil {
		return nil, err
	}
	d.DefaultMaxTokens = defMax.Int64
	d.StripPrefix = strip != 0
	if err := scanModels(models, maxConc, &d.Models, &d.MaxConcurrency); err != nil {
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
	models, maxConc, err := modelColumns(d.Models, d.MaxConcurrency)
	if err != nil {
		return err
	}
	tokens, err := tokensColumn(d.Tokens)
	if err != nil {
		return err
	}
	pricing, err := nullJSON(d.Pricing, d.Pricing == nil)
	if err != nil {
		return err
	}
	var defMax any
	if d.DefaultMaxTokens > 0 {
		defMax = d.DefaultMaxTokens
	}
	if insert {
		_, err = tx.ExecContext(ctx, s.q(`INSERT INTO deployments (`+deploymentColumns+`, created_at, updated_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)`),
			d.ID, d.Project, d.Name, hosts, d.PathPrefix, ups, boolInt(d.AuthEnabled), d.InvalidKeyStatus, ua, rl, d.MaxBodyBytes, d.MaxPromptChars, d.Revision,
			models, maxConc, tokens, defMax, boolInt(d.StripPrefix), pricing, ts(now), ts(now))
	} else {
		_, err = tx.ExecContext(ctx, s.q(`UPDATE deployments SET name = ?, hosts = ?, path_prefix = ?, upstreams = ?, auth_enabled = ?, invalid_key_status = ?, upstream_auth = ?, rate_limit = ?, max_body_bytes = ?, max_prompt_chars = ?, revision = ?, models = ?, max_concurrency = ?, tokens = ?, default_max_tokens = ?, strip_prefix = ?, pricing = ?, updated_at = ? WHERE id = ?`),
			d.Name, hosts, d.PathPrefix, ups, boolInt(d.AuthEnabled), d.InvalidKeyStatus, ua, rl, d.MaxBodyBytes, d.MaxPromptChars, d.Revision, models, maxConc, tokens, defMax, boolInt(d.StripPrefix), pricing, ts(now), d.ID)
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
