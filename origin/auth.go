package origin

import (
	"context"
	"errors"
	"net/http"
	"slices"
	"strings"
	"time"

	"github.com/golang-jwt/jwt/v5"
	"golang.org/x/crypto/bcrypt"

	"github.com/keymesh/keymesh/apikey"
	"github.com/keymesh/keymesh/internal/apierror"
)

const jwtIssuer = "keymesh-origin"

// principal is who an admin request acts as: a user (all permissions, all
// projects) or a project API key (its permissions, its project only).
type principal struct {
	User      string // username
	UserID    string
	KeyID     string
	ProjectID string
	Perms     []string
}

func (p *principal) has(perm string) bool { return p.User != "" || slices.Contains(p.Perms, perm) }

// lacking returns the permissions of perms that p does not hold (none for a
// user), without duplicates.
func (p *principal) lacking(perms []string) []string {
	var out []string
	for _, perm := range perms {
		if !p.has(perm) && !slices.Contains(out, perm) {
			out = append(out, perm)
		}
	}
	return out
}

var (
	errAuth = apierror.New(http.StatusUnauthorized, apierror.AuthenticationFailed, "missing or invalid credentials")
)

// passwordHasher hashes and compares passwords; bcrypt, or in tests a
// wrapper that counts the work done.
type passwordHasher interface {
	hash(password []byte, cost int) ([]byte, error)
	compare(hash, password []byte) error
}

type bcryptHasher struct{}

func (bcryptHasher) hash(pw []byte, cost int) ([]byte, error) {
	return bcrypt.GenerateFromPassword(pw, cost)
}
func (bcryptHasher) compare(hash, pw []byte) error { return bcrypt.CompareHashAndPassword(hash, pw) }

// tokenClaims are an admin JWT's claims: the user's id (sub), name and
// token version (ver), which must still be the user's when it is used.
type tokenClaims struct {
	jwt.RegisteredClaims
	Name    string `json:"name"`
	Version *int64 `json:"ver"`
}

// checkPassword compares password with the stored hash of a user, or with
// the server's dummy hash (same cost) when there is no such user or the
// password cannot be one, so that an unknown username costs what a known
// one does: one comparison at the configured cost. It reports whether the
// password is the user's.
func (s *Server) checkPassword(hash, password string, known bool) bool {
	pw := []byte(password)
	if !known || len(pw) > maxPasswordLen || password == "" {
		if len(pw) > maxPasswordLen {
			pw = pw[:maxPasswordLen]
		}
		_ = s.hasher.compare(s.dummyHash, pw)
		return false
	}
	return s.hasher.compare([]byte(hash), pw) == nil
}

func (s *Server) login(ctx context.Context, username, password string) (string, time.Time, error) {
	var u *User
	var hash string
	var err error
	if len(username) <= maxUsernameLen && username != "" {
		u, hash, err = s.store.userLogin(ctx, username)
		if err != nil && !errors.Is(err, ErrNotFound) {
			return "", time.Time{}, err
		}
	}
	if !s.checkPassword(hash, password, u != nil) {
		return "", time.Time{}, ErrUnauthenticated
	}
	if cost, err := bcrypt.Cost([]byte(hash)); err == nil && cost != s.cfg.PasswordCost {
		// Stored at another cost: rehash, so that every user's login costs
		// what an unknown user's does (the dummy hash's cost).
		if h, err := s.hasher.hash([]byte(password), s.cfg.PasswordCost); err == nil {
			if err := s.store.setPassword(ctx, u.ID, string(h), false); err != nil {
				s.log.Warn("rehashing a password at the configured cost failed", "err", err)
			}
		}
	}
	return s.issueToken(u)
}

// issueToken signs a token for u at its current token version.
func (s *Server) issueToken(u *User) (string, time.Time, error) {
	now := s.cfg.now()
	exp := now.Add(s.cfg.TokenTTL).UTC().Truncate(time.Second)
	ver := u.TokenVersion
	tok := jwt.NewWithClaims(jwt.SigningMethodHS256, tokenClaims{
		RegisteredClaims: jwt.RegisteredClaims{Issuer: jwtIssuer, Subject: u.ID,
			IssuedAt: jwt.NewNumericDate(now), ExpiresAt: jwt.NewNumericDate(exp)},
		Name: u.Username, Version: &ver,
	})
	signed, err := tok.SignedString(s.jwtKey)
	if err != nil {
		return "", time.Time{}, err
	}
	return signed, exp, nil
}

// authenticate reads X-API-Key or Authorization: Bearer (a JWT, or an API
// key recognised by its prefix), else the console's session cookie (with
// its CSRF rule, console_session.go).
func (s *Server) authenticate(r *http.Request) (*principal, error) {
	cred := strings.TrimSpace(r.Header.Get("X-API-Key"))
	if cred == "" {
		h := r.Header.Get("Authorization")
		if h == "" {
			if ck, err := r.Cookie(consoleCookie); err == nil && ck.Value != "" {
				return s.authConsole(r, ck.Value)
			}
		}
		scheme, tok, ok := strings.Cut(h, " ")
		if !ok || !strings.EqualFold(scheme, "Bearer") || strings.TrimSpace(tok) == "" {
			return nil, errAuth
		}
		tok = strings.TrimSpace(tok)
		if !strings.HasPrefix(tok, apikey.Prefix) {
			return s.authJWT(r.Context(), tok)
		}
		cred = tok
	}
	return s.authKey(r.Context(), cred)
}

// authJWT accepts a token signed with jwt.key for a user that exists and
// whose token version is still the token's.
func (s *Server) authJWT(ctx context.Context, tok string) (*principal, error) {
	var claims tokenClaims
	_, err := jwt.ParseWithClaims(tok, &claims, func(*jwt.Token) (any, error) { return s.jwtKey, nil },
		jwt.WithValidMethods([]string{jwt.SigningMethodHS256.Alg()}),
		jwt.WithIssuer(jwtIssuer),
		jwt.WithExpirationRequired(),
		jwt.WithLeeway(5*time.Second),
		jwt.WithTimeFunc(s.cfg.now))
	if err != nil || claims.Subject == "" || claims.Version == nil {
		return nil, errAuth
	}
	u, err := s.users.get(ctx, claims.Subject)
	if errors.Is(err, ErrNotFound) {
		return nil, errAuth
	}
	if err != nil {
		return nil, err
	}
	if u.TokenVersion != *claims.Version {
		return nil, errAuth
	}
	return &principal{User: u.Username, UserID: u.ID}, nil
}

func (s *Server) authKey(ctx context.Context, cred string) (*principal, error) {
	h, err := apikey.ParseString(cred)
	if err != nil {
		return nil, errAuth
	}
	_, k, notAfter, err := s.store.keyByHash(ctx, h)
	if err != nil {
		return nil, err
	}
	now := s.cfg.now()
	if k == nil || k.Disabled || (notAfter != nil && !now.Before(*notAfter)) || (k.ExpiresAt != nil && !now.Before(*k.ExpiresAt)) {
		return nil, errAuth
	}
	return &principal{KeyID: k.ID, ProjectID: k.ProjectID, Perms: k.Permissions}, nil
}
