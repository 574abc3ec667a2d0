package batch

// TEST HOOK — fault injection for test/faults, inert in production.
//
// crashPoint marks an instant of the page transaction at which the fault
// suite kills the process, to prove that a crash there leaves token update,
// audit row and checkpoint either all committed or all absent. It does
// nothing unless the environment names that point when the process starts:
//
//	REENCRYPT_CRASH_AT=<point>   one of the names below
//	REENCRYPT_CRASH_AFTER=<n>    let n hits of the point pass first (default 0)
//
// Points (called in page.go):
//
//	after_kms      the page's KMS and AES work is done, nothing written yet
//	before_update  transaction open and fenced, before the compare-and-swap UPDATE
//	before_commit  UPDATE, audit rows, quarantine and checkpoint advance sent, before COMMIT
//	after_commit   COMMIT acknowledged, before the process records it
//
// At the chosen hit the process sends itself SIGKILL, the signal a node or
// the OOM killer would send: no deferred function, no rollback, no log line.
// The variables are read once; the hook costs one string comparison per call
// when unset. It is the only code in pkg/batch that reads the environment.

import (
	"os"
	"strconv"
	"sync/atomic"
	"syscall"
)

var crash = struct {
	at    string
	after int64
	hits  atomic.Int64
}{at: os.Getenv("REENCRYPT_CRASH_AT"), after: envInt("REENCRYPT_CRASH_AFTER")}

func envInt(name string) int64 {
	n, _ := strconv.ParseInt(os.Getenv(name), 10, 64)
	return n
}

func crashPoint(name string) {
	if crash.at == "" || crash.at != name {
		return
	}
	if crash.hits.Add(1) <= crash.after {
		return
	}
	_ = syscall.Kill(os.Getpid(), syscall.SIGKILL)
	select {} // SIGKILL cannot be caught: never go on past this point
}
