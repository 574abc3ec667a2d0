package batch

import (
	"math"
	"testing"
)

func TestRangesCoverTheKeyspace(t *testing.T) {
	u := uuidRanges(4)
	want := []string{"3fffffff-ffff-ffff-ffff-ffffffffffff", "7fffffff-ffff-ffff-ffff-ffffffffffff", "bfffffff-ffff-ffff-ffff-ffffffffffff"}
	if len(u) != 4 || u[0].Lower != nil || u[3].Upper != nil {
		t.Fatalf("uuid ranges: open ends wrong: %+v", u)
	}
	for i, w := range want {
		if *u[i].Upper != w || *u[i+1].Lower != w {
			t.Errorf("uuid range %d upper = %s, want %s (and the next range's lower)", i, *u[i].Upper, w)
		}
	}
	r := intRanges(1, 100, 4)
	for i, w := range []string{"25", "50", "75"} {
		if *r[i].Upper != w || *r[i+1].Lower != w {
			t.Errorf("int range %d upper = %s, want %s", i, *r[i].Upper, w)
		}
	}
	if got := len(intRanges(5, 6, 64)); got != 2 {
		t.Errorf("2 ids cut into %d ranges, want 2", got)
	}
	ext := intRanges(math.MinInt64, math.MaxInt64, 2)
	if *ext[0].Upper != "-1" {
		t.Errorf("full int64 span cut at %s, want -1", *ext[0].Upper)
	}
}

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
