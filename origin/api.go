package origin

import (
	"context"
	"encoding/base64"
	"errors"
	"fmt"
	"net/http"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/keymesh/keymesh/apikey"
	"github.com/keymesh/keymesh/event"
	"github.com/keymesh/keymesh/internal/apierror"
)

// call is one admin request after authentication.
type call struct {
	w       http.ResponseWriter
	r       *http.Request
	who     *principal
	project *Project // set on /projects/{p}/... routes
}

func (c *call) ctx() context.Context { return c.r.Context() }

type handlerFunc func(c *call) error

func (s *Server) routes() http.Handler {
	mux := http.NewServeMux()
	// handle registers a route and records its pattern, so tests can hold
	// the OpenAPI document to every route that exists.
	handle := func(pattern string, h http.HandlerFunc) {
		mux.HandleFunc(pattern, h)
		s.patterns = append(s.patterns, pattern)
	}
	handle("GET /health", s.health)
	handle("GET /metrics", s.metrics)
	handle("POST /v1/auth/login", s.open(s.handleLogin))
	handle("GET /v1/signing-key", s.open(s.handleSigningKey))
	handle("GET /v1/openapi.json", s.open(s.handleOpenAPI))

	handle("POST /v1/auth/logout", s.admin("", false, s.handleLogout))
	handle("GET /v1/users", s.admin(event.PermManageUsers, false, s.listUsers))
	handle("POST /v1/users", s.admin(event.PermManageUsers, false, s.createUser))
	handle("DELETE /v1/users/{u}", s.admin(event.PermManageUsers, false, s.deleteUser))
	handle("PUT /v1/users/{u}/password", s.admin(event.PermManageUsers, false, s.changePassword))

	handle("POST /v1/projects", s.admin(event.PermManageUsers, false, s.createProject))
	handle("GET /v1/projects", s.admin(event.PermWriteConfig, false, s.listProjects))
	handle("GET /v1/projects/{p}", s.admin(event.PermWriteConfig, true, s.getProject))
	handle("PATCH /v1/projects/{p}", s.admin(event.PermManageUsers, true, s.patchProject))

	const p = "/v1/projects/{p}"
	handle("POST "+p+"/keys", s.admin(event.PermWriteConfig, true, s.createKey))
	handle("GET "+p+"/keys", s.admin(event.PermWriteConfig, true, s.listKeys))
	handle("GET "+p+"/keys/{id}", s.admin(event.PermWriteConfig, true, s.getKey))
	handle("PATCH "+p+"/keys/{id}", s.admin(event.PermWriteConfig, true, s.patchKey))
	handle("DELETE "+p+"/keys/{id}", s.admin(event.PermWriteConfig, true, s.deleteKey))
	handle("POST "+p+"/keys/{id}/rotate", s.admin(event.PermWriteConfig, true, s.rotateKey))

	handle("POST "+p+"/deployments", s.admin(event.PermWriteConfig, true, s.createDeployment))
	handle("GET "+p+"/deployments", s.admin(event.PermWriteConfig, true, s.listDeployments))
	handle("GET "+p+"/deployments/{id}", s.admin(event.PermWriteConfig, true, s.getDeployment))
	handle("PATCH "+p+"/deployments/{id}", s.admin(event.PermWriteConfig, true, s.patchDeployment))
	handle("DELETE "+p+"/deployments/{id}", s.admin(event.PermWriteConfig, true, s.deleteDeployment))
	handle("GET "+p+"/deployments/{id}/keys", s.admin(event.PermWriteConfig, true, s.deploymentKeys))
	handle("PUT "+p+"/deployments/{id}/keys/{key_id}", s.admin(event.PermWriteConfig, true, s.linkKey(true)))
	handle("DELETE "+p+"/deployments/{id}/keys/{key_id}", s.admin(event.PermWriteConfig, true, s.linkKey(false)))

	handle("GET /v1/edges", s.admin(event.PermReadMetrics, false, s.listEdges))
	handle("GET /v1/audit", s.admin(event.PermViewAuditLogs, false, s.listAudit))
	wrongMethod := methodNotAllowed(s.patterns)
	mux.HandleFunc("/", func(w http.ResponseWriter, r *http.Request) {
		if h, pattern := wrongMethod.Handler(r); pattern != "" {
			h.ServeHTTP(w, r) // a known path, another method
			return
		}
		apierror.New(http.StatusNotFound, apierror.NotFound, "no such endpoint").Write(w)
	})
	return mux
}

