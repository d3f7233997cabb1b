package main

import (
	"bytes"
	"regexp"
	"testing"
)

// origin --version and origin version: one line, exit 0, nothing else
// (not the server).
func TestVersion(t *testing.T) {
	shape := regexp.MustCompile(`^origin \S+ \(commit ([0-9a-f]{7}|unknown)(, dirty)?\) go\S+\n$`)
	for _, args := range [][]string{{"--version"}, {"version"}} {
		var out, errb bytes.Buffer
		if code := run(args, noenv, &out, &errb); code != 0 || !shape.MatchString(out.String()) || errb.Len() != 0 {
			t.Errorf("%v: exit %d, stdout %q, stderr %q", args, code, out.String(), errb.String())
		}
	}
}
