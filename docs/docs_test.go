package docs

import (
	"bufio"
	"bytes"
	"fmt"
	"io/fs"
	"net/url"
	"os"
	"path"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"unicode"
)

// repoRoot is the module root: the nearest parent holding go.mod.
func repoRoot(t *testing.T) string {
	t.Helper()
	dir, err := os.Getwd()
	if err != nil {
		t.Fatal(err)
	}
	for {
		if _, err := os.Stat(filepath.Join(dir, "go.mod")); err == nil {
			return dir
		}
		parent := filepath.Dir(dir)
		if parent == dir {
			t.Fatal("no go.mod above the test's directory")
		}
		dir = parent
	}
}

// repoFiles returns the slash paths, relative to root, of the files ending
// in ext, leaving out what is not the repository's own text: .git and other
// dot directories, node_modules, testdata, and the git-ignored build and
// data directories at the top.
func repoFiles(t *testing.T, root, ext string) []string {
	t.Helper()
	var out []string
	err := filepath.WalkDir(root, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		rel, _ := filepath.Rel(root, p)
		rel = filepath.ToSlash(rel)
		if d.IsDir() {
			name := d.Name()
			if rel != "." && (strings.HasPrefix(name, ".") || name == "node_modules" || name == "testdata" ||
				rel == "bin" || rel == "data" || rel == "dist") {
				return filepath.SkipDir
			}
			return nil
		}
		if strings.HasSuffix(rel, ext) {
			out = append(out, rel)
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	return out
}

var (
	// [text](target) and ![alt](target), with an optional "title".
	inlineLink = regexp.MustCompile(`!?\[[^\]]*\]\(\s*<?([^)\s>]+)>?(?:\s+"[^"]*")?\s*\)`)
	// [label]: target
	refLink    = regexp.MustCompile(`^\s{0,3}\[[^\]]+\]:\s*<?([^\s>]+)>?`)
	codeSpan   = regexp.MustCompile("`+[^`]*`+")
	atxHeading = regexp.MustCompile(`^\s{0,3}(#{1,6})\s+(.*?)\s*#*\s*$`)
	htmlAnchor = regexp.MustCompile(`<a\s+(?:name|id)="([^"]+)"`)
	fence      = regexp.MustCompile("^\\s{0,3}(```|~~~)")
	hasScheme  = regexp.MustCompile(`^[a-zA-Z][a-zA-Z0-9+.-]*:`)
	// The old shared documents, which are not in this repository: the
	// pattern is built so that this file does not match itself.
	sharedDir = "../" + "shared/"
	sharedRef = regexp.MustCompile(regexp.QuoteMeta(sharedDir))
)

// mdLine is one line of Markdown outside fenced code, with its code spans
// blanked (a link inside `code` is not a link).
type mdLine struct {
	n    int
	text string
}

// prose returns the lines of a Markdown file that are not inside fenced code.
func prose(src []byte) []mdLine {
	var out []mdLine
	inFence := ""
	sc := bufio.NewScanner(bytes.NewReader(src))
	sc.Buffer(make([]byte, 1<<20), 1<<20)
	for n := 1; sc.Scan(); n++ {
		line := sc.Text()
		if m := fence.FindStringSubmatch(line); m != nil {
			switch {
			case inFence == "":
				inFence = m[1]
			case m[1] == inFence:
				inFence = ""
			}
			continue
		}
		if inFence != "" {
			continue
		}
		out = append(out, mdLine{n, codeSpan.ReplaceAllStringFunc(line, func(s string) string { return strings.Repeat(" ", len(s)) })})
	}
	return out
}

// slug is GitHub's anchor for a heading's text: inline markup reduced to
// its text, lower case, every character but letters, digits, '_', '-' and
// space dropped, each space a '-'.
func slug(heading string) string {
	heading = regexp.MustCompile(`!?\[([^\]]*)\]\([^)]*\)`).ReplaceAllString(heading, "$1")
	heading = strings.ReplaceAll(heading, "`", "")
	var b strings.Builder
	for _, r := range strings.ToLower(heading) {
		switch {
		case r == ' ':
			b.WriteByte('-')
		case r == '-' || r == '_' || unicode.IsLetter(r) || unicode.IsDigit(r) || unicode.Is(unicode.Mn, r):
			b.WriteRune(r)
		}
	}
	return b.String()
}

// anchors returns the anchors a Markdown file has: one per heading (a
// repeated heading gets -1, -2, … as on GitHub) and any <a name|id>.
func anchors(src []byte) map[string]bool {
	out := map[string]bool{}
	seen := map[string]int{}
	inFence := ""
	for line := range strings.SplitSeq(string(src), "\n") {
		if m := fence.FindStringSubmatch(line); m != nil {
			switch {
			case inFence == "":
				inFence = m[1]
			case m[1] == inFence:
				inFence = ""
			}
			continue
		}
		if inFence != "" {
			continue
		}
		for _, m := range htmlAnchor.FindAllStringSubmatch(line, -1) {
			out[m[1]] = true
		}
		m := atxHeading.FindStringSubmatch(line)
		if m == nil {
			continue
		}
		s := slug(m[2])
		if n := seen[s]; n > 0 {
			out[fmt.Sprintf("%s-%d", s, n)] = true
		} else {
			out[s] = true
		}
		seen[s]++
	}
	return out
}

func TestSlug(t *testing.T) {
	for in, want := range map[string]string{
		"Gossip between edges":                               "gossip-between-edges",
		"NATS: credentials and what each role may publish":   "nats-credentials-and-what-each-role-may-publish",
		"Is this edge current?":                              "is-this-edge-current",
		"`make bench` (the standard suite, about 2 minutes)": "make-bench-the-standard-suite-about-2-minutes",
		"What reaches an upstream":                           "what-reaches-an-upstream",
		"A [linked](x.md) heading_with snake":                "a-linked-heading_with-snake",
		"Two  spaces — and a dash":                           "two--spaces--and-a-dash",
	} {
		if got := slug(in); got != want {
			t.Errorf("slug(%q) = %q, want %q", in, got, want)
		}
	}
	a := anchors([]byte("# A\n## Security model\n```\n# not a heading\n```\n## Security model\n<a name=\"x\"></a>\n"))
	for _, want := range []string{"a", "security-model", "security-model-1", "x"} {
		if !a[want] {
			t.Errorf("anchor %q missing from %v", want, a)
		}
	}
	if a["not-a-heading"] {
		t.Error("a line in fenced code counted as a heading")
	}
}

// Every relative link in every Markdown file of the repository names a file
// or directory that exists, and an anchor into a Markdown file names one of
// its headings; nothing refers to the old shared documents outside the
// repository.
func TestMarkdownLinks(t *testing.T) {
	root := repoRoot(t)
	files := repoFiles(t, root, ".md")
	if len(files) < 3 {
		t.Fatalf("found only %v: the walk missed the docs", files)
	}
	anchorsOf := map[string]map[string]bool{}
	fileAnchors := func(rel string) (map[string]bool, error) {
		if a, ok := anchorsOf[rel]; ok {
			return a, nil
		}
		src, err := os.ReadFile(filepath.Join(root, filepath.FromSlash(rel)))
		if err != nil {
			return nil, err
		}
		anchorsOf[rel] = anchors(src)
		return anchorsOf[rel], nil
	}
	links := 0
	for _, file := range files {
		src, err := os.ReadFile(filepath.Join(root, filepath.FromSlash(file)))
		if err != nil {
			t.Fatal(err)
		}
		for i, line := range strings.Split(string(src), "\n") {
			if sharedRef.MatchString(line) {
				t.Errorf("%s:%d refers to %s, outside the repository: %s", file, i+1, sharedDir, strings.TrimSpace(line))
			}
		}
		for _, l := range prose(src) {
			var targets []string
			for _, m := range inlineLink.FindAllStringSubmatch(l.text, -1) {
				targets = append(targets, m[1])
			}
			if m := refLink.FindStringSubmatch(l.text); m != nil {
				targets = append(targets, m[1])
			}
			for _, target := range targets {
				if hasScheme.MatchString(target) || strings.HasPrefix(target, "//") {
					continue // an absolute URL: not checked offline
				}
				links++
				where := fmt.Sprintf("%s:%d: link %q", file, l.n, target)
				p, frag, _ := strings.Cut(target, "#")
				p, err := url.PathUnescape(p)
				if err != nil {
					t.Errorf("%s: %v", where, err)
					continue
				}
				rel := file // a bare #anchor is into this file
				if p != "" {
					if strings.HasPrefix(p, "/") {
						rel = path.Clean(strings.TrimPrefix(p, "/"))
					} else {
						rel = path.Clean(path.Join(path.Dir(file), p))
					}
					if rel == ".." || strings.HasPrefix(rel, "../") {
						t.Errorf("%s leaves the repository", where)
						continue
					}
					if _, err := os.Stat(filepath.Join(root, filepath.FromSlash(rel))); err != nil {
						t.Errorf("%s: %s does not exist", where, rel)
						continue
					}
				}
				if frag == "" || !strings.HasSuffix(rel, ".md") {
					continue
				}
				a, err := fileAnchors(rel)
				if err != nil {
					t.Errorf("%s: %v", where, err)
					continue
				}
				if !a[frag] {
					t.Errorf("%s: %s has no heading with the anchor #%s", where, rel, frag)
				}
			}
		}
	}
	if links == 0 {
		t.Fatal("no relative links found: the link pattern is broken")
	}
	t.Logf("%d relative links in %d Markdown files", links, len(files))
}

var (
	// docs/<name>.md named anywhere in a Go file (comments, mostly).
	docsRef = regexp.MustCompile(`\bdocs/([A-Za-z0-9_.-]+\.md)\b`)
	// The upper-case names of the old shared documents; the repository's
	// own are docs/design.md and docs/api.md. Built so as not to match this
	// file.
	oldDocName = regexp.MustCompile(`\b(` + "DESIGN" + `|` + "API" + `)\.md\b`)
)

// Go files refer only to docs that exist, under their names in this
// repository.
func TestGoReferencesToDocs(t *testing.T) {
	root := repoRoot(t)
	files := repoFiles(t, root, ".go")
	refs := 0
	for _, file := range files {
		src, err := os.ReadFile(filepath.Join(root, filepath.FromSlash(file)))
		if err != nil {
			t.Fatal(err)
		}
		for i, line := range strings.Split(string(src), "\n") {
			for _, m := range docsRef.FindAllStringSubmatch(line, -1) {
				refs++
				if _, err := os.Stat(filepath.Join(root, "docs", m[1])); err != nil {
					t.Errorf("%s:%d names docs/%s, which does not exist", file, i+1, m[1])
				}
			}
			if m := oldDocName.FindString(line); m != "" {
				t.Errorf("%s:%d names %s, the old shared document: say docs/%s", file, i+1, m, strings.ToLower(m))
			}
			if sharedRef.MatchString(line) {
				t.Errorf("%s:%d refers to %s, outside the repository", file, i+1, sharedDir)
			}
		}
	}
	if refs == 0 {
		t.Fatal("no docs/*.md reference found in any Go file: the pattern is broken")
	}
}