// methodNotAllowed returns a mux matching the paths of patterns ("METHOD
// /path") whatever the method, answering 405 METHOD_NOT_ALLOWED with the
// path's methods in Allow. The catch-all route hands it what no route
// matched: ServeMux would answer that 405 itself, in plain text, were it not
// for the catch-all.
func methodNotAllowed(patterns []string) *http.ServeMux {
	methods := map[string][]string{}
	for _, p := range patterns {
		method, path, ok := strings.Cut(p, " ")
		if !ok {
			continue
		}
		methods[path] = append(methods[path], method)
		if method == http.MethodGet {
			methods[path] = append(methods[path], http.MethodHead)
		}
	}
	mux := http.NewServeMux()
	for path, ms := range methods {
		slices.Sort(ms)
		allow := strings.Join(ms, ", ")
		mux.HandleFunc(path, func(w http.ResponseWriter, r *http.Request) {
			w.Header().Set("Allow", allow)
			apierror.New(http.StatusMethodNotAllowed, apierror.MethodNotAllowed, "this endpoint does not accept "+r.Method+"; it accepts "+allow).
				WithDetails(map[string]any{"allowed": ms}).Write(w)
		})
	}
	return mux
}

// open serves an unauthenticated endpoint.
func (s *Server) open(h handlerFunc) http.HandlerFunc {
	return func(w http.ResponseWriter, r *http.Request) {
		r.Body = http.MaxBytesReader(w, r.Body, maxBody)
		s.finish(&call{w: w, r: r}, func(c *call) error {
			if err := checkQuery(r); err != nil {
				return err
			}
			return h(c)
		})
	}
}

// checkQuery bounds the query string: at most 32 parameters, each value at
// most maxQueryParamLen bytes.
func checkQuery(r *http.Request) error {
	q := r.URL.Query()
	if len(q) > 32 {
		return apierror.New(http.StatusBadRequest, apierror.ValidationError, "too many query parameters")
	}
	for name, vs := range q {
		if len(vs) > 4 || len(name) > 64 {
			return validation(truncate(name, 64), "given too often or too long a name")
		}
		for _, v := range vs {
			if len(v) > maxQueryParamLen {
				return validation(name, fmt.Sprintf("must be at most %d bytes", maxQueryParamLen))
			}
		}
	}
	return nil
}

// admin serves an endpoint needing perm; withProject resolves {p} and
// confines an API key to its own project.
func (s *Server) admin(perm string, withProject bool, h handlerFunc) http.HandlerFunc {
	return func(w http.ResponseWriter, r *http.Request) {
		r.Body = http.MaxBytesReader(w, r.Body, maxBody)
		c := &call{w: w, r: r}
		s.finish(c, func(c *call) error {
			if err := checkQuery(r); err != nil {
				return err
			}
			who, err := s.authenticate(r)
			if err != nil {
				return err
			}
			if perm != "" && !who.has(perm) {
				return apierror.New(http.StatusForbidden, apierror.PermissionDenied, "this key lacks the "+perm+" permission")
			}
			c.who = who
			for _, name := range []string{"p", "id", "key_id", "u"} {
				if len(r.PathValue(name)) > maxRefLen {
					return apierror.New(http.StatusNotFound, apierror.NotFound, fmt.Sprintf("no such %s (a reference is at most %d bytes)", name, maxRefLen))
				}
			}
			if withProject {
				p, err := s.store.project(r.Context(), r.PathValue("p"))
				if err != nil {
					return err
				}
				if who.ProjectID != "" && who.ProjectID != p.ID {
					return apierror.New(http.StatusForbidden, apierror.PermissionDenied, "this key may only manage its own project")
				}
				c.project = p
			}
			return h(c)
		})
	}
}

// finish runs h and renders any error as the apierror body.
func (s *Server) finish(c *call, h handlerFunc) {
	err := h(c)
	if err == nil {
		return
	}
	var ae *apierror.Error
	var fe *FieldError
	var mbe *http.MaxBytesError
	var de *DetailedError
	switch {
	case errors.As(err, &ae):
	case errors.As(err, &fe):
		ae = apierror.New(http.StatusBadRequest, apierror.ValidationError, fe.Error()).
			WithDetails(map[string]string{"field": fe.Field, "reason": fe.Message})
	case errors.As(err, &de):
		ae = detailedAPIError(de)
	case errors.As(err, &mbe):
		ae = apierror.New(http.StatusRequestEntityTooLarge, apierror.ValidationError, "request body too large")
	case errors.Is(err, ErrNotFound):
		ae = apierror.New(http.StatusNotFound, apierror.NotFound, err.Error())
	case errors.Is(err, ErrConflict):
		ae = apierror.New(http.StatusConflict, apierror.Conflict, err.Error())
	case errors.Is(err, ErrInvalid):
		ae = apierror.New(http.StatusBadRequest, apierror.ValidationError, err.Error())
	case errors.Is(err, ErrUnauthenticated):
		ae = errAuth
	case errors.Is(err, context.Canceled):
		return
	default:
		s.log.Error("admin request failed", "method", c.r.Method, "path", c.r.URL.Path, "err", err)
		ae = apierror.New(http.StatusInternalServerError, apierror.InternalError, "internal error")
	}
	if ae.Status == http.StatusUnauthorized {
		c.w.Header().Set("WWW-Authenticate", "Bearer") // as the edge answers
	}
	ae.Write(c.w)
}

