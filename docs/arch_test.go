package docs

import (
	"bytes"
	"os/exec"
	"path/filepath"
	"runtime"
	"slices"
	"sort"
	"strings"
	"testing"
)

// module is this repository's module path; rules name its packages
// relative to it ("cache", "internal/...") and others in full.
const module = "github.com/keymesh/keymesh"

// An importRule says that none of the packages matching from (less except)
// may import, directly or through any chain of non-test imports, a package
// matching one of forbid unless it also matches allow. A pattern "p" names
// the package p; "p/..." names p and every package below it. Test files
// are not held to the rules (an origin test may start an edge).
type importRule struct {
	from, except  []string
	forbid, allow []string
	why           string
}

var (
	natsLibs = []string{"github.com/nats-io/..."}
	edgeLibs = []string{"github.com/hashicorp/memberlist/...", "github.com/dgraph-io/ristretto/...", "github.com/valyala/fasthttp/..."}
)

// importRules is the dependency direction docs/architecture.md draws.
var importRules = []importRule{
	{from: []string{"apikey"}, forbid: append(append([]string{module + "/..."}, natsLibs...), edgeLibs...),
		why: "the key format is a leaf: every side parses keys, none of them should pull in the rest"},
	{from: []string{"event"}, forbid: append(append([]string{module + "/..."}, natsLibs...), edgeLibs...), allow: []string{"apikey"},
		why: "the signed record is the wire contract; it knows keys and nothing of transports or caches"},
	{from: []string{"cluster"}, forbid: append([]string{module + "/...", "github.com/dgraph-io/ristretto/...", "github.com/valyala/fasthttp/..."}, natsLibs...),
		allow: []string{"internal/..."},
		why:   "gossip carries sealed bytes it never opens; the edge wires it to NATS and the cache"},
	{from: []string{"origin/..."}, forbid: append([]string{"proxy/...", "edge/...", "cache/...", "cluster/...", "bench/..."}, edgeLibs...),
		why: "the control plane knows nothing of edges' internals: they meet only in event and NATS subjects"},
	{from: []string{"origin/apiclient"}, forbid: append([]string{module + "/..."}, natsLibs...), allow: []string{"api"},
		why: "a REST client speaks the wire types only: it must not link the server it talks to (nor NATS)"},
	{from: []string{"api"}, forbid: append(append([]string{module + "/..."}, natsLibs...), edgeLibs...),
		why: "the REST wire types are a leaf both origin and its clients import"},
	{from: []string{"cache/..."}, forbid: append([]string{"proxy/...", "edge/...", "cluster/...", "origin/...", "github.com/valyala/fasthttp/...", "github.com/hashicorp/memberlist/..."}, natsLibs...),
		why: "the View is below the data plane and the gossip, and is filled by whoever feeds it (edge/feed): it does not speak NATS"},
	{from: []string{"proxy/..."}, forbid: append([]string{"edge/...", "cluster/...", "origin/...", "bench/...", "internal/natsauth", "internal/dirlock"}, natsLibs...),
		why: "the data plane serves requests against a View; NATS, gossip and the data dir are the edge node's (package edge)"},
	{from: []string{"edge/..."}, forbid: []string{"origin/...", "bench/..."},
		why: "an edge depends on the origin's events, never on its code"},
	{from: []string{"internal/..."}, except: []string{"internal/opcli/...", "internal/stack"},
		forbid: []string{module + "/..."}, allow: []string{"internal/...", "apikey", "event"},
		why: "internal packages are shared plumbing below the products (excepted: the operator CLI, internal/opcli, a client; and internal/stack, which assembles origin and edges for tests and bench runs)"},
	{from: []string{module + "/..."}, except: []string{"cmd/..."}, forbid: []string{"cmd/..."},
		why: "commands are thin mains; what they share lives in internal/*"},
	{from: []string{module + "/..."}, except: []string{"internal/testutil"}, forbid: []string{"internal/testutil"},
		why: "test scaffolding is imported only by _test.go files"},
	{from: []string{module + "/..."}, except: []string{"cmd/bench", "internal/netcut", "internal/stack"}, forbid: []string{"internal/netcut"},
		why: "cutting links on purpose is for tests and bench runs only"},
	{from: []string{module + "/..."}, except: []string{"cmd/bench", "internal/stack"}, forbid: []string{"internal/stack"},
		why: "a whole stack in one process is for tests and bench runs, never part of a product"},
	{from: []string{module + "/..."}, except: []string{"cmd/bench", "bench"}, forbid: []string{"bench"},
		why: "the harness is driven by cmd/bench and tests, never by the products"},
}

