package bench

import (
	"context"
	"net/http"
	"os"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"
)

// inCI reports whether CI is set (.ci/run sets it), as the PostgreSQL store
// tests read it: there a missing service fails the test instead of skipping
// it, so the code it covers cannot silently go unrun.
func inCI() bool {
	v := strings.ToLower(strings.TrimSpace(os.Getenv("CI")))
	return v != "" && v != "0" && v != "false"
}

// TestNginxStaticMap starts nginx with a static key map in front of the mock
// upstream. Without nginx (make test-deps installs it when root) it skips,
// or fails under CI.
func TestNginxStaticMap(t *testing.T) {
	if _, err := FindNginx(""); err != nil {
		if inCI() {
			t.Fatalf("CI is set and %v", err)
		}
		t.Skip(err)
	}
	var mu sync.Mutex
	var forwarded []string
	u := startUpstream(t, UpstreamConfig{OnRequest: func(r *http.Request, _ []byte) {
		mu.Lock()
		defer mu.Unlock()
		forwarded = append(forwarded, r.Header.Get("X-API-Key")+r.Header.Get("Authorization"))
	}})
	key := UnknownKeys(1)[0]
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	n, err := StartNginx(ctx, NginxConfig{Upstream: u.URL(), Keys: []string{key}, Workers: "1"})
	if err != nil {
		t.Fatal(err)
	}
	pid := n.cmd.Process.Pid
	stopped := false
	defer func() {
		if !stopped {
			n.Stop()
		}
	}()
	c := &http.Client{Timeout: 5 * time.Second}
	send := func(hdr, val string) int {
		t.Helper()
		req, _ := http.NewRequest(http.MethodPost, n.URL+"/v1/chat/completions", strings.NewReader(loadChatBody))
		if hdr != "" {
			req.Header.Set(hdr, val)
		}
		resp, err := c.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		return resp.StatusCode
	}
	if got := send("X-API-Key", key); got != 200 {
		t.Errorf("valid X-API-Key: %d", got)
	}
	if got := send("Authorization", "Bearer "+key); got != 200 {
		t.Errorf("valid Bearer: %d", got)
	}
	for _, bad := range []string{"", "km_nope", UnknownKeys(1)[0]} {
		if got := send("X-API-Key", bad); got != 401 {
			t.Errorf("key %q: %d, want 401", bad, got)
		}
	}
	mu.Lock()
	defer mu.Unlock()
	for _, f := range forwarded {
		if f != "" {
			t.Errorf("a credential was forwarded upstream: %q", f)
		}
	}
	n.Stop()
	stopped = true
	if err := syscall.Kill(pid, 0); err == nil {
		t.Errorf("nginx %d still running after Stop", pid)
	}
}
