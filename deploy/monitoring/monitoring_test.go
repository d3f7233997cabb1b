// Package monitoring holds the tests of deploy/monitoring: the Prometheus
// alert rules (alerts.yml) and the Grafana dashboard (dashboard.json) name
// only metrics a real edge or origin exports, every alert carries what an
// operator needs (for, severity, summary, description, a runbook section
// that exists in docs/monitoring.md), and the dashboard is well formed.
// promtool checks the rules' syntax and behaviour (make check-monitoring);
// these tests keep the files honest when metrics are renamed.
package monitoring

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"sort"
	"strings"
	"testing"
	"time"

	"github.com/keymesh/keymesh/apikey"
	"github.com/keymesh/keymesh/internal/stack"
	"github.com/keymesh/keymesh/internal/testutil"
)

// metricName is how the rules and the dashboard name keymesh's metrics:
// in PromQL, annotations and template variables alike.
var metricName = regexp.MustCompile(`\bkeymesh_[a-z_]+`)

func read(t *testing.T, name string) []byte {
	t.Helper()
	b, err := os.ReadFile(name)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// namesIn returns the keymesh_* metric names a file mentions.
func namesIn(t *testing.T, name string) []string {
	t.Helper()
	seen := map[string]bool{}
	for _, m := range metricName.FindAllString(string(read(t, name)), -1) {
		seen[m] = true
	}
	var out []string
	for m := range seen {
		out = append(out, m)
	}
	sort.Strings(out)
	return out
}

// scrape returns the names of the samples a /metrics answer holds (a
// histogram's _bucket, _sum and _count, as PromQL names them).
func scrape(t *testing.T, url string, into map[string]bool) {
	t.Helper()
	resp, err := http.Get(url)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		t.Fatalf("GET %s: %s", url, resp.Status)
	}
	sc := bufio.NewScanner(resp.Body)
	sc.Buffer(make([]byte, 0, 64<<10), 1<<20)
	for sc.Scan() {
		line := sc.Text()
		if line == "" || strings.HasPrefix(line, "#") {
			continue
		}
		if i := strings.IndexAny(line, "{ "); i > 0 {
			into[line[:i]] = true
		}
	}
	if err := sc.Err(); err != nil {
		t.Fatal(err)
	}
}

// exported starts an origin and an edge (gossiping, with an admin
// listener), sends the traffic that makes every vector and histogram
// metric have a series (a proxied, metered request; a cache miss for an
// unknown key; the stack's admin login), and returns the sample names both
// /metrics answers hold.
func exported(t *testing.T) map[string]bool {
	t.Helper()
	upstream := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		_, _ = io.Copy(io.Discard, r.Body)
		w.Header().Set("Content-Type", "application/json")
		_, _ = io.WriteString(w, `{"id":"c1","object":"chat.completion","model":"m","choices":[{"index":0,"message":{"role":"assistant","content":"hi"},"finish_reason":"stop"}],"usage":{"prompt_tokens":3,"completion_tokens":2,"total_tokens":5}}`)
	}))
	t.Cleanup(upstream.Close)

	s := stack.ForTest(t, stack.Config{Edges: 1, Edge: stack.EdgeOptions{Admin: true, Gossip: true, Site: "eu"}})
	e := s.Edges()[0]
	ctx := context.Background()
	var rev uint64
	for _, d := range []map[string]any{
		{"name": "open", "path_prefix": "/open", "auth_enabled": false, "upstreams": map[string][]string{"*": {upstream.URL}}},
		{"name": "keyed", "path_prefix": "/keyed", "upstreams": map[string][]string{"*": {upstream.URL}}},
	} {
		r, err := s.API.Do(ctx, http.MethodPost, "/v1/projects/default/deployments", d, nil)
		if err != nil {
			t.Fatalf("creating deployment %v: %v", d["name"], err)
		}
		rev = r
	}
	testutil.CheckFor(t, 10*time.Second, 0, func() error {
		if got := e.View().AppliedRevision(); got < rev {
			return fmt.Errorf("edge applied %d, want %d", got, rev)
		}
		return nil
	})

	post := func(path, key string) int {
		req, err := http.NewRequest(http.MethodPost, e.URL+path,
			strings.NewReader(`{"model":"m","messages":[{"role":"user","content":"hello"}]}`))
		if err != nil {
			t.Fatal(err)
		}
		req.Header.Set("Content-Type", "application/json")
		if key != "" {
			req.Header.Set("Authorization", "Bearer "+key)
		}
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		_, _ = io.Copy(io.Discard, resp.Body)
		resp.Body.Close()
		return resp.StatusCode
	}
	if code := post("/open/v1/chat/completions", ""); code != http.StatusOK {
		t.Fatalf("a request through the edge: %d", code)
	}
	unknown, err := apikey.Generate()
	if err != nil {
		t.Fatal(err)
	}
	if code := post("/keyed/v1/chat/completions", unknown); code < 400 || code >= 500 {
		t.Fatalf("an unknown key through the edge: %d, want a refusal", code)
	}

	names := map[string]bool{}
	scrape(t, s.OriginURL+"/metrics", names)
	scrape(t, e.AdminURL+"/metrics", names)
	return names
}

