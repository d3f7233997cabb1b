package apiclient_test

import (
	"errors"
	"strings"
	"testing"
	"time"

	"github.com/keymesh/keymesh/internal/stack"
	"github.com/keymesh/keymesh/origin"
	"github.com/keymesh/keymesh/origin/apiclient"
)

const password = "apiclient test password"

// startOrigin starts an origin (embedded NATS) with password, stopped when
// t ends.
func startOrigin(t *testing.T) *origin.Server {
	t.Helper()
	return stack.ForTest(t, stack.Config{Dir: t.TempDir(), AdminPassword: password}).Origin
}

func ptr[T any](v T) *T { return &v }

func TestClientAgainstOrigin(t *testing.T) {
	s := startOrigin(t)
	ctx := t.Context()
	c := &apiclient.Client{BaseURL: "http://" + s.Addr()}

	// Unauthenticated calls fail with the API's error.
	_, err := c.ListKeys(ctx, "default", 0, "")
	var ae *apiclient.APIError
	if !errors.As(err, &ae) || ae.Status != 401 || ae.Code != "AUTHENTICATION_FAILED" {
		t.Fatalf("without a token: %v", err)
	}
	if _, err := c.Login(ctx, "admin", "wrong"); !errors.As(err, &ae) || ae.Status != 401 || strings.Contains(err.Error(), "wrong") {
		t.Fatalf("wrong password: %v", err)
	}
	sess, err := c.Login(ctx, "admin", password)
	if err != nil || c.Token == "" || sess.ExpiresAt.Before(time.Now()) {
		t.Fatalf("login: %v %+v", err, sess)
	}
	if pk, err := c.SigningKey(ctx); err != nil || pk == "" {
		t.Fatalf("signing key: %q %v", pk, err)
	}

	p, err := c.CreateProject(ctx, "team-a")
	if err != nil || p.ID == "" || p.Name != "team-a" {
		t.Fatalf("create project: %+v %v", p, err)
	}
	ps, err := c.Projects(ctx)
	if err != nil || len(ps) != 2 {
		t.Fatalf("projects: %v %v", ps, err)
	}

	d, err := c.CreateDeployment(ctx, "team-a", apiclient.DeploymentInput{
		Name: ptr("chat"), Hosts: &[]string{"chat.example.com"},
		Upstreams: map[string][]string{"*": {"http://127.0.0.1:9"}},
	}, apiclient.Wait(time.Second))
	if err != nil || d.ID == "" || d.Revision == 0 || !d.AuthEnabled || d.InvalidKeyStatus != 401 || len(d.JSON) == 0 {
		t.Fatalf("create deployment: %+v %v", d, err)
	}
	if d.Propagation == nil {
		t.Error("?wait= gave no propagation report")
	}
	_, err = c.CreateDeployment(ctx, "team-a", apiclient.DeploymentInput{Name: ptr("bad")})
	if !errors.As(err, &ae) || ae.Status != 400 || ae.Code != "VALIDATION_ERROR" || ae.Details == nil {
		t.Fatalf("deployment without upstreams: %v", err)
	}
	d2, err := c.UpdateDeployment(ctx, "team-a", "chat", apiclient.DeploymentInput{InvalidKeyStatus: ptr(403), RateLimit: &apiclient.RateLimit{RequestsPerMinute: 60}})
	if err != nil || d2.InvalidKeyStatus != 403 || d2.RateLimit == nil || d2.Revision <= d.Revision {
		t.Fatalf("update deployment: %+v %v", d2, err)
	}
	if got, err := c.GetDeployment(ctx, "team-a", d.ID); err != nil || got.Name != "chat" {
		t.Fatalf("get deployment: %+v %v", got, err)
	}
	if dp, err := c.ListDeployments(ctx, "team-a"); err != nil || len(dp.Items) != 1 {
		t.Fatalf("list deployments: %+v %v", dp, err)
	}

	k, err := c.CreateKey(ctx, "team-a", apiclient.KeyCreate{Name: "ci", Deployments: []string{"chat"}, ExpiresInDays: 3})
	if err != nil || k.Secret == "" || k.Revision == 0 || k.ExpiresAt == nil || len(k.Deployments) != 1 {
		t.Fatalf("create key: %+v %v", k, err)
	}
	got, err := c.GetKey(ctx, "team-a", k.ID)
	if err != nil || got.Secret != "" || got.Prefix == "" || !strings.HasPrefix(k.Secret, got.Prefix) {
		t.Fatalf("get key: %+v %v", got, err)
	}
	if strings.Contains(string(got.JSON), k.Secret) {
		t.Fatal("get returned the secret")
	}
	u, err := c.UpdateKey(ctx, "team-a", k.ID, apiclient.KeyUpdate{Disabled: ptr(true), NeverExpires: true, Permissions: &[]string{"read_models"}})
	if err != nil || !u.Disabled || u.ExpiresAt != nil || len(u.Permissions) != 1 || u.Revision <= k.Revision {
		t.Fatalf("update key: %+v %v", u, err)
	}
	_, err = c.UpdateKey(ctx, "team-a", k.ID, apiclient.KeyUpdate{ExpiresAt: ptr("next week")})
	if !errors.As(err, &ae) || ae.Status != 400 {
		t.Fatalf("bad expiry: %v", err)
	}

	// The key is linked from the deployment's side too; unlink and link.
	if kp, err := c.DeploymentKeys(ctx, "team-a", "chat"); err != nil || len(kp.Items) != 1 || kp.Items[0].ID != k.ID {
		t.Fatalf("deployment keys: %+v %v", kp, err)
	}
	ul, err := c.Unlink(ctx, "team-a", d.ID, k.ID)
	if err != nil || len(ul.Deployments) != 0 || ul.Revision == 0 {
		t.Fatalf("unlink: %+v %v", ul, err)
	}
	l, err := c.Link(ctx, "team-a", d.ID, k.ID)
	if err != nil || len(l.Deployments) != 1 || l.Revision <= ul.Revision {
		t.Fatalf("link: %+v %v", l, err)
	}

	r, err := c.RotateKey(ctx, "team-a", k.ID, 30*time.Second)
	if err != nil || r.Secret == "" || r.Secret == k.Secret {
		t.Fatalf("rotate: %+v %v", r, err)
	}

	// Pagination: five more keys, read two at a time.
	for range 5 {
		if _, err := c.CreateKey(ctx, "team-a", apiclient.KeyCreate{}); err != nil {
			t.Fatal(err)
		}
	}
	seen, cursor, pages := map[string]bool{}, "", 0
	for {
		pg, err := c.ListKeys(ctx, "team-a", 2, cursor)
		if err != nil {
			t.Fatal(err)
		}
		pages++
		for _, k := range pg.Items {
			seen[k.ID] = true
		}
		if pg.NextCursor == "" {
			break
		}
		cursor = pg.NextCursor
	}
	if len(seen) != 6 || pages < 3 {
		t.Fatalf("paged through %d keys in %d pages", len(seen), pages)
	}
	if all, err := c.AllKeys(ctx, "team-a"); err != nil || len(all) != 6 {
		t.Fatalf("all keys: %d %v", len(all), err)
	}

	del, err := c.DeleteKey(ctx, "team-a", k.ID)
	if err != nil || del.Revision <= r.Revision || del.Propagation != nil {
		t.Fatalf("delete key: %+v %v", del, err)
	}
	if _, err := c.GetKey(ctx, "team-a", k.ID); !apiclient.IsNotFound(err) {
		t.Fatalf("deleted key: %v", err)
	}
	ddel, err := c.DeleteDeployment(ctx, "team-a", d.ID, apiclient.Wait(time.Second))
	if err != nil || ddel.Revision != del.Revision+1 || ddel.Propagation == nil {
		t.Fatalf("delete deployment with wait: %+v %v", ddel, err)
	}

	if _, err := c.Edges(ctx); err != nil {
		t.Fatalf("edges: %v", err)
	}
	if _, err := c.Audit(ctx, apiclient.AuditQuery{Project: "team-a", Limit: 10, Since: time.Now().Add(-time.Hour)}); err != nil {
		t.Fatalf("audit: %v", err)
	}
}

