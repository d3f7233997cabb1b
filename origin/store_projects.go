package origin

// A project's rules — its upstream policy (allowed_upstreams) and quotas —
// and the checks every key and deployment mutation runs against them inside
// its write transaction. Rules are set by admin users only (api_projects.go).

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"maps"
	"slices"
	"strings"
	"time"

	"github.com/keymesh/keymesh/event"
)

// projectRules is what a project's changes are held to.
type projectRules struct {
	policy *upstreamPolicy    // nil: the default policy
	set    Limits             // as an admin set them; zero fields follow the default
	keys   int                // keys the project holds
	deps   int                // deployments the project holds
	tokens *event.TokenLimits // the project's token bounds (nil: none)
}

func (r *projectRules) limits() Limits { return r.set.withDefaults() }

// loadRules reads a project's rules in q (a write transaction, for the
// checks: the rules then cannot change before it commits).
func (s *Store) loadRules(ctx context.Context, q querier, projectID string) (*projectRules, error) {
	var policy, tokens sql.NullString
	var maxKeys, maxDeps, maxLinks sql.NullInt64
	r := &projectRules{}
	err := q.QueryRowContext(ctx, s.q(`SELECT allowed_upstreams, max_keys, max_deployments, max_links_per_key, key_count, deployment_count, tokens FROM projects WHERE id = ?`),
		projectID).Scan(&policy, &maxKeys, &maxDeps, &maxLinks, &r.keys, &r.deps, &tokens)
	if errors.Is(err, sql.ErrNoRows) {
		return nil, fmt.Errorf("%w: no project %q", ErrNotFound, projectID)
	}
	if err != nil {
		return nil, fmt.Errorf("reading project rules: %w", err)
	}
	if policy.Valid {
		if r.policy, err = decodePolicy(&policy.String); err != nil {
			return nil, err
		}
	}
	r.set = Limits{MaxKeys: int(maxKeys.Int64), MaxDeployments: int(maxDeps.Int64), MaxLinksPerKey: int(maxLinks.Int64)}
	if r.tokens, err = scanTokens(tokens); err != nil {
		return nil, err
	}
	return r, nil
}

// quotaError is the answer to a change past a quota.
func quotaError(quota string, limit int, what string) error {
	return &DetailedError{Err: ErrConflict, Details: map[string]any{"quota": quota, "limit": limit},
		Message: fmt.Sprintf("this project may hold at most %d %s (quota %s; an admin can change it)", limit, what, quota)}
}

// checkUpstreams refuses an upstream of d that the policy does not allow.
func checkUpstreams(p *upstreamPolicy, d *event.Deployment) error {
	for _, site := range slices.Sorted(maps.Keys(d.Upstreams)) {
		for _, raw := range d.Upstreams[site] {
			u, h, err := parseUpstreamURL(raw)
			if err != nil {
				return validation("upstreams", fmt.Sprintf("site %q: %v", site, err))
			}
			if !p.allows(u, h) {
				why := "is not allowed by this project's allowed_upstreams"
				if p == nil {
					why = "is a link-local, metadata or otherwise reserved address, which no project may reach unless an admin names it in allowed_upstreams"
				}
				return &DetailedError{Err: ErrForbidden, Details: map[string]any{"field": "upstreams", "site": site, "url": raw},
					Message: fmt.Sprintf("upstream %q of site %q %s", truncate(raw, 80), site, why)}
			}
		}
	}
	return nil
}

// beforeDeploymentWrite checks d (validated) against its project's rules
// and the other projects' claims, inside the mutation's transaction; create
// says whether d is new. It then records d's claims and counts it, and
// sets d's ProjectTokens to the project's bounds as they are in tx (what
// its event carries).
func (s *Store) beforeDeploymentWrite(ctx context.Context, tx *sql.Tx, d *event.Deployment, create bool) error {
	r, err := s.loadRules(ctx, tx, d.Project)
	if err != nil {
		return err
	}
	d.ProjectTokens = r.tokens
	if lim := r.limits().MaxDeployments; create && r.deps >= lim {
		return quotaError("max_deployments", lim, "deployments")
	}
	if err := checkUpstreams(r.policy, d); err != nil {
		return err
	}
	if err := s.claimConflict(ctx, tx, d); err != nil {
		return err
	}
	if err := s.writeClaims(ctx, tx, d); err != nil {
		return err
	}
	if create {
		return s.addCount(ctx, tx, d.Project, "deployment_count", 1)
	}
	return nil
}

