package origin

// Host and path-prefix claims: the requests a deployment can match belong to
// its project alone.
//
// An edge routes a request to the deployment whose hosts match the request's
// Host best (exact, then *.suffix, then a deployment without hosts, which
// matches every host) and, among those, whose path_prefix is the longest
// that the path falls under. So a deployment claims the set of requests
// (host, path) with host matched by one of its hosts (any host when it has
// none) and path under its path_prefix; were two projects' sets to overlap,
// whichever deployment routing prefers would take the other's requests —
// and their prompts, and with auth off, their users. The rule is therefore
// simple and strict: the request sets of two deployments of different
// projects never overlap. Within a project they may (routing picks the most
// specific, as before).
//
// The check runs inside the mutation's write transaction, after the
// revision counter row is locked: every writer of every replica sharing the
// store queues on that lock (PostgreSQL's READ COMMITTED then lets each
// statement see what the previous writer committed; SQLite's writers are
// serialised at BEGIN IMMEDIATE), so two replicas creating conflicting
// deployments at once cannot both succeed. A conflict's answer (409) never
// names the project that holds the claim.
//
// Claims live in table deployment_claims, one row per host of a deployment
// (or one row with kind "any" when it has none), keyed by the host's labels
// in reverse order ("api.example.com" → "com.example.api."), so that the
// claims that can overlap a new one are found by index: those whose key is
// a label prefix of the new key (wildcards above it, the same host, and
// deployments without hosts, whose key is "") and those whose key starts
// with the new key (hosts under a new wildcard). The exact test then runs in
// Go (claimsOverlap).

import (
	"context"
	"database/sql"
	"fmt"
	"net"
	"strings"

	"github.com/keymesh/keymesh/event"
)

const (
	claimAny      = "any"      // a deployment without hosts: every host
	claimExact    = "exact"    // one host name
	claimWildcard = "wildcard" // *.suffix: every name strictly under suffix
)

// claim is one host (or every host) of a deployment with its path prefix.
type claim struct {
	kind   string
	key    string // reversed labels with a trailing dot; "" for claimAny
	host   string // as the deployment names it, for messages; "" for claimAny
	prefix string
}

// reverseLabels turns "api.example.com" into "com.example.api.".
func reverseLabels(h string) string {
	labels := strings.Split(h, ".")
	var b strings.Builder
	b.Grow(len(h) + 1)
	for i := len(labels) - 1; i >= 0; i-- {
		b.WriteString(labels[i])
		b.WriteByte('.')
	}
	return b.String()
}

// claimsOf returns the claims of a validated deployment. A port in a host
// is ignored: edges route on the name, and a claim must never be narrower
// than what routing matches.
func claimsOf(d *event.Deployment) []claim {
	prefix := d.PathPrefix
	if prefix == "" {
		prefix = "/"
	}
	if len(d.Hosts) == 0 {
		return []claim{{kind: claimAny, prefix: prefix}}
	}
	seen := map[string]bool{}
	var out []claim
	for _, h := range d.Hosts {
		name := strings.ToLower(h)
		if hn, _, err := net.SplitHostPort(name); err == nil {
			name = hn
		}
		c := claim{kind: claimExact, host: h, prefix: prefix}
		if s, ok := strings.CutPrefix(name, "*."); ok {
			c.kind, name = claimWildcard, s
		}
		c.key = reverseLabels(name)
		if id := c.kind + " " + c.key; !seen[id] {
			seen[id] = true
			out = append(out, c)
		}
	}
	return out
}

// hostsOverlap reports whether some host name matches both claims.
func hostsOverlap(a, b claim) bool {
	switch {
	case a.kind == claimAny || b.kind == claimAny:
		return true
	case a.kind == claimExact && b.kind == claimExact:
		return a.key == b.key
	case a.kind == claimWildcard && b.kind == claimWildcard:
		return strings.HasPrefix(a.key, b.key) || strings.HasPrefix(b.key, a.key)
	case a.kind == claimWildcard:
		return len(b.key) > len(a.key) && strings.HasPrefix(b.key, a.key)
	default:
		return len(a.key) > len(b.key) && strings.HasPrefix(a.key, b.key)
	}
}