// detailedAPIError renders a DetailedError by its sentinel.
func detailedAPIError(de *DetailedError) *apierror.Error {
	status, code := http.StatusBadRequest, apierror.ValidationError
	switch {
	case errors.Is(de.Err, ErrConflict):
		status, code = http.StatusConflict, apierror.Conflict
	case errors.Is(de.Err, ErrForbidden):
		status, code = http.StatusForbidden, apierror.PermissionDenied
	case errors.Is(de.Err, ErrTooLarge):
		status = http.StatusRequestEntityTooLarge
	case errors.Is(de.Err, ErrNotFound):
		status, code = http.StatusNotFound, apierror.NotFound
	case errors.Is(de.Err, ErrUnauthenticated):
		status, code = http.StatusUnauthorized, apierror.AuthenticationFailed
	}
	ae := apierror.New(status, code, de.Message)
	if de.Details != nil {
		ae = ae.WithDetails(de.Details)
	}
	return ae
}

// mutated answers a mutation: X-Revision, and body (a map or struct with
// "revision"), or no body (nil; a delete) with status 204. With ?wait the
// answer waits for the edges and reports propagation; a delete then answers
// 200 with {"revision", "propagation"}, since a 204 has no body to carry it.
func (s *Server) mutated(c *call, status int, rev uint64, body any) error {
	c.w.Header().Set("X-Revision", strconv.FormatUint(rev, 10))
	p, waiting := c.r.Context().Value(waitKey{}).(*propagation)
	if waiting && body == nil {
		status = http.StatusOK
	}
	s.auditAdmin(c, status, body)
	if waiting {
		// The change is committed: hold the answer until the edges have it.
		got := s.awaitPropagation(c, rev, p.wait)
		p.Applied, p.Pending, p.LiveEdges = got.Applied, got.Pending, got.LiveEdges
		if body == nil {
			body = &deleted{Revision: rev, Propagation: p}
		}
	}
	if body == nil {
		c.w.WriteHeader(status)
		return nil
	}
	writeJSON(c.w, status, body)
	return nil
}

// deleted is the answer to a delete given ?wait.
type deleted struct {
	Revision    uint64       `json:"revision"`
	Propagation *propagation `json:"propagation"`
}

// propagation is the ?wait= report: the live edges that had applied the
// mutation's revision when the answer was sent, and those that had not.
type propagation struct {
	Applied []string `json:"applied"`
	Pending []string `json:"pending"`
	// LiveEdges counts the live edges the wait knew of (applied +
	// pending): 0 means it proved nothing reached any edge.
	LiveEdges int `json:"live_edges"`
	// wait is the asked-for ?wait duration.
	wait time.Duration
}

// waitKey keys the request's *propagation in its context.
type waitKey struct{}

// waitFor validates ?wait before the mutation runs and, when it is given,
// returns the propagation report the handler puts in its answer. The wait
// itself happens in mutated, after the change has committed and before the
// answer is written; it fills the report in place.
func (s *Server) waitFor(c *call) (*propagation, error) {
	d, err := waitParam(c.r)
	if err != nil || c.r.URL.Query().Get("wait") == "" {
		return nil, err
	}
	p := &propagation{Applied: []string{}, Pending: []string{}, wait: d}
	c.r = c.r.WithContext(context.WithValue(c.r.Context(), waitKey{}, p))
	return p, nil
}

// ---- open endpoints ----

func (s *Server) health(w http.ResponseWriter, r *http.Request) {
	ctx, cancel := context.WithTimeout(r.Context(), 2*time.Second)
	defer cancel()
	status, code := "ok", http.StatusOK
	// Degraded: the API works, but changes do not reach the edges (see
	// publisher); another replica would not do better, so still 200.
	reason := s.pub.health()
	if reason != "" {
		status = "degraded"
	}
	if err := s.store.db.PingContext(ctx); err != nil {
		status, code = "store unavailable", http.StatusServiceUnavailable
	}
	body := map[string]any{
		"status":             status,
		"revision":           s.Revision(),
		"published_revision": s.PublishedRevision(),
		"nats_connected":     s.nc.IsConnected(),
	}
	if reason != "" {
		body["reason"] = reason
	}
	writeJSON(w, code, body)
}

