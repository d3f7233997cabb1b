package main

import (
	"context"
	"regexp"
	"testing"
)

// bench --version and bench version: one line, exit 0.
func TestVersion(t *testing.T) {
	shape := regexp.MustCompile(`^bench \S+ \(commit ([0-9a-f]{7}|unknown)(, dirty)?\) go\S+\n$`)
	for _, args := range [][]string{{"--version"}, {"version"}} {
		e, stdout, stderr := testEnv(context.Background(), nil)
		if code := run(e, args); code != 0 || !shape.MatchString(stdout.String()) || stderr.String() != "" {
			t.Errorf("%v: exit %d, stdout %q, stderr %q", args, code, stdout.String(), stderr.String())
		}
	}
}
