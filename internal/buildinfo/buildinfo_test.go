package buildinfo

import (
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"runtime"
	"runtime/debug"
	"strings"
	"testing"
)

// LineRE is the shape of every binary's --version line.
var LineRE = regexp.MustCompile(`^(\S+) (\S+) \(commit ([0-9a-f]{7}|unknown)(, dirty)?\) (go\S+)$`)

func stamp(rev, modified string) *debug.BuildInfo {
	bi := &debug.BuildInfo{GoVersion: "go1.99.1", Main: debug.Module{Path: "github.com/keymesh/keymesh", Version: "(devel)"}}
	if rev != "" {
		bi.Settings = append(bi.Settings, debug.BuildSetting{Key: "vcs.revision", Value: rev}, debug.BuildSetting{Key: "vcs.modified", Value: modified})
	}
	return bi
}

func TestLine(t *testing.T) {
	for _, tc := range []struct {
		name string
		bi   *debug.BuildInfo
		set  Info
		want string
	}{
		{"the stamp", stamp("1a2b3c4d5e6f7a8b", "true"), Info{Version: "v0.3.0-dev"}, "origin v0.3.0-dev (commit 1a2b3c4, dirty) go1.99.1"},
		{"a clean tree", stamp("1a2b3c4d5e6f7a8b", "false"), Info{Version: "v0.3.0"}, "origin v0.3.0 (commit 1a2b3c4) go1.99.1"},
		{"the stamp wins over the link", stamp("1a2b3c4d5e6f7a8b", "false"), Info{Version: "v1", Commit: "fffffff", Dirty: true}, "origin v1 (commit 1a2b3c4) go1.99.1"},
		{"no stamp: the link", stamp("", ""), Info{Version: "v1", Commit: "abcdef0123", Dirty: true}, "origin v1 (commit abcdef0, dirty) go1.99.1"},
		{"nothing set: devel", stamp("", ""), Info{}, "origin devel (commit unknown) go1.99.1"},
		{"the module version", &debug.BuildInfo{GoVersion: "go1.99.1", Main: debug.Module{Version: "v0.2.0"}}, Info{}, "origin v0.2.0 (commit unknown) go1.99.1"},
		{"no build info", nil, Info{}, "origin devel (commit unknown) " + runtime.Version()},
	} {
		t.Run(tc.name, func(t *testing.T) {
			got := fromBuildInfo(tc.bi, tc.set).Line("origin")
			if got != tc.want {
				t.Fatalf("got  %q\nwant %q", got, tc.want)
			}
			if !LineRE.MatchString(got) {
				t.Fatalf("%q is not of the --version shape", got)
			}
		})
	}
}

// The flags `make build` links with are the ones a binary reads: a
// renamed variable, or a Makefile that sets another, would leave every
// --version saying devel. Without git, make build passes no -X at all.
func TestMakeBuildFlagsReachTheBinary(t *testing.T) {
	if testing.Short() {
		t.Skip("builds a binary")
	}
	makeBin, err := exec.LookPath("make")
	if err != nil {
		t.Skip("no make")
	}
	goBin := filepath.Join(runtime.GOROOT(), "bin", "go")
	root, err := filepath.Abs("../..")
	if err != nil {
		t.Fatal(err)
	}
	dryRun := func(env []string, vars ...string) string {
		cmd := exec.Command(makeBin, append([]string{"-n", "-s", "-C", root, "build"}, vars...)...)
		cmd.Env = env
		out, err := cmd.CombinedOutput()
		if err != nil {
			t.Fatalf("make -n build: %v\n%s", err, out)
		}
		return string(out)
	}
	ldflags := regexp.MustCompile(`-ldflags '([^']*)'`)
	m := ldflags.FindStringSubmatch(dryRun(os.Environ(), "VERSION=v9.9.9-test-dirty", "COMMIT=abcdef1"))
	if m == nil {
		t.Fatal("make build passes no -ldflags")
	}

	bin := filepath.Join(t.TempDir(), "printversion")
	build := exec.Command(goBin, "build", "-buildvcs=false", "-ldflags", m[1], "-o", bin, "./testdata/printversion")
	if out, err := build.CombinedOutput(); err != nil {
		t.Fatalf("go build -ldflags %q: %v\n%s", m[1], err, out)
	}
	out, err := exec.Command(bin).Output()
	if err != nil {
		t.Fatal(err)
	}
	want := "printversion v9.9.9-test-dirty (commit abcdef1, dirty) " + runtime.Version() + "\n"
	if string(out) != want {
		t.Fatalf("built with make's -ldflags %q it prints\n%q, want\n%q", m[1], out, want)
	}

	// No git on PATH: no -X, and still a build line.
	noGit := dryRun([]string{"PATH=" + t.TempDir(), "HOME=" + t.TempDir()})
	if m := ldflags.FindStringSubmatch(noGit); m == nil || m[1] != "" || !strings.Contains(noGit, "build") {
		t.Fatalf("make -n build without git:\n%s", noGit)
	}
}
