package batch

import (
	"context"
	"encoding/hex"
	"fmt"
	"math/big"

	"github.com/jackc/pgx/v5"

	"github.com/reencrypt/reencrypt/pkg/checkpoint"
)

// exactPlanMaxRows is the largest table (by the planner's estimate) that
// planRanges cuts at row positions. Above it one short page per range is
// noise, and two index scans of the whole key column are not.
const exactPlanMaxRows = 10_000_000

// planRanges cuts the table into about n ranges of (lower, upper].
//
// Tables up to exactPlanMaxRows rows are cut at row positions so that every
// range holds a whole number of pages: every page but the pass's last is
// full, so a rekey's data key per page covers BatchSize rows and the next
// rotation's pages line up with those data keys (one Decrypt and one
// GenerateDataKey per page). Cut over the key space instead, each range ends
// in a short page: 64 ranges of 200,000 rows averaged 781-row pages.
//
// Larger tables are cut over the key space: UUID keys evenly over the
// 128-bit space (random UUIDs spread evenly); integer keys evenly between
// the minimum and maximum seen now. Either way the first range has no lower
// bound and the last no upper bound, so rows inserted later are still read.
func planRanges(ctx context.Context, db DB, t *Table, n, pageRows int) ([]checkpoint.Bounds, error) {
	n = max(n, 1)
	estimate, err := rowEstimate(ctx, db, t)
	if err != nil {
		return nil, fmt.Errorf("read row estimate of %s: %w", t.Qualified(), err)
	}
	// reltuples is -1 before the table's first VACUUM or ANALYZE: a young
	// table, cut exactly.
	if estimate <= exactPlanMaxRows {
		return rowRanges(ctx, db, t, n, pageRows)
	}
	if t.IDType == "uuid" {
		return uuidRanges(n), nil
	}
	var lo, hi *int64
	err = db.QueryRow(ctx, fmt.Sprintf(`SELECT min(%[1]s)::bigint, max(%[1]s)::bigint FROM %[2]s`, t.qid, t.qname)).Scan(&lo, &hi)
	if err != nil {
		return nil, fmt.Errorf("read id bounds of %s: %w", t.Qualified(), err)
	}
	if lo == nil {
		return []checkpoint.Bounds{{}}, nil
	}
	return intRanges(*lo, *hi, n), nil
}

// rowEstimate is the planner's row count of t (pg_class.reltuples): -1
// before the table's first VACUUM or ANALYZE.
func rowEstimate(ctx context.Context, db DB, t *Table) (float64, error) {
	var n float64
	err := db.QueryRow(ctx, `SELECT reltuples::float8 FROM pg_class WHERE oid = $1::regclass`, t.qname).Scan(&n)
	return n, err
}

// rowRanges cuts the table every step rows, step being the smallest whole
// number of pages that makes at most n ranges.
func rowRanges(ctx context.Context, db DB, t *Table, n, pageRows int) ([]checkpoint.Bounds, error) {
	var rows int64
	if err := db.QueryRow(ctx, fmt.Sprintf(`SELECT count(*) FROM %s`, t.qname)).Scan(&rows); err != nil {
		return nil, fmt.Errorf("count rows of %s: %w", t.Qualified(), err)
	}
	step, cuts := rangeStep(rows, n, pageRows)
	if cuts == 0 {
		return []checkpoint.Bounds{{}}, nil
	}
	rs, err := db.Query(ctx, fmt.Sprintf(`
		SELECT id FROM (
			SELECT t.%[1]s::text AS id, row_number() OVER (ORDER BY t.%[1]s) AS n FROM %[2]s AS t
		) AS numbered
		WHERE n %% $1 = 0 ORDER BY n LIMIT $2`, t.qid, t.qname), step, cuts)
	if err != nil {
		return nil, fmt.Errorf("read range bounds of %s: %w", t.Qualified(), err)
	}
	uppers, err := pgx.CollectRows(rs, pgx.RowTo[string])
	if err != nil {
		return nil, fmt.Errorf("read range bounds of %s: %w", t.Qualified(), err)
	}
	out := make([]checkpoint.Bounds, len(uppers)+1)
	for i := range uppers {
		out[i].Upper = &uppers[i]
		out[i+1].Lower = &uppers[i]
	}
	return out, nil
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

func uuidRanges(n int) []checkpoint.Bounds {
	space := new(big.Int).Lsh(big.NewInt(1), 128)
	return cut(space, big.NewInt(0), n, formatUUID)
}

func formatUUID(v *big.Int) string {
	var b [16]byte
	v.FillBytes(b[:])
	h := hex.EncodeToString(b[:])
	return h[0:8] + "-" + h[8:12] + "-" + h[12:16] + "-" + h[16:20] + "-" + h[20:32]
}

func intRanges(lo, hi int64, n int) []checkpoint.Bounds {
	span := new(big.Int).Sub(big.NewInt(hi), big.NewInt(lo))
	span.Add(span, big.NewInt(1))
	if span.Cmp(big.NewInt(int64(n))) < 0 {
		n = int(span.Int64())
	}
	return cut(span, big.NewInt(lo), n, (*big.Int).String)
}

// cut splits [start, start+span) into n ranges of (lower, upper]: the upper
// bound of range i is start − 1 + (i+1)·span/n, formatted by format. The
// first range has no lower bound and the last no upper bound, so ids outside
// the planned span (inserted later, or below it) still belong to a range.
func cut(span, start *big.Int, n int, format func(*big.Int) string) []checkpoint.Bounds {
	out := make([]checkpoint.Bounds, n)
	var prev *string
	for i := range n {
		out[i].Lower = prev
		if i == n-1 {
			break
		}
		b := new(big.Int).Mul(span, big.NewInt(int64(i+1)))
		b.Div(b, big.NewInt(int64(n)))
		b.Add(b, start)
		b.Sub(b, big.NewInt(1))
		s := format(b)
		out[i].Upper = &s
		prev = &s
	}
	return out
}
