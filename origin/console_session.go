package origin

// The operator console's session (docs/api.md, "Console"): a login that
// puts the user's JWT in an HttpOnly, SameSite=Strict cookie instead of
// handing it to the page, and the one rule under which the API accepts
// that cookie: a request that changes anything must also carry the
// session's CSRF token in X-CSRF-Token. The token is an HMAC of the JWT
// under the origin's jwt.key, so it is bound to the session, needs no
// storage, and can be computed only by the origin; a page of another site
// can neither read it nor (SameSite=Strict) send the cookie. Past the
// cookie, a console request is an ordinary API request: same handlers,
// same permissions, same audit.

import (
	"crypto/hmac"
	"crypto/sha256"
	"encoding/base64"
	"mime"
	"net/http"
	"strings"
	"time"

	"github.com/golang-jwt/jwt/v5"

	"github.com/keymesh/keymesh/internal/apierror"
	"github.com/keymesh/keymesh/origin/console"
)

const (
	// consoleCookie holds a console session's JWT.
	consoleCookie = "keymesh_console"
	// csrfHeader carries the session's CSRF token on every state change.
	csrfHeader = "X-CSRF-Token"
	// consoleSessionPath is the console's login (POST), session (GET) and
	// logout (DELETE) endpoint.
	consoleSessionPath = "/console/session"
)

// consolePatterns are the console's routes: registered on the mux beside
// the API's (and counted by their pattern in the metrics), but not API
// endpoints, so not in the OpenAPI document.
var consolePatterns = []string{
	"/{$}", console.Prefix,
	"POST " + consoleSessionPath, "GET " + consoleSessionPath, "DELETE " + consoleSessionPath,
}

// consoleSession is the answer of the console's login and session
// endpoints: who is logged in, until when, and the CSRF token the page
// keeps in memory. It never holds the JWT itself.
type consoleSession struct {
	Username  string    `json:"username"`
	ExpiresAt time.Time `json:"expires_at"`
	CSRFToken string    `json:"csrf_token"`
}

var (
	errCSRF      = apierror.New(http.StatusForbidden, apierror.PermissionDenied, "a console session must send its X-CSRF-Token with every change")
	errCrossSite = apierror.New(http.StatusForbidden, apierror.PermissionDenied, "a console session can only be used by the console's own pages")
)

// consoleRoutes registers the console's page, files and session endpoints.
func (s *Server) consoleRoutes(mux *http.ServeMux) {
	h, err := console.New()
	if err != nil {
		// The files are compiled in: only a broken build lacks them
		// (console's own tests fail first).
		panic("console: embedded files: " + err.Error())
	}
	mux.Handle("/{$}", h)
	mux.Handle(console.Prefix, h)
	mux.HandleFunc("POST "+consoleSessionPath, s.open(s.consoleLogin))
	mux.HandleFunc("GET "+consoleSessionPath, s.open(s.consoleGetSession))
	mux.HandleFunc("DELETE "+consoleSessionPath, s.admin("", false, s.consoleLogout))
}

// csrfToken is the CSRF token of the session whose JWT is tok.
func (s *Server) csrfToken(tok string) string {
	m := hmac.New(sha256.New, s.jwtKey)
	m.Write([]byte("keymesh console csrf\x00"))
	m.Write([]byte(tok))
	return base64.RawURLEncoding.EncodeToString(m.Sum(nil))
}

// safeMethod reports a method that changes nothing, which a console
// session may use without its CSRF token.
func safeMethod(m string) bool {
	return m == http.MethodGet || m == http.MethodHead || m == http.MethodOptions
}

// crossSite reports a request a browser says another origin made: another
// site, or another port or scheme of this one ("same-site": an edge, or an
// upstream's page, on this host). The console's own requests are
// same-origin; a client that is no browser sends no Sec-Fetch-Site.
func crossSite(r *http.Request) bool {
	switch r.Header.Get("Sec-Fetch-Site") {
	case "", "same-origin", "none":
		return false
	}
	return true
}

