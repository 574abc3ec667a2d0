package cli

import (
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"testing"

	"github.com/reencrypt/reencrypt/internal/testbed"
)

// reencryptBin is the reencrypt binary built once by TestMain for the tests
// that run it as a separate process (kill -9, SIGTERM, exit codes).
var reencryptBin string

// TestMain builds the binary, runs the tests through testbed.Run (which
// stops the shared servers and checks for leaked goroutines), removes the
// binary, and exits with the tests' code.
func TestMain(m *testing.M) {
	dir, err := os.MkdirTemp("", "reencrypt-cmd-test-")
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	reencryptBin = filepath.Join(dir, "reencrypt")
	// The production binary: cmd/reencrypt, a thin main around this package.
	build := exec.Command("go", "build", "-o", reencryptBin, "../../cmd/reencrypt")
	if out, err := build.CombinedOutput(); err != nil {
		fmt.Fprintf(os.Stderr, "go build -o %s ../../cmd/reencrypt: %v\n%s", reencryptBin, err, out)
		os.RemoveAll(dir)
		os.Exit(1)
	}
	code := testbed.Run(m)
	os.RemoveAll(dir)
	os.Exit(code)
}
