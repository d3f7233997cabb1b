// Package apiclient is a Go client of the origin's REST admin API (see
// /v1/openapi.json on a running origin).
//
// A Client authenticates with an admin JWT (Token, from Login) or a project
// API key (APIKey, sent as X-API-Key). Every non-2xx answer is returned as
// an *APIError carrying the body's code, message and details. Mutations
// report their revision: the body's "revision", else the X-Revision header.
// Values decoded from an answer keep its raw JSON in their JSON field, so a
// caller can show exactly what the API said.
//
// A Client's fields must not be changed while it is in use; with fixed
// fields it is safe for concurrent use. Login sets Token.
package apiclient

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"strconv"
	"strings"
	"time"
)

// maxResponse caps how much of an answer is read.
const maxResponse = 32 << 20

// Client talks to one origin.
type Client struct {
	// BaseURL is the origin's address, e.g. http://127.0.0.1:7000 (no /v1).
	BaseURL string
	// Token is an admin JWT, sent as Authorization: Bearer. Empty: none.
	Token string
	// APIKey is a project API key, sent as X-API-Key. Empty: none.
	APIKey string
	// HTTP is the client used; nil means a client with a 30s timeout.
	HTTP *http.Client
}

var defaultHTTP = &http.Client{Timeout: 30 * time.Second}

// APIError is a non-2xx answer from the origin. Its message never contains
// a credential: the origin does not echo them, and neither does the client.
type APIError struct {
	Status  int    // HTTP status
	Code    string // error.code, e.g. NOT_FOUND; "HTTP_<status>" if the body had none
	Message string // error.message
	Type    string // error.type (OpenAI style)
	Details any    // error.details, often {"field": ..., "reason": ...}
}

func (e *APIError) Error() string { return e.Code + ": " + e.Message }

// IsNotFound reports whether err is an APIError with status 404.
func IsNotFound(err error) bool {
	var ae *APIError
	return errors.As(err, &ae) && ae.Status == http.StatusNotFound
}

// CallOption changes one request.
type CallOption func(q url.Values)

// Wait holds a mutation's answer until every live edge has applied it, or d
// passes (?wait=d); the answer then reports Propagation.
func Wait(d time.Duration) CallOption {
	return func(q url.Values) {
		if d > 0 {
			q.Set("wait", d.String())
		}
	}
}

