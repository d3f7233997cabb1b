package origin

import (
	"errors"
	"fmt"
	"net/http"
	"time"
	"unicode/utf8"

	"github.com/keymesh/keymesh/api"
	"github.com/keymesh/keymesh/internal/apierror"
)

// Admin users over the API, under manage_users and for users only: a
// project key can never create, list, delete or re-password an admin, who
// holds every project. Logout ends every session of the caller.

var (
	userCreateFields     = []string{"username", "password"}
	passwordChangeFields = []string{"password", "old_password"}
)

// revoked holds the answer to a change that revoked tokens until every
// replica's user cache (see userCache) is past it; committed is when the
// change committed. Locally the user is forgotten at once.
func (s *Server) revoked(c *call, userID string, committed time.Time) {
	s.users.forget(userID)
	if s.cfg.UserCacheTTL <= 0 {
		return
	}
	// A tenth more for clocks that tick at slightly different rates.
	wait := time.Until(committed.Add(s.cfg.UserCacheTTL + s.cfg.UserCacheTTL/10))
	if wait <= 0 {
		return
	}
	t := time.NewTimer(wait)
	defer t.Stop()
	select {
	case <-t.C:
	case <-c.ctx().Done():
	}
}

// userAnswer is u as the API shows it.
func userAnswer(u *User) api.User {
	return api.User{ID: u.ID, Username: u.Username, CreatedAt: u.CreatedAt}
}

func (s *Server) requireUser(c *call, what string) error {
	if c.who.User == "" {
		return errUsersOnly(what)
	}
	return nil
}

// validPassword checks a password set through the API.
func validPassword(field, pw string) error {
	if len(pw) < minPasswordLen || len(pw) > maxPasswordLen {
		return validation(field, fmt.Sprintf("must be %d-%d bytes", minPasswordLen, maxPasswordLen))
	}
	if !utf8.ValidString(pw) {
		return validation(field, "must be UTF-8")
	}
	for _, r := range pw {
		if r < ' ' || r == 0x7f {
			return validation(field, "must not contain control characters")
		}
	}
	return nil
}

func (s *Server) handleLogout(c *call) error {
	if c.who.UserID == "" {
		return apierror.New(http.StatusBadRequest, apierror.ValidationError, "a project key has no session to end; delete or rotate the key instead")
	}
	if err := s.store.revokeTokens(c.ctx(), c.who.UserID); err != nil {
		return err
	}
	s.revoked(c, c.who.UserID, time.Now())
	s.auditAdmin(c, http.StatusNoContent, auditTarget{Target: c.who.UserID})
	c.w.WriteHeader(http.StatusNoContent)
	return nil
}

func (s *Server) listUsers(c *call) error {
	if err := s.requireUser(c, "list admin users"); err != nil {
		return err
	}
	us, err := s.store.listUsers(c.ctx())
	if err != nil {
		return err
	}
	items := make([]api.User, 0, len(us))
	for _, u := range us {
		items = append(items, userAnswer(u))
	}
	writeJSON(c.w, http.StatusOK, api.UserPage{Items: items})
	return nil
}

func (s *Server) createUser(c *call) error {
	if err := s.requireUser(c, "create admin users"); err != nil {
		return err
	}
	o, err := readObject(c.r, false, userCreateFields...)
	if err != nil {
		return err
	}
	var name, pw string
	for _, f := range []struct {
		name string
		dst  *string
	}{{"username", &name}, {"password", &pw}} {
		if present, _, err := o.get(f.name, f.dst, false, "a string"); err != nil {
			return err
		} else if !present {
			return validation(f.name, "is required")
		}
	}
	if err := validName("username", name); err != nil {
		return err
	}
	if err := validPassword("password", pw); err != nil {
		return err
	}
	hash, err := s.hasher.hash([]byte(pw), s.cfg.PasswordCost)
	if err != nil {
		return err
	}
	u, err := s.store.addUser(c.ctx(), name, string(hash))
	if err != nil {
		return err
	}
	s.auditAdmin(c, http.StatusCreated, auditTarget{Target: u.ID})
	writeJSON(c.w, http.StatusCreated, userAnswer(u))
	return nil
}

func (s *Server) deleteUser(c *call) error {
	if err := s.requireUser(c, "delete admin users"); err != nil {
		return err
	}
	u, err := s.store.deleteUser(c.ctx(), c.r.PathValue("u"))
	if err != nil {
		return err
	}
	s.revoked(c, u.ID, time.Now())
	s.auditAdmin(c, http.StatusNoContent, auditTarget{Target: u.ID})
	c.w.WriteHeader(http.StatusNoContent)
	return nil
}

// changePassword sets a user's password and ends their sessions. A user
// changing their own must give the old one (a stolen token alone cannot
// take the account over); wrong old passwords count as failed logins.
func (s *Server) changePassword(c *call) error {
	if err := s.requireUser(c, "change an admin user's password"); err != nil {
		return err
	}
	o, err := readObject(c.r, false, passwordChangeFields...)
	if err != nil {
		return err
	}
	var pw, old string
	if present, _, err := o.get("password", &pw, false, "a string"); err != nil {
		return err
	} else if !present {
		return validation("password", "is required")
	}
	if _, _, err := o.get("old_password", &old, false, "a string"); err != nil {
		return err
	}
	u, err := s.store.userRef(c.ctx(), s.store.db, c.r.PathValue("u"))
	if err != nil {
		return err
	}
	if u.ID == c.who.UserID {
		if _, ok := o["old_password"]; !ok {
			return validation("old_password", "is required to change your own password")
		}
		addr := clientAddr(c.r)
		if ok, wait, why := s.logins.allow(u.Username, addr); !ok {
			c.w.Header().Set("Retry-After", retryAfter(wait))
			return apierror.New(http.StatusTooManyRequests, apierror.RateLimited, why+"; retry later")
		}
		hash, err := s.store.userHash(c.ctx(), u.ID)
		if err != nil {
			return err
		}
		if !s.checkPassword(hash, old, true) {
			s.logins.failed(u.Username, addr)
			return apierror.New(http.StatusForbidden, apierror.PermissionDenied, "old_password is not your password").
				WithDetails(map[string]string{"field": "old_password"})
		}
	}
	if err := validPassword("password", pw); err != nil {
		return err
	}
	hash, err := s.hasher.hash([]byte(pw), s.cfg.PasswordCost)
	if err != nil {
		return err
	}
	if err := s.store.setPassword(c.ctx(), u.ID, string(hash), true); err != nil {
		if errors.Is(err, ErrNotFound) {
			return fmt.Errorf("%w: no user %q", ErrNotFound, c.r.PathValue("u"))
		}
		return err
	}
	s.revoked(c, u.ID, time.Now())
	s.auditAdmin(c, http.StatusNoContent, auditTarget{Target: u.ID})
	c.w.WriteHeader(http.StatusNoContent)
	return nil
}
