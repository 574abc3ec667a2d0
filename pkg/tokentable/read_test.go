package tokentable_test

import (
	"context"
	"fmt"
	"strconv"
	"testing"

	"github.com/reencrypt/reencrypt/internal/fixture"
	"github.com/reencrypt/reencrypt/pkg/tokentable"
)

func inspect(t *testing.T, e *fixture.Env) *tokentable.Table {
	t.Helper()
	tbl, err := tokentable.Inspect(context.Background(), e.DB, e.Spec())
	if err != nil {
		t.Fatal(err)
	}
	return tbl
}

func ptr(s string) *string { return &s }

// TestWalkOrderAndBounds: integer ids are paged in numeric order (not the
// text order of id::text, which would make the keyset cursor skip rows), each
// row exactly once, and bounds are (lower, upper].
func TestWalkOrderAndBounds(t *testing.T) {
	e := fixture.New(t, "bigint")
	e.Seed(1234, e.Old, 7) // ids 1..1234
	tbl := inspect(t, e)
	ctx := context.Background()
	cases := []struct {
		name      string
		b         tokentable.Bounds
		first     int
		last      int
		pageSize  int
		wantPages int
	}{
		{"whole table", tokentable.Bounds{}, 1, 1234, 100, 13},
		{"from", tokentable.Bounds{Lower: ptr("1200")}, 1201, 1234, 10, 4},
		{"to", tokentable.Bounds{Upper: ptr("95")}, 1, 95, 10, 10},
		{"between", tokentable.Bounds{Lower: ptr("100"), Upper: ptr("555")}, 101, 555, 100, 5},
		{"exact pages", tokentable.Bounds{Lower: ptr("0"), Upper: ptr("300")}, 1, 300, 100, 3}, // the empty 4th page is not passed on
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			next, pages := c.first, 0
			err := tokentable.Walk(ctx, e.DB, tbl, tokentable.WalkOptions{Bounds: c.b, PageSize: c.pageSize}, func(page []tokentable.Row) error {
				pages++
				for _, r := range page {
					if r.ID != strconv.Itoa(next) {
						return fmt.Errorf("got id %s, want %d", r.ID, next)
					}
					next++
				}
				return nil
			})
			if err != nil {
				t.Fatal(err)
			}
			if next != c.last+1 || pages != c.wantPages {
				t.Errorf("walked up to %d in %d pages, want %d in %d", next-1, pages, c.last, c.wantPages)
			}
		})
	}
	rows, err := tokentable.ReadIDs(ctx, e.DB, tbl, []string{"1000", "2", "99999", "10"})
	if err != nil || len(rows) != 3 || rows[0].ID != "2" || rows[1].ID != "10" || rows[2].ID != "1000" {
		t.Errorf("ReadIDs: got %v, %v; want rows 2, 10, 1000 in order", rows, err)
	}
}

// TestWalkContaining: every row whose token holds a needle is passed on
// once, in id order, across pages that may hold no match at all; rows with
// a NULL token or none of the needles are not; integer ids page numerically.
func TestWalkContaining(t *testing.T) {
	e := fixture.New(t, "bigint")
	ctx := context.Background()
	// ids 1..250; the token of id i holds "needle-A" when i%7 == 0,
	// "needle-B" when i%50 == 0, neither otherwise; id 251 has no token.
	want := map[string]bool{}
	for i := 1; i <= 250; i++ {
		tok := []byte(fmt.Sprintf("\x01\x01 row %d payload", i))
		if i%7 == 0 {
			tok = append(tok, "..needle-A.."...)
		}
		if i%50 == 0 {
			tok = append(tok, "needle-B"...)
		}
		if i%7 == 0 || i%50 == 0 {
			want[strconv.Itoa(i)] = true
		}
		e.Exec(`INSERT INTO payment_methods (id, encrypted_token) VALUES ($1, $2)`, i, tok)
	}
	e.Exec(`INSERT INTO payment_methods (id, encrypted_token) VALUES (251, NULL)`)
	tbl := inspect(t, e)
	for _, pageSize := range []int{1, 6, 100, 1000} {
		t.Run(fmt.Sprintf("page %d", pageSize), func(t *testing.T) {
			got, prev := 0, 0
			err := tokentable.WalkContaining(ctx, e.DB, tbl,
				tokentable.Containing{Needles: [][]byte{[]byte("needle-A"), []byte("needle-B")}, PageSize: pageSize},
				func(matches []tokentable.Row) error {
					for _, r := range matches {
						n, _ := strconv.Atoi(r.ID)
						if !want[r.ID] || n <= prev {
							return fmt.Errorf("row %s passed on (after %d): not a match, or out of order", r.ID, prev)
						}
						if len(r.Token) == 0 {
							return fmt.Errorf("row %s: no token", r.ID)
						}
						prev = n
						got++
					}
					return nil
				})
			if err != nil {
				t.Fatal(err)
			}
			if got != len(want) {
				t.Errorf("%d matches, want %d", got, len(want))
			}
		})
	}
}
