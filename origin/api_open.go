package origin

// The endpoints open to anyone: health, metrics, login and the key edges
// verify events with.

import (
	"context"
	"errors"
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

func (s *Server) handleLogin(c *call) error {
	tok, exp, err := s.loginRequest(c)
	if err != nil {
		return err
	}
	writeJSON(c.w, http.StatusOK, api.LoginResponse{Token: tok, ExpiresAt: exp, TokenType: "Bearer"})
	return nil
}

// loginRequest reads {username, password} and logs in, throttled and
// counted: POST /v1/auth/login and the console's login.
func (s *Server) loginRequest(c *call) (string, time.Time, error) {
	o, err := readObject(c.r, false, "username", "password")
	if err != nil {
		return "", time.Time{}, err
	}
	var user, pw string
	if _, _, err := o.get("username", &user, false, "a string"); err != nil {
		return "", time.Time{}, err
	}
	if _, _, err := o.get("password", &pw, false, "a string"); err != nil {
		return "", time.Time{}, err
	}
	addr := clientAddr(c.r)
	if ok, wait, why := s.logins.allow(user, addr); !ok {
		c.w.Header().Set("Retry-After", retryAfter(wait))
		s.met.login(loginThrottled)
		return "", time.Time{}, apierror.New(http.StatusTooManyRequests, apierror.RateLimited, why+"; retry later")
	}
	tok, exp, err := s.login(c.ctx(), user, pw)
	if errors.Is(err, ErrUnauthenticated) {
		s.logins.failed(user, addr)
		s.met.login(loginFailed)
		s.log.Warn("failed admin login", "from", addr)
	}
	if err != nil {
		return "", time.Time{}, err
	}
	s.met.login(loginOK)
	s.logins.succeeded(user, addr)
	return tok, exp, nil
}

func (s *Server) handleSigningKey(c *call) error {
	writeJSON(c.w, http.StatusOK, api.SigningKey{PublicKey: event.EncodePublicKey(s.PublicKey())})
	return nil
}
