package origin

// API keys: their rows, their secrets (a key may hold two during a rotation's
// grace) and their links to deployments. Every change is one mutate (outbox.go).

import (
	"context"
	"database/sql"
	"encoding/json"
	"errors"
	"fmt"
	"sort"
	"time"

	"github.com/keymesh/keymesh/apikey"
	"github.com/keymesh/keymesh/event"
)

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
	// Models is the model allow-list (nil: any model); MaxConcurrency the
	// cap on requests in flight at one edge (0: none).
	Models         []string
	MaxConcurrency int
	// Tokens are the key's token bounds (nil: none).
	Tokens    *event.TokenLimits
	Disabled  bool
	CreatedAt time.Time
	UpdatedAt time.Time
	Revision  uint64
	Secrets   []event.Secret
}

func (k *Key) record(deleted bool) *event.Record {
	ek := &event.Key{
		ID: k.ID, Project: k.ProjectID, Name: k.Name, Secrets: k.Secrets, Permissions: k.Permissions,
		Deployments: k.Deployments, ExpiresAt: k.ExpiresAt, RateLimit: k.RateLimit,
		Models: k.Models, MaxConcurrency: k.MaxConcurrency, Tokens: k.Tokens, Disabled: k.Disabled, Deleted: deleted,
	}
	if ek.Secrets == nil {
		ek.Secrets = []event.Secret{}
	}
	if ek.Deployments == nil || deleted {
		ek.Deployments = []string{}
	}
	return &event.Record{Kind: event.KindKey, Key: ek}
}

const keyColumns = `id, project_id, name, description, prefix, permissions, expires_at, rate_limit, disabled, created_at, updated_at, revision, models, max_concurrency, tokens`

func scanKey(sc interface{ Scan(...any) error }) (*Key, error) {
	var k Key
	var perms, created, updated string
	var expires, rl, models, tokens sql.NullString
	var disabled int
	var maxConc sql.NullInt64
	if err := sc.Scan(&k.ID, &k.ProjectID, &k.Name, &k.Description, &k.Prefix, &perms, &expires, &rl, &disabled, &created, &updated, &k.Revision,
		&models, &maxConc, &tokens); err != nil {
		return nil, err
	}
	var err error
	if k.Tokens, err = scanTokens(tokens); err != nil {
		return nil, err
	}
	if err := scanModels(models, maxConc, &k.Models, &k.MaxConcurrency); err != nil {
		return nil, err
	}
	if err := json.Unmarshal([]byte(perms), &k.Permissions); err != nil {
		return nil, fmt.Errorf("decoding permissions: %w", err)
	}
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
	models, maxConc, err := modelColumns(k.Models, k.MaxConcurrency)
	if err != nil {
		return err
	}
	tokens, err := tokensColumn(k.Tokens)
	if err != nil {
		return err
	}
	if insert {
		_, err = tx.ExecContext(ctx, s.q(`INSERT INTO keys (`+keyColumns+`) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)`),
			k.ID, k.ProjectID, k.Name, k.Description, k.Prefix, perms, nullTS(k.ExpiresAt), rl, boolInt(k.Disabled), ts(k.CreatedAt), ts(k.UpdatedAt), k.Revision,
			models, maxConc, tokens)
	} else {
		_, err = tx.ExecContext(ctx, s.q(`UPDATE keys SET name = ?, description = ?, prefix = ?, permissions = ?, expires_at = ?, rate_limit = ?, disabled = ?, updated_at = ?, revision = ?, models = ?, max_concurrency = ?, tokens = ? WHERE id = ?`),
			k.Name, k.Description, k.Prefix, perms, nullTS(k.ExpiresAt), rl, boolInt(k.Disabled), ts(k.UpdatedAt), k.Revision, models, maxConc, tokens, k.ID)
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