// Every keymesh_* metric the rules and the dashboard name is exported by a
// real origin or edge: a renamed or removed metric fails here rather than
// leaving an alert that can never fire or a panel that stays empty.
func TestMetricsExist(t *testing.T) {
	names := exported(t)
	for _, m := range []string{"keymesh_edge_current", "keymesh_origin_revision"} {
		if !names[m] {
			t.Fatalf("the scrape parser found no %s in %d names: it is broken", m, len(names))
		}
	}
	for _, file := range []string{"alerts.yml", "dashboard.json"} {
		used := namesIn(t, file)
		if len(used) < 15 {
			t.Fatalf("%s names only %d keymesh metrics (%v): the pattern is broken", file, len(used), used)
		}
		for _, m := range used {
			if !names[m] {
				t.Errorf("%s names %s, which neither the origin nor the edge exports", file, m)
			}
		}
	}
}

// alert is one rule of alerts.yml as the line-based reader below sees it.
type alert struct {
	name  string
	line  int
	lines []string
}

// alerts splits alerts.yml at its "- alert:" items. The file is YAML that
// promtool checks; this reader only needs each item's own lines.
func alerts(t *testing.T) []alert {
	t.Helper()
	var out []alert
	for i, l := range strings.Split(string(read(t, "alerts.yml")), "\n") {
		trimmed := strings.TrimSpace(l)
		switch {
		case strings.HasPrefix(trimmed, "- alert:"):
			out = append(out, alert{name: strings.TrimSpace(strings.TrimPrefix(trimmed, "- alert:")), line: i + 1})
		case strings.HasPrefix(trimmed, "- name:"), strings.HasPrefix(trimmed, "- record:"):
			out = append(out, alert{line: i + 1}) // ends the previous alert
		case len(out) > 0:
			out[len(out)-1].lines = append(out[len(out)-1].lines, trimmed)
		}
	}
	return slices.DeleteFunc(out, func(a alert) bool { return a.name == "" })
}

func (a alert) field(key string) (string, bool) {
	for _, l := range a.lines {
		if v, ok := strings.CutPrefix(l, key+":"); ok {
			return strings.Trim(strings.TrimSpace(v), `"`), true
		}
	}
	return "", false
}

// headingSlug is GitHub's anchor of an ATX heading's text (as docs/'s
// link check computes it, for the plain headings the runbook uses).
func headingSlug(h string) string {
	var b strings.Builder
	for _, r := range strings.ToLower(h) {
		switch {
		case r >= 'a' && r <= 'z', r >= '0' && r <= '9', r == '-', r == '_':
			b.WriteRune(r)
		case r == ' ':
			b.WriteByte('-')
		}
	}
	return b.String()
}