func (s *Server) metrics(w http.ResponseWriter, _ *http.Request) {
	w.Header().Set("Content-Type", "text/plain; version=0.0.4")
	connected := 0
	if s.nc.IsConnected() {
		connected = 1
	}
	fmt.Fprintf(w, "# HELP keymesh_origin_revision Last committed revision.\n# TYPE keymesh_origin_revision gauge\nkeymesh_origin_revision %d\n", s.Revision())
	fmt.Fprintf(w, "# HELP keymesh_origin_published_revision Revision up to which every event is in JetStream.\n# TYPE keymesh_origin_published_revision gauge\nkeymesh_origin_published_revision %d\n", s.PublishedRevision())
	fmt.Fprintf(w, "# HELP keymesh_origin_nats_connected 1 if the NATS client is connected.\n# TYPE keymesh_origin_nats_connected gauge\nkeymesh_origin_nats_connected %d\n", connected)
	conflict := 0
	if s.pub.conflict.Load() {
		conflict = 1
	}
	fmt.Fprintf(w, "# HELP keymesh_origin_stream_conflict 1 while the event stream holds a message this origin did not publish (publishing is stopped).\n# TYPE keymesh_origin_stream_conflict gauge\nkeymesh_origin_stream_conflict %d\n", conflict)
	fmt.Fprintf(w, "# HELP keymesh_origin_stream_conflicts_total Times the event stream was found holding a message this origin did not publish.\n# TYPE keymesh_origin_stream_conflicts_total counter\nkeymesh_origin_stream_conflicts_total %d\n", s.pub.conflicts.Load())
	fmt.Fprintf(w, "# HELP keymesh_origin_publish_errors_total Failed attempts to publish events to JetStream.\n# TYPE keymesh_origin_publish_errors_total counter\nkeymesh_origin_publish_errors_total %d\n", s.pub.errors.Load())
	fmt.Fprintf(w, "# HELP keymesh_origin_jetstream_restarts_total Restarts of the embedded JetStream after write errors or its disabling.\n# TYPE keymesh_origin_jetstream_restarts_total counter\nkeymesh_origin_jetstream_restarts_total %d\n", s.pub.restarts.Load())
}

func (s *Server) handleLogin(c *call) error {
	o, err := readObject(c.r, false, "username", "password")
	if err != nil {
		return err
	}
	var user, pw string
	if _, _, err := o.get("username", &user, false, "a string"); err != nil {
		return err
	}
	if _, _, err := o.get("password", &pw, false, "a string"); err != nil {
		return err
	}
	addr := clientAddr(c.r)
	if ok, wait, why := s.logins.allow(user, addr); !ok {
		c.w.Header().Set("Retry-After", retryAfter(wait))
		return apierror.New(http.StatusTooManyRequests, apierror.RateLimited, why+"; retry later")
	}
	tok, exp, err := s.login(c.ctx(), user, pw)
	if errors.Is(err, ErrUnauthenticated) {
		s.logins.failed(user, addr)
		s.log.Warn("failed admin login", "from", addr)
	}
	if err != nil {
		return err
	}
	s.logins.succeeded(user, addr)
	writeJSON(c.w, http.StatusOK, map[string]any{"token": tok, "expires_at": exp, "token_type": "Bearer"})
	return nil
}

func (s *Server) handleSigningKey(c *call) error {
	writeJSON(c.w, http.StatusOK, map[string]string{"public_key": event.EncodePublicKey(s.PublicKey())})
	return nil
}

// ---- projects ----

func (s *Server) createProject(c *call) error {
	if c.who.KeyID != "" {
		// A project key manages its own project only; a new project is
		// outside it whatever the key holds.
		return apierror.New(http.StatusForbidden, apierror.PermissionDenied, "a project key cannot create projects; log in as a user")
	}
	o, err := readObject(c.r, false, "name")
	if err != nil {
		return err
	}
	var name string
	if present, _, err := o.get("name", &name, false, "a string"); err != nil {
		return err
	} else if !present {
		return validation("name", "is required")
	}
	if err := validName("name", name); err != nil {
		return err
	}
	if !secretNameRE.MatchString(name) {
		// Edges scope secrets by project name: EDGE_SECRET_<PROJECT>__<NAME>
		// must split one way only.
		return validation("name", "a project name is runs of letters and digits joined by single '.', '_' or '-'")
	}
	prop, err := s.waitFor(c)
	if err != nil {
		return err
	}
	// The revision is the store's at the project's creation (read in its
	// transaction, so right on every replica): edges never see projects, and
	// ?wait waits until they have applied every change made before it.
	p, rev, err := s.store.createProject(c.ctx(), name)
	if err != nil {
		return err
	}
	body := map[string]any{"id": p.ID, "name": p.Name, "created_at": p.CreatedAt, "revision": rev}
	if prop != nil {
		body["propagation"] = prop
	}
	return s.mutated(c, http.StatusCreated, rev, body)
}

