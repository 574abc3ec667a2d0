package batch

import "testing"

func TestRangeStepIsWholePages(t *testing.T) {
	for _, tc := range []struct {
		rows            int64
		n, page         int
		wantStep, wantC int64
	}{
		{200_000, 64, 1000, 4000, 49}, // 50 ranges of 4 full pages, not 64 ending in short ones
		{1_000_000, 64, 1000, 16_000, 62},
		{5000, 8, 100, 700, 7},
		{999, 64, 1000, 1000, 0}, // less than a page: one range
		{0, 64, 1000, 1000, 0},
		{64_000, 64, 1000, 1000, 63},
	} {
		step, cuts := rangeStep(tc.rows, tc.n, tc.page)
		if step != tc.wantStep || cuts != tc.wantC {
			t.Errorf("rangeStep(%d rows, %d ranges, pages of %d) = step %d, %d cuts; want %d, %d",
				tc.rows, tc.n, tc.page, step, cuts, tc.wantStep, tc.wantC)
		}
		if step%int64(tc.page) != 0 || cuts+1 > int64(tc.n) {
			t.Errorf("rangeStep(%d, %d, %d): step %d not whole pages or %d ranges > %d", tc.rows, tc.n, tc.page, step, cuts+1, tc.n)
		}
	}
}