// Do sends method path (path starts with /v1/..., may carry a query) with
// in encoded as JSON (nil: no body) and decodes the answer into out (nil:
// discarded; *json.RawMessage: kept raw). It returns the X-Revision header
// (0 when absent).
func (c *Client) Do(ctx context.Context, method, path string, in, out any) (uint64, error) {
	var body io.Reader
	if in != nil {
		b, err := json.Marshal(in)
		if err != nil {
			return 0, fmt.Errorf("encoding request: %w", err)
		}
		body = bytes.NewReader(b)
	}
	req, err := http.NewRequestWithContext(ctx, method, strings.TrimSuffix(c.BaseURL, "/")+path, body)
	if err != nil {
		return 0, err
	}
	if in != nil {
		req.Header.Set("Content-Type", "application/json")
	}
	req.Header.Set("Accept", "application/json")
	if c.Token != "" {
		req.Header.Set("Authorization", "Bearer "+c.Token)
	}
	if c.APIKey != "" {
		req.Header.Set("X-API-Key", c.APIKey)
	}
	hc := c.HTTP
	if hc == nil {
		hc = defaultHTTP
	}
	resp, err := hc.Do(req)
	if err != nil {
		// *url.Error names method and URL only; neither holds a credential.
		return 0, err
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(io.LimitReader(resp.Body, maxResponse))
	if err != nil {
		return 0, fmt.Errorf("reading answer to %s %s: %w", method, req.URL.Path, err)
	}
	if resp.StatusCode/100 != 2 {
		return 0, decodeError(resp.StatusCode, b)
	}
	rev, _ := strconv.ParseUint(resp.Header.Get("X-Revision"), 10, 64)
	if out != nil && len(bytes.TrimSpace(b)) > 0 {
		if err := json.Unmarshal(b, out); err != nil {
			return rev, fmt.Errorf("decoding answer to %s %s: %w", method, req.URL.Path, err)
		}
	}
	return rev, nil
}

func decodeError(status int, b []byte) error {
	var e struct {
		Error *struct {
			Code    string `json:"code"`
			Message string `json:"message"`
			Type    string `json:"type"`
			Details any    `json:"details"`
		} `json:"error"`
	}
	ae := &APIError{Status: status}
	if json.Unmarshal(b, &e) == nil && e.Error != nil {
		ae.Code, ae.Message, ae.Type, ae.Details = e.Error.Code, e.Error.Message, e.Error.Type, e.Error.Details
	}
	if ae.Code == "" {
		ae.Code = "HTTP_" + strconv.Itoa(status)
	}
	if ae.Message == "" {
		ae.Message = http.StatusText(status)
	}
	return ae
}

// call sends a request and decodes the answer into out, whose raw body is
// kept by keep (if non-nil). It returns the revision: header, else 0.
func (c *Client) call(ctx context.Context, method, path string, opts []CallOption, in, out any, keep *json.RawMessage) (uint64, error) {
	if len(opts) > 0 {
		q := url.Values{}
		for _, o := range opts {
			o(q)
		}
		if len(q) > 0 {
			sep := "?"
			if strings.Contains(path, "?") {
				sep = "&"
			}
			path += sep + q.Encode()
		}
	}
	var raw json.RawMessage
	rev, err := c.Do(ctx, method, path, in, &raw)
	if err != nil {
		return rev, err
	}
	if out != nil && len(raw) > 0 {
		if err := json.Unmarshal(raw, out); err != nil {
			return rev, fmt.Errorf("decoding answer to %s %s: %w", method, path, err)
		}
	}
	if keep != nil {
		*keep = raw
	}
	return rev, nil
}

func esc(s string) string { return url.PathEscape(s) }

func projectPath(project string) string { return "/v1/projects/" + esc(project) }

// ---- types ----

// RateLimit is a per-minute request limit.
type RateLimit struct {
	RequestsPerMinute int `json:"requests_per_minute"`
}

// UpstreamAuth says which credential an edge sends to the upstream.
type UpstreamAuth struct {
	Mode   string `json:"mode"` // "none", "inject" or "passthrough"
	Header string `json:"header,omitempty"`
	Prefix string `json:"prefix,omitempty"`
	Secret string `json:"secret,omitempty"` // the name of an edge-local secret, never its value
}

// Propagation is the ?wait= report: which live edges have applied a
// mutation's revision.
type Propagation struct {
	Applied []string `json:"applied"`
	Pending []string `json:"pending"`
	// LiveEdges is how many edges were live (applied + pending); 0 means
	// the wait proved nothing.
	LiveEdges int `json:"live_edges"`
}

// Key is an API key as the origin shows it.
type Key struct {
	ID          string       `json:"id"`
	Project     string       `json:"project"`
	Name        string       `json:"name"`
	Description string       `json:"description"`
	Prefix      string       `json:"prefix"`
	Permissions []string     `json:"permissions"`
	Deployments []string     `json:"deployments"`
	ExpiresAt   *time.Time   `json:"expires_at"`
	RateLimit   *RateLimit   `json:"rate_limit"`
	Disabled    bool         `json:"disabled"`
	CreatedAt   time.Time    `json:"created_at"`
	UpdatedAt   time.Time    `json:"updated_at"`
	Revision    uint64       `json:"revision"`
	Secret      string       `json:"key,omitempty"` // only from create and rotate
	Propagation *Propagation `json:"propagation,omitempty"`
	// JSON is the answer this value was decoded from.
	JSON json.RawMessage `json:"-"`
}

// KeyCreate is the body of a key creation. Zero fields are left out, so
// the origin's defaults apply (permissions: run_inference, read_models,
// use_streaming; never expires; no rate limit).
type KeyCreate struct {
	Name          string     `json:"name,omitempty"`
	Description   string     `json:"description,omitempty"`
	Permissions   []string   `json:"permissions,omitempty"`
	Deployments   []string   `json:"deployments,omitempty"` // ids or names
	ExpiresAt     string     `json:"expires_at,omitempty"`  // RFC 3339 or YYYY-MM-DD
	ExpiresInDays int        `json:"expires_in_days,omitempty"`
	RateLimit     *RateLimit `json:"rate_limit,omitempty"`
	Disabled      bool       `json:"disabled,omitempty"`
}

// KeyUpdate is a partial update: nil fields are left unchanged.
type KeyUpdate struct {
	Name        *string
	Description *string
	Permissions *[]string
	Deployments *[]string // replaces the linked deployments (ids or names)
	ExpiresAt   *string   // RFC 3339 or YYYY-MM-DD
	// NeverExpires sends expires_at: null (ExpiresAt must be nil).
	NeverExpires bool
	RateLimit    *RateLimit
	// NoRateLimit sends rate_limit: null (RateLimit must be nil).
	NoRateLimit bool
	Disabled    *bool
}

// MarshalJSON sends only the fields that are set.
func (u KeyUpdate) MarshalJSON() ([]byte, error) {
	m := map[string]any{}
	set := func(name string, v any, ok bool) {
		if ok {
			m[name] = v
		}
	}
	set("name", u.Name, u.Name != nil)
	set("description", u.Description, u.Description != nil)
	set("permissions", u.Permissions, u.Permissions != nil)
	set("deployments", u.Deployments, u.Deployments != nil)
	set("expires_at", u.ExpiresAt, u.ExpiresAt != nil)
	set("expires_at", nil, u.NeverExpires && u.ExpiresAt == nil)
	set("rate_limit", u.RateLimit, u.RateLimit != nil)
	set("rate_limit", nil, u.NoRateLimit && u.RateLimit == nil)
	set("disabled", u.Disabled, u.Disabled != nil)
	return json.Marshal(m)
}

// KeyPage is one page of a key listing.
type KeyPage struct {
	Items []*Key `json:"items"`
	// NextCursor continues the listing; empty at the end.
	NextCursor string `json:"next_cursor"`
	// JSON is the answer this value was decoded from.
	JSON json.RawMessage `json:"-"`
}

// Deployment is a deployment as the origin shows it.
type Deployment struct {
	ID               string              `json:"id"`
	Project          string              `json:"project"`
	Name             string              `json:"name"`
	Hosts            []string            `json:"hosts"`
	PathPrefix       string              `json:"path_prefix"`
	Upstreams        map[string][]string `json:"upstreams"`
	AuthEnabled      bool                `json:"auth_enabled"`
	InvalidKeyStatus int                 `json:"invalid_key_status"`
	UpstreamAuth     *UpstreamAuth       `json:"upstream_auth"`
	RateLimit        *RateLimit          `json:"rate_limit"`
	MaxBodyBytes     int64               `json:"max_body_bytes"`
	MaxPromptChars   int                 `json:"max_prompt_chars"`
	Revision         uint64              `json:"revision"`
	Propagation      *Propagation        `json:"propagation,omitempty"`
	// JSON is the answer this value was decoded from.
	JSON json.RawMessage `json:"-"`
}

// DeploymentInput is a deployment creation (Name and Upstreams required)
// or a partial update: nil fields are left out (create: the defaults).
type DeploymentInput struct {
	Name             *string
	Hosts            *[]string
	PathPrefix       *string
	Upstreams        map[string][]string // nil: left out
	AuthEnabled      *bool
	InvalidKeyStatus *int
	UpstreamAuth     *UpstreamAuth
	RateLimit        *RateLimit
	// NoRateLimit sends rate_limit: null (RateLimit must be nil).
	NoRateLimit    bool
	MaxBodyBytes   *int64
	MaxPromptChars *int
}

// MarshalJSON sends only the fields that are set.
func (d DeploymentInput) MarshalJSON() ([]byte, error) {
	m := map[string]any{}
	set := func(name string, v any, ok bool) {
		if ok {
			m[name] = v
		}
	}
	set("name", d.Name, d.Name != nil)
	set("hosts", d.Hosts, d.Hosts != nil)
	set("path_prefix", d.PathPrefix, d.PathPrefix != nil)
	set("upstreams", d.Upstreams, d.Upstreams != nil)
	set("auth_enabled", d.AuthEnabled, d.AuthEnabled != nil)
	set("invalid_key_status", d.InvalidKeyStatus, d.InvalidKeyStatus != nil)
	set("upstream_auth", d.UpstreamAuth, d.UpstreamAuth != nil)
	set("rate_limit", d.RateLimit, d.RateLimit != nil)
	set("rate_limit", nil, d.NoRateLimit && d.RateLimit == nil)
	set("max_body_bytes", d.MaxBodyBytes, d.MaxBodyBytes != nil)
	set("max_prompt_chars", d.MaxPromptChars, d.MaxPromptChars != nil)
	return json.Marshal(m)
}

// DeploymentPage is a deployment listing.
type DeploymentPage struct {
	Items      []*Deployment `json:"items"`
	NextCursor string        `json:"next_cursor"`
	// JSON is the answer this value was decoded from.
	JSON json.RawMessage `json:"-"`
}

// Project is a tenant grouping keys and deployments.
type Project struct {
	ID        string    `json:"id"`
	Name      string    `json:"name"`
	CreatedAt time.Time `json:"created_at"`
	Revision  uint64    `json:"revision,omitempty"`
}

// Edge is an edge known to the origin.
type Edge struct {
	ID              string    `json:"id"`
	Site            string    `json:"site"`
	Address         string    `json:"address"`
	AppliedRevision uint64    `json:"applied_revision"`
	LastSeen        time.Time `json:"last_seen"`
	Live            *bool     `json:"live,omitempty"`
}

// AuditRecord is one audit record, as the origin sends it.
type AuditRecord map[string]any

// AuditQuery filters GET /v1/audit; zero fields are not sent.
type AuditQuery struct {
	Project    string
	KeyID      string
	Deployment string
	Since      time.Time
	Limit      int
}

// Session is a login's answer.
type Session struct {
	Token     string    `json:"token"`
	ExpiresAt time.Time `json:"expires_at"`
	TokenType string    `json:"token_type"`
}

// ---- calls ----

// Login exchanges a user's credentials for a JWT, keeps it in c.Token and
// returns it with its expiry.
func (c *Client) Login(ctx context.Context, username, password string) (*Session, error) {
	var s Session
	if _, err := c.Do(ctx, http.MethodPost, "/v1/auth/login", map[string]string{"username": username, "password": password}, &s); err != nil {
		return nil, err
	}
	if s.Token == "" {
		return nil, errors.New("login answer carries no token")
	}
	c.Token = s.Token
	return &s, nil
}

// SigningKey returns the origin's Ed25519 public key, base64.
func (c *Client) SigningKey(ctx context.Context) (string, error) {
	var out struct {
		PublicKey string `json:"public_key"`
	}
	_, err := c.Do(ctx, http.MethodGet, "/v1/signing-key", nil, &out)
	return out.PublicKey, err
}

// CreateProject creates a project.
func (c *Client) CreateProject(ctx context.Context, name string) (*Project, error) {
	var p Project
	rev, err := c.call(ctx, http.MethodPost, "/v1/projects", nil, map[string]string{"name": name}, &p, nil)
	if err != nil {
		return nil, err
	}
	if p.Revision == 0 {
		p.Revision = rev
	}
	return &p, nil
}

// Projects lists the projects the caller may see.
func (c *Client) Projects(ctx context.Context) ([]*Project, error) {
	var out struct {
		Items []*Project `json:"items"`
	}
	_, err := c.Do(ctx, http.MethodGet, "/v1/projects", nil, &out)
	return out.Items, err
}

// keyCall decodes a key answer, filling Revision from the header if the
// body had none.
func (c *Client) keyCall(ctx context.Context, method, path string, opts []CallOption, in any) (*Key, error) {
	var k Key
	rev, err := c.call(ctx, method, path, opts, in, &k, &k.JSON)
	if err != nil {
		return nil, err
	}
	if k.Revision == 0 {
		k.Revision = rev
	}
	return &k, nil
}

// CreateKey creates a key in project. The answer's Secret is the only time
// the secret is ever returned.
func (c *Client) CreateKey(ctx context.Context, project string, in KeyCreate, opts ...CallOption) (*Key, error) {
	return c.keyCall(ctx, http.MethodPost, projectPath(project)+"/keys", opts, in)
}

// ListKeys returns one page of project's keys: at most limit (0: the
// origin's default), after cursor (empty: from the start).
func (c *Client) ListKeys(ctx context.Context, project string, limit int, cursor string) (*KeyPage, error) {
	q := url.Values{}
	if limit > 0 {
		q.Set("limit", strconv.Itoa(limit))
	}
	if cursor != "" {
		q.Set("cursor", cursor)
	}
	path := projectPath(project) + "/keys"
	if len(q) > 0 {
		path += "?" + q.Encode()
	}
	var p KeyPage
	if _, err := c.call(ctx, http.MethodGet, path, nil, nil, &p, &p.JSON); err != nil {
		return nil, err
	}
	return &p, nil
}

// AllKeys follows the cursor through every page of project's keys.
func (c *Client) AllKeys(ctx context.Context, project string) ([]*Key, error) {
	var all []*Key
	cursor := ""
	for {
		p, err := c.ListKeys(ctx, project, 1000, cursor)
		if err != nil {
			return nil, err
		}
		all = append(all, p.Items...)
		if p.NextCursor == "" || len(p.Items) == 0 {
			return all, nil
		}
		cursor = p.NextCursor
	}
}

// GetKey returns one key (never its secret).
func (c *Client) GetKey(ctx context.Context, project, id string) (*Key, error) {
	return c.keyCall(ctx, http.MethodGet, projectPath(project)+"/keys/"+esc(id), nil, nil)
}

// UpdateKey changes the set fields of a key.
func (c *Client) UpdateKey(ctx context.Context, project, id string, in KeyUpdate, opts ...CallOption) (*Key, error) {
	return c.keyCall(ctx, http.MethodPatch, projectPath(project)+"/keys/"+esc(id), opts, in)
}

// Deleted is the answer to a delete: the change's revision and, when the
// delete was given Wait, the propagation report (nil otherwise).
type Deleted struct {
	Revision    uint64       `json:"revision"`
	Propagation *Propagation `json:"propagation,omitempty"`
}

// deleteCall sends a delete: the origin answers 204 with X-Revision, or
// with Wait 200 and a Deleted body.
func (c *Client) deleteCall(ctx context.Context, path string, opts []CallOption) (*Deleted, error) {
	var d Deleted
	rev, err := c.call(ctx, http.MethodDelete, path, opts, nil, &d, nil)
	if err != nil {
		return nil, err
	}
	if d.Revision == 0 {
		d.Revision = rev
	}
	return &d, nil
}

// DeleteKey deletes a key.
func (c *Client) DeleteKey(ctx context.Context, project, id string, opts ...CallOption) (*Deleted, error) {
	return c.deleteCall(ctx, projectPath(project)+"/keys/"+esc(id), opts)
}

// RotateKey gives a key a new secret (in the answer's Secret); the old one
// keeps working for grace.
func (c *Client) RotateKey(ctx context.Context, project, id string, grace time.Duration, opts ...CallOption) (*Key, error) {
	in := map[string]int64{"grace_seconds": int64(grace / time.Second)}
	return c.keyCall(ctx, http.MethodPost, projectPath(project)+"/keys/"+esc(id)+"/rotate", opts, in)
}

func (c *Client) deploymentCall(ctx context.Context, method, path string, opts []CallOption, in any) (*Deployment, error) {
	var d Deployment
	rev, err := c.call(ctx, method, path, opts, in, &d, &d.JSON)
	if err != nil {
		return nil, err
	}
	if d.Revision == 0 {
		d.Revision = rev
	}
	return &d, nil
}

// CreateDeployment creates a deployment in project.
func (c *Client) CreateDeployment(ctx context.Context, project string, in DeploymentInput, opts ...CallOption) (*Deployment, error) {
	return c.deploymentCall(ctx, http.MethodPost, projectPath(project)+"/deployments", opts, in)
}

// ListDeployments lists project's deployments.
func (c *Client) ListDeployments(ctx context.Context, project string) (*DeploymentPage, error) {
	var p DeploymentPage
	if _, err := c.call(ctx, http.MethodGet, projectPath(project)+"/deployments", nil, nil, &p, &p.JSON); err != nil {
		return nil, err
	}
	return &p, nil
}

// GetDeployment returns a deployment by id or name.
func (c *Client) GetDeployment(ctx context.Context, project, id string) (*Deployment, error) {
	return c.deploymentCall(ctx, http.MethodGet, projectPath(project)+"/deployments/"+esc(id), nil, nil)
}

// UpdateDeployment changes the set fields of a deployment.
func (c *Client) UpdateDeployment(ctx context.Context, project, id string, in DeploymentInput, opts ...CallOption) (*Deployment, error) {
	return c.deploymentCall(ctx, http.MethodPatch, projectPath(project)+"/deployments/"+esc(id), opts, in)
}

// DeleteDeployment deletes a deployment.
func (c *Client) DeleteDeployment(ctx context.Context, project, id string, opts ...CallOption) (*Deleted, error) {
	return c.deleteCall(ctx, projectPath(project)+"/deployments/"+esc(id), opts)
}

// DeploymentKeys lists the keys linked to a deployment.
func (c *Client) DeploymentKeys(ctx context.Context, project, id string) (*KeyPage, error) {
	var p KeyPage
	if _, err := c.call(ctx, http.MethodGet, projectPath(project)+"/deployments/"+esc(id)+"/keys", nil, nil, &p, &p.JSON); err != nil {
		return nil, err
	}
	return &p, nil
}

// Link links a key to a deployment and returns the key as it now is.
func (c *Client) Link(ctx context.Context, project, deployment, keyID string, opts ...CallOption) (*Key, error) {
	return c.keyCall(ctx, http.MethodPut, projectPath(project)+"/deployments/"+esc(deployment)+"/keys/"+esc(keyID), opts, nil)
}

// Unlink removes a key's link to a deployment and returns the key as it now
// is.
func (c *Client) Unlink(ctx context.Context, project, deployment, keyID string, opts ...CallOption) (*Key, error) {
	return c.keyCall(ctx, http.MethodDelete, projectPath(project)+"/deployments/"+esc(deployment)+"/keys/"+esc(keyID), opts, nil)
}

// list decodes either a bare JSON array or an {"items": [...]} object.
func list[T any](raw json.RawMessage) ([]T, error) {
	raw = bytes.TrimSpace(raw)
	if len(raw) == 0 || string(raw) == "null" {
		return nil, nil
	}
	var out []T
	if raw[0] == '[' {
		err := json.Unmarshal(raw, &out)
		return out, err
	}
	var obj struct {
		Items []T `json:"items"`
	}
	err := json.Unmarshal(raw, &obj)
	return obj.Items, err
}

// Edges lists the edges the origin knows of.
func (c *Client) Edges(ctx context.Context) ([]Edge, error) {
	var raw json.RawMessage
	if _, err := c.Do(ctx, http.MethodGet, "/v1/edges", nil, &raw); err != nil {
		return nil, err
	}
	return list[Edge](raw)
}

// Audit returns audit records matching q.
func (c *Client) Audit(ctx context.Context, q AuditQuery) ([]AuditRecord, error) {
	v := url.Values{}
	if q.Project != "" {
		v.Set("project", q.Project)
	}
	if q.KeyID != "" {
		v.Set("key_id", q.KeyID)
	}
	if q.Deployment != "" {
		v.Set("deployment", q.Deployment)
	}
	if !q.Since.IsZero() {
		v.Set("since", q.Since.UTC().Format(time.RFC3339Nano))
	}
	if q.Limit > 0 {
		v.Set("limit", strconv.Itoa(q.Limit))
	}
	path := "/v1/audit"
	if len(v) > 0 {
		path += "?" + v.Encode()
	}
	var raw json.RawMessage
	if _, err := c.Do(ctx, http.MethodGet, path, nil, &raw); err != nil {
		return nil, err
	}
	return list[AuditRecord](raw)
}

// ---- admin users and project rules ----

// User is an admin user.
type User struct {
	ID        string    `json:"id"`
	Username  string    `json:"username"`
	CreatedAt time.Time `json:"created_at"`
}

// Logout ends every session of the calling user (all their tokens, on
// every replica) and forgets c.Token.
func (c *Client) Logout(ctx context.Context) error {
	if _, err := c.Do(ctx, http.MethodPost, "/v1/auth/logout", nil, nil); err != nil {
		return err
	}
	c.Token = ""
	return nil
}

// Users lists the admin users.
func (c *Client) Users(ctx context.Context) ([]*User, error) {
	var out struct {
		Items []*User `json:"items"`
	}
	_, err := c.Do(ctx, http.MethodGet, "/v1/users", nil, &out)
	return out.Items, err
}

// CreateUser creates an admin user.
func (c *Client) CreateUser(ctx context.Context, username, password string) (*User, error) {
	var u User
	if _, err := c.Do(ctx, http.MethodPost, "/v1/users", map[string]string{"username": username, "password": password}, &u); err != nil {
		return nil, err
	}
	return &u, nil
}

// DeleteUser deletes an admin user (id or username) and ends their
// sessions.
func (c *Client) DeleteUser(ctx context.Context, user string) error {
	_, err := c.Do(ctx, http.MethodDelete, "/v1/users/"+esc(user), nil, nil)
	return err
}

// ChangePassword sets a user's password and ends their sessions; changing
// one's own needs oldPassword (else give "").
func (c *Client) ChangePassword(ctx context.Context, user, password, oldPassword string) error {
	in := map[string]string{"password": password}
	if oldPassword != "" {
		in["old_password"] = oldPassword
	}
	_, err := c.Do(ctx, http.MethodPut, "/v1/users/"+esc(user)+"/password", in, nil)
	return err
}

// Limits are a project's quotas.
type Limits struct {
	MaxKeys        int `json:"max_keys"`
	MaxDeployments int `json:"max_deployments"`
	MaxLinksPerKey int `json:"max_links_per_key"`
}

// ProjectDetail is a project with its upstream policy, quotas and usage.
type ProjectDetail struct {
	ID        string    `json:"id"`
	Name      string    `json:"name"`
	CreatedAt time.Time `json:"created_at"`
	// AllowedUpstreams is nil for the default policy.
	AllowedUpstreams []string `json:"allowed_upstreams"`
	Limits           Limits   `json:"limits"`
	Usage            struct {
		Keys        int `json:"keys"`
		Deployments int `json:"deployments"`
	} `json:"usage"`
	// JSON is the answer this value was decoded from.
	JSON json.RawMessage `json:"-"`
}

// ProjectUpdate changes a project's rules (admin users only); nil fields
// are left as they are.
type ProjectUpdate struct {
	// AllowedUpstreams replaces the policy (an empty list allows nothing).
	AllowedUpstreams *[]string
	// DefaultUpstreams sends allowed_upstreams: null, back to the default
	// policy (AllowedUpstreams must be nil).
	DefaultUpstreams bool
	// Quotas: a value sets it, 0 in a set pointer sends null (the default).
	MaxKeys, MaxDeployments, MaxLinksPerKey *int
}

// MarshalJSON sends only the fields that are set.
func (u ProjectUpdate) MarshalJSON() ([]byte, error) {
	m := map[string]any{}
	if u.AllowedUpstreams != nil {
		m["allowed_upstreams"] = *u.AllowedUpstreams
	} else if u.DefaultUpstreams {
		m["allowed_upstreams"] = nil
	}
	for name, v := range map[string]*int{"max_keys": u.MaxKeys, "max_deployments": u.MaxDeployments, "max_links_per_key": u.MaxLinksPerKey} {
		switch {
		case v == nil:
		case *v == 0:
			m[name] = nil
		default:
			m[name] = *v
		}
	}
	return json.Marshal(m)
}

// GetProject returns a project with its rules.
func (c *Client) GetProject(ctx context.Context, project string) (*ProjectDetail, error) {
	var p ProjectDetail
	if _, err := c.call(ctx, http.MethodGet, projectPath(project), nil, nil, &p, &p.JSON); err != nil {
		return nil, err
	}
	return &p, nil
}

// UpdateProject changes a project's upstream policy or quotas.
func (c *Client) UpdateProject(ctx context.Context, project string, in ProjectUpdate) (*ProjectDetail, error) {
	var p ProjectDetail
	if _, err := c.call(ctx, http.MethodPatch, projectPath(project), nil, in, &p, &p.JSON); err != nil {
		return nil, err
	}
	return &p, nil
}