// A project key authenticates with X-API-Key and is confined to its project.
func TestClientWithAPIKey(t *testing.T) {
	s := startOrigin(t)
	ctx := t.Context()
	admin := &apiclient.Client{BaseURL: "http://" + s.Addr()}
	if _, err := admin.Login(ctx, "admin", password); err != nil {
		t.Fatal(err)
	}
	if _, err := admin.CreateProject(ctx, "other"); err != nil {
		t.Fatal(err)
	}
	k, err := admin.CreateKey(ctx, "default", apiclient.KeyCreate{Permissions: []string{"write_config"}})
	if err != nil {
		t.Fatal(err)
	}
	c := &apiclient.Client{BaseURL: admin.BaseURL, APIKey: k.Secret}
	if _, err := c.ListKeys(ctx, "default", 0, ""); err != nil {
		t.Fatalf("own project: %v", err)
	}
	_, err = c.ListKeys(ctx, "other", 0, "")
	var ae *apiclient.APIError
	if !errors.As(err, &ae) || ae.Status != 403 || ae.Code != "PERMISSION_DENIED" {
		t.Fatalf("other project: %v", err)
	}
	if strings.Contains(err.Error(), k.Secret) {
		t.Fatal("error shows the key")
	}
}

func TestClientUsersAndProjectRules(t *testing.T) {
	s := startOrigin(t)
	ctx := t.Context()
	c := &apiclient.Client{BaseURL: "http://" + s.Addr()}
	if _, err := c.Login(ctx, "admin", password); err != nil {
		t.Fatal(err)
	}
	u, err := c.CreateUser(ctx, "ops", "ops password 1")
	if err != nil || u.ID == "" || u.Username != "ops" {
		t.Fatalf("create user: %+v %v", u, err)
	}
	us, err := c.Users(ctx)
	if err != nil || len(us) != 2 {
		t.Fatalf("users: %v %v", us, err)
	}
	ops := &apiclient.Client{BaseURL: c.BaseURL}
	if _, err := ops.Login(ctx, "ops", "ops password 1"); err != nil {
		t.Fatal(err)
	}
	var ae *apiclient.APIError
	if err := ops.ChangePassword(ctx, "ops", "ops password 2", "wrong"); !errors.As(err, &ae) || ae.Status != 403 {
		t.Fatalf("wrong old password: %v", err)
	}
	if err := ops.ChangePassword(ctx, "ops", "ops password 2", "ops password 1"); err != nil {
		t.Fatal(err)
	}
	if _, err := ops.Users(ctx); !errors.As(err, &ae) || ae.Status != 401 {
		t.Fatalf("a token after its password changed: %v", err)
	}
	if _, err := ops.Login(ctx, "ops", "ops password 2"); err != nil {
		t.Fatal(err)
	}
	if err := ops.Logout(ctx); err != nil || ops.Token != "" {
		t.Fatalf("logout: %v", err)
	}
	if err := c.DeleteUser(ctx, "ops"); err != nil {
		t.Fatal(err)
	}

	p, err := c.UpdateProject(ctx, "default", apiclient.ProjectUpdate{AllowedUpstreams: &[]string{"https://*.example.com"}, MaxKeys: ptr(5)})
	if err != nil || len(p.AllowedUpstreams) != 1 || p.Limits.MaxKeys != 5 || len(p.JSON) == 0 {
		t.Fatalf("update project: %+v %v", p, err)
	}
	_, err = c.CreateDeployment(ctx, "default", apiclient.DeploymentInput{Name: ptr("x"), Upstreams: map[string][]string{"*": {"http://127.0.0.1:9"}}})
	if !errors.As(err, &ae) || ae.Status != 403 || ae.Code != "PERMISSION_DENIED" {
		t.Fatalf("an upstream outside the policy: %v", err)
	}
	p, err = c.UpdateProject(ctx, "default", apiclient.ProjectUpdate{DefaultUpstreams: true, MaxKeys: ptr(0)})
	if err != nil || p.AllowedUpstreams != nil || p.Limits.MaxKeys != origin.DefaultLimits.MaxKeys {
		t.Fatalf("reset project: %+v %v", p, err)
	}
	if g, err := c.GetProject(ctx, "default"); err != nil || g.Name != "default" {
		t.Fatalf("get project: %+v %v", g, err)
	}
	if err := c.Logout(ctx); err != nil {
		t.Fatal(err)
	}
}