// underPrefix reports whether path falls under prefix as an edge routes:
// "/v1" covers "/v1" and "/v1/...", not "/v10".
func underPrefix(path, prefix string) bool {
	if !strings.HasPrefix(path, prefix) {
		return false
	}
	return strings.HasSuffix(prefix, "/") || len(path) == len(prefix) || path[len(prefix)] == '/'
}

// prefixesOverlap reports whether some path falls under both prefixes: that
// is so exactly when one falls under the other.
func prefixesOverlap(p, q string) bool { return underPrefix(p, q) || underPrefix(q, p) }

// claimsOverlap reports whether some request matches both claims.
func claimsOverlap(a, b claim) bool { return hostsOverlap(a, b) && prefixesOverlap(a.prefix, b.prefix) }

// claimConflict finds a claim of another project that overlaps one of d's,
// reading inside tx (which must hold the revision row lock). It returns the
// conflict error, or nil.
func (s *Store) claimConflict(ctx context.Context, tx *sql.Tx, d *event.Deployment) error {
	for _, c := range claimsOf(d) {
		theirs, err := s.candidateClaims(ctx, tx, d.Project, c)
		if err != nil {
			return err
		}
		for _, t := range theirs {
			if claimsOverlap(c, t) {
				what := "a deployment without hosts matches every host, and"
				details := map[string]any{"field": "hosts", "path_prefix": c.prefix}
				if c.kind != claimAny {
					what = fmt.Sprintf("host %q with", c.host)
					details["host"] = c.host
				}
				return &DetailedError{Err: ErrConflict, Details: details,
					Message: fmt.Sprintf("%s path_prefix %q overlaps a deployment of another project: hosts and paths belong to one project only", what, c.prefix)}
			}
		}
	}
	return nil
}

// candidateClaims returns the claims of projects other than project that
// may overlap c (a superset; claimsOverlap decides).
func (s *Store) candidateClaims(ctx context.Context, tx *sql.Tx, project string, c claim) ([]claim, error) {
	query := `SELECT kind, host_key, path_prefix FROM deployment_claims WHERE project_id <> ?`
	args := []any{project}
	if c.kind != claimAny {
		// Label prefixes of the key: "", "com.", "com.example.", ...
		var in []string
		for i := 0; i <= len(c.key); i++ {
			if i == 0 || c.key[i-1] == '.' {
				in = append(in, "?")
				args = append(args, c.key[:i])
			}
		}
		// Keys starting with c.key: c.key ends in '.', and '/' follows '.'.
		query += ` AND (host_key IN (` + strings.Join(in, ", ") + `) OR (host_key >= ? AND host_key < ?))`
		args = append(args, c.key, c.key[:len(c.key)-1]+"/")
	}
	rows, err := tx.QueryContext(ctx, s.q(query), args...)
	if err != nil {
		return nil, fmt.Errorf("reading host claims: %w", err)
	}
	defer rows.Close()
	var out []claim
	for rows.Next() {
		var t claim
		if err := rows.Scan(&t.kind, &t.key, &t.prefix); err != nil {
			return nil, err
		}
		out = append(out, t)
	}
	return out, rows.Err()
}

// writeClaims replaces the claims of deployment d.
func (s *Store) writeClaims(ctx context.Context, tx *sql.Tx, d *event.Deployment) error {
	if err := s.deleteClaims(ctx, tx, d.ID); err != nil {
		return err
	}
	for _, c := range claimsOf(d) {
		if _, err := tx.ExecContext(ctx, s.q(`INSERT INTO deployment_claims (deployment_id, project_id, kind, host_key, path_prefix) VALUES (?, ?, ?, ?, ?)`),
			d.ID, d.Project, c.kind, c.key, c.prefix); err != nil {
			return fmt.Errorf("writing host claims: %w", err)
		}
	}
	return nil
}

func (s *Store) deleteClaims(ctx context.Context, tx *sql.Tx, deploymentID string) error {
	if _, err := tx.ExecContext(ctx, s.q(`DELETE FROM deployment_claims WHERE deployment_id = ?`), deploymentID); err != nil {
		return fmt.Errorf("deleting host claims: %w", err)
	}
	return nil
}
