package bench

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"strconv"
	"strings"
	"time"
)

// OriginClient is a minimal client of the origin's REST API: what the
// harness needs to set up deployments and keys and to change links.
type OriginClient struct {
	// BaseURL is the origin's address, e.g. http://127.0.0.1:7000.
	BaseURL string
	// Token is the admin JWT from Login.
	Token string
	// HTTP is the client used; default a client with a 10s timeout.
	HTTP *http.Client
}

// APIError is a non-2xx answer from the origin.
type APIError struct {
	Status int
	Code   string
	Msg    string
}

func (e *APIError) Error() string { return fmt.Sprintf("origin: %d %s: %s", e.Status, e.Code, e.Msg) }

// Do sends a JSON request and decodes a JSON answer into out (if non-nil).
// It returns the revision of a mutation (header X-Revision), or 0.
func (c *OriginClient) Do(ctx context.Context, method, path string, in, out any) (uint64, error) {
	var body io.Reader
	if in != nil {
		b, err := json.Marshal(in)
		if err != nil {
			return 0, err
		}
		body = bytes.NewReader(b)
	}
	req, err := http.NewRequestWithContext(ctx, method, strings.TrimSuffix(c.BaseURL, "/")+path, body)
	if err != nil {
		return 0, err
	}
	req.Header.Set("Content-Type", "application/json")
	if c.Token != "" {
		req.Header.Set("Authorization", "Bearer "+c.Token)
	}
	hc := c.HTTP
	if hc == nil {
		hc = &http.Client{Timeout: 10 * time.Second}
	}
	resp, err := hc.Do(req)
	if err != nil {
		return 0, err
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(io.LimitReader(resp.Body, 8<<20))
	if err != nil {
		return 0, err
	}
	if resp.StatusCode/100 != 2 {
		var e struct {
			Error struct{ Code, Message string } `json:"error"`
		}
		_ = json.Unmarshal(b, &e)
		return 0, &APIError{Status: resp.StatusCode, Code: e.Error.Code, Msg: e.Error.Message}
	}
	rev, _ := strconv.ParseUint(resp.Header.Get("X-Revision"), 10, 64)
	if out != nil && len(b) > 0 {
		return rev, json.Unmarshal(b, out)
	}
	return rev, nil
}

// Login exchanges admin credentials for a token and keeps it.
func (c *OriginClient) Login(ctx context.Context, user, password string) error {
	var out struct {
		Token string `json:"token"`
	}
	if _, err := c.Do(ctx, http.MethodPost, "/v1/auth/login", map[string]string{"username": user, "password": password}, &out); err != nil {
		return fmt.Errorf("logging in: %w", err)
	}
	c.Token = out.Token
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
	var d Deployment
	_, err := c.Do(ctx, http.MethodGet, "/v1/projects/"+url.PathEscape(project)+"/deployments/"+url.PathEscape(name), nil, &d)
	if err == nil {
		return &d, nil
	}
	if e, ok := err.(*APIError); !ok || e.Status != http.StatusNotFound {
		return nil, err
	}
	in := map[string]any{"name": name, "upstreams": map[string][]string{"*": upstreams}}
	if _, err := c.Do(ctx, http.MethodPost, "/v1/projects/"+url.PathEscape(project)+"/deployments", in, &d); err != nil {
		return nil, fmt.Errorf("creating deployment %s: %w", name, err)
	}
	return &d, nil
}

// CreateKey creates a key linked to deployments (ids or names).
func (c *OriginClient) CreateKey(ctx context.Context, project, name string, deployments ...string) (*Key, error) {
	var k Key
	in := map[string]any{"name": name}
	if len(deployments) > 0 {
		in["deployments"] = deployments
	}
	if _, err := c.Do(ctx, http.MethodPost, "/v1/projects/"+url.PathEscape(project)+"/keys", in, &k); err != nil {
		return nil, fmt.Errorf("creating key: %w", err)
	}
	return &k, nil
}

// Link links (or, with link false, unlinks) a key and a deployment and
// returns the change's revision.
func (c *OriginClient) Link(ctx context.Context, project, deployment, keyID string, link bool) (uint64, error) {
	method := http.MethodPut
	if !link {
		method = http.MethodDelete
	}
	path := "/v1/projects/" + url.PathEscape(project) + "/deployments/" + url.PathEscape(deployment) + "/keys/" + url.PathEscape(keyID)
	return c.Do(ctx, method, path, nil, nil)
}
