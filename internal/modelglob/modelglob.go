// Package modelglob is the model allow-list of keys and deployments: the
// patterns' syntax, their bounds (checked by the origin) and their matching
// (done by edges on the request path).
//
// A pattern is matched against a whole model name, byte by byte and case
// sensitively, with path.Match's reading of '*': a '*' matches any run of
// bytes, empty included, other than '/'; every other byte matches itself.
// So "meta-llama/*" matches "meta-llama/Llama-3-8B" but neither
// "meta-llama/a/b" nor "meta-llama"; "*" matches any name without a '/'.
// '?', '[', ']' and '\' (path.Match's other metacharacters) are refused,
// so that no pattern means one thing here and another to a reader expecting
// path.Match. An empty list allows every model.
//
// A compiled List matches without allocating.
package modelglob

import (
	"errors"
	"fmt"
	"strings"
	"unicode/utf8"
)

// Bounds of one list, as the origin enforces them.
const (
	MaxPatterns   = 64
	MaxPatternLen = 256
)

// ErrPattern is wrapped by Valid's errors.
var ErrPattern = errors.New("invalid model pattern")

// Valid reports why p is not a pattern, or nil.
func Valid(p string) error {
	switch {
	case p == "":
		return fmt.Errorf("%w: empty", ErrPattern)
	case len(p) > MaxPatternLen:
		return fmt.Errorf("%w: longer than %d bytes", ErrPattern, MaxPatternLen)
	case !utf8.ValidString(p):
		return fmt.Errorf("%w: not UTF-8", ErrPattern)
	case strings.ContainsAny(p, `?[]\`):
		return fmt.Errorf("%w: '?', '[', ']' and '\\' are reserved (only '*' is a wildcard)", ErrPattern)
	}
	for _, r := range p {
		if r <= ' ' || r == 0x7f || (r >= 0x80 && r < 0xa0) {
			return fmt.Errorf("%w: no spaces or control characters", ErrPattern)
		}
	}
	return nil
}

// ValidList checks a whole list: at most MaxPatterns valid patterns.
func ValidList(ps []string) error {
	if len(ps) > MaxPatterns {
		return fmt.Errorf("%w: at most %d patterns", ErrPattern, MaxPatterns)
	}
	for _, p := range ps {
		if err := Valid(p); err != nil {
			return fmt.Errorf("%q: %w", truncate(p, 64), err)
		}
	}
	return nil
}

func truncate(s string, n int) string {
	if len(s) <= n {
		return s
	}
	return s[:n] + "…"
}

// List is a compiled allow-list. The zero List (and one compiled from no
// patterns) allows every model.
type List struct {
	exact []string // patterns without '*'
	globs []string // patterns with one, runs of '*' collapsed
}

// Compile compiles ps. Patterns are taken as given: the origin has
// validated them (an invalid one only ever matches less).
func Compile(ps []string) List {
	var l List
	for _, p := range ps {
		if p == "" {
			continue
		}
		if strings.IndexByte(p, '*') < 0 {
			l.exact = append(l.exact, p)
			continue
		}
		for strings.Contains(p, "**") {
			p = strings.ReplaceAll(p, "**", "*")
		}
		l.globs = append(l.globs, p)
	}
	return l
}

// Any reports whether l allows every model (it has no patterns).
func (l *List) Any() bool { return len(l.exact) == 0 && len(l.globs) == 0 }

// Allows reports whether name is allowed: l is empty, or a pattern matches.
func (l *List) Allows(name []byte) bool {
	if l.Any() {
		return true
	}
	for _, p := range l.exact {
		if p == string(name) {
			return true
		}
	}
	for _, p := range l.globs {
		if Match(p, name) {
			return true
		}
	}
	return false
}

// Match reports whether pattern matches all of name (see the package doc).
// Since '*' never matches '/', pattern and name match segment by segment
// ('/'-separated), and each pair of segments by plain wildcard matching.
func Match(pattern string, name []byte) bool {
	for {
		pi := strings.IndexByte(pattern, '/')
		ni := indexByte(name, '/')
		if (pi < 0) != (ni < 0) {
			return false
		}
		if pi < 0 {
			return matchSegment(pattern, name)
		}
		if !matchSegment(pattern[:pi], name[:ni]) {
			return false
		}
		pattern, name = pattern[pi+1:], name[ni+1:]
	}
}

func indexByte(b []byte, c byte) int {
	for i, x := range b {
		if x == c {
			return i
		}
	}
	return -1
}

// matchSegment matches a pattern without '/' against a name without '/':
// the classic linear wildcard match, backtracking only to the last '*'.
func matchSegment(p string, s []byte) bool {
	pi, si := 0, 0
	star, mark := -1, 0
	for si < len(s) {
		switch {
		case pi < len(p) && p[pi] == '*':
			star, mark = pi, si
			pi++
		case pi < len(p) && p[pi] == s[si]:
			pi++
			si++
		case star >= 0:
			pi = star + 1
			mark++
			si = mark
		default:
			return false
		}
	}
	for pi < len(p) && p[pi] == '*' {
		pi++
	}
	return pi == len(p)
}
