package origin

// The endpoints open to anyone: health, metrics, login and the key edges
// verify events with.

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"time"

	"github.com/keymesh/keymesh/api"
	"github.com/keymesh/keymesh/event"
	"github.com/keymesh/keymesh/internal/apierror"
)

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
	writeJSON(w, code, api.Health{Status: status, Reason: reason, Revision: s.Revision(),
		PublishedRevision: s.PublishedRevision(), NATSConnected: s.nc.IsConnected()})
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
	writeJSON(c.w, http.StatusOK, api.LoginResponse{Token: tok, ExpiresAt: exp, TokenType: "Bearer"})
	return nil
}

func (s *Server) handleSigningKey(c *call) error {
	writeJSON(c.w, http.StatusOK, api.SigningKey{PublicKey: event.EncodePublicKey(s.PublicKey())})
	return nil
}
