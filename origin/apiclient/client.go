// Package apiclient is a Go client of the origin's REST admin API (see
// /v1/openapi.json on a running origin). The bodies it sends and decodes
// are package api's types, the wire contract the origin shares; the
// convenience types here (Key with its raw JSON, the partial updates with
// their "send null" switches) wrap or build them.
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

	"github.com/keymesh/keymesh/api"
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
	var e api.ErrorBody
	ae := &APIError{Status: status}
	if json.Unmarshal(b, &e) == nil {
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

// The wire types are package api's; these names stay for the callers.
type (
	RateLimit    = api.RateLimit
	UpstreamAuth = api.UpstreamAuth
	Propagation  = api.Propagation
	// Deleted is the answer to a delete: the change's revision and, when
	// the delete was given Wait, the propagation report (nil otherwise).
	Deleted = api.Deleted
	// KeyCreate is the body of a key creation; zero fields are left out.
	KeyCreate = api.KeyCreate
	// Project is a project; Revision is set by CreateProject only.
	Project = api.ProjectCreated
	Edge    = api.Edge
	// AuditRecord is one audit record, as the origin sends it.
	AuditRecord = api.AuditRecord
	// AuditPage is one page of audit records.
	AuditPage = api.AuditPage
	// Session is a login's answer.
	Session = api.LoginResponse
	User    = api.User
	Limits  = api.Limits
	// Quota is a token or request allowance (exactly one of Tokens and
	// Requests), refilled daily, monthly or (Refill nil) never.
	Quota = api.Quota
	// Pricing is what a deployment's tokens cost per million.
	Pricing = api.Pricing
)

// TokenLimits are the token bounds of a key, deployment or project update:
// nil fields are left as they are; a set one with 0 (or, for Quota, the
// No* flag) sends null, which removes the bound.
type TokenLimits struct {
	TokensPerMinute, TokensPerDay *int64
	Quota                         *Quota
	// NoQuota sends quota: null (Quota must be nil).
	NoQuota bool
	// MaxBudget sets the spend cap, in units of the pricing currency;
	// NoBudget sends max_budget: null (MaxBudget must be nil).
	MaxBudget *json.Number
	NoBudget  bool
	// BudgetRefill is sent with MaxBudget: "daily", "monthly", or "" for
	// never (null); nil leaves it out (an update keeps the refill).
	BudgetRefill *string
}

// budget is the spend cap members as an api patch sends them.
func (t TokenLimits) budget() (maxBudget api.Nullable[json.Number], refill api.Nullable[string]) {
	if t.BudgetRefill != nil {
		refill = api.Value(*t.BudgetRefill)
		if *t.BudgetRefill == "" {
			refill = api.Null[string]()
		}
	}
	return nullable(t.MaxBudget, t.NoBudget), refill
}

// patch is the three members as an api patch sends them.
func (t TokenLimits) patch() (perMinute, perDay api.Nullable[int64], quota api.Nullable[Quota]) {
	return zeroNull(t.TokensPerMinute), zeroNull(t.TokensPerDay), nullable(t.Quota, t.NoQuota)
}

// zeroNull is v when set and not 0, null when 0, else absent.
func zeroNull(v *int64) api.Nullable[int64] {
	if v != nil && *v == 0 {
		return api.Null[int64]()
	}
	return nullable(v, false)
}

// Key is an API key as the origin shows it, with the answer it was decoded
// from. Secret is set only by create and rotate.
type Key struct {
	api.Key
	// JSON is the answer this value was decoded from.
	JSON json.RawMessage `json:"-"`
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
	// Models replaces the model allow-list (an empty list: any model).
	Models         *[]string
	MaxConcurrency *int
	// NoMaxConcurrency sends max_concurrency: null (MaxConcurrency must be
	// nil).
	NoMaxConcurrency bool
	// Tokens changes the token bounds.
	Tokens   TokenLimits
	Disabled *bool
}

// MarshalJSON sends only the fields that are set, as an api.KeyPatch.
func (u KeyUpdate) MarshalJSON() ([]byte, error) {
	p := api.KeyPatch{
		Name: u.Name, Description: u.Description, Permissions: u.Permissions, Deployments: u.Deployments,
		ExpiresAt: nullable(u.ExpiresAt, u.NeverExpires), RateLimit: nullable(u.RateLimit, u.NoRateLimit),
		Models: nullable(u.Models, false), MaxConcurrency: nullable(u.MaxConcurrency, u.NoMaxConcurrency),
		Disabled: u.Disabled,
	}
	p.TokensPerMinute, p.TokensPerDay, p.Quota = u.Tokens.patch()
	p.MaxBudget, p.BudgetRefill = u.Tokens.budget()
	return json.Marshal(p)
}

// nullable is v when set, else null when null is asked for, else absent.
func nullable[T any](v *T, null bool) api.Nullable[T] {
	switch {
	case v != nil:
		return api.Value(*v)
	case null:
		return api.Null[T]()
	}
	return api.Nullable[T]{}
}

// KeyPage is one page of a key listing.
type KeyPage struct {
	Items []*Key `json:"items"`
	// NextCursor continues the listing; empty at the end.
	NextCursor string `json:"next_cursor"`
	// JSON is the answer this value was decoded from.
	JSON json.RawMessage `json:"-"`
}

// Deployment is a deployment as the origin shows it, with the answer it
// was decoded from.
type Deployment struct {
	api.Deployment
	// JSON is the answer this value was decoded from.
	JSON json.RawMessage `json:"-"`
}

// DeploymentInput is a deployment creation (Name and Upstreams required)
// or a partial update: nil fields are left out (create: the defaults).
type DeploymentInput struct {
	Name             *string
	Hosts            *[]string
	PathPrefix       *string
	StripPrefix      *bool
	Upstreams        map[string][]string // nil: left out
	AuthEnabled      *bool
	InvalidKeyStatus *int
	UpstreamAuth     *UpstreamAuth
	RateLimit        *RateLimit
	// NoRateLimit sends rate_limit: null (RateLimit must be nil).
	NoRateLimit    bool
	MaxBodyBytes   *int64
	MaxPromptChars *int
	// Models replaces the model allow-list (an empty list: any model).
	Models         *[]string
	MaxConcurrency *int
	// NoMaxConcurrency sends max_concurrency: null (MaxConcurrency must be
	// nil).
	NoMaxConcurrency bool
	// Tokens changes the token bounds; DefaultMaxTokens the reservation of
	// a request naming no max_tokens (0 sends null: none).
	Tokens           TokenLimits
	DefaultMaxTokens *int64
	// Pricing sets what the deployment's tokens cost; NoPricing sends
	// pricing: null (Pricing must be nil).
	Pricing   *Pricing
	NoPricing bool
}

// MarshalJSON sends only the fields that are set, as an api.DeploymentInput.
func (d DeploymentInput) MarshalJSON() ([]byte, error) {
	in := api.DeploymentInput{
		Name: d.Name, Hosts: nullable(d.Hosts, false), PathPrefix: nullable(d.PathPrefix, false), StripPrefix: d.StripPrefix, Upstreams: d.Upstreams,
		AuthEnabled: d.AuthEnabled, InvalidKeyStatus: d.InvalidKeyStatus, UpstreamAuth: nullable(d.UpstreamAuth, false),
		RateLimit: nullable(d.RateLimit, d.NoRateLimit), MaxBodyBytes: d.MaxBodyBytes, MaxPromptChars: d.MaxPromptChars,
		Models: nullable(d.Models, false), MaxConcurrency: nullable(d.MaxConcurrency, d.NoMaxConcurrency),
		DefaultMaxTokens: zeroNull(d.DefaultMaxTokens),
	}
	in.TokensPerMinute, in.TokensPerDay, in.Quota = d.Tokens.patch()
	in.MaxBudget, in.BudgetRefill = d.Tokens.budget()
	in.Pricing = nullable(d.Pricing, d.NoPricing)
	return json.Marshal(in)
}

// DeploymentPage is a deployment listing.
type DeploymentPage struct {
	Items      []*Deployment `json:"items"`
	NextCursor string        `json:"next_cursor"`
	// JSON is the answer this value was decoded from.
	JSON json.RawMessage `json:"-"`
}

// page decodes an api.Page whose items keep their own raw JSON.
func page[T any](raw json.RawMessage, item func(json.RawMessage) (*T, error)) ([]*T, string, error) {
	var p api.Page[json.RawMessage]
	if err := json.Unmarshal(raw, &p); err != nil {
		return nil, "", err
	}
	items := make([]*T, 0, len(p.Items))
	for _, r := range p.Items {
		v, err := item(r)
		if err != nil {
			return nil, "", err
		}
		items = append(items, v)
	}
	next := ""
	if p.NextCursor != nil {
		next = *p.NextCursor
	}
	return items, next, nil
}

func decodeKey(raw json.RawMessage) (*Key, error) {
	k := &Key{JSON: raw}
	return k, json.Unmarshal(raw, &k.Key)
}

func decodeDeployment(raw json.RawMessage) (*Deployment, error) {
	d := &Deployment{JSON: raw}
	return d, json.Unmarshal(raw, &d.Deployment)
}

// AuditQuery filters GET /v1/audit; zero fields are not sent. Status is a
// code ("401") or a class ("4xx"); Reason a refusal reason ("unlinked");
// Cursor the NextCursor of the page before.
type AuditQuery struct {
	Project    string
	KeyID      string
	Deployment string
	Source     string
	Status     string
	Reason     string
	Since      time.Time
	Until      time.Time
	Limit      int
	Cursor     string
}

// UsageQuery filters and groups GET /v1/usage; zero fields are not sent.
// Since and Until are passed as given: an RFC 3339 time, a YYYY-MM-DD date
// or a duration back from now (the origin defaults until to now and since
// to a day before).
type UsageQuery struct {
	Project    string
	KeyID      string
	NoKey      bool // sends key_id= (empty): the requests of deployments without auth
	Deployment string
	Model      string
	Since      string
	Until      string
	GroupBy    []string // of project, key, deployment, model, hour, day
	Limit      int
}

// UsageReport is the answer of GET /v1/usage, with its raw JSON.
type UsageReport struct {
	api.UsageReport
	// JSON is the answer this value was decoded from.
	JSON json.RawMessage `json:"-"`
}

// KeySelf is the answer of GET /v1/key.
type KeySelf = api.KeySelf

// ---- calls ----

// Login exchanges a user's credentials for a JWT, keeps it in c.Token and
// returns it with its expiry.
func (c *Client) Login(ctx context.Context, username, password string) (*Session, error) {
	var s Session
	if _, err := c.Do(ctx, http.MethodPost, "/v1/auth/login", api.LoginRequest{Username: username, Password: password}, &s); err != nil {
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
	var out api.SigningKey
	_, err := c.Do(ctx, http.MethodGet, "/v1/signing-key", nil, &out)
	return out.PublicKey, err
}

// CreateProject creates a project.
func (c *Client) CreateProject(ctx context.Context, name string) (*Project, error) {
	var p Project
	rev, err := c.call(ctx, http.MethodPost, "/v1/projects", nil, api.ProjectCreate{Name: name}, &p, nil)
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
	var out api.Page[*Project]
	_, err := c.Do(ctx, http.MethodGet, "/v1/projects", nil, &out)
	return out.Items, err
}

// keyCall decodes a key answer, filling Revision from the header if the
// body had none.
func (c *Client) keyCall(ctx context.Context, method, path string, opts []CallOption, in any) (*Key, error) {
	var k Key
	rev, err := c.call(ctx, method, path, opts, in, &k.Key, &k.JSON)
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
	return c.keyPage(ctx, path)
}

// keyPage gets a key listing.
func (c *Client) keyPage(ctx context.Context, path string) (*KeyPage, error) {
	p := KeyPage{}
	if _, err := c.call(ctx, http.MethodGet, path, nil, nil, nil, &p.JSON); err != nil {
		return nil, err
	}
	var err error
	if p.Items, p.NextCursor, err = page(p.JSON, decodeKey); err != nil {
		return nil, fmt.Errorf("decoding key listing: %w", err)
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
	in := api.KeyRotate{GraceSeconds: int64(grace / time.Second)}
	return c.keyCall(ctx, http.MethodPost, projectPath(project)+"/keys/"+esc(id)+"/rotate", opts, in)
}

func (c *Client) deploymentCall(ctx context.Context, method, path string, opts []CallOption, in any) (*Deployment, error) {
	var d Deployment
	rev, err := c.call(ctx, method, path, opts, in, &d.Deployment, &d.JSON)
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
	p := DeploymentPage{}
	if _, err := c.call(ctx, http.MethodGet, projectPath(project)+"/deployments", nil, nil, nil, &p.JSON); err != nil {
		return nil, err
	}
	var err error
	if p.Items, p.NextCursor, err = page(p.JSON, decodeDeployment); err != nil {
		return nil, fmt.Errorf("decoding deployment listing: %w", err)
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
	return c.keyPage(ctx, projectPath(project)+"/deployments/"+esc(id)+"/keys")
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

// Audit returns one page of the audit records matching q, newest first.
func (c *Client) Audit(ctx context.Context, q AuditQuery) (*AuditPage, error) {
	v := url.Values{}
	for name, val := range map[string]string{"project": q.Project, "key_id": q.KeyID, "deployment": q.Deployment,
		"source": q.Source, "status": q.Status, "reason": q.Reason, "cursor": q.Cursor} {
		if val != "" {
			v.Set(name, val)
		}
	}
	if !q.Since.IsZero() {
		v.Set("since", q.Since.UTC().Format(time.RFC3339Nano))
	}
	if !q.Until.IsZero() {
		v.Set("until", q.Until.UTC().Format(time.RFC3339Nano))
	}
	if q.Limit > 0 {
		v.Set("limit", strconv.Itoa(q.Limit))
	}
	path := "/v1/audit"
	if len(v) > 0 {
		path += "?" + v.Encode()
	}
	var page AuditPage
	if _, err := c.Do(ctx, http.MethodGet, path, nil, &page); err != nil {
		return nil, err
	}
	if page.Items == nil {
		page.Items = []AuditRecord{}
	}
	return &page, nil
}

// Usage returns the usage sums q selects (a project key: of its own project
// only).
func (c *Client) Usage(ctx context.Context, q UsageQuery) (*UsageReport, error) {
	v := url.Values{}
	for name, val := range map[string]string{"project": q.Project, "key_id": q.KeyID, "deployment": q.Deployment,
		"model": q.Model, "since": q.Since, "until": q.Until, "group_by": strings.Join(q.GroupBy, ",")} {
		if val != "" {
			v.Set(name, val)
		}
	}
	if q.NoKey && q.KeyID == "" {
		v.Set("key_id", "")
	}
	if q.Limit > 0 {
		v.Set("limit", strconv.Itoa(q.Limit))
	}
	path := "/v1/usage"
	if len(v) > 0 {
		path += "?" + v.Encode()
	}
	var out UsageReport
	if _, err := c.call(ctx, http.MethodGet, path, nil, nil, &out.UsageReport, &out.JSON); err != nil {
		return nil, err
	}
	return &out, nil
}

// Self returns the API key c authenticates with (c.APIKey), as GET /v1/key
// shows it: never its secret. An admin token is refused.
func (c *Client) Self(ctx context.Context) (*KeySelf, error) {
	var out KeySelf
	if _, err := c.Do(ctx, http.MethodGet, "/v1/key", nil, &out); err != nil {
		return nil, err
	}
	return &out, nil
}

// ---- admin users and project rules ----

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
	var out api.Page[*User]
	_, err := c.Do(ctx, http.MethodGet, "/v1/users", nil, &out)
	return out.Items, err
}

// CreateUser creates an admin user.
func (c *Client) CreateUser(ctx context.Context, username, password string) (*User, error) {
	var u User
	if _, err := c.Do(ctx, http.MethodPost, "/v1/users", api.UserCreate{Username: username, Password: password}, &u); err != nil {
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
	in := api.PasswordChange{Password: password, OldPassword: oldPassword}
	_, err := c.Do(ctx, http.MethodPut, "/v1/users/"+esc(user)+"/password", in, nil)
	return err
}

// ProjectDetail is a project with its upstream policy (AllowedUpstreams
// nil: the default), quotas and usage, with the answer it was decoded from.
type ProjectDetail struct {
	api.ProjectDetail
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
	// Tokens changes the token bounds of all the project's deployments
	// together (which re-sends each of them to the edges).
	Tokens TokenLimits
}

// MarshalJSON sends only the fields that are set, as an api.ProjectPatch.
func (u ProjectUpdate) MarshalJSON() ([]byte, error) {
	quota := func(v *int) api.Nullable[int] {
		if v != nil && *v == 0 {
			return api.Null[int]()
		}
		return nullable(v, false)
	}
	p := api.ProjectPatch{
		AllowedUpstreams: nullable(u.AllowedUpstreams, u.DefaultUpstreams),
		MaxKeys:          quota(u.MaxKeys), MaxDeployments: quota(u.MaxDeployments), MaxLinksPerKey: quota(u.MaxLinksPerKey),
	}
	p.TokensPerMinute, p.TokensPerDay, p.Quota = u.Tokens.patch()
	p.MaxBudget, p.BudgetRefill = u.Tokens.budget()
	return json.Marshal(p)
}

// GetProject returns a project with its rules.
func (c *Client) GetProject(ctx context.Context, project string) (*ProjectDetail, error) {
	var p ProjectDetail
	if _, err := c.call(ctx, http.MethodGet, projectPath(project), nil, nil, &p.ProjectDetail, &p.JSON); err != nil {
		return nil, err
	}
	return &p, nil
}

// UpdateProject changes a project's upstream policy, quotas or token
// bounds (with Wait, the answer waits for the re-sent deployments to reach
// the edges).
func (c *Client) UpdateProject(ctx context.Context, project string, in ProjectUpdate, opts ...CallOption) (*ProjectDetail, error) {
	var p ProjectDetail
	if _, err := c.call(ctx, http.MethodPatch, projectPath(project), opts, in, &p.ProjectDetail, &p.JSON); err != nil {
		return nil, err
	}
	return &p, nil
}
