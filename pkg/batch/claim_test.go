package batch_test

import (
	"context"
	"sync/atomic"
	"testing"
	"time"

	"github.com/reencrypt/reencrypt/internal/fixture"
	"github.com/reencrypt/reencrypt/pkg/batch"
)

// TestRunEndsWhenItsLastRangeEnds: a range worker that finds no range left
// while another of this process's workers still works one does not sleep
// its whole claim poll (a second) before the run can end: the worker that
// finishes the last range finds the pass complete and wakes it. Three
// ranges, two workers: one worker takes the third range while the other
// waits for it.
func TestRunEndsWhenItsLastRangeEnds(t *testing.T) {
	e := fixture.New(t, "bigint")
	e.Seed(300, e.Old, 1)
	var lastCommit atomic.Int64
	hooks := batch.Hooks{
		AfterRotate: func(context.Context) { time.Sleep(20 * time.Millisecond) }, // ~0.25 s per range
		AfterCommit: func(context.Context) { lastCommit.Store(time.Now().UnixNano()) },
	}
	sum, err := rotate(t, e, runOpts{mode: batch.Rekey, batch: 10, ranges: 3, rangeWorkers: 2, lease: 30 * time.Second, hooks: hooks})
	if err != nil {
		t.Fatal(err)
	}
	lag := time.Since(time.Unix(0, lastCommit.Load()))
	if sum.Process.Rotated != 300 {
		t.Fatalf("rotated %d rows, want 300", sum.Process.Rotated)
	}
	// Without the wake-up the waiting worker sleeps a full second (LeaseTTL/3
	// capped at 1 s) from when it found nothing to claim: ~0.75 s after the
	// last commit here.
	if lag > 300*time.Millisecond {
		t.Errorf("Run returned %s after the last page committed, want < 300ms", lag.Round(time.Millisecond))
	}
	t.Logf("Run returned %s after the last commit", lag.Round(time.Millisecond))
}