// afterDeploymentDelete drops d's claims and count.
func (s *Store) afterDeploymentDelete(ctx context.Context, tx *sql.Tx, d *event.Deployment) error {
	if err := s.deleteClaims(ctx, tx, d.ID); err != nil {
		return err
	}
	return s.addCount(ctx, tx, d.Project, "deployment_count", -1)
}

// checkKeyCreate refuses a key past the project's key quota and counts it,
// in one statement (this is on the path of every key creation).
func (s *Store) checkKeyCreate(ctx context.Context, tx *sql.Tx, projectID string) error {
	var n int
	err := tx.QueryRowContext(ctx, s.q(`UPDATE projects SET key_count = key_count + 1 WHERE id = ? AND key_count < COALESCE(max_keys, ?) RETURNING key_count`),
		projectID, DefaultLimits.MaxKeys).Scan(&n)
	if !errors.Is(err, sql.ErrNoRows) {
		return err
	}
	r, err := s.loadRules(ctx, tx, projectID) // no such project, or the quota
	if err != nil {
		return err
	}
	return quotaError("max_keys", r.limits().MaxKeys, "keys")
}

// checkKeyLinks refuses a key linked to more deployments than the
// project's max_links_per_key (k as filled after the change).
func (s *Store) checkKeyLinks(ctx context.Context, tx *sql.Tx, k *Key) error {
	if len(k.Deployments) <= limitRanges["max_links_per_key"][0] {
		return nil // within any quota an admin may set
	}
	r, err := s.loadRules(ctx, tx, k.ProjectID)
	if err != nil {
		return err
	}
	if lim := r.limits().MaxLinksPerKey; len(k.Deployments) > lim {
		return quotaError("max_links_per_key", lim, "links per key")
	}
	return nil
}

// addCount adds n to a project's key_count or deployment_count.
func (s *Store) addCount(ctx context.Context, tx *sql.Tx, projectID, column string, n int) error {
	if column != "key_count" && column != "deployment_count" {
		panic("addCount: " + column)
	}
	if _, err := tx.ExecContext(ctx, s.q(`UPDATE projects SET `+column+` = `+column+` + ? WHERE id = ?`), n, projectID); err != nil {
		return fmt.Errorf("counting: %w", err)
	}
	return nil
}

// lockedTx begins a write transaction holding the revision counter's row
// lock without taking a revision, for changes that are no event but must
// be ordered with the mutations (a project's rules, users): on PostgreSQL
// every writer of every replica queues on that row; on SQLite writers are
// serialised anyway. The returned function releases the SQLite writer
// queue; call it after Commit or Rollback.
func (s *Store) lockedTx(ctx context.Context) (*sql.Tx, func(), error) {
	unlock := s.lockWrites()
	tx, err := s.db.BeginTx(ctx, nil)
	if err != nil {
		unlock()
		return nil, nil, err
	}
	if _, err := tx.ExecContext(ctx, s.q(`UPDATE counters SET value = value WHERE name = 'revision'`)); err != nil {
		tx.Rollback()
		unlock()
		return nil, nil, fmt.Errorf("locking the store: %w", err)
	}
	return tx, unlock, nil
}

// ProjectRules is a project's rules as the API shows them.
type ProjectRules struct {
	// AllowedUpstreams is nil for the default policy.
	AllowedUpstreams []string
	// Limits are the quotas in force (defaults filled in).
	Limits Limits
	// Keys and Deployments are what the project holds.
	Keys, Deployments int
	// Tokens are the project's token bounds (nil: none).
	Tokens *event.TokenLimits
}

