// Package buildinfo says which build a binary is, in the one line every
// keymesh binary prints for --version:
//
//	origin v0.3.0-dev (commit 1a2b3c4, dirty) go1.26.8
//
// The commit and whether the tree had uncommitted changes come from the
// version-control stamp the go command writes into a binary built in a
// checkout (runtime/debug.ReadBuildInfo: vcs.revision, vcs.modified), else
// from Commit and Modified; the version is Version, else the main module's
// version. Nothing here fails: what a build does not record reads as
// unknown.
package buildinfo

import (
	"fmt"
	"runtime"
	"runtime/debug"
)

// Set at link time by `make build` (-ldflags '-X
// github.com/keymesh/keymesh/internal/buildinfo.Version=...').
var (
	// Version is the version the binary was built as: `git describe
	// --always --dirty`. Unset (a plain go build or go install), the main
	// module's version the go command recorded stands in, else "devel".
	Version string
	// Commit and Modified ("true": uncommitted changes) stand in for the go
	// command's stamp where it writes none: in a git worktree (whose .git is
	// a file, which the go command does not recognise) or with
	// -buildvcs=false. The stamp, when there is one, wins.
	Commit, Modified string
)

// Info is what a binary knows about its own build.
type Info struct {
	Version   string
	Commit    string // the revision built, abbreviated; "" when not recorded
	Dirty     bool   // built from a tree with uncommitted changes
	GoVersion string // the toolchain, "go1.26.8"
}

// shortCommit is as many hex digits of the revision as `git describe`
// prints by default.
const shortCommit = 7

// Read returns this binary's Info.
func Read() Info {
	bi, ok := debug.ReadBuildInfo()
	if !ok {
		bi = nil
	}
	return fromBuildInfo(bi, Info{Version: Version, Commit: Commit, Dirty: Modified == "true"})
}

// fromBuildInfo is Info from what the go command recorded (bi may be nil)
// and what the link set (set: Version, Commit, Dirty).
func fromBuildInfo(bi *debug.BuildInfo, set Info) Info {
	info := set
	info.GoVersion = runtime.Version()
	if bi != nil {
		if bi.GoVersion != "" {
			info.GoVersion = bi.GoVersion
		}
		if info.Version == "" {
			info.Version = bi.Main.Version
		}
		stamped := map[string]string{}
		for _, s := range bi.Settings {
			stamped[s.Key] = s.Value
		}
		if rev := stamped["vcs.revision"]; rev != "" {
			info.Commit, info.Dirty = rev, stamped["vcs.modified"] == "true"
		}
	}
	if info.Version == "" || info.Version == "(devel)" {
		info.Version = "devel"
	}
	info.Commit = info.Commit[:min(len(info.Commit), shortCommit)]
	return info
}

// Line is the --version line of the binary named binary.
func (i Info) Line(binary string) string {
	commit := i.Commit
	if commit == "" {
		commit = "unknown"
	}
	if i.Dirty {
		commit += ", dirty"
	}
	return fmt.Sprintf("%s %s (commit %s) %s", binary, i.Version, commit, i.GoVersion)
}

// Line is Read().Line(binary).
func Line(binary string) string { return Read().Line(binary) }
