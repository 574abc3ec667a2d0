package batch_test

import (
	"testing"
	"time"

	"github.com/reencrypt/reencrypt/internal/fixture"
	"github.com/reencrypt/reencrypt/pkg/batch"
)

// TestTwoEngines: two processes on the same run at once, with a short lease
// and many more ranges than processes. Both finish the same pass, every
// range is done, the work is shared (each process rotated rows), and no row
// is rotated twice (one audit row each, and the two processes' counts add up
// to the table).
func TestTwoEngines(t *testing.T) {
	t.Parallel()
	const rows, ranges = 8000, 32
	e := fixture.New(t, "uuid")
	ids := e.Seed(rows, e.Old, 1)

	type result struct {
		sum batch.Summary
		err error
	}
	results := make(chan result, 2)
	for _, owner := range []string{"engine-a", "engine-b"} {
		db := newPool(t, e, 6)
		go func() {
			sum, err := rotate(t, e, runOpts{mode: batch.Rekey, batch: 100, ranges: ranges,
				lease: 2 * time.Second, owner: owner, db: db})
			results <- result{sum, err}
		}()
	}
	a, b := <-results, <-results
	for _, r := range []result{a, b} {
		if r.err != nil {
			t.Fatalf("engine: got %v, want nil", r.err)
		}
	}
	t.Logf("engine 1: %+v in %d pages; engine 2: %+v in %d pages", a.sum.Process, a.sum.Pages, b.sum.Process, b.sum.Pages)
	if a.sum.RunID != b.sum.RunID || a.sum.Pass != 1 || b.sum.Pass != 1 {
		t.Errorf("engines on run %s pass %d and run %s pass %d, want one run, pass 1",
			a.sum.RunID, a.sum.Pass, b.sum.RunID, b.sum.Pass)
	}
	if a.sum.Process.Rotated == 0 || b.sum.Process.Rotated == 0 {
		t.Errorf("rotated %d and %d rows: want both engines to share the work", a.sum.Process.Rotated, b.sum.Process.Rotated)
	}
	if got := a.sum.Process.Rotated + b.sum.Process.Rotated; got != rows {
		t.Errorf("rows rotated by both: %d, want %d (each exactly once)", got, rows)
	}
	// 8,000 rows in at most 32 ranges of whole 100-row pages: 27 of 300.
	total := e.Int(`SELECT count(*) FROM reencrypt.ranges WHERE pass = 1`)
	if got := e.Int(`SELECT count(*) FROM reencrypt.ranges WHERE state = 'done' AND pass = 1`); got != total || total != 27 {
		t.Errorf("done ranges: %d of %d, want all of 27", got, total)
	}
	if got := e.Int(`SELECT count(DISTINCT owner) FROM reencrypt.events WHERE event = 'process_done'`); got != 2 {
		t.Errorf("processes that recorded process_done: %d, want 2", got)
	}
	e.AssertAll(fixture.Check{Under: e.New})
	assertOneAuditEach(t, e, ids)
}
