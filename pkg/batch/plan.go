package batch

import (
	"context"
	"fmt"
	"slices"

	"github.com/jackc/pgx/v5"

	"github.com/reencrypt/reencrypt/pkg/checkpoint"
	"github.com/reencrypt/reencrypt/pkg/tokentable"
)

// planRanges cuts the table into about n ranges of (lower, upper].
//
// Tables up to ExactMaxRows rows are cut at row positions so that every
// range holds a whole number of pages: every page but the pass's last is
// full, so a rekey's data key per page covers BatchSize rows and the next
// rotation's pages line up with those data keys (one Decrypt and one
// GenerateDataKey per page). Cut over the key space instead, each range ends
// in a short page: 64 ranges of 200,000 rows averaged 781-row pages.
//
// Larger tables are cut at quantiles of a sample of their ids
// (quantileRanges), uuid and integer alike: ranges hold similar row counts
// even when the ids are not spread evenly over the key space. Either way the
// first range has no lower bound and the last no upper bound, so rows
// inserted later are still read. Above ExactMaxRows one short page per
// range is noise, and two index scans of the whole key column are not.
func planRanges(ctx context.Context, db DB, t *tokentable.Table, n, pageRows int) ([]checkpoint.Bounds, error) {
	return planRangesAbove(ctx, db, t, rangeCut{n: n, pageRows: pageRows, exactMax: ExactMaxRows})
}

// rangeCut is how a table is to be cut: about n ranges of pages of
// pageRows rows, cut at row positions up to exactMax estimated rows.
type rangeCut struct {
	n        int
	pageRows int
	exactMax float64
}

// planRangesAbove is planRanges with the exact planner's threshold given:
// tests cut a small table the way a large one is cut.
func planRangesAbove(ctx context.Context, db DB, t *tokentable.Table, c rangeCut) ([]checkpoint.Bounds, error) {
	b, _, err := cutRanges(ctx, db, t, c)
	return b, err
}

// cutRanges is planRanges, also saying whether the ranges hold whole
// pages (cut at row positions).
func cutRanges(ctx context.Context, db DB, t *tokentable.Table, c rangeCut) ([]checkpoint.Bounds, bool, error) {
	n := max(c.n, 1)
	estimate, err := rowEstimate(ctx, db, t)
	if err != nil {
		return nil, false, fmt.Errorf("read row estimate of %s: %w", t.Qualified(), err)
	}
	if readExactly(estimate, c.exactMax) {
		b, err := rowRanges(ctx, db, t, n, c.pageRows)
		return b, true, err
	}
	b, err := quantileRanges(ctx, db, t, n)
	return b, false, err
}

// RangePlan is how the next pass will cut a table.
type RangePlan struct {
	Ranges int
	// WholePages: every range holds whole pages (cut at row positions), so
	// no range but the last ends in a short page; otherwise each range may
	// add one short page (and, in rekey mode, one data key).
	WholePages bool
}

// PlanRanges cuts the table as a new pass of the run will (the engine's own
// planRanges, with the run's RANGES and BATCH_SIZE), for `plan` to count
// the pages and data keys the run will really make. It only reads.
func PlanRanges(ctx context.Context, db DB, t *tokentable.Table, n, pageRows int) (RangePlan, error) {
	b, whole, err := cutRanges(ctx, db, t, rangeCut{n: n, pageRows: pageRows, exactMax: ExactMaxRows})
	return RangePlan{Ranges: len(b), WholePages: whole}, err
}

// readExactly is the small-table rule shared by the range planner and
// PassRows: a table whose estimate is at most exactMax rows is counted (and
// cut) exactly; reltuples is -1 before the table's first VACUUM or ANALYZE,
// a young table, read exactly too.
func readExactly(estimate, exactMax float64) bool {
	return estimate <= exactMax
}

// rowEstimate is the planner's row count of t (pg_class.reltuples): -1
// before the table's first VACUUM or ANALYZE.
func rowEstimate(ctx context.Context, db DB, t *tokentable.Table) (float64, error) {
	var n float64
	err := db.QueryRow(ctx, `SELECT reltuples::float8 FROM pg_class WHERE oid = $1::regclass`, t.QuotedName()).Scan(&n)
	return n, err
}

// rowRanges cuts the table every step rows, step being the smallest whole
// number of pages that makes at most n ranges.
func rowRanges(ctx context.Context, db DB, t *tokentable.Table, n, pageRows int) ([]checkpoint.Bounds, error) {
	var uppers []string
	err := withoutJIT(ctx, db, func(tx pgx.Tx) error {
		var rows int64
		if err := tx.QueryRow(ctx, fmt.Sprintf(`SELECT count(*) FROM %s`, t.QuotedName())).Scan(&rows); err != nil {
			return fmt.Errorf("count rows of %s: %w", t.Qualified(), err)
		}
		step, cuts := rangeStep(rows, n, pageRows)
		if cuts == 0 {
			return nil
		}
		// Numbered in id order, ids made text only where cut.
		rs, err := tx.Query(ctx, fmt.Sprintf(`
			SELECT id::text FROM (
				SELECT t.%[1]s AS id, row_number() OVER (ORDER BY t.%[1]s) AS n FROM %[2]s AS t
			) AS numbered
			WHERE n %% $1 = 0 ORDER BY n LIMIT $2`, t.QuotedID(), t.QuotedName()), step, cuts)
		if err != nil {
			return fmt.Errorf("read range bounds of %s: %w", t.Qualified(), err)
		}
		if uppers, err = pgx.CollectRows(rs, pgx.RowTo[string]); err != nil {
			return fmt.Errorf("read range bounds of %s: %w", t.Qualified(), err)
		}
		return nil
	})
	if err != nil {
		return nil, err
	}
	return cutAt(uppers), nil
}

