//go:build netns

// The WAN bench at small scale needs root and network namespaces: it runs
// in `make test-netns` (CI, as root), not in `make test`, so that the unit
// tests need neither.

package main

import (
	"context"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"testing"
	"time"
)

// The WAN bench at small scale, for real: 3 edges in namespaces at 20 ms
// from the origin host through the userspace relay, 2 changes per phase.
// The delay must show (a refusal over NATS takes at least the one-way
// delay), every change must reach every edge in both phases, the run must
// remove what a crashed run left, and it must leave nothing behind itself.
// It needs root and network namespaces (CI runs as root); without them it
// fails, saying so.
func TestWANBenchSmall(t *testing.T) {
	if err := wanPreflight(); err != nil {
		t.Fatalf("this test needs root and ip(8) to create network namespaces (CI runs it as root): %v", err)
	}
	bin := buildStackBinaries(t)
	// A leftover of a crashed run: a namespace named for a pid that is gone.
	dead := exec.Command("true")
	if err := dead.Run(); err != nil {
		t.Fatal(err)
	}
	stale := wanPrefix + strconv.Itoa(dead.Process.Pid) + "n0"
	if out, err := exec.Command("ip", "netns", "add", stale).CombinedOutput(); err != nil {
		t.Fatalf("cannot create a network namespace (this test needs them): %v: %s", err, out)
	}
	defer exec.Command("ip", "netns", "del", stale).Run()

	ctx, cancel := context.WithTimeout(context.Background(), 90*time.Second)
	defer cancel()
	e, _, stderr := testEnv(ctx, nil)
	const d = 20 * time.Millisecond
	res, err := wanRun(ctx, e, wanOpts{edges: 3, delays: []time.Duration{d}, iterations: 2, mode: "relay", profile: "wan",
		keepNATS: 1, poll: time.Millisecond, natsPoll: time.Millisecond, margin: 10 * time.Millisecond, rounds: 3, settle: 2 * time.Second,
		binDir: bin, quiet: true})
	if left := wanLeftovers(t, os.Getpid()); len(left) > 0 {
		t.Errorf("left behind: %v", left)
	}
	if err != nil {
		t.Fatalf("%v\n%s", err, stderr.String())
	}
	if out, _ := exec.Command("ip", "netns", "list").Output(); strings.Contains(string(out), stale) {
		t.Errorf("the crashed run's namespace %s was not removed", stale)
	}
	if res.Mode != "relay" || len(res.Groups) != 1 {
		t.Fatalf("mode %q, %d groups", res.Mode, len(res.Groups))
	}
	if res.NATS.Timeouts+res.Gossip.Timeouts+res.Transition.Timeouts > 0 {
		t.Fatalf("changes timed out: NATS %d, gossip %d, transition %d", res.NATS.Timeouts, res.Gossip.Timeouts, res.Transition.Timeouts)
	}
	g := res.Groups[0]
	ms := float64(d) / 1e6
	if g.NATSUnlink.Count != 3*2 || g.NATSUnlink.Min < ms {
		t.Fatalf("NATS unlinks: %d samples, fastest %.1f ms; want 6, none under the %.0f ms one-way delay", g.NATSUnlink.Count, g.NATSUnlink.Min, ms)
	}
	// The gossip-only edges hear of a change from the kept edge, itself d
	// from NATS, across their link of 2d.
	if g.GossipUnlink == nil || g.GossipUnlink.Count != 2*2 || g.GossipUnlink.Min < 3*ms {
		t.Fatalf("gossip unlinks: %+v; want 4 samples, none under %.0f ms", g.GossipUnlink, 3*ms)
	}
	if want := max(res.Nice[0]-wanPriorityLead, -20); res.Nice[1] != want {
		t.Fatalf("the bench's own threads ran at nice %d, the stack's at %d: want %d", res.Nice[1], res.Nice[0], want)
	}
	if res.GossipIntervalMs != 500 {
		t.Fatalf("gossip interval %.0f ms for the wan profile, want memberlist's WAN 500 ms", res.GossipIntervalMs)
	}
}
