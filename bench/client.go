package bench

import (
	"context"
	"fmt"
	"net/http"

	"github.com/keymesh/keymesh/origin/apiclient"
)

// OriginClient is the harness's client of the origin's REST API: a thin
// layer over apiclient.Client keeping the few calls the harness needs to set
// up deployments and keys and to change links.
type OriginClient struct {
	// BaseURL is the origin's address, e.g. http://127.0.0.1:7000.
	BaseURL string
	// Token is the admin JWT from Login.
	Token string
	// HTTP is the client used; default apiclient's (30s timeout).
	HTTP *http.Client
}

// APIError is a non-2xx answer from the origin.
type APIError = apiclient.APIError

func (c *OriginClient) api() *apiclient.Client {
	return &apiclient.Client{BaseURL: c.BaseURL, Token: c.Token, HTTP: c.HTTP}
}

// Do sends a JSON request and decodes a JSON answer into out (if non-nil).
// It returns the revision of a mutation (header X-Revision), or 0.
func (c *OriginClient) Do(ctx context.Context, method, path string, in, out any) (uint64, error) {
	return c.api().Do(ctx, method, path, in, out)
}

// Login exchanges admin credentials for a token and keeps it.
func (c *OriginClient) Login(ctx context.Context, user, password string) error {
	s, err := c.api().Login(ctx, user, password)
	if err != nil {
		return fmt.Errorf("logging in: %w", err)
	}
	c.Token = s.Token
	return nil
}

// Key is the part of the origin's Key answer the harness uses.
type Key struct {
	ID       string `json:"id"`
	Secret   string `json:"key"`
	Revision uint64 `json:"revision"`
}

// Deployment is the part of the origin's Deployment answer the harness uses.
type Deployment struct {
	ID       string `json:"id"`
	Name     string `json:"name"`
	Revision uint64 `json:"revision"`
}

// EnsureDeployment creates the deployment named name in project unless it
// exists, with every site sent to upstreams.
func (c *OriginClient) EnsureDeployment(ctx context.Context, project, name string, upstreams []string) (*Deployment, error) {
	api := c.api()
	d, err := api.GetDeployment(ctx, project, name)
	if apiclient.IsNotFound(err) {
		d, err = api.CreateDeployment(ctx, project, apiclient.DeploymentInput{Name: &name, Upstreams: map[string][]string{"*": upstreams}})
		if err != nil {
			return nil, fmt.Errorf("creating deployment %s: %w", name, err)
		}
	}
	if err != nil {
		return nil, err
	}
	return &Deployment{ID: d.ID, Name: d.Name, Revision: d.Revision}, nil
}

// CreateKey creates a key linked to deployments (ids or names).
func (c *OriginClient) CreateKey(ctx context.Context, project, name string, deployments ...string) (*Key, error) {
	return c.CreateKeyWith(ctx, project, apiclient.KeyCreate{Name: name, Deployments: deployments})
}

// CreateKeyWith creates a key as in describes it (name, links, bounds).
func (c *OriginClient) CreateKeyWith(ctx context.Context, project string, in apiclient.KeyCreate) (*Key, error) {
	k, err := c.api().CreateKey(ctx, project, in)
	if err != nil {
		return nil, fmt.Errorf("creating key: %w", err)
	}
	return &Key{ID: k.ID, Secret: k.Secret, Revision: k.Revision}, nil
}

// Link links (or, with link false, unlinks) a key and a deployment and
// returns the change's revision. apiclient.Wait holds the answer until the
// live edges have applied it.
func (c *OriginClient) Link(ctx context.Context, project, deployment, keyID string, link bool, opts ...apiclient.CallOption) (uint64, error) {
	op := c.api().Link
	if !link {
		op = c.api().Unlink
	}
	k, err := op(ctx, project, deployment, keyID, opts...)
	if err != nil {
		return 0, err
	}
	if p := k.Propagation; p != nil && len(p.Pending) > 0 {
		return k.Revision, fmt.Errorf("revision %d not applied by edges %v within the wait", k.Revision, p.Pending)
	}
	return k.Revision, nil
}
