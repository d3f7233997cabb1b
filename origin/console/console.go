// Package console is the operator console: a browser client of the
// origin's REST API (docs/api.md, "Console"), as static files embedded in
// the binary and served by the origin on its own listener.
//
// It guarantees:
//   - Everything it serves is in the binary (go:embed): no CDN, nothing
//     fetched at run time, nothing built at build time but by the Go
//     compiler.
//   - Every answer carries a strict Content-Security-Policy (script, style,
//     images and connections from the origin itself only, no inline script
//     or style, no framing), X-Frame-Options: DENY, X-Content-Type-Options:
//     nosniff and Referrer-Policy: no-referrer.
//   - The pages hold no behaviour of their own: every action is a REST call,
//     authorised exactly as any other client's (the session cookie and its
//     CSRF token are the origin's, see origin/console_session.go).
//
// Files are revalidated on every use (Cache-Control: no-cache with a
// strong ETag of their content), so an upgraded origin never serves a page
// with the previous version's scripts.
package console

import (
	"bytes"
	"crypto/sha256"
	"embed"
	"encoding/hex"
	"io/fs"
	"mime"
	"net/http"
	"path"
	"strings"
	"time"
)

//go:embed static
var static embed.FS

// Prefix is the path under which the console's files are served; the
// console's page itself is served at "/".
const Prefix = "/console/"

// CSP is the Content-Security-Policy of every console answer.
const CSP = "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; " +
	"connect-src 'self'; font-src 'self'; object-src 'none'; base-uri 'none'; form-action 'self'; " +
	"frame-ancestors 'none'"

type file struct {
	body        []byte
	etag        string
	contentType string
}

// Handler serves the console: GET or HEAD "/" is index.html, Prefix+name
// the file static/name; anything else is 404. It is built once from the
// embedded files.
type Handler struct {
	files map[string]*file // by path under static/
}

// New reads the embedded files.
func New() (*Handler, error) {
	h := &Handler{files: map[string]*file{}}
	err := fs.WalkDir(static, "static", func(p string, d fs.DirEntry, err error) error {
		if err != nil || d.IsDir() {
			return err
		}
		b, err := static.ReadFile(p)
		if err != nil {
			return err
		}
		sum := sha256.Sum256(b)
		ct := mime.TypeByExtension(path.Ext(p))
		switch path.Ext(p) { // not left to the host's mime tables
		case ".js", ".mjs":
			ct = "text/javascript; charset=utf-8"
		case ".css":
			ct = "text/css; charset=utf-8"
		case ".html":
			ct = "text/html; charset=utf-8"
		case ".svg":
			ct = "image/svg+xml"
		}
		if ct == "" {
			ct = "application/octet-stream"
		}
		h.files[strings.TrimPrefix(p, "static/")] = &file{body: b, etag: `"` + hex.EncodeToString(sum[:16]) + `"`, contentType: ct}
		return nil
	})
	if err != nil {
		return nil, err
	}
	if h.files["index.html"] == nil {
		return nil, fs.ErrNotExist
	}
	return h, nil
}

// SecurityHeaders sets the headers every console answer carries.
func SecurityHeaders(hd http.Header) {
	hd.Set("Content-Security-Policy", CSP)
	hd.Set("X-Frame-Options", "DENY")
	hd.Set("X-Content-Type-Options", "nosniff")
	hd.Set("Referrer-Policy", "no-referrer")
	hd.Set("Cross-Origin-Opener-Policy", "same-origin")
	hd.Set("Cross-Origin-Resource-Policy", "same-origin")
}

// ServeHTTP serves "/" and the files under Prefix.
func (h *Handler) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	SecurityHeaders(w.Header())
	var name string
	switch {
	case r.URL.Path == "/":
		name = "index.html"
	case strings.HasPrefix(r.URL.Path, Prefix):
		name = strings.TrimPrefix(r.URL.Path, Prefix)
	}
	f := h.files[name]
	if f == nil || name == "index.html" && r.URL.Path != "/" {
		w.Header().Set("Content-Type", "text/plain; charset=utf-8")
		w.Header().Set("Cache-Control", "no-store")
		w.WriteHeader(http.StatusNotFound)
		_, _ = w.Write([]byte("404 not found\n"))
		return
	}
	if r.Method != http.MethodGet && r.Method != http.MethodHead {
		w.Header().Set("Allow", "GET, HEAD")
		w.Header().Set("Content-Type", "text/plain; charset=utf-8")
		w.WriteHeader(http.StatusMethodNotAllowed)
		_, _ = w.Write([]byte("405 method not allowed\n"))
		return
	}
	w.Header().Set("Content-Type", f.contentType)
	w.Header().Set("Cache-Control", "no-cache")
	w.Header().Set("ETag", f.etag)
	// ServeContent answers If-None-Match from the ETag set here (304),
	// and HEAD and ranges.
	http.ServeContent(w, r, "", time.Time{}, bytes.NewReader(f.body))
}
