package batch

import (
	"context"
	"encoding/hex"
	"fmt"
	"math/big"

	"github.com/reencrypt/reencrypt/pkg/checkpoint"
)

// planRanges cuts the table's keyspace into n ranges of (lower, upper].
// UUID keys are cut evenly over the 128-bit space (random UUIDs spread
// evenly); integer keys evenly between the minimum and maximum seen now, the
// last range left open so rows inserted later are still read.
func planRanges(ctx context.Context, db DB, t *Table, n int) ([]checkpoint.Bounds, error) {
	if n < 1 {
		n = 1
	}
	if t.IDType == "uuid" {
		return uuidRanges(n), nil
	}
	var lo, hi *int64
	err := db.QueryRow(ctx, fmt.Sprintf(`SELECT min(%[1]s)::bigint, max(%[1]s)::bigint FROM %[2]s`, t.qid, t.qname)).Scan(&lo, &hi)
	if err != nil {
		return nil, fmt.Errorf("read id bounds of %s: %w", t.Qualified(), err)
	}
	if lo == nil {
		return []checkpoint.Bounds{{}}, nil
	}
	return intRanges(*lo, *hi, n), nil
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
