package batch

import "context"

// Hooks are functions the engine calls at fixed instants of every page, for
// tests that must act exactly there (the fault suite's test-only binary
// kills itself at one of them to prove a page is all or nothing). Production
// leaves them nil, and then nothing is called: no environment variable or
// flag can turn them on in the shipped binary.
//
// A hook runs on the page's goroutine, inside the page transaction for
// BeforeUpdate and BeforeCommit: it must return promptly (or never, if it
// kills the process) and be safe for concurrent use, since RangeWorkers
// pages run at once.
type Hooks struct {
	AfterRotate  func(ctx context.Context) // the page's KMS and AES work is done, nothing written yet
	BeforeUpdate func(ctx context.Context) // transaction open, before the fence, key lock and compare-and-swap UPDATE are sent (one batch)
	BeforeCommit func(ctx context.Context) // UPDATE, audit rows, quarantine and checkpoint sent, before COMMIT
	AfterCommit  func(ctx context.Context) // COMMIT acknowledged, before the process records it
}

// hook calls f unless it is nil.
func hook(ctx context.Context, f func(context.Context)) {
	if f != nil {
		f(ctx)
	}
}
