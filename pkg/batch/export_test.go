package batch

import (
	"context"

	"github.com/reencrypt/reencrypt/pkg/checkpoint"
	"github.com/reencrypt/reencrypt/pkg/tokentable"
)

// PlanRangesAbove exposes planRangesAbove to the external tests: a small
// table cut the way one above ExactMaxRows is.
func PlanRangesAbove(ctx context.Context, db DB, t *tokentable.Table, n, pageRows int, exactMax float64) ([]checkpoint.Bounds, error) {
	return planRangesAbove(ctx, db, t, rangeCut{n: n, pageRows: pageRows, exactMax: exactMax})
}

// SwapSQL is the compare-and-swap statement of t, for tests of its locking.
func SwapSQL(t *tokentable.Table) string { return newStatements(t).swap }
