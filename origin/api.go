package origin

// The admin API's router and middleware: routes, the authentication and
// bounds every endpoint shares (open, admin), and the rendering of errors.
// The endpoints are by resource in api_*.go; a mutation answers through
// mutated (mutation.go).

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"slices"
	"strings"
	"time"

	"github.com/keymesh/keymesh/event"
	"github.com/keymesh/keymesh/internal/apierror"
)

// call is one admin request after authentication.
type call struct {
	w       http.ResponseWriter
	r       *http.Request
	who     *principal
	project *Project // set on /projects/{p}/... routes
	// waiting says the mutation was given ?wait, for wait (see readWait).
	waiting bool
	wait    time.Duration
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
	handle("GET /v1/usage", s.admin(event.PermReadMetrics, false, s.getUsage))
	handle("GET /v1/key", s.admin("", false, s.getOwnKey)) // any key, about itself
	// The operator console: "/", /console/ (console_session.go).
	s.consoleRoutes(mux)
	wrongMethod := methodNotAllowed(s.patterns)
	mux.HandleFunc("/", func(w http.ResponseWriter, r *http.Request) {
		if h, pattern := wrongMethod.Handler(r); pattern != "" {
			h.ServeHTTP(w, r) // a known path, another method
			return
		}
		apierror.New(http.StatusNotFound, apierror.NotFound, "no such endpoint").Write(w)
	})
	return s.instrument(mux, append(slices.Clone(s.patterns), consolePatterns...))
}

// instrument counts every request mux answers, and times it, by the route
// pattern that matched: only a registered pattern is a label value, so
// that the paths' ids never are (ServeMux names a redirect by its raw
// path; the catch-all's 404 and 405 are "/"): everything else is
// routeUnmatched.
func (s *Server) instrument(mux *http.ServeMux, patterns []string) http.Handler {
	known := make(map[string]bool, len(patterns))
	for _, p := range patterns {
		known[p] = true
	}
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		start := time.Now()
		sw := &statusWriter{ResponseWriter: w}
		mux.ServeHTTP(sw, r) // sets r.Pattern
		route := r.Pattern
		if !known[route] {
			route = routeUnmatched
		}
		s.met.served(route, sw.code(), time.Since(start))
	})
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
