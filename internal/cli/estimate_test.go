package cli

import (
	"context"
	"testing"

	"github.com/reencrypt/reencrypt/internal/fixture"
	"github.com/reencrypt/reencrypt/pkg/batch"
	"github.com/reencrypt/reencrypt/pkg/tokentable"
)

// TestOneSmallTableThreshold: the progress total and the range planner
// agree on what a small table is (batch.ExactMaxRows). A table the planner
// cuts exactly, at row positions, gets an exact count as its progress
// total; one it cuts at quantiles gets the planner's estimate. Before, the
// progress total switched to the estimate at 1,000,000 rows and the planner
// at 10,000,000, so a table in between was counted one way and cut another.
func TestOneSmallTableThreshold(t *testing.T) {
	t.Parallel()
	e := fixture.New(t, "uuid")
	e.Seed(40, e.Old, 1)
	ctx := context.Background()
	tbl, err := tokentable.Inspect(ctx, e.DB, e.Spec())
	if err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		reltuples float64
		exact     bool
	}{
		{-1, true},        // never analysed
		{1_000_001, true}, // above the old progress threshold, below the planner's
		{batch.ExactMaxRows, true},
		{batch.ExactMaxRows + 1, false},
	} {
		// A planner estimate as a big table would have it (the test
		// database's role is a superuser).
		e.Exec(`UPDATE pg_class SET reltuples = $1 WHERE oid = 'public.payment_methods'::regclass`, tc.reltuples)
		plan, err := batch.PlanRanges(ctx, e.DB, tbl, 4, 10)
		if err != nil {
			t.Fatal(err)
		}
		total := estimateRows(ctx, e.DB, e.Spec())
		if plan.WholePages != tc.exact {
			t.Errorf("reltuples %.0f: planner cuts at row positions %v, want %v", tc.reltuples, plan.WholePages, tc.exact)
		}
		if want := int64(40); tc.exact && total != want {
			t.Errorf("reltuples %.0f: progress total %d, want the exact count %d (the planner cuts this table exactly)", tc.reltuples, total, want)
		}
		if want := int64(tc.reltuples); !tc.exact && total != want {
			t.Errorf("reltuples %.0f: progress total %d, want the estimate %d (the planner cuts this table at quantiles)", tc.reltuples, total, want)
		}
	}
}