func (s *Server) listProjects(c *call) error {
	ps, err := s.store.listProjects(c.ctx())
	if err != nil {
		return err
	}
	if c.who.ProjectID != "" {
		ps = slices.DeleteFunc(ps, func(p Project) bool { return p.ID != c.who.ProjectID })
	}
	writeJSON(c.w, http.StatusOK, map[string]any{"items": ps, "next_cursor": nil})
	return nil
}

// ---- keys ----

type keyView struct {
	ID          string           `json:"id"`
	Project     string           `json:"project"`
	Name        string           `json:"name"`
	Description string           `json:"description"`
	Prefix      string           `json:"prefix"`
	Permissions []string         `json:"permissions"`
	Deployments []string         `json:"deployments"`
	ExpiresAt   *time.Time       `json:"expires_at"`
	RateLimit   *event.RateLimit `json:"rate_limit"`
	Disabled    bool             `json:"disabled"`
	CreatedAt   time.Time        `json:"created_at"`
	UpdatedAt   time.Time        `json:"updated_at"`
	Revision    uint64           `json:"revision"`
	Key         string           `json:"key,omitempty"`
	Propagation *propagation     `json:"propagation,omitempty"`
}

func viewKey(k *Key) *keyView {
	v := &keyView{
		ID: k.ID, Project: k.ProjectID, Name: k.Name, Description: k.Description, Prefix: k.Prefix,
		Permissions: k.Permissions, Deployments: k.Deployments, ExpiresAt: k.ExpiresAt, RateLimit: k.RateLimit,
		Disabled: k.Disabled, CreatedAt: k.CreatedAt, UpdatedAt: k.UpdatedAt, Revision: k.Revision,
	}
	if v.Permissions == nil {
		v.Permissions = []string{}
	}
	if v.Deployments == nil {
		v.Deployments = []string{}
	}
	return v
}

var keyFields = []string{"name", "description", "permissions", "deployments", "expires_at", "rate_limit", "disabled"}

// keyInput is a decoded key create/patch body; nil pointers are absent.
type keyInput struct {
	name, description *string
	permissions       *[]string
	deployments       *[]string
	expiresSet        bool
	expiresAt         *time.Time
	rateLimitSet      bool
	rateLimit         *event.RateLimit
	disabled          *bool
}

