package console

import (
	"io/fs"
	"net/http"
	"net/http/httptest"
	"regexp"
	"slices"
	"strings"
	"testing"

	"github.com/keymesh/keymesh/event"
)

// The pages never turn data into markup, and hold no inline script or
// style the CSP would have to allow.
func TestStaticFilesAreSafe(t *testing.T) {
	h, err := New()
	if err != nil {
		t.Fatal(err)
	}
	markup := regexp.MustCompile(`innerHTML|outerHTML|insertAdjacentHTML|document\.write|\beval\(|new Function\(|setAttribute\(\s*['"]on|javascript:|localStorage|sessionStorage`)
	inline := regexp.MustCompile(`(?i)<script(?:\s[^>]*)?>\s*[^<\s]|<style|\sstyle=|\son[a-z]+=`)
	ref := regexp.MustCompile(`(?:src|href)="/console/([^"]+)"`)
	imp := regexp.MustCompile(`from '\./([^']+)'`)
	for name, f := range h.files {
		body := string(f.body)
		switch {
		case strings.HasSuffix(name, ".js"):
			if m := markup.FindString(body); m != "" {
				t.Errorf("%s uses %q", name, m)
			}
			for _, m := range imp.FindAllStringSubmatch(body, -1) {
				if h.files[m[1]] == nil {
					t.Errorf("%s imports %s, which is not embedded", name, m[1])
				}
			}
		case strings.HasSuffix(name, ".html"):
			if m := inline.FindString(body); m != "" {
				t.Errorf("%s has inline %q", name, m)
			}
			for _, m := range ref.FindAllStringSubmatch(body, -1) {
				if h.files[m[1]] == nil {
					t.Errorf("%s references %s, which is not embedded", name, m[1])
				}
			}
		}
	}
	if n, _ := fs.Glob(static, "static/*.js"); len(n) < 5 {
		t.Errorf("only %d scripts embedded", len(n))
	}
}

func TestServeHeadersAndPaths(t *testing.T) {
	h, err := New()
	if err != nil {
		t.Fatal(err)
	}
	for _, c := range []struct {
		method, path string
		status       int
		ctype        string
	}{
		{"GET", "/", 200, "text/html; charset=utf-8"},
		{"HEAD", "/", 200, "text/html; charset=utf-8"},
		{"GET", "/console/style.css", 200, "text/css; charset=utf-8"},
		{"GET", "/console/api.js", 200, "text/javascript; charset=utf-8"},
		{"GET", "/console/favicon.svg", 200, "image/svg+xml"},
		{"GET", "/console/missing.js", 404, "text/plain; charset=utf-8"},
		{"GET", "/console/index.html", 404, "text/plain; charset=utf-8"},
		{"POST", "/console/api.js", 405, "text/plain; charset=utf-8"},
	} {
		w := httptest.NewRecorder()
		h.ServeHTTP(w, httptest.NewRequest(c.method, c.path, nil))
		if w.Code != c.status || w.Header().Get("Content-Type") != c.ctype {
			t.Errorf("%s %s: %d %q, want %d %q", c.method, c.path, w.Code, w.Header().Get("Content-Type"), c.status, c.ctype)
		}
		for k, v := range map[string]string{"Content-Security-Policy": CSP, "X-Frame-Options": "DENY",
			"X-Content-Type-Options": "nosniff", "Referrer-Policy": "no-referrer"} {
			if w.Header().Get(k) != v {
				t.Errorf("%s %s: %s %q", c.method, c.path, k, w.Header().Get(k))
			}
		}
	}
	w := httptest.NewRecorder()
	h.ServeHTTP(w, httptest.NewRequest("GET", "/console/app.js", nil))
	etag := w.Header().Get("ETag")
	r := httptest.NewRequest("GET", "/console/app.js", nil)
	r.Header.Set("If-None-Match", etag)
	w = httptest.NewRecorder()
	h.ServeHTTP(w, r)
	if etag == "" || w.Code != http.StatusNotModified {
		t.Errorf("revalidation: ETag %q, %d", etag, w.Code)
	}
}

// The audit page's reason filter offers exactly the refusal reasons the
// edge writes and the API accepts (event.AuditReasons): a reason added
// there and forgotten here would be a filter the console cannot ask for.
func TestAuditPageOffersEveryReason(t *testing.T) {
	src, err := fs.ReadFile(static, "static/audit.js")
	if err != nil {
		t.Fatal(err)
	}
	list := regexp.MustCompile(`(?s)id: 'audit-reason'.*?\[\s*'',(.*?)\]\.map`).FindSubmatch(src)
	if list == nil {
		t.Fatal("audit.js: no reason list found (id 'audit-reason', a list starting with '')")
	}
	var got []string
	for _, m := range regexp.MustCompile(`'([a-z_]+)'`).FindAllSubmatch(list[1], -1) {
		got = append(got, string(m[1]))
	}
	if !slices.Equal(got, event.AuditReasons) {
		t.Errorf("audit.js offers reasons\n  %v\nevent.AuditReasons are\n  %v", got, event.AuditReasons)
	}
}
