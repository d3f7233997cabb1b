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
	User      string
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
	errAuth           = apierror.New(http.StatusUnauthorized, apierror.AuthenticationFailed, "missing or invalid credentials")
	errLoginThrottled = apierror.New(http.StatusTooManyRequests, apierror.RateLimited, "too many failed logins from this address; retry later")
)

// dummyHash keeps login time the same whether or not the user exists.
var dummyHash, _ = bcrypt.GenerateFromPassword([]byte("keymesh-dummy-password"), bcrypt.MinCost)

func (s *Server) login(ctx context.Context, username, password string) (string, time.Time, error) {
	id, hash, err := s.store.userPassword(ctx, username)
	if errors.Is(err, ErrNotFound) {
		_ = bcrypt.CompareHashAndPassword(dummyHash, []byte(password))
		return "", time.Time{}, ErrUnauthenticated
	}
	if err != nil {
		return "", time.Time{}, err
	}
	if bcrypt.CompareHashAndPassword([]byte(hash), []byte(password)) != nil {
		return "", time.Time{}, ErrUnauthenticated
	}
	now := s.cfg.now()
	exp := now.Add(s.cfg.TokenTTL).UTC().Truncate(time.Second)
	tok := jwt.NewWithClaims(jwt.SigningMethodHS256, jwt.MapClaims{
		"iss":  jwtIssuer,
		"sub":  id,
		"name": username,
		"iat":  now.Unix(),
		"exp":  exp.Unix(),
	})
	signed, err := tok.SignedString(s.jwtKey)
	if err != nil {
		return "", time.Time{}, err
	}
	return signed, exp, nil
}

// authenticate reads X-API-Key or Authorization: Bearer (a JWT, or an API
// key recognised by its prefix).
func (s *Server) authenticate(r *http.Request) (*principal, error) {
	cred := strings.TrimSpace(r.Header.Get("X-API-Key"))
	if cred == "" {
		h := r.Header.Get("Authorization")
		scheme, tok, ok := strings.Cut(h, " ")
		if !ok || !strings.EqualFold(scheme, "Bearer") || strings.TrimSpace(tok) == "" {
			return nil, errAuth
		}
		tok = strings.TrimSpace(tok)
		if !strings.HasPrefix(tok, apikey.Prefix) {
			return s.authJWT(tok)
		}
		cred = tok
	}
	return s.authKey(r.Context(), cred)
}

func (s *Server) authJWT(tok string) (*principal, error) {
	claims := jwt.MapClaims{}
	_, err := jwt.ParseWithClaims(tok, claims, func(*jwt.Token) (any, error) { return s.jwtKey, nil },
		jwt.WithValidMethods([]string{jwt.SigningMethodHS256.Alg()}),
		jwt.WithIssuer(jwtIssuer),
		jwt.WithExpirationRequired(),
		jwt.WithLeeway(5*time.Second),
		jwt.WithTimeFunc(s.cfg.now))
	if err != nil {
		return nil, errAuth
	}
	name, _ := claims["name"].(string)
	if name == "" {
		return nil, errAuth
	}
	return &principal{User: name}, nil
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