func (s *Server) decodeKeyInput(c *call, o object, create bool) (*keyInput, error) {
	in := &keyInput{}
	var str string
	if present, _, err := o.get("name", &str, false, "a string"); err != nil {
		return nil, err
	} else if present {
		if err := validText("name", str, maxKeyNameLen); err != nil {
			return nil, err
		}
		in.name = &str
	}
	var desc string
	if present, _, err := o.get("description", &desc, false, "a string"); err != nil {
		return nil, err
	} else if present {
		if err := validText("description", desc, maxDescriptionLen); err != nil {
			return nil, err
		}
		in.description = &desc
	}
	var perms []string
	if present, null, err := o.get("permissions", &perms, create, "a list of permission names"); err != nil {
		return nil, err
	} else if present && !null {
		if len(perms) > 4*len(event.Permissions) {
			return nil, validation("permissions", fmt.Sprintf("at most %d entries", 4*len(event.Permissions)))
		}
		seen := map[string]bool{}
		out := []string{}
		for _, p := range perms {
			if !event.ValidPermission(p) {
				return nil, validation("permissions", fmt.Sprintf("unknown permission %q", p))
			}
			if !seen[p] {
				seen[p] = true
				out = append(out, p)
			}
		}
		if err := c.mayGrant(out); err != nil {
			return nil, err
		}
		in.permissions = &out
	}
	var deps []string
	if present, _, err := o.get("deployments", &deps, false, "a list of deployment ids or names"); err != nil {
		return nil, err
	} else if present {
		if deps == nil {
			deps = []string{}
		}
		if len(deps) > maxDeploymentLinks {
			return nil, validation("deployments", fmt.Sprintf("at most %d entries", maxDeploymentLinks))
		}
		for _, d := range deps {
			if d == "" || len(d) > maxRefLen {
				return nil, validation("deployments", fmt.Sprintf("an entry is a deployment id or name of 1-%d bytes", maxRefLen))
			}
		}
		in.deployments = &deps
	}
	var exp string
	if present, null, err := o.get("expires_at", &exp, true, "an RFC 3339 time, a YYYY-MM-DD date, or null"); err != nil {
		return nil, err
	} else if present {
		in.expiresSet = true
		if len(exp) > maxExpiryLen {
			return nil, validation("expires_at", fmt.Sprintf("must be at most %d bytes", maxExpiryLen))
		}
		if !null {
			t, err := parseExpiry(exp)
			if err != nil {
				return nil, err
			}
			in.expiresAt = &t
		}
	}
	if create {
		var days int
		if present, null, err := o.get("expires_in_days", &days, true, "a whole number of days"); err != nil {
			return nil, err
		} else if present && !null {
			if in.expiresSet && in.expiresAt != nil {
				return nil, validation("expires_in_days", "give expires_at or expires_in_days, not both")
			}
			if days < 1 || days > maxExpiresInDays {
				return nil, validation("expires_in_days", fmt.Sprintf("must be between 1 and %d", maxExpiresInDays))
			}
			t := time.Now().UTC().Add(time.Duration(days) * 24 * time.Hour).Truncate(time.Second)
			in.expiresSet, in.expiresAt = true, &t
		}
		if in.expiresAt != nil && !in.expiresAt.After(time.Now()) {
			return nil, validation("expires_at", "must be in the future")
		}
	}
	var rl event.RateLimit
	if present, null, err := o.get("rate_limit", &rl, true, `{"requests_per_minute": N} or null`); err != nil {
		return nil, err
	} else if present {
		in.rateLimitSet = true
		if !null {
			if err := validRateLimit(&rl); err != nil {
				return nil, err
			}
			in.rateLimit = &rl
		}
	}
	var dis bool
	if present, _, err := o.get("disabled", &dis, false, "true or false"); err != nil {
		return nil, err
	} else if present {
		in.disabled = &dis
	}
	return in, nil
}

// mayGrant refuses a project key giving a key a permission the caller does
// not hold itself (users may grant anything).
func (c *call) mayGrant(perms []string) error {
	if missing := c.who.lacking(perms); len(missing) > 0 {
		return apierror.New(http.StatusForbidden, apierror.PermissionDenied, "a key cannot grant a permission it does not hold").
			WithDetails(map[string]any{"missing_permissions": missing})
	}
	return nil
}

// mayActOn refuses a project key rotating, changing, linking, unlinking or
// deleting a key that holds a permission the caller lacks: rotating would
// hand the caller that key's secret, and the rest would let a lesser key
// tamper with a greater one. It runs inside the mutation's transaction, on
// the key as stored. Users may act on any key.
func (c *call) mayActOn(k *Key) error {
	if missing := c.who.lacking(k.Permissions); len(missing) > 0 {
		return apierror.New(http.StatusForbidden, apierror.PermissionDenied, "a key may only manage keys whose permissions it holds itself").
			WithDetails(map[string]any{"missing_permissions": missing})
	}
	return nil
}

func (in *keyInput) apply(k *Key) {
	if in.name != nil {
		k.Name = *in.name
	}
	if in.description != nil {
		k.Description = *in.description
	}
	if in.permissions != nil {
		k.Permissions = *in.permissions
	}
	if in.expiresSet {
		k.ExpiresAt = in.expiresAt
	}
	if in.rateLimitSet {
		k.RateLimit = in.rateLimit
	}
	if in.disabled != nil {
		k.Disabled = *in.disabled
	}
}

func (s *Server) createKey(c *call) error {
	o, err := readObject(c.r, true, append(keyFields, "expires_in_days")...)
	if err != nil {
		return err
	}
	in, err := s.decodeKeyInput(c, o, true)
	if err != nil {
		return err
	}
	prop, err := s.waitFor(c)
	if err != nil {
		return err
	}
	secret, err := apikey.Generate()
	if err != nil {
		return err
	}
	h, err := apikey.ParseString(secret)
	if err != nil {
		return err
	}
	k := &Key{ID: newID("key"), ProjectID: c.project.ID, Prefix: apikey.Display(secret), Permissions: slices.Clone(event.DefaultPermissions)}
	in.apply(k)
	if err := c.mayGrant(k.Permissions); err != nil { // the defaults, when none were given
		return err
	}
	var deps []string
	if in.deployments != nil {
		deps = *in.deployments
	}
	if k, err = s.store.createKey(c.ctx(), k, h, deps); err != nil {
		return err
	}
	v := viewKey(k)
	v.Key, v.Propagation = secret, prop
	return s.mutated(c, http.StatusCreated, k.Revision, v)
}