// authConsole authenticates a request by its console cookie (tok): the
// JWT must be valid, the request not another site's, and a state change
// must carry the session's CSRF token.
func (s *Server) authConsole(r *http.Request, tok string) (*principal, error) {
	who, err := s.authJWT(r.Context(), tok)
	if err != nil {
		return nil, err
	}
	if crossSite(r) {
		return nil, errCrossSite
	}
	if !safeMethod(r.Method) {
		got := r.Header.Get(csrfHeader)
		if got == "" || !hmac.Equal([]byte(got), []byte(s.csrfToken(tok))) {
			return nil, errCSRF
		}
	}
	return who, nil
}

// setSessionCookie sets (maxAge > 0) or clears (maxAge < 0) the cookie,
// Secure when the browser reached the origin over TLS: the origin's own
// (r.TLS), or a proxy's in front of it that says so. Believing a client's
// X-Forwarded-Proto can only make the cookie stricter.
func setSessionCookie(w http.ResponseWriter, r *http.Request, value string, maxAge int) {
	secure := r.TLS != nil || strings.EqualFold(r.Header.Get("X-Forwarded-Proto"), "https")
	http.SetCookie(w, &http.Cookie{Name: consoleCookie, Value: value, Path: "/", MaxAge: maxAge,
		HttpOnly: true, Secure: secure, SameSite: http.SameSiteStrictMode})
}

// consoleLogin serves POST /console/session: {username, password}, as
// POST /v1/auth/login (same throttling, same metrics), answered with the
// session cookie and a consoleSession. Only a JSON body from the same
// site is read, so that no other site's form can log a browser in.
func (s *Server) consoleLogin(c *call) error {
	if mt, _, err := mime.ParseMediaType(c.r.Header.Get("Content-Type")); err != nil || mt != "application/json" {
		return apierror.New(http.StatusUnsupportedMediaType, apierror.ValidationError, "the console login takes a JSON body (Content-Type: application/json)")
	}
	if crossSite(c.r) {
		return errCrossSite
	}
	tok, exp, err := s.loginRequest(c)
	if err != nil {
		return err
	}
	maxAge := int(time.Until(exp).Seconds())
	if maxAge < 1 {
		maxAge = 1
	}
	setSessionCookie(c.w, c.r, tok, maxAge)
	var claims tokenClaims
	if _, _, err := jwt.NewParser().ParseUnverified(tok, &claims); err != nil {
		return err
	}
	c.w.Header().Set("Cache-Control", "no-store")
	writeJSON(c.w, http.StatusOK, consoleSession{Username: claims.Name, ExpiresAt: exp, CSRFToken: s.csrfToken(tok)})
	return nil
}

// consoleGetSession serves GET /console/session: the session of the
// cookie (so that a reloaded page finds its CSRF token again), or 401.
func (s *Server) consoleGetSession(c *call) error {
	ck, err := c.r.Cookie(consoleCookie)
	if err != nil || ck.Value == "" {
		return errAuth
	}
	if crossSite(c.r) {
		return errCrossSite
	}
	if _, err := s.authJWT(c.ctx(), ck.Value); err != nil {
		return err
	}
	var claims tokenClaims
	if _, _, err := jwt.NewParser().ParseUnverified(ck.Value, &claims); err != nil || claims.ExpiresAt == nil {
		return errAuth
	}
	c.w.Header().Set("Cache-Control", "no-store")
	writeJSON(c.w, http.StatusOK, consoleSession{Username: claims.Name, ExpiresAt: claims.ExpiresAt.UTC(), CSRFToken: s.csrfToken(ck.Value)})
	return nil
}

// consoleLogout serves DELETE /console/session: POST /v1/auth/logout (every
// token of the user is refused from then on), and the cookie cleared.
func (s *Server) consoleLogout(c *call) error {
	setSessionCookie(c.w, c.r, "", -1) // before handleLogout writes the status
	return s.handleLogout(c)
}