// match reports whether pkg (a full import path) matches pattern, which is
// relative to the module unless it starts with a domain.
func match(pattern, pkg string) bool {
	if first, _, _ := strings.Cut(pattern, "/"); !strings.Contains(first, ".") {
		pattern = module + "/" + pattern
	}
	if p, ok := strings.CutSuffix(pattern, "/..."); ok {
		return pkg == p || strings.HasPrefix(pkg, p+"/")
	}
	return pkg == pattern
}

func matchAny(patterns []string, pkg string) bool {
	return slices.ContainsFunc(patterns, func(p string) bool { return match(p, pkg) })
}

// importGraph returns the non-test imports of every non-standard package
// the module's packages depend on, and the module's own packages.
func importGraph(t *testing.T) (graph map[string][]string, own []string) {
	t.Helper()
	gobin := filepath.Join(runtime.GOROOT(), "bin", "go")
	cmd := exec.Command(gobin, "list", "-deps", "-f", "{{.ImportPath}}\t{{.Standard}}\t{{.Module}}\t{{join .Imports \" \"}}", "./...")
	cmd.Dir = repoRoot(t)
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	if err != nil {
		t.Fatalf("go list: %v\n%s", err, stderr.String())
	}
	graph = map[string][]string{}
	for line := range strings.SplitSeq(strings.TrimSpace(string(out)), "\n") {
		f := strings.Split(line, "\t")
		if len(f) != 4 {
			t.Fatalf("go list line %q", line)
		}
		if f[1] == "true" {
			continue
		}
		graph[f[0]] = strings.Fields(f[3])
		if f[2] == module {
			own = append(own, f[0])
		}
	}
	sort.Strings(own)
	return graph, own
}

// chain is the shortest import chain from start to a package matching
// forbid and not allow, or nil.
func chain(graph map[string][]string, start string, forbid, allow []string) []string {
	parent := map[string]string{start: ""}
	queue := []string{start}
	for len(queue) > 0 {
		p := queue[0]
		queue = queue[1:]
		for _, dep := range graph[p] {
			if _, seen := parent[dep]; seen {
				continue
			}
			parent[dep] = p
			if matchAny(forbid, dep) && !matchAny(allow, dep) {
				var path []string
				for q := dep; q != ""; q = parent[q] {
					path = append(path, strings.TrimPrefix(q, module+"/"))
				}
				slices.Reverse(path)
				return path
			}
			queue = append(queue, dep)
		}
	}
	return nil
}

// The import direction docs/architecture.md describes holds: each rule's
// packages reach none of what it forbids.
func TestImportRules(t *testing.T) {
	graph, own := importGraph(t)
	if !slices.Contains(own, module+"/apikey") {
		t.Fatalf("go list found %d packages of the module, not apikey: %v", len(own), own)
	}
	for _, r := range importRules {
		var from []string
		for _, p := range own {
			if matchAny(r.from, p) && !matchAny(r.except, p) {
				from = append(from, p)
			}
		}
		if len(from) == 0 {
			// A rule about a package that is gone would hold forever.
			t.Errorf("rule for %v matches no package (renamed?)", r.from)
			continue
		}
		for _, p := range from {
			for _, f := range r.forbid { // one chain per pattern: every break at once
				if c := chain(graph, p, []string{f}, r.allow); c != nil {
					t.Errorf("%s must not import %s (%s), but does: %s", strings.TrimPrefix(p, module+"/"), f, r.why, strings.Join(c, " → "))
				}
			}
		}
	}
}

// The rule checker finds what it should: a transitive chain, allow and
// except, and module-relative patterns.
func TestImportRuleChecker(t *testing.T) {
	m := func(p string) string { return module + "/" + p }
	graph := map[string][]string{
		m("a"):      {m("b"), "fmt"},
		m("b"):      {m("c/d"), m("internal/x")},
		m("c/d"):    {"github.com/nats-io/nats.go"},
		m("direct"): {m("c/d")},
	}
	if got := strings.Join(chain(graph, m("a"), natsLibs, nil), " → "); got != "a → b → c/d → github.com/nats-io/nats.go" {
		t.Errorf("chain %q", got)
	}
	if c := chain(graph, m("a"), []string{module + "/..."}, []string{"b", "c/...", "internal/..."}); c != nil {
		t.Errorf("allowed packages reported: %v", c)
	}
	if got := strings.Join(chain(graph, m("direct"), []string{"c/..."}, nil), " → "); got != "direct → c/d" {
		t.Errorf("chain %q", got)
	}
	for pattern, pkg := range map[string]string{"c/...": m("c"), "internal/...": m("internal/x"), "github.com/nats-io/...": "github.com/nats-io/nats.go"} {
		if !match(pattern, pkg) {
			t.Errorf("%q does not match %q", pattern, pkg)
		}
	}
	if match("c/...", m("cc")) || match("c", m("c/d")) {
		t.Error("a pattern matched a sibling or a child it should not")
	}
}
