package cli

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"runtime"

	"github.com/reencrypt/reencrypt/internal/buildinfo"
)

func init() {
	// Listed with the other commands; runWith answers it (and --version)
	// through versionCommand before the configuration is loaded.
	register("version", "print the build: version, VCS revision and time, Go version (--json)", func(_ context.Context, a *app, _ []string) error {
		printVersion(a.stdout, false)
		return nil
	})
}

// versionCommand answers `reencrypt version [--json]` and `reencrypt
// --version`. It runs before the configuration is read, so that a pod whose
// variables are refused still says which build it is. ok is false when args
// ask for something else.
func versionCommand(args []string, stdout, stderr io.Writer) (code int, ok bool) {
	switch {
	case len(args) == 1 && args[0] == "--version":
		i := buildinfo.Get()
		rev := i.Revision
		if rev == "" {
			rev = "unknown"
		}
		fmt.Fprintf(stdout, "reencrypt %s (revision %s, %s)\n", i.Version, rev, i.GoVersion)
		return exitOK, true
	case len(args) == 0 || args[0] != "version":
		return 0, false
	case len(args) == 1:
		printVersion(stdout, false)
		return exitOK, true
	case len(args) == 2 && args[1] == "--json":
		printVersion(stdout, true)
		return exitOK, true
	}
	fmt.Fprintf(stderr, "usage: reencrypt version [--json]\n")
	return exitConfig, true
}

func printVersion(w io.Writer, asJSON bool) {
	i := buildinfo.Get()
	if asJSON {
		_ = json.NewEncoder(w).Encode(i)
		return
	}
	rev, at := i.Revision, i.Time
	if rev == "" {
		rev = "unknown"
	}
	if at == "" {
		at = "unknown"
	}
	fmt.Fprintf(w, "reencrypt %s\n  revision:  %s\n  time:      %s\n  modified:  %t\n  go:        %s %s/%s\n",
		i.Version, rev, at, i.Modified, i.GoVersion, runtime.GOOS, runtime.GOARCH)
}
