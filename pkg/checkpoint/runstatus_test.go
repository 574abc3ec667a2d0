package checkpoint_test

import (
	"testing"
	"time"

	"github.com/reencrypt/reencrypt/pkg/checkpoint"
)

// TestRangeShare: the share of a range behind its cursor, over 128 bits for
// uuids and between the bounds for integers; unknown for an open integer
// bound.
func TestRangeShare(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		name   string
		idType string
		rg     checkpoint.RangeInfo
		want   float64 // -1: nil
	}{
		{"done", "uuid", checkpoint.RangeInfo{State: "done"}, 1},
		{"not started", "bigint", checkpoint.RangeInfo{State: "pending"}, 0},
		{"uuid half", "uuid", checkpoint.RangeInfo{State: "running", Cursor: ptr("80000000-0000-0000-0000-000000000000")}, 0.5},
		{"uuid within bounds", "uuid", checkpoint.RangeInfo{State: "running", Lower: ptr("40000000-0000-0000-0000-000000000000"),
			Upper: ptr("80000000-0000-0000-0000-000000000000"), Cursor: ptr("60000000-0000-0000-0000-000000000000")}, 0.5},
		{"integer quarter", "bigint", checkpoint.RangeInfo{State: "running", Lower: ptr("100"), Upper: ptr("200"), Cursor: ptr("125")}, 0.25},
		{"integer open bound", "bigint", checkpoint.RangeInfo{State: "running", Upper: ptr("200"), Cursor: ptr("125")}, -1},
		{"not a number", "integer", checkpoint.RangeInfo{State: "running", Lower: ptr("1"), Upper: ptr("9"), Cursor: ptr("x")}, -1},
	} {
		got := checkpoint.RangeShare(tc.idType, tc.rg)
		switch {
		case tc.want < 0 && got != nil:
			t.Errorf("%s: share %v, want unknown", tc.name, *got)
		case tc.want >= 0 && (got == nil || *got != tc.want):
			t.Errorf("%s: share %v, want %v", tc.name, got, tc.want)
		}
	}
}

// TestBuildRunStatus: states, the keyspace share and the ETA of a pass half
// done, against the database's clock.
func TestBuildRunStatus(t *testing.T) {
	t.Parallel()
	now := time.Date(2026, 1, 1, 12, 0, 0, 0, time.UTC)
	started := now.Add(-100 * time.Second)
	run := checkpoint.RunInfo{ID: "r", Pass: 1, PassStartedAt: &started}
	ranges := []checkpoint.RangeInfo{
		{Range: 0, State: "done", Counts: checkpoint.Counts{Rotated: 500}, StartedAt: &started},
		{Range: 1, State: "running", LeaseLive: true, Upper: ptr("7fffffff-ffff-ffff-ffff-ffffffffffff"),
			Cursor: ptr("00000000-0000-0000-0000-000000000000"), Counts: checkpoint.Counts{Rotated: 100}},
	}
	rs := checkpoint.BuildRunStatus("uuid", run, ranges, now)
	if rs.State != "running" || rs.Ranges.Done != 1 || rs.Ranges.Running != 1 || rs.Ranges.LiveLeases != 1 {
		t.Errorf("state %s ranges %+v; want running, 1 done, 1 running", rs.State, rs.Ranges)
	}
	if rs.KeyspaceDone != 0.5 || rs.ETASeconds == nil || *rs.ETASeconds != 100 || rs.RowsPerSecond != 6 {
		t.Errorf("keyspace %v, ETA %v, rate %v; want 0.5, 100 s, 6 rows/s", rs.KeyspaceDone, rs.ETASeconds, rs.RowsPerSecond)
	}
	rs.AddUnderOld([]int64{2, 3, 1})
	if *rs.UnderOld != 6 || *rs.UnderOldBehind != 2 || *rs.RangeDetail[1].UnderOld != 3 {
		t.Errorf("under OLD %d (%d behind), want 6 (2)", *rs.UnderOld, *rs.UnderOldBehind)
	}
}