// Every alert waits (for:), says how urgent it is (severity critical or
// warning), explains itself (summary, description) and names a section of
// docs/monitoring.md that exists and is titled by the alert's name; and
// the concerns the issue lists each have an alert.
func TestAlertsCarryRunbooks(t *testing.T) {
	runbook := map[string]bool{}
	for _, l := range strings.Split(string(read(t, filepath.Join("..", "..", "docs", "monitoring.md"))), "\n") {
		if h, ok := strings.CutPrefix(l, "### "); ok {
			runbook[headingSlug(strings.TrimSpace(h))] = true
		}
	}
	as := alerts(t)
	if len(as) < 10 {
		t.Fatalf("found %d alerts in alerts.yml: the reader is broken", len(as))
	}
	seen := map[string]bool{}
	for _, a := range as {
		if seen[a.name] {
			t.Errorf("alerts.yml:%d: %s defined twice", a.line, a.name)
		}
		seen[a.name] = true
		if v, ok := a.field("for"); !ok || v == "" {
			t.Errorf("alerts.yml:%d: %s has no for:", a.line, a.name)
		}
		if v, _ := a.field("severity"); v != "critical" && v != "warning" {
			t.Errorf("alerts.yml:%d: %s has severity %q, want critical or warning", a.line, a.name, v)
		}
		for _, k := range []string{"summary", "description"} {
			if v, _ := a.field(k); v == "" {
				t.Errorf("alerts.yml:%d: %s has no %s annotation", a.line, a.name, k)
			}
		}
		rb, _ := a.field("runbook")
		doc, anchor, _ := strings.Cut(rb, "#")
		if doc != "docs/monitoring.md" || anchor != strings.ToLower(a.name) || !runbook[anchor] {
			t.Errorf("alerts.yml:%d: %s has runbook %q, want docs/monitoring.md#%s naming a \"### %s\" section of docs/monitoring.md",
				a.line, a.name, rb, strings.ToLower(a.name), a.name)
		}
	}
	// The concerns issue 16 asks alerts for, by the metric each watches.
	exprs := map[string]string{}
	for _, a := range as {
		exprs[a.name] = strings.Join(a.lines, "\n")
	}
	for _, want := range []string{"keymesh_edge_revision_lag", "keymesh_edge_current", `up{job="keymesh-edge"}`,
		"keymesh_edge_lookups_shed_total", "keymesh_edge_audit_dropped_total", "keymesh_origin_audit_dropped_total",
		`keymesh_edge_usage_dropped_total{reason="spool_full"}`, "keymesh_origin_stream_conflict",
		`keymesh_edge_requests_total{code="502"}`, `keymesh_edge_requests_total{code=~"5.."}`,
		`keymesh_origin_http_requests_total{code=~"5.."}`, "keymesh_origin_nats_connected", "keymesh_edge_nats_connected"} {
		found := false
		for _, e := range exprs {
			found = found || strings.Contains(e, want)
		}
		if !found {
			t.Errorf("no alert watches %s", want)
		}
	}
}

// dashboard is the part of Grafana's dashboard model the lint reads.
type dashboard struct {
	UID           string  `json:"uid"`
	Title         string  `json:"title"`
	SchemaVersion int     `json:"schemaVersion"`
	Panels        []panel `json:"panels"`
	Templating    struct {
		List []struct {
			Name  string `json:"name"`
			Type  string `json:"type"`
			Query any    `json:"query"`
		} `json:"list"`
	} `json:"templating"`
}

type panel struct {
	ID         int    `json:"id"`
	Type       string `json:"type"`
	Title      string `json:"title"`
	Datasource *struct {
		Type string `json:"type"`
		UID  string `json:"uid"`
	} `json:"datasource"`
	GridPos struct{ H, W, X, Y int } `json:"gridPos"`
	Targets []struct {
		RefID string `json:"refId"`
		Expr  string `json:"expr"`
	} `json:"targets"`
	Panels []panel `json:"panels"` // a collapsed row's
}

func loadDashboard(t *testing.T) (dashboard, []panel) {
	t.Helper()
	var d dashboard
	dec := json.NewDecoder(bytes.NewReader(read(t, "dashboard.json")))
	if err := dec.Decode(&d); err != nil {
		t.Fatalf("dashboard.json is not a dashboard: %v", err)
	}
	var all []panel
	for _, p := range d.Panels {
		all = append(all, p)
		all = append(all, p.Panels...)
	}
	return d, all
}

