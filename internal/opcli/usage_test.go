package opcli

import (
	"context"
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/keymesh/keymesh/api"
	"github.com/keymesh/keymesh/event"
	"github.com/keymesh/keymesh/internal/natsauth"
	"github.com/keymesh/keymesh/internal/testutil"
	"github.com/keymesh/keymesh/origin/apiclient"
)

// origin usage prints GET /v1/usage's sums as a table with the grouped
// columns, or the API's JSON, for records an edge published.
func TestCLIUsage(t *testing.T) {
	s := startOrigin(t)
	r, _ := newRunner(t, s)
	ctx := context.Background()
	ac := &apiclient.Client{BaseURL: "http://" + s.Addr()}
	if _, err := ac.Login(ctx, "admin", cliPassword); err != nil {
		t.Fatal(err)
	}
	r.env["ORIGIN_TOKEN"] = ac.Token
	d, err := ac.CreateDeployment(ctx, "default", apiclient.DeploymentInput{Name: ptr("chat"), Upstreams: map[string][]string{"*": {"http://127.0.0.1:9"}}})
	if err != nil {
		t.Fatal(err)
	}
	k, err := ac.CreateKey(ctx, "default", apiclient.KeyCreate{Name: "k", Deployments: []string{d.ID}})
	if err != nil {
		t.Fatal(err)
	}

	// An edge publishes three records, with its own credentials.
	creds, err := s.NATSCreds(natsauth.RoleEdge, "edge-1")
	if err != nil {
		t.Fatal(err)
	}
	credsFile := filepath.Join(t.TempDir(), "edge.creds")
	if err := os.WriteFile(credsFile, creds, 0o600); err != nil {
		t.Fatal(err)
	}
	nc, err := nats.Connect(s.NATSURL(), nats.UserCredentials(credsFile), nats.CustomInboxPrefix(event.EdgeInbox("edge-1")))
	if err != nil {
		t.Fatal(err)
	}
	defer nc.Close()
	js, _ := jetstream.New(nc)
	now := time.Now().UTC()
	for _, u := range []event.Usage{
		{ID: "a", KeyID: k.ID, Model: "m1", PromptTokens: 10, CompletionTokens: 5},
		{ID: "b", KeyID: k.ID, Model: "m2", PromptTokens: 20, CompletionTokens: 7, CachedTokens: 4, Estimated: true},
		{ID: "c", Model: "m1", PromptTokens: 1, CompletionTokens: 1},
	} {
		u.Edge, u.Project, u.Deployment, u.Time = "edge-1", k.Project, d.ID, now
		raw, _ := json.Marshal(u)
		// Until the origin has created the stream, publishing fails.
		testutil.CheckFor(t, 10*time.Second, 20*time.Millisecond, func() error {
			_, err := js.Publish(ctx, event.EdgeSubject(event.EdgeUsageSubject, "edge-1"), raw, jetstream.WithMsgID(u.ID))
			return err
		})
	}
	testutil.CheckFor(t, 10*time.Second, 10*time.Millisecond, func() error {
		if stored, _, _ := s.UsageStats(); stored != 3 {
			return fmt.Errorf("%d of 3 records stored", stored)
		}
		return nil
	})

	out := r.ok("usage", "--group-by", "key,model")
	lines := strings.Split(strings.TrimSpace(out), "\n")
	if len(lines) != 5 || strings.Join(strings.Fields(lines[0]), " ") != "KEY MODEL REQUESTS PROMPT COMPLETION CACHED ESTIMATED COST" ||
		strings.Join(strings.Fields(lines[1]), " ") != "(no auth) m1 1 1 1 0 0 0" ||
		strings.Join(strings.Fields(lines[2]), " ") != k.ID+" m1 1 10 5 0 0 0" ||
		strings.Join(strings.Fields(lines[3]), " ") != k.ID+" m2 1 20 7 4 1 0" || !strings.HasPrefix(lines[4], "From ") {
		t.Fatalf("usage --group-by key,model:\n%s", out)
	}
	out = r.ok("usage", "--group-by", "deployment", "--no-key")
	if lines := strings.Split(strings.TrimSpace(out), "\n"); len(lines) != 3 || strings.Join(strings.Fields(lines[1]), " ") != "chat 1 1 1 0 0 0" {
		t.Fatalf("usage --group-by deployment --no-key:\n%s", out)
	}
	var rep api.UsageReport
	r.json(&rep, "usage", "--key", k.ID, "--since", "2h", "--group-by", "day")
	if len(rep.Items) != 1 || rep.Items[0].Requests != 2 || rep.Items[0].PromptTokens != 30 || rep.Items[0].Day == nil ||
		strings.Join(rep.GroupBy, ",") != "day" {
		t.Fatalf("usage --json: %+v", rep)
	}
	r.fails(1, "VALIDATION_ERROR", "usage", "--group-by", "week")
	r.fails(2, "exclude each other", "usage", "--key", k.ID, "--no-key")
}