func (s *Server) listKeys(c *call) error {
	q := c.r.URL.Query()
	limit := 100
	if v := q.Get("limit"); v != "" {
		n, err := strconv.Atoi(v)
		if err != nil || n < 1 || n > 1000 {
			return validation("limit", "must be a number between 1 and 1000")
		}
		limit = n
	}
	after := ""
	if v := q.Get("cursor"); v != "" {
		if len(v) > maxCursorLen {
			return validation("cursor", "is not a cursor returned by this API")
		}
		b, err := base64.RawURLEncoding.DecodeString(v)
		if err != nil {
			return validation("cursor", "is not a cursor returned by this API")
		}
		after = string(b)
	}
	keys, more, err := s.store.listKeys(c.ctx(), c.project.ID, after, limit)
	if err != nil {
		return err
	}
	items := make([]*keyView, 0, len(keys))
	for _, k := range keys {
		items = append(items, viewKey(k))
	}
	var next any
	if more && len(keys) > 0 {
		next = base64.RawURLEncoding.EncodeToString([]byte(keys[len(keys)-1].ID))
	}
	writeJSON(c.w, http.StatusOK, map[string]any{"items": items, "next_cursor": next})
	return nil
}

func (s *Server) getKey(c *call) error {
	k, err := s.store.getKey(c.ctx(), c.project.ID, c.r.PathValue("id"))
	if err != nil {
		return err
	}
	writeJSON(c.w, http.StatusOK, viewKey(k))
	return nil
}

func (s *Server) patchKey(c *call) error {
	o, err := readObject(c.r, false, keyFields...)
	if err != nil {
		return err
	}
	in, err := s.decodeKeyInput(c, o, false)
	if err != nil {
		return err
	}
	prop, err := s.waitFor(c)
	if err != nil {
		return err
	}
	k, err := s.store.updateKey(c.ctx(), c.project.ID, c.r.PathValue("id"), func(k *Key) error {
		if err := c.mayActOn(k); err != nil {
			return err
		}
		in.apply(k)
		return nil
	}, in.deployments)
	if err != nil {
		return err
	}
	v := viewKey(k)
	v.Propagation = prop
	return s.mutated(c, http.StatusOK, k.Revision, v)
}

func (s *Server) deleteKey(c *call) error {
	if _, err := s.waitFor(c); err != nil {
		return err
	}
	rev, err := s.store.deleteKey(c.ctx(), c.project.ID, c.r.PathValue("id"), c.mayActOn)
	if err != nil {
		return err
	}
	return s.mutated(c, http.StatusNoContent, rev, nil)
}

func (s *Server) rotateKey(c *call) error {
	o, err := readObject(c.r, true, "grace_seconds")
	if err != nil {
		return err
	}
	var grace int64
	if _, _, err := o.get("grace_seconds", &grace, true, "a whole number of seconds"); err != nil {
		return err
	}
	if grace < 0 || grace > maxGraceSeconds {
		return validation("grace_seconds", "must be between 0 and 2592000 (30 days)")
	}
	prop, err := s.waitFor(c)
	if err != nil {
		return err
	}
	secret, err := apikey.Generate()
	if err != nil {
		return err
	}
	h, err := apikey.ParseString(secret)
	if err != nil {
		return err
	}
	k, err := s.store.rotateKey(c.ctx(), c.project.ID, c.r.PathValue("id"), h, apikey.Display(secret), time.Duration(grace)*time.Second, c.mayActOn)
	if err != nil {
		return err
	}
	v := viewKey(k)
	v.Key, v.Propagation = secret, prop
	return s.mutated(c, http.StatusOK, k.Revision, v)
}

// ---- deployments ----

type deploymentView struct {
	ID               string              `json:"id"`
	Project          string              `json:"project"`
	Name             string              `json:"name"`
	Hosts            []string            `json:"hosts"`
	PathPrefix       string              `json:"path_prefix"`
	Upstreams        map[string][]string `json:"upstreams"`
	AuthEnabled      bool                `json:"auth_enabled"`
	InvalidKeyStatus int                 `json:"invalid_key_status"`
	UpstreamAuth     *event.UpstreamAuth `json:"upstream_auth"`
	RateLimit        *event.RateLimit    `json:"rate_limit"`
	MaxBodyBytes     int64               `json:"max_body_bytes"`
	MaxPromptChars   int                 `json:"max_prompt_chars"`
	Revision         uint64              `json:"revision"`
	Propagation      *propagation        `json:"propagation,omitempty"`
}

