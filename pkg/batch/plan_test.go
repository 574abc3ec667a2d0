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
