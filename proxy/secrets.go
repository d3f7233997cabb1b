package proxy

import (
	"log/slog"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"sync"
)

// secretStore resolves the edge-local upstream credentials that
// upstream_auth "inject" names. Secrets belong to a project: a deployment
// resolves a name only among its own project's secrets, so no tenant can
// name another's provider key. A secret is the environment variable
//
//	EDGE_SECRET_<PROJECT>__<NAME>
//
// if set and non-empty, else the file <dir>/<project>/<name> (its content,
// surrounding white space trimmed). In the variable, PROJECT is the project
// name upper-cased with '-' as '_', and exists only for project names made
// of lower-case letters, digits and single inner hyphens ("team-a" →
// TEAM_A): that mapping is one-to-one and never holds "__", so the first
// "__" always ends the project and no two projects share a variable (the
// secrets of any other project, "Team_A" say, are read from files only).
// NAME is the secret name upper-cased with '-' and '.' as '_': names of one
// project that differ only there share a variable, which only that
// project can read.
//
// Each (project, name) is resolved once — found or not — and kept until
// reload, so a request never reads the disk; SIGHUP reloads, so a rotated
// credential file takes effect without a restart. Safe for concurrent use.
type secretStore struct {
	dir string

	mu sync.RWMutex
	m  map[secretRef]secretValue
}

type secretRef struct{ project, name string }

type secretValue struct {
	v  string
	ok bool
}

// Names as the origin accepts them (origin/validate.go): they start with a
// letter or digit, so "." and ".." are no names, and hold no separator.
var (
	projectNameRE = regexp.MustCompile(`^[A-Za-z0-9][A-Za-z0-9._-]{0,62}$`)
	secretNameRE  = regexp.MustCompile(`^[A-Za-z0-9][A-Za-z0-9_.-]{0,127}$`)
	// envProjectRE: the project names with an environment form.
	envProjectRE = regexp.MustCompile(`^[a-z0-9]+(-[a-z0-9]+)*$`)
)

// get returns project's secret name, or false when no source holds a
// non-empty value, or when project or name is not a valid name (a record
// from an origin too old to say the project's name has none).
func (s *secretStore) get(project, name string) (string, bool) {
	if !projectNameRE.MatchString(project) || !secretNameRE.MatchString(name) {
		return "", false
	}
	ref := secretRef{project, name}
	s.mu.RLock()
	sv, cached := s.m[ref]
	s.mu.RUnlock()
	if cached {
		return sv.v, sv.ok
	}
	sv.v, sv.ok = s.resolve(project, name)
	s.mu.Lock()
	if s.m == nil {
		s.m = map[secretRef]secretValue{}
	}
	s.m[ref] = sv
	s.mu.Unlock()
	return sv.v, sv.ok
}

var secretEnvName = strings.NewReplacer("-", "_", ".", "_")

// secretEnv returns the environment variable of project's secret name, or
// "" when the project has no environment form.
func secretEnv(project, name string) string {
	if !envProjectRE.MatchString(project) {
		return ""
	}
	return "EDGE_SECRET_" + strings.ToUpper(strings.ReplaceAll(project, "-", "_")) + "__" +
		strings.ToUpper(secretEnvName.Replace(name))
}

func (s *secretStore) resolve(project, name string) (string, bool) {
	if env := secretEnv(project, name); env != "" {
		if v, ok := os.LookupEnv(env); ok && v != "" {
			return v, true
		}
	}
	if s.dir == "" {
		return "", false
	}
	b, err := os.ReadFile(filepath.Join(s.dir, project, name))
	if err != nil {
		return "", false
	}
	v := strings.TrimSpace(string(b))
	return v, v != ""
}

// reload forgets every resolved secret; the next request resolves afresh.
func (s *secretStore) reload() {
	s.mu.Lock()
	s.m = nil
	s.mu.Unlock()
}

// warnUnscoped logs (names only, never values) the secrets of the layout
// before secrets were scoped per project — files directly in the secrets
// directory, EDGE_SECRET_<NAME> variables without "__" — which are no longer
// read, so that an operator upgrading sees why a deployment now gets 502.
func (s *secretStore) warnUnscoped(log *slog.Logger) {
	if s.dir != "" {
		if entries, err := os.ReadDir(s.dir); err == nil {
			for _, e := range entries {
				if e.Type().IsRegular() {
					log.Warn("a file directly in --secrets-dir is not read: upstream secrets are per project, in <secrets-dir>/<project>/<name>",
						"file", e.Name())
				}
			}
		}
	}
	for _, kv := range os.Environ() {
		name, _, _ := strings.Cut(kv, "=")
		if strings.HasPrefix(name, "EDGE_SECRET_") && !strings.Contains(name[len("EDGE_SECRET_"):], "__") {
			log.Warn("an environment variable is not read: upstream secrets are per project, EDGE_SECRET_<PROJECT>__<NAME>",
				"variable", name)
		}
	}
}

// ReloadSecrets makes the next request read the upstream credentials again
// (env and --secrets-dir), as after a rotation of the files.
func (s *Proxy) ReloadSecrets() { s.secrets.reload() }
