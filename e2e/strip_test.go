package e2e

import (
	"bufio"
	"fmt"
	"net"
	"net/http"
	"net/http/httptest"
	"sync"
	"testing"
	"time"

	"github.com/keymesh/keymesh/internal/testutil"
)

// rawGet sends one GET with the request target exactly as given (no client
// library cleaning it) and returns the status.
func rawGet(t *testing.T, addr, target string) int {
	t.Helper()
	c, err := net.DialTimeout("tcp", addr, 5*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	_ = c.SetDeadline(time.Now().Add(10 * time.Second))
	if _, err := fmt.Fprintf(c, "GET %s HTTP/1.1\r\nHost: strip.test\r\nConnection: close\r\n\r\n", target); err != nil {
		t.Fatal(err)
	}
	resp, err := http.ReadResponse(bufio.NewReader(c), nil)
	if err != nil {
		t.Fatalf("GET %s: %v", target, err)
	}
	resp.Body.Close()
	return resp.StatusCode
}

// TestStripPrefix: a deployment with strip_prefix forwards, through a real
// edge, the path without its path_prefix; paths that only look as if they
// were under the prefix (dot segments, encoded slashes and dots) are
// resolved before routing and never reach the upstream as a path outside
// it. Without strip_prefix the upstream sees the prefix.
func TestStripPrefix(t *testing.T) {
	s := newStack(t)
	var mu sync.Mutex
	var got []string
	up := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		mu.Lock()
		got = append(got, r.RequestURI)
		mu.Unlock()
		w.Header().Set("Content-Type", "application/json")
		_, _ = w.Write([]byte(`{}`))
	}))
	defer up.Close()
	seen := func() []string {
		mu.Lock()
		defer mu.Unlock()
		out := got
		got = nil
		return out
	}
	var d struct {
		ID          string `json:"id"`
		StripPrefix bool   `json:"strip_prefix"`
	}
	rev := s.call(http.MethodPost, "/v1/projects/"+project+"/deployments", map[string]any{"name": "stripped",
		"path_prefix": "/openai", "strip_prefix": true, "auth_enabled": false,
		"upstreams": map[string][]string{"*": {up.URL + "/base"}}}, &d)
	if !d.StripPrefix {
		t.Fatal("strip_prefix not in the answer")
	}
	e := s.startEdge(edgeOpts{})
	waitApplied(t, rev, e)

	for _, c := range []struct {
		target string
		status int
		want   string // what the upstream saw; "" for nothing
	}{
		{"/openai/v1/chat/completions?n=1", 200, "/base/v1/chat/completions?n=1"},
		{"/openai", 200, "/base/"},
		{"/openai/", 200, "/base/"},
		{"//openai//v1/./models", 200, "/base/v1/models"},
		{"/openai/v1%2Fmodels", 200, "/base/v1/models"},
		{"/openai/a/../b", 200, "/base/b"},
		// Out of the prefix once resolved: no deployment, nothing sent.
		{"/openai/../x", 404, ""},
		{"/openai/%2e%2e/x", 404, ""},
		{"/openai%2F..%2Fx", 404, ""},
		{"/openai/..%2F..%2Fetc/passwd", 404, ""},
		{"/openaix/v1", 404, ""},
		// Refused outright, as on any deployment.
		{"/openai/%252e%252e/x", 400, ""},
		{"/openai/..;/x", 400, ""},
		{`/openai/..\x`, 400, ""},
	} {
		if st := rawGet(t, e.Addr(), c.target); st != c.status {
			t.Errorf("GET %s: status %d, want %d", c.target, st, c.status)
		}
		saw := seen()
		switch {
		case c.want == "" && len(saw) != 0:
			t.Errorf("GET %s reached the upstream as %v", c.target, saw)
		case c.want != "" && (len(saw) != 1 || saw[0] != c.want):
			t.Errorf("GET %s: upstream saw %v, want %s", c.target, saw, c.want)
		}
	}

	// The audit record keeps the path the client asked for.
	testutil.CheckFor(t, 10*time.Second, 0, func() error {
		recs, raw := s.auditRecords("deployment=" + d.ID + "&limit=100")
		for _, r := range recs {
			if r["path"] == "/openai/v1/chat/completions" {
				return nil
			}
		}
		return fmt.Errorf("no audit record with the client's path: %s", raw)
	})

	// strip_prefix off: the prefix goes upstream.
	rev = s.call(http.MethodPatch, "/v1/projects/"+project+"/deployments/"+d.ID, map[string]any{"strip_prefix": false}, &d)
	waitApplied(t, rev, e)
	if st := rawGet(t, e.Addr(), "/openai/v1/models"); st != 200 {
		t.Fatalf("status %d", st)
	}
	if saw := seen(); len(saw) != 1 || saw[0] != "/base/openai/v1/models" {
		t.Fatalf("without strip_prefix the upstream saw %v", saw)
	}
}
