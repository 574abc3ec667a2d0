package batch_test

import (
	"context"
	"fmt"
	"testing"

	"github.com/reencrypt/reencrypt/internal/fixture"
	"github.com/reencrypt/reencrypt/pkg/batch"
	"github.com/reencrypt/reencrypt/pkg/tokentable"
)

// TestRangesHoldSimilarRowCounts: a table above the exact planner's
// threshold (lowered to 0 here) is cut from a sample of its real ids, so
// that time-ordered UUIDv7 ids and skewed integer ids get ranges of similar
// size: the largest at most twice the mean. Cut evenly over the key space
// instead, nearly every row lands in one range.
func TestRangesHoldSimilarRowCounts(t *testing.T) {
	t.Parallel()
	const rows, ranges = 200_000, 16
	// Tokens of 300 bytes, as real envelopes are: about 20 rows a heap page.
	for _, tc := range []struct{ name, idType, insert string }{
		// UUIDv7: 48 bits of Unix milliseconds first (10 ms apart from
		// 2026-01-01), version 7, then random bits with the variant.
		{"uuidv7", "uuid", `
			INSERT INTO payment_methods (id, encrypted_token)
			SELECT (lpad(to_hex(1767225600000 + i * 10), 12, '0') || '7' || substr(md5(i::text), 1, 3)
				|| '8' || substr(md5(i::text), 4, 15))::uuid, decode(repeat('a5', 300), 'hex')
			FROM generate_series(1, $1::int) AS i`},
		// Skewed integers: 95 % dense from 1, 5 % sparse far above.
		{"skewed bigint", "bigint", `
			INSERT INTO payment_methods (id, encrypted_token)
			SELECT CASE WHEN i <= $1 * 95 / 100 THEN i ELSE 1000000000000 + i::bigint * 100000000 END, decode(repeat('a5', 300), 'hex')
			FROM generate_series(1, $1::int) AS i`},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			e := fixture.New(t, tc.idType)
			e.Exec(tc.insert, rows)
			e.Exec(`ANALYZE payment_methods`)
			ctx := context.Background()
			table, err := tokentable.Inspect(ctx, e.DB, e.Spec())
			if err != nil {
				t.Fatal(err)
			}
			bounds, err := batch.PlanRangesAbove(ctx, e.DB, table, ranges, 1000, 0)
			if err != nil {
				t.Fatal(err)
			}
			if len(bounds) < ranges/2 || len(bounds) > ranges || bounds[0].Lower != nil || bounds[len(bounds)-1].Upper != nil {
				t.Fatalf("%d ranges, first lower %v, last upper %v: want %d..%d ranges, both ends open",
					len(bounds), bounds[0].Lower, bounds[len(bounds)-1].Upper, ranges/2, ranges)
			}
			var total, largest int64
			counts := make([]int64, len(bounds))
			for i, b := range bounds {
				q := `SELECT count(*) FROM payment_methods WHERE ($1::text IS NULL OR id > $1::text::` + tc.idType +
					`) AND ($2::text IS NULL OR id <= $2::text::` + tc.idType + `)`
				counts[i] = e.Int(q, b.Lower, b.Upper)
				total += counts[i]
				largest = max(largest, counts[i])
			}
			if total != rows {
				t.Fatalf("ranges hold %d rows, want %d: they must cover the table exactly once", total, rows)
			}
			mean := float64(total) / float64(len(bounds))
			t.Logf("%d ranges, rows per range %v, largest %.2f × the mean; %d heap pages", len(bounds), counts,
				float64(largest)/mean, e.Int(`SELECT relpages::bigint FROM pg_class WHERE oid = 'payment_methods'::regclass`))
			if float64(largest) > 2*mean {
				t.Errorf("largest range holds %d rows, %.1f × the mean of %.0f; want at most 2 × (per range: %s)",
					largest, float64(largest)/mean, mean, fmt.Sprint(counts))
			}
		})
	}
}
