package main

import (
	"os/exec"
	"strconv"
	"strings"
	"testing"
	"time"
)

func TestParseDelaysAndGroups(t *testing.T) {
	ds, err := parseDelays("150ms, 40ms,90ms")
	if err != nil || len(ds) != 3 || ds[0] != 40*time.Millisecond || ds[2] != 150*time.Millisecond {
		t.Fatalf("parseDelays: %v %v (want sorted 40ms,90ms,150ms)", ds, err)
	}
	for _, bad := range []string{"", "soon", "-1ms", ","} {
		if _, err := parseDelays(bad); err == nil {
			t.Errorf("parseDelays(%q) accepted", bad)
		}
	}
	count := map[int]int{}
	for i := range 16 {
		count[groupOf(i, 16, 3)]++
	}
	if len(count) != 3 || count[0] < 5 || count[1] < 5 || count[2] < 5 {
		t.Fatalf("16 edges in 3 groups: %v", count)
	}
}

// wanLeftovers lists the namespaces and links named for process pid.
func wanLeftovers(t *testing.T, pid int) []string {
	t.Helper()
	prefix := wanPrefix + strconv.Itoa(pid)
	var out []string
	for _, args := range [][]string{{"netns", "list"}, {"-o", "link", "show"}} {
		b, err := exec.Command("ip", args...).Output()
		if err != nil {
			t.Fatalf("ip %v: %v", args, err)
		}
		for _, f := range strings.Fields(string(b)) {
			name, _, _ := strings.Cut(strings.TrimSuffix(f, ":"), "@")
			if m := wanName.FindStringSubmatch(name); m != nil && m[1] == strconv.Itoa(pid) && strings.HasPrefix(name, prefix) {
				out = append(out, name)
			}
		}
	}
	return out
}