func viewDeployment(d *event.Deployment) *deploymentView {
	v := &deploymentView{
		ID: d.ID, Project: d.Project, Name: d.Name, Hosts: d.Hosts, PathPrefix: d.PathPrefix, Upstreams: d.Upstreams,
		AuthEnabled: d.AuthEnabled, InvalidKeyStatus: d.InvalidKeyStatus, UpstreamAuth: d.UpstreamAuth, RateLimit: d.RateLimit,
		MaxBodyBytes: d.MaxBodyBytes, MaxPromptChars: d.MaxPromptChars, Revision: d.Revision,
	}
	if v.Hosts == nil {
		v.Hosts = []string{}
	}
	return v
}

func (s *Server) createDeployment(c *call) error {
	o, err := readObject(c.r, false, deploymentFields...)
	if err != nil {
		return err
	}
	apply, err := decodeDeployment(o)
	if err != nil {
		return err
	}
	if _, ok := o["name"]; !ok {
		return validation("name", "is required")
	}
	if _, ok := o["upstreams"]; !ok {
		return validation("upstreams", "is required")
	}
	prop, err := s.waitFor(c)
	if err != nil {
		return err
	}
	d := defaultDeployment()
	d.ID, d.Project, d.ProjectName = newID("dep"), c.project.ID, c.project.Name
	apply(d)
	if err := validateDeployment(d); err != nil {
		return err
	}
	if d, err = s.store.createDeployment(c.ctx(), d); err != nil {
		return err
	}
	v := viewDeployment(d)
	v.Propagation = prop
	return s.mutated(c, http.StatusCreated, d.Revision, v)
}

func (s *Server) listDeployments(c *call) error {
	ds, err := s.store.listDeployments(c.ctx(), s.store.db, c.project.ID)
	if err != nil {
		return err
	}
	items := make([]*deploymentView, 0, len(ds))
	for i := range ds {
		items = append(items, viewDeployment(&ds[i]))
	}
	writeJSON(c.w, http.StatusOK, map[string]any{"items": items, "next_cursor": nil})
	return nil
}

func (s *Server) getDeployment(c *call) error {
	d, err := s.store.getDeployment(c.ctx(), c.project.ID, c.r.PathValue("id"))
	if err != nil {
		return err
	}
	writeJSON(c.w, http.StatusOK, viewDeployment(d))
	return nil
}

func (s *Server) patchDeployment(c *call) error {
	o, err := readObject(c.r, false, deploymentFields...)
	if err != nil {
		return err
	}
	apply, err := decodeDeployment(o)
	if err != nil {
		return err
	}
	prop, err := s.waitFor(c)
	if err != nil {
		return err
	}
	d, err := s.store.updateDeployment(c.ctx(), c.project.ID, c.r.PathValue("id"), func(d *event.Deployment) error {
		apply(d)
		return validateDeployment(d)
	})
	if err != nil {
		return err
	}
	v := viewDeployment(d)
	v.Propagation = prop
	return s.mutated(c, http.StatusOK, d.Revision, v)
}

func (s *Server) deleteDeployment(c *call) error {
	if _, err := s.waitFor(c); err != nil {
		return err
	}
	rev, err := s.store.deleteDeployment(c.ctx(), c.project.ID, c.r.PathValue("id"))
	if err != nil {
		return err
	}
	return s.mutated(c, http.StatusNoContent, rev, nil)
}

func (s *Server) deploymentKeys(c *call) error {
	keys, err := s.store.deploymentKeys(c.ctx(), c.project.ID, c.r.PathValue("id"))
	if err != nil {
		return err
	}
	items := make([]*keyView, 0, len(keys))
	for _, k := range keys {
		items = append(items, viewKey(k))
	}
	writeJSON(c.w, http.StatusOK, map[string]any{"items": items, "next_cursor": nil})
	return nil
}

func (s *Server) linkKey(on bool) handlerFunc {
	return func(c *call) error {
		if _, err := readObject(c.r, true); err != nil {
			return err
		}
		prop, err := s.waitFor(c)
		if err != nil {
			return err
		}
		k, err := s.store.link(c.ctx(), c.project.ID, c.r.PathValue("id"), c.r.PathValue("key_id"), on, c.mayActOn)
		if err != nil {
			return err
		}
		v := viewKey(k)
		v.Propagation = prop
		return s.mutated(c, http.StatusOK, k.Revision, v)
	}
}
