package modelglob

import (
	"errors"
	"path"
	"strings"
	"testing"
)

func TestMatch(t *testing.T) {
	for _, c := range []struct {
		pattern, name string
		want          bool
	}{
		{"mock-model", "mock-model", true},
		{"mock-model", "Mock-Model", false}, // case sensitive
		{"mock-model", "mock-model2", false},
		{"meta-llama/*", "meta-llama/Llama-3-8B", true},
		{"meta-llama/*", "meta-llama/", true},
		{"meta-llama/*", "meta-llama", false},
		{"meta-llama/*", "meta-llama/a/b", false}, // '*' never crosses '/'
		{"meta-llama/*", "other/Llama", false},
		{"*", "gpt-4o", true},
		{"*", "org/model", false},
		{"*/*", "org/model", true},
		{"gpt-*-mini", "gpt-4o-mini", true},
		{"gpt-*-mini", "gpt-4o-mini-x", false},
		{"a*b*c", "abxbxc", true},
		{"a*b*c", "abxbx", false},
		{"a**b", "ab", true},
		{"*llama*", "codellama-7b", true},
	} {
		got := Match(c.pattern, []byte(c.name))
		if got != c.want {
			t.Errorf("Match(%q, %q) = %v, want %v", c.pattern, c.name, got, c.want)
		}
		// path.Match reads '*' the same way.
		if pm, err := path.Match(c.pattern, c.name); err != nil || pm != c.want {
			t.Errorf("path.Match(%q, %q) = %v, %v; Match says %v", c.pattern, c.name, pm, err, got)
		}
	}
}

func TestListAllows(t *testing.T) {
	var empty List
	if !empty.Allows([]byte("anything/at/all")) || !empty.Any() {
		t.Fatal("an empty list allows every model")
	}
	l := Compile([]string{"meta-llama/*", "mock-model"})
	for name, want := range map[string]bool{"mock-model": true, "meta-llama/x": true, "gpt-4": false, "": false} {
		if got := l.Allows([]byte(name)); got != want {
			t.Errorf("Allows(%q) = %v, want %v", name, got, want)
		}
	}
	name := []byte("meta-llama/Llama-3")
	if n := testing.AllocsPerRun(100, func() { l.Allows(name) }); n != 0 {
		t.Fatalf("Allows allocates %v times", n)
	}
}

func TestValid(t *testing.T) {
	for _, p := range []string{"mock-model", "meta-llama/*", "*", "Qwen/Qwen2.5-7B-Instruct:latest", "模型"} {
		if err := Valid(p); err != nil {
			t.Errorf("Valid(%q) = %v", p, err)
		}
	}
	for _, p := range []string{"", "a b", "a\tb", "m?", "m[0-9]", `m\*`, strings.Repeat("m", MaxPatternLen+1), "a\x00", "\xff"} {
		if err := Valid(p); !errors.Is(err, ErrPattern) {
			t.Errorf("Valid(%q) = %v, want ErrPattern", p, err)
		}
	}
	if err := ValidList(make([]string, MaxPatterns+1)); !errors.Is(err, ErrPattern) {
		t.Errorf("a list of %d: %v", MaxPatterns+1, err)
	}
}
