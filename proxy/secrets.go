package proxy

import (
	"os"
	"strings"
	"sync"
)

// secretStore resolves the edge-local upstream credentials that
// upstream_auth "inject" names: env EDGE_SECRET_<NAME>, else the file
// <dir>/<name>. Each name is resolved once — found or not — and kept until
// reload, so a request never reads the disk; SIGHUP reloads, so a rotated
// credential file takes effect without a restart. Safe for concurrent use.
type secretStore struct {
	dir string

	mu sync.RWMutex
	m  map[string]secretValue
}

type secretValue struct {
	v  string
	ok bool
}

// get returns the secret name, or false when no source holds a non-empty
// value (or the name could escape dir).
func (s *secretStore) get(name string) (string, bool) {
	if name == "" {
		return "", false
	}
	s.mu.RLock()
	sv, cached := s.m[name]
	s.mu.RUnlock()
	if cached {
		return sv.v, sv.ok
	}
	sv.v, sv.ok = s.resolve(name)
	s.mu.Lock()
	if s.m == nil {
		s.m = map[string]secretValue{}
	}
	s.m[name] = sv
	s.mu.Unlock()
	return sv.v, sv.ok
}

var secretEnvName = strings.NewReplacer("-", "_", ".", "_")

func (s *secretStore) resolve(name string) (string, bool) {
	if v, ok := os.LookupEnv("EDGE_SECRET_" + strings.ToUpper(secretEnvName.Replace(name))); ok && v != "" {
		return v, true
	}
	if s.dir == "" || strings.ContainsAny(name, `/\`) || name == ".." || name == "." {
		return "", false
	}
	b, err := os.ReadFile(s.dir + string(os.PathSeparator) + name)
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

// ReloadSecrets makes the next request read the upstream credentials again
// (env and --secrets-dir), as after a rotation of the files.
func (s *Server) ReloadSecrets() { s.secrets.reload() }
