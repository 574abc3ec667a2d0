package faults

import (
	"errors"
	"flag"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"
	"syscall"
	"testing"

	"github.com/reencrypt/reencrypt/internal/testbed"
)

// reencryptBin is the reencrypt binary under test, built once by TestMain:
// the fault suite's own (cmd/reencrypt-faults), the shipped command line
// with crash hooks that REENCRYPT_CRASH_AT arms.
var reencryptBin string

// soak selects the long version of every scenario (SOAK=1, `make soak`).
var soak = os.Getenv("SOAK") == "1"

// pick returns short in a normal test run and long under SOAK=1.
func pick[T any](short, long T) T {
	if soak {
		return long
	}
	return short
}

func TestMain(m *testing.M) {
	bin, err := buildBinary()
	if err != nil {
		fmt.Fprintln(os.Stderr, "faults:", err)
		os.Exit(1)
	}
	reencryptBin = bin
	// The scenarios mostly wait (on KMS rate limits, leases, timers), so run
	// a few at once unless -test.parallel was given.
	flag.Parse()
	set := false
	flag.Visit(func(f *flag.Flag) { set = set || f.Name == "test.parallel" })
	if !set {
		_ = flag.Set("test.parallel", "4")
	}
	testbed.Main(m)
}

const binDirPrefix = "reencrypt-faults-"

// buildBinary builds ./test/faults/cmd/reencrypt-faults into a fresh temp
// dir marked with this process's pid. testbed.Main ends with os.Exit, so the
// dir cannot be removed at the end; the next run removes the dirs whose
// owner has died instead.
func buildBinary() (string, error) {
	sweepBinDirs()
	//lint:ignore SA1019 a test binary runs where `go test` built it, so its GOROOT is here
	gobin := filepath.Join(runtime.GOROOT(), "bin", "go")
	if p, err := exec.LookPath("go"); err == nil {
		gobin = p
	}
	out, err := exec.Command(gobin, "env", "GOMOD").Output()
	if err != nil {
		return "", fmt.Errorf("go env GOMOD: %w", err)
	}
	gomod := strings.TrimSpace(string(out))
	if gomod == "" || gomod == os.DevNull {
		return "", errors.New("not inside the reencrypt module")
	}
	dir, err := os.MkdirTemp("", binDirPrefix)
	if err != nil {
		return "", err
	}
	if err := os.WriteFile(filepath.Join(dir, "owner.pid"), []byte(strconv.Itoa(os.Getpid())), 0o644); err != nil {
		return "", err
	}
	bin := filepath.Join(dir, "reencrypt")
	cmd := exec.Command(gobin, "build", "-o", bin, "./test/faults/cmd/reencrypt-faults")
	cmd.Dir = filepath.Dir(gomod)
	if out, err := cmd.CombinedOutput(); err != nil {
		_ = os.RemoveAll(dir)
		return "", fmt.Errorf("go build ./test/faults/cmd/reencrypt-faults: %w\n%s", err, out)
	}
	return bin, nil
}

func sweepBinDirs() {
	dirs, _ := filepath.Glob(filepath.Join(os.TempDir(), binDirPrefix+"*"))
	for _, d := range dirs {
		b, err := os.ReadFile(filepath.Join(d, "owner.pid"))
		if err != nil {
			continue
		}
		pid, err := strconv.Atoi(strings.TrimSpace(string(b)))
		if err != nil || pid <= 0 {
			continue
		}
		if err := syscall.Kill(pid, 0); errors.Is(err, syscall.ESRCH) {
			_ = os.RemoveAll(d)
		}
	}
}
