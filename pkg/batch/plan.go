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
	out := make([]checkpoint.Bounds, n)
	var prev *string
	for i := 0; i < n; i++ {
		out[i].Lower = prev
		if i == n-1 {
			break
		}
		// upper bound of range i: (i+1)·2^128/n − 1
		b := new(big.Int).Mul(space, big.NewInt(int64(i+1)))
		b.Div(b, big.NewInt(int64(n)))
		b.Sub(b, big.NewInt(1))
		s := formatUUID(b)
		out[i].Upper = &s
		prev = &s
	}
	return out
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
	out := make([]checkpoint.Bounds, n)
	var prev *string
	for i := 0; i < n; i++ {
		out[i].Lower = prev
		if i == n-1 {
			break
		}
		// upper bound of range i: lo − 1 + (i+1)·span/n
		b := new(big.Int).Mul(span, big.NewInt(int64(i+1)))
		b.Div(b, big.NewInt(int64(n)))
		b.Add(b, big.NewInt(lo-1))
		s := b.String()
		out[i].Upper = &s
		prev = &s
	}
	return out
}