func (r *projectRules) view() *ProjectRules {
	return &ProjectRules{AllowedUpstreams: r.policy.strings(), Limits: r.limits(), Keys: r.keys, Deployments: r.deps, Tokens: r.tokens}
}

// rules returns a project's rules.
func (s *Store) rules(ctx context.Context, projectID string) (*ProjectRules, error) {
	r, err := s.loadRules(ctx, s.db, projectID)
	if err != nil {
		return nil, err
	}
	return r.view(), nil
}

// rulesChange is a change of a project's rules; nil fields are unchanged.
type rulesChange struct {
	setPolicy bool
	policy    *upstreamPolicy // with setPolicy: nil = back to the default
	limits    map[string]*int // quota name → value (nil: back to the default)
	tokens    tokensChange    // the token bounds
}

// maxConflictIDs bounds the deployment ids a refused policy change lists.
const maxConflictIDs = 20

// setRules applies ch to a project and returns its rules and the store's
// revision after the change. A policy that some of the project's
// deployments would break is refused (409, naming how many and the first
// of them): the admin changes or deletes those first. Quotas may be set
// below what the project holds; further creations are then refused.
//
// A change of the token bounds re-sends every deployment of the project,
// each as an event of its own revision in the same transaction, since the
// project's bounds travel with its deployments (event.Deployment's
// ProjectTokens): edges apply them in order, so the revision returned (the
// last one) is the one to wait for. The change is refused whole if one of
// those events would be over MaxEventBytes.
func (s *Store) setRules(ctx context.Context, projectID string, ch rulesChange) (*ProjectRules, uint64, error) {
	tx, unlock, err := s.lockedTx(ctx)
	if err != nil {
		return nil, 0, err
	}
	defer unlock()
	defer tx.Rollback()
	r, err := s.setRulesTx(ctx, tx, projectID, ch)
	if err != nil {
		return nil, 0, err
	}
	rev, err := s.revision(ctx, tx)
	if err != nil {
		return nil, 0, err
	}
	if err := tx.Commit(); err != nil {
		return nil, 0, fmt.Errorf("committing: %w", err)
	}
	if s.onCommit != nil {
		s.onCommit(rev)
	}
	return r.view(), rev, nil
}

// setRulesTx is setRules inside tx.
func (s *Store) setRulesTx(ctx context.Context, tx *sql.Tx, projectID string, ch rulesChange) (*projectRules, error) {
	r, err := s.loadRules(ctx, tx, projectID)
	if err != nil {
		return nil, err
	}
	if ch.setPolicy {
		deps, err := s.listDeployments(ctx, tx, projectID)
		if err != nil {
			return nil, err
		}
		var bad []string
		n := 0
		for i := range deps {
			if checkUpstreams(ch.policy, &deps[i]) != nil {
				if n++; len(bad) < maxConflictIDs {
					bad = append(bad, deps[i].ID)
				}
			}
		}
		if n > 0 {
			return nil, &DetailedError{Err: ErrConflict, Details: map[string]any{"conflicting_deployments": n, "deployments": bad},
				Message: fmt.Sprintf("%d of the project's deployments have upstreams this policy does not allow; change or delete them first", n)}
		}
		col, err := jsonStrings(ch.policy.strings())
		if err != nil {
			return nil, err
		}
		if _, err := tx.ExecContext(ctx, s.q(`UPDATE projects SET allowed_upstreams = ? WHERE id = ?`), col, projectID); err != nil {
			return nil, err
		}
		r.policy = ch.policy
	}
	for _, name := range slices.Sorted(maps.Keys(ch.limits)) {
		v := ch.limits[name]
		var col any
		if v != nil {
			col = *v
		}
		if _, ok := limitRanges[name]; !ok {
			return nil, fmt.Errorf("unknown quota %q", name)
		}
		if _, err := tx.ExecContext(ctx, s.q(`UPDATE projects SET `+name+` = ? WHERE id = ?`), col, projectID); err != nil {
			return nil, err
		}
		val := 0
		if v != nil {
			val = *v
		}
		switch name {
		case "max_keys":
			r.set.MaxKeys = val
		case "max_deployments":
			r.set.MaxDeployments = val
		case "max_links_per_key":
			r.set.MaxLinksPerKey = val
		}
	}
	if ch.tokens.touches() {
		tokens := ch.tokens.apply(r.tokens)
		if tokensEqual(tokens, r.tokens) {
			return r, nil // nothing the edges do not have already
		}
		col, err := tokensColumn(tokens)
		if err != nil {
			return nil, err
		}
		if _, err := tx.ExecContext(ctx, s.q(`UPDATE projects SET tokens = ? WHERE id = ?`), col, projectID); err != nil {
			return nil, err
		}
		r.tokens = tokens
		if err := s.resendDeployments(ctx, tx, projectID); err != nil {
			return nil, err
		}
	}
	return r, nil
}

