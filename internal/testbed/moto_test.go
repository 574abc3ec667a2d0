package testbed

import (
	"fmt"
	"os"
	"path/filepath"
	"runtime"
	"strings"
	"testing"
)

// outcomeTB records how Moto ended a test: Skip and Fatal stop the
// goroutine as the real ones do.
type outcomeTB struct {
	testing.TB
	skipped, failed string
}

func (o *outcomeTB) Helper()                           {}
func (o *outcomeTB) Skip(args ...any)                  { o.skipped = fmt.Sprint(args...); runtime.Goexit() }
func (o *outcomeTB) Fatal(args ...any)                 { o.failed = fmt.Sprint(args...); runtime.Goexit() }
func (o *outcomeTB) Fatalf(format string, args ...any) { o.Fatal(fmt.Sprintf(format, args...)) }

func runMoto(t *testing.T) *outcomeTB {
	o := &outcomeTB{TB: t}
	done := make(chan struct{})
	go func() {
		defer close(done)
		Moto(o)
	}()
	<-done
	return o
}

// Without moto_server on PATH the moto tests skip and say why and how to
// install it; REQUIRE_MOTO=1 (CI where moto is installed) makes it a
// failure instead.
func TestMotoMissingSkipsUnlessRequired(t *testing.T) {
	t.Setenv("PATH", t.TempDir()) // no moto_server here

	t.Setenv(EnvRequireMoto, "")
	o := runMoto(t)
	if o.failed != "" || !strings.Contains(o.skipped, "moto_server not found") || !strings.Contains(o.skipped, "pip install") ||
		!strings.Contains(o.skipped, "REQUIRE_MOTO=1") {
		t.Errorf("moto_server missing: skipped %q, failed %q; want a skip naming the reason, the install and REQUIRE_MOTO", o.skipped, o.failed)
	}

	t.Setenv(EnvRequireMoto, "1")
	o = runMoto(t)
	if o.skipped != "" || !strings.Contains(o.failed, "moto_server not found") || !strings.Contains(o.failed, "REQUIRE_MOTO=1") {
		t.Errorf("moto_server missing, REQUIRE_MOTO=1: skipped %q, failed %q; want a failure", o.skipped, o.failed)
	}
}

func TestMotoMissingIsEmptyWhenOnPath(t *testing.T) {
	dir := t.TempDir()
	if err := os.WriteFile(filepath.Join(dir, "moto_server"), []byte("#!/bin/sh\nexit 1\n"), 0o755); err != nil {
		t.Fatal(err)
	}
	t.Setenv("PATH", dir)
	if r := motoMissing("1"); r != "" {
		t.Errorf("moto_server on PATH: motoMissing = %q, want \"\"", r)
	}
}