// withoutJIT runs a planning read in a read-only transaction with JIT
// compilation off. These statements read the whole table once, so their
// estimated cost is far above jit_above_cost, and Postgres would spend
// more compiling them than JIT saves: at 1,000,000 rows the count and the
// row numbering took 0.4 s and 0.8 s with JIT (on by default since
// Postgres 12), 0.2 s and 0.4 s without. It is one snapshot, too: the
// count and the cut see the same rows.
func withoutJIT(ctx context.Context, db DB, fn func(pgx.Tx) error) error {
	var tx pgx.Tx
	var err error
	if b, ok := db.(txBeginner); ok {
		tx, err = b.BeginTx(ctx, pgx.TxOptions{IsoLevel: pgx.RepeatableRead, AccessMode: pgx.ReadOnly})
	} else {
		tx, err = db.Begin(ctx)
	}
	if err != nil {
		return fmt.Errorf("begin planning read: %w", err)
	}
	defer func() { _ = tx.Rollback(context.WithoutCancel(ctx)) }()
	if _, err := tx.Exec(ctx, `SET LOCAL jit = off`); err != nil {
		return fmt.Errorf("planning read: %w", err)
	}
	if err := fn(tx); err != nil {
		return err
	}
	return tx.Commit(ctx)
}

// cutAt makes the ranges (−∞, u0], (u0, u1], …, (uk, +∞) from ascending,
// distinct upper bounds: the open ends take ids below and above the ones
// seen when planning (rows inserted later are still read).
func cutAt(uppers []string) []checkpoint.Bounds {
	out := make([]checkpoint.Bounds, len(uppers)+1)
	for i := range uppers {
		out[i].Upper = &uppers[i]
		out[i+1].Lower = &uppers[i]
	}
	return out
}

// samplePagesPerRange is how many heap pages quantileRanges samples per
// range: a range's row count is then off by about 1/√100 = 10 % (one
// standard deviation), the largest of 64 ranges by about 30 %. Pages, not
// rows: a sampled page's rows are not independent (UUIDv7 ids inserted
// together sit together).
const samplePagesPerRange = 100

// quantileRanges cuts t at the 1/n, 2/n, … quantiles of a sample of its
// real ids (TABLESAMPLE SYSTEM: whole heap pages, no full scan), so that
// ranges hold similar row counts whatever the ids: time-ordered UUIDv7,
// integers with gaps or outliers. Cut evenly over the key space instead,
// every UUIDv7 of a year falls in one range of 64.
func quantileRanges(ctx context.Context, db DB, t *tokentable.Table, n int) ([]checkpoint.Bounds, error) {
	if n == 1 {
		return []checkpoint.Bounds{{}}, nil
	}
	var pages float64
	if err := db.QueryRow(ctx, `SELECT relpages::float8 FROM pg_class WHERE oid = $1::regclass`, t.QuotedName()).Scan(&pages); err != nil {
		return nil, fmt.Errorf("read the size of %s: %w", t.Qualified(), err)
	}
	percent := 100.0
	if pages > 0 {
		percent = min(100, float64(n*samplePagesPerRange)/pages*100)
	}
	fractions := make([]float64, n-1)
	for i := range fractions {
		fractions[i] = float64(i+1) / float64(n)
	}
	var cuts []string
	err := withoutJIT(ctx, db, func(tx pgx.Tx) error {
		err := tx.QueryRow(ctx, fmt.Sprintf(`
			SELECT coalesce(percentile_disc($1::float8[]) WITHIN GROUP (ORDER BY t.%[1]s)::text[], '{}')
			FROM %[2]s AS t TABLESAMPLE SYSTEM ($2) WHERE t.%[1]s IS NOT NULL`, t.QuotedID(), t.QuotedName()), fractions, percent).Scan(&cuts)
		if err != nil {
			return fmt.Errorf("sample the ids of %s: %w", t.Qualified(), err)
		}
		return nil
	})
	if err != nil {
		return nil, err
	}
	return cutAt(slices.Compact(cuts)), nil // a small sample may repeat an id
}

// rangeStep returns the rows per range (a multiple of pageRows) and the
// number of cuts (ranges − 1) for rows rows in at most n ranges.
func rangeStep(rows int64, n, pageRows int) (step, cuts int64) {
	pages := (rows + int64(pageRows) - 1) / int64(pageRows)
	perRange := max((pages+int64(n)-1)/int64(n), 1)
	step = perRange * int64(pageRows)
	ranges := max((rows+step-1)/step, 1)
	return step, ranges - 1
}