// resendDeployments gives every deployment of a project a revision of its
// own and stores its event (carrying the project's bounds as they are in
// tx), in tx.
func (s *Store) resendDeployments(ctx context.Context, tx *sql.Tx, projectID string) error {
	deps, err := s.listDeployments(ctx, tx, projectID)
	if err != nil {
		return err
	}
	now := time.Now().UTC()
	for i := range deps {
		d := &deps[i]
		rev, err := s.nextRevision(ctx, tx)
		if err != nil {
			return err
		}
		d.Revision = rev
		if _, err := tx.ExecContext(ctx, s.q(`UPDATE deployments SET revision = ?, updated_at = ? WHERE id = ?`), rev, ts(now), d.ID); err != nil {
			return fmt.Errorf("re-sending deployment: %w", err)
		}
		if err := s.storeEvent(ctx, tx, &event.Record{Kind: event.KindDeployment, Deployment: d}, rev, now); err != nil {
			return err
		}
	}
	return nil
}

// tokensEqual reports whether a and b are the same bounds.
func tokensEqual(a, b *event.TokenLimits) bool {
	if a.Empty() || b.Empty() {
		return a.Empty() == b.Empty()
	}
	if a.TokensPerMinute != b.TokensPerMinute || a.TokensPerDay != b.TokensPerDay || (a.Quota == nil) != (b.Quota == nil) ||
		(a.Budget == nil) != (b.Budget == nil) || a.Budget != nil && *a.Budget != *b.Budget {
		return false
	}
	return a.Quota == nil || *a.Quota == *b.Quota
}

// secretScope is how an edge names a project in its secrets: the
// environment form EDGE_SECRET_<PROJECT>__<NAME> upper-cases it and writes
// '.' and '-' as '_'; a --secrets-dir may sit on a case-insensitive file
// system. Two projects with one scope would share their edge-local
// secrets, so no two may have one.
func secretScope(project string) string {
	return strings.ToUpper(strings.NewReplacer(".", "_", "-", "_").Replace(project))
}

// checkProjectScope refuses a new project name whose secret scope another
// project has (inside the creating transaction).
func (s *Store) checkProjectScope(ctx context.Context, tx *sql.Tx, name string) error {
	rows, err := tx.QueryContext(ctx, s.q(`SELECT name FROM projects`))
	if err != nil {
		return err
	}
	defer rows.Close()
	for rows.Next() {
		var other string
		if err := rows.Scan(&other); err != nil {
			return err
		}
		if other != name && secretScope(other) == secretScope(name) {
			return &DetailedError{Err: ErrConflict, Details: map[string]any{"field": "name"},
				Message: fmt.Sprintf("a project named like %q exists: names that differ only in case or in '.', '_' and '-' would share edge-local secrets", name)}
		}
	}
	return rows.Err()
}

// Project is a tenant grouping keys and deployments.
type Project struct {
	ID        string
	Name      string
	CreatedAt time.Time
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
