package batch

import (
	"context"
	"fmt"

	"github.com/reencrypt/reencrypt/pkg/tokentable"
)

// PassRows is how many rows a pass over t reads, judged as the range
// planner judges the table (cutRanges): above ExactMaxRows the planner's
// estimate, else an exact count (the estimate is often missing right after
// a bulk load). When the count fails it returns the estimate (0 when
// unknown) with the error, for a caller that can live with it.
func PassRows(ctx context.Context, db DB, t *tokentable.Table) (int64, error) {
	est, err := rowEstimate(ctx, db, t)
	if err != nil {
		return 0, fmt.Errorf("read row estimate of %s: %w", t.Qualified(), err)
	}
	if !readExactly(est, ExactMaxRows) {
		return int64(est), nil
	}
	var n int64
	if err := db.QueryRow(ctx, `SELECT count(*) FROM `+t.QuotedName()).Scan(&n); err != nil {
		return max(0, int64(est)), fmt.Errorf("count rows of %s: %w", t.Qualified(), err)
	}
	return n, nil
}
