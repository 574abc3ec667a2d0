// Package cli is the reencrypt command line: run | plan | status | verify |
// keys. cmd/reencrypt is a thin main around Main; the fault suite's
// test-only binary (test/faults/cmd/reencrypt-faults) calls Main with engine
// hooks installed, so that no test hook is compiled into the shipped binary.
package cli

import (
	"context"
	"os"
	"os/signal"
	"strings"
	"syscall"

	"github.com/reencrypt/reencrypt/pkg/batch"
)

// Options are what a main may add to the command line's behaviour.
type Options struct {
	// Hooks are installed in the engine of `run`. The production main
	// leaves them nil.
	Hooks batch.Hooks
}

// Main runs the command named by os.Args and returns the process's exit
// code. SIGINT and SIGTERM stop it gracefully.
func Main(o Options) int {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	env := environ()
	tuneGC(env)
	return runWith(&invocation{ctx: ctx, stdout: os.Stdout, stderr: os.Stderr, environ: env, opts: o}, os.Args[1:])
}

func environ() map[string]string {
	m := map[string]string{}
	for _, kv := range os.Environ() {
		if name, value, ok := strings.Cut(kv, "="); ok {
			m[name] = value
		}
	}
	return m
}
