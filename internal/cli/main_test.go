package cli

import (
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"testing"

	"go.uber.org/goleak"

	"github.com/reencrypt/reencrypt/internal/testbed"
)

// reencryptBin is the reencrypt binary built once by TestMain for the tests
// that run it as a separate process (kill -9, SIGTERM, exit codes).
var reencryptBin string

// TestMain builds the binary, runs the tests, removes the binary, and then
// does what testbed.Main does: stop the shared Postgres and KMS emulators
// and, if the tests passed, fail on leaked goroutines. (testbed.Main ends in
// os.Exit, so the binary's directory could not be removed after it.)
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
	code := m.Run()
	os.RemoveAll(dir)
	if err := testbed.StopShared(); err != nil {
		fmt.Fprintln(os.Stderr, "testbed: stopping shared servers:", err)
		if code == 0 {
			code = 1
		}
	}
	if code == 0 {
		// The same options as testbed.Main.
		if err := goleak.Find(
			goleak.IgnoreAnyFunction("net/http.(*persistConn).readLoop"),
			goleak.IgnoreAnyFunction("net/http.(*persistConn).writeLoop"),
		); err != nil {
			fmt.Fprintln(os.Stderr, "testbed: goroutine leak after all tests passed:", err)
			code = 1
		}
	}
	os.Exit(code)
}