// The dashboard is a well-formed Grafana dashboard: a uid, a title and a
// schema version; the datasource, site, edge and origin variables; unique
// panel ids; every panel but a row on the chosen Prometheus datasource
// with queries that have an expression, placed on the 24-column grid
// without overlapping; each edge query filtered by $site and $edge, each
// origin query by $origin; an Edges and an Origin row.
func TestDashboardLint(t *testing.T) {
	d, all := loadDashboard(t)
	if d.UID == "" || d.Title == "" || d.SchemaVersion < 30 {
		t.Errorf("uid %q, title %q, schemaVersion %d", d.UID, d.Title, d.SchemaVersion)
	}
	vars := map[string]string{}
	for _, v := range d.Templating.List {
		vars[v.Name] = v.Type
	}
	for name, typ := range map[string]string{"datasource": "datasource", "site": "query", "edge": "query", "origin": "query"} {
		if vars[name] != typ {
			t.Errorf("template variable $%s: type %q, want %q", name, vars[name], typ)
		}
	}
	ids := map[int]string{}
	rows := map[string]bool{}
	type rect struct{ x0, y0, x1, y1 int }
	var placed []rect
	var titles []string
	for _, p := range all {
		if prev, dup := ids[p.ID]; dup || p.ID <= 0 {
			t.Errorf("panel %q has id %d (also %q)", p.Title, p.ID, prev)
		}
		ids[p.ID] = p.Title
		g := p.GridPos
		if g.W < 1 || g.H < 1 || g.X < 0 || g.Y < 0 || g.X+g.W > 24 {
			t.Errorf("panel %q: gridPos %+v is off the 24-column grid", p.Title, g)
		}
		r := rect{g.X, g.Y, g.X + g.W, g.Y + g.H}
		for i, q := range placed {
			if r.x0 < q.x1 && q.x0 < r.x1 && r.y0 < q.y1 && q.y0 < r.y1 {
				t.Errorf("panel %q overlaps panel %q", p.Title, titles[i])
			}
		}
		placed, titles = append(placed, r), append(titles, p.Title)
		if p.Type == "row" {
			rows[p.Title] = true
			continue
		}
		if p.Title == "" || p.Type == "" {
			t.Errorf("panel %d: title %q, type %q", p.ID, p.Title, p.Type)
		}
		if p.Datasource == nil || p.Datasource.Type != "prometheus" || p.Datasource.UID != "${datasource}" {
			t.Errorf("panel %q: datasource %+v, want prometheus ${datasource}", p.Title, p.Datasource)
		}
		if len(p.Targets) == 0 {
			t.Errorf("panel %q has no targets", p.Title)
		}
		refs := map[string]bool{}
		for _, tg := range p.Targets {
			if strings.TrimSpace(tg.Expr) == "" || tg.RefID == "" || refs[tg.RefID] {
				t.Errorf("panel %q: target %q has expr %q (refIds must be unique, exprs set)", p.Title, tg.RefID, tg.Expr)
			}
			refs[tg.RefID] = true
			if strings.Contains(tg.Expr, "keymesh_edge_") &&
				(!strings.Contains(tg.Expr, `site=~"$site"`) || !strings.Contains(tg.Expr, `edge=~"$edge"`)) {
				t.Errorf("panel %q: edge query %q is not filtered by $site and $edge", p.Title, tg.Expr)
			}
			if strings.Contains(tg.Expr, "keymesh_origin_") && !strings.Contains(tg.Expr, `instance=~"$origin"`) {
				t.Errorf("panel %q: origin query %q is not filtered by $origin", p.Title, tg.Expr)
			}
		}
	}
	for _, r := range []string{"Edges", "Origin"} {
		if !rows[r] {
			t.Errorf("no %q row", r)
		}
	}
}

// grafanaVars are the dashboard's variables as a query would see them,
// for the PromQL check.
var grafanaVars = strings.NewReplacer("$__rate_interval", "5m", "$site", ".*", "$edge", ".*", "$origin", ".*")

// Every query of the dashboard is PromQL that Prometheus parses: promtool
// checks them as recording rules (its rules check parses each expression).
// Skipped without promtool (make test-deps and make check-monitoring
// install it), failed under CI.
func TestDashboardPromQL(t *testing.T) {
	promtool, err := exec.LookPath("promtool")
	if err != nil {
		promtool = "/usr/bin/promtool" // Debian's, off PATH
		if _, err := os.Stat(promtool); err != nil {
			if os.Getenv("CI") != "" {
				t.Fatal("promtool not found (CI): scripts/promtool.sh installs it (make test-deps)")
			}
			t.Skip("promtool not found: scripts/promtool.sh (make test-deps, make check-monitoring) installs Debian's prometheus package")
		}
	}
	_, all := loadDashboard(t)
	var rules strings.Builder
	rules.WriteString("groups:\n  - name: dashboard\n    rules:\n")
	n := 0
	for _, p := range all {
		for _, tg := range p.Targets {
			expr, err := json.Marshal(grafanaVars.Replace(tg.Expr)) // a JSON string is a YAML string
			if err != nil {
				t.Fatal(err)
			}
			fmt.Fprintf(&rules, "      - record: dashboard:panel%d:%s\n        expr: %s\n", p.ID, strings.ToLower(tg.RefID), expr)
			n++
		}
	}
	file := filepath.Join(t.TempDir(), "dashboard-rules.yml")
	if err := os.WriteFile(file, []byte(rules.String()), 0o600); err != nil {
		t.Fatal(err)
	}
	out, err := exec.Command(promtool, "check", "rules", file).CombinedOutput()
	if err != nil {
		t.Fatalf("promtool check rules on the dashboard's %d queries: %v\n%s", n, err, out)
	}
	if want := fmt.Sprintf("%d rules found", n); !strings.Contains(string(out), want) {
		t.Errorf("promtool found other than %d rules:\n%s", n, out)
	}
}
