package opcli

import (
	"context"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/keymesh/keymesh/internal/stack"
	"github.com/keymesh/keymesh/internal/testutil"
)

// origin edges shows each edge's state: live while it reports, stale once
// it has shut down (it says it leaves, so at once); a deployment's view
// shows its warnings and --strip-prefix.
func TestCLIEdgesLiveStale(t *testing.T) {
	st := stack.ForTest(t, stack.Config{Dir: t.TempDir(), AdminPassword: cliPassword})
	e, err := st.AddEdge(context.Background(), stack.EdgeOptions{Site: "eu"})
	if err != nil {
		t.Fatal(err)
	}
	r, _ := newRunner(t, st.Origin)
	if res := r.run(cliPassword+"\n", "login"); res.code != 0 {
		t.Fatalf("login: %+v", res)
	}
	row := func() []string {
		for _, line := range strings.Split(r.ok("edges"), "\n") {
			if f := strings.Fields(line); len(f) > 0 && f[0] == e.ID() {
				return f
			}
		}
		return nil
	}
	testutil.CheckFor(t, 10*time.Second, 0, func() error {
		if f := row(); len(f) == 0 || f[len(f)-1] != "live" {
			return fmt.Errorf("edge row %q, want it live", f)
		}
		return nil
	})
	// A deployment with no upstream for the edge's site says so.
	out := r.ok("deployments", "create", "only-us", "--upstream", "us=http://127.0.0.1:1")
	if !strings.Contains(out, `Warning:`) || !strings.Contains(out, `no upstream for site "eu"`) {
		t.Fatalf("deployments create without an upstream for site eu:\n%s", out)
	}
	// --strip-prefix sets strip_prefix, and the view says so.
	out = r.ok("deployments", "update", "only-us", "--path-prefix", "/us", "--strip-prefix")
	if !strings.Contains(out, "Strip prefix:") || !strings.Contains(out, "yes (") {
		t.Fatalf("deployments update --strip-prefix:\n%s", out)
	}
	out = r.ok("deployments", "update", "only-us", "--strip-prefix=false")
	if !strings.Contains(out, "no (") {
		t.Fatalf("deployments update --strip-prefix=false:\n%s", out)
	}

	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if err := e.Shutdown(ctx); err != nil {
		t.Fatal(err)
	}
	testutil.CheckFor(t, 2*time.Second, 0, func() error {
		if f := row(); len(f) == 0 || f[len(f)-1] != "stale" {
			return fmt.Errorf("edge row %q after its shutdown, want it stale", f)
		}
		return nil
	})
}
