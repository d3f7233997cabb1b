package main

import (
	"bytes"
	"regexp"
	"testing"
)

// edge --version: one line, exit 0, and no edge started (it needs no
// --origin-public-key).
func TestVersion(t *testing.T) {
	shape := regexp.MustCompile(`^edge \S+ \(commit ([0-9a-f]{7}|unknown)(, dirty)?\) go\S+\n$`)
	for _, arg := range []string{"--version", "-version"} {
		var stdout, stderr bytes.Buffer
		if code := run([]string{arg}, func(string) string { return "" }, &stdout, &stderr); code != 0 || !shape.MatchString(stdout.String()) || stderr.Len() != 0 {
			t.Errorf("%s: exit %d, stdout %q, stderr %q", arg, code, stdout.String(), stderr.String())
		}
	}
}
