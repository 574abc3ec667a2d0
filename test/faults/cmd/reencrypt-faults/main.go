// Command reencrypt-faults is the fault suite's reencrypt: the same command
// line as cmd/reencrypt (package internal/cli) with engine hooks that kill
// the process at a chosen instant of a page. It is built by test/faults
// only; the shipped binary has no such hook.
//
//	REENCRYPT_CRASH_AT=<point>   after_kms, before_update, before_commit or after_commit
//	REENCRYPT_CRASH_AFTER=<n>    let n hits of the point pass first (default 0)
//
// The points are batch.Hooks: after_kms = AfterRotate (the page's KMS and AES
// work done, nothing written), before_update = BeforeUpdate (transaction
// open, nothing sent yet), before_commit = BeforeCommit (everything sent but
// COMMIT), after_commit = AfterCommit (COMMIT acknowledged, not yet noted).
// At the chosen hit the process sends itself SIGKILL, the signal a node or
// the OOM killer would send: no deferred function, no rollback, no log line.
package main

import (
	"context"
	"os"
	"strconv"
	"sync/atomic"
	"syscall"

	"github.com/reencrypt/reencrypt/internal/cli"
	"github.com/reencrypt/reencrypt/pkg/batch"
)

func main() {
	os.Exit(cli.Main(cli.Options{Hooks: crashHooks(os.Getenv("REENCRYPT_CRASH_AT"), os.Getenv("REENCRYPT_CRASH_AFTER"))}))
}

// crashHooks returns hooks that SIGKILL the process at the (after+1)-th hit
// of point, and no hook at all when point is empty.
func crashHooks(point, after string) batch.Hooks {
	var h batch.Hooks
	if point == "" {
		return h
	}
	skip, _ := strconv.ParseInt(after, 10, 64)
	var hits atomic.Int64
	kill := func(context.Context) {
		if hits.Add(1) <= skip {
			return
		}
		_ = syscall.Kill(os.Getpid(), syscall.SIGKILL)
		select {} // SIGKILL cannot be caught: never go on past this point
	}
	switch point {
	case "after_kms":
		h.AfterRotate = kill
	case "before_update":
		h.BeforeUpdate = kill
	case "before_commit":
		h.BeforeCommit = kill
	case "after_commit":
		h.AfterCommit = kill
	default:
		os.Stderr.WriteString("reencrypt-faults: unknown REENCRYPT_CRASH_AT " + strconv.Quote(point) + "\n")
		os.Exit(2)
	}
	return h
}
