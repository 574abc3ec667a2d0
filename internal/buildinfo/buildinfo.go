// Package buildinfo says which build of reencrypt is running: the version,
// the VCS revision and its time, whether the tree had uncommitted changes,
// and the Go version. `reencrypt version`, the `run` start log line, the
// reencrypt_build_info metric and the runs table of the state schema all
// read it from here, so they never disagree.
//
// The go command stamps the module version and the VCS settings into every
// binary built inside a git checkout (runtime/debug.ReadBuildInfo). An
// image build has no checkout (the Dockerfile's context leaves .git out), so
// it passes the same facts with the linker instead; a value set that way
// wins over the stamped one:
//
//	-X github.com/reencrypt/reencrypt/internal/buildinfo.version=v1.2.3
//	-X github.com/reencrypt/reencrypt/internal/buildinfo.revision=<full commit hash>
//	-X github.com/reencrypt/reencrypt/internal/buildinfo.commitTime=<commit time, RFC 3339>
//	-X github.com/reencrypt/reencrypt/internal/buildinfo.modified=true
//
// The Dockerfile and `make image` (internal/tools/mkimage) set them.
package buildinfo

import (
	"log/slog"
	"runtime"
	"runtime/debug"
	"strconv"
	"sync"
)

// Package is this package's import path, the prefix of its -X flags.
const Package = "github.com/reencrypt/reencrypt/internal/buildinfo"

// Set with -ldflags -X (see the package comment); empty means "not set".
var (
	version    string
	revision   string
	commitTime string
	modified   string // "true" or "false"
)

// Unknown is the version of a build that carries none (go run, go test).
const Unknown = "(devel)"

// Info is one build.
type Info struct {
	Version   string `json:"version"`        // a release tag (v1.2.3), a Go pseudo-version, or "(devel)"
	Revision  string `json:"revision"`       // the full VCS commit hash; "" when unknown
	Time      string `json:"time,omitempty"` // the commit's time, RFC 3339
	Modified  bool   `json:"modified"`       // built from a tree with uncommitted changes
	GoVersion string `json:"go_version"`     // the toolchain that built it
}

// Get returns the running binary's build.
var Get = sync.OnceValue(func() Info {
	bi, _ := debug.ReadBuildInfo()
	return from(bi, linked{version: version, revision: revision, time: commitTime, modified: modified})
})

// linked holds the -X values.
type linked struct{ version, revision, time, modified string }

// from merges the stamped build info (nil when the binary has none) with the
// linker's values, which win.
func from(bi *debug.BuildInfo, l linked) Info {
	i := Info{Version: Unknown, GoVersion: runtime.Version()}
	if bi != nil {
		if v := bi.Main.Version; v != "" {
			i.Version = v
		}
		if bi.GoVersion != "" {
			i.GoVersion = bi.GoVersion
		}
		for _, s := range bi.Settings {
			switch s.Key {
			case "vcs.revision":
				i.Revision = s.Value
			case "vcs.time":
				i.Time = s.Value
			case "vcs.modified":
				i.Modified = s.Value == "true"
			}
		}
	}
	if l.version != "" {
		i.Version = l.version
	}
	if l.revision != "" {
		// A revision passed by hand describes the whole build: the stamped
		// time and modified flag may belong to another tree.
		i.Revision, i.Time, i.Modified = l.revision, "", false
	}
	if l.time != "" {
		i.Time = l.time
	}
	if m, err := strconv.ParseBool(l.modified); err == nil {
		i.Modified = m
	}
	return i
}

// Build is the short form recorded with each run: version@revision, with
// "-dirty" when the tree was modified; the version alone when the revision
// is unknown.
func (i Info) Build() string {
	if i.Revision == "" {
		return i.Version
	}
	s := i.Version + "@" + i.Revision
	if i.Modified {
		s += "-dirty"
	}
	return s
}

// LogValue puts the build in a log line as a group.
func (i Info) LogValue() slog.Value {
	return slog.GroupValue(
		slog.String("version", i.Version), slog.String("revision", i.Revision), slog.String("time", i.Time),
		slog.Bool("modified", i.Modified), slog.String("go_version", i.GoVersion))
}
