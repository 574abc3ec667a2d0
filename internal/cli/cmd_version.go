package cli

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"runtime"

	"github.com/spf13/pflag"

	"github.com/reencrypt/reencrypt/internal/buildinfo"
)

func init() {
	registerCommand(command{path: []string{"version"}, vars: []string{},
		summary: "print the build: version, VCS revision and time, Go version (--json)",
		setup: func(fs *pflag.FlagSet) runFunc {
			asJSON := fs.Bool("json", false, "print the build as one JSON object")
			return func(_ context.Context, a *app, _ []string) error {
				printVersion(a.stdout, *asJSON)
				return nil
			}
		}})
}

// versionLine is what `reencrypt --version` prints: one line.
func versionLine() string {
	i := buildinfo.Get()
	rev := i.Revision
	if rev == "" {
		rev = "unknown"
	}
	return fmt.Sprintf("reencrypt %s (revision %s, %s)", i.Version, rev, i.GoVersion)
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
