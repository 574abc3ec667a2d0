package checkpoint_test

import (
	"context"
	"errors"
	"testing"
	"time"

	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/reencrypt/reencrypt/pkg/checkpoint"
)

// Per-method tests of Store against the real Postgres fixture: Join
// (pass 1, joining a pass in progress, a rerun planning pass 2), Claim
// (order, nothing left), Advance (a nil cursor keeps the cursor, done ends
// the lease) and Release (the range can be claimed at once).

var testSpec = checkpoint.RunSpec{Table: "public.t", OldARN: "arn:old", NewARN: "arn:new", Mode: "rekey", Namespace: "ns"}

// dbNow is the database's clock (Join compares processStart with it).
func dbNow(t *testing.T, db *pgxpool.Pool) time.Time {
	t.Helper()
	var now time.Time
	if err := db.QueryRow(context.Background(), `SELECT clock_timestamp()`).Scan(&now); err != nil {
		t.Fatal(err)
	}
	return now
}

// planner returns a Planner of n ranges that counts its calls.
func planner(n int, calls *int) checkpoint.Planner {
	return func(context.Context) ([]checkpoint.Bounds, error) {
		*calls++
		out := make([]checkpoint.Bounds, n)
		for i := 1; i < n; i++ {
			out[i-1].Upper = ptr(string(rune('a' + i)))
			out[i].Lower = out[i-1].Upper
		}
		return out, nil
	}
}

// finishAll claims and completes every range of the run's pass, then
// records the pass's end.
func finishAll(t *testing.T, db *pgxpool.Pool, s *checkpoint.Store, run checkpoint.Run) {
	t.Helper()
	ctx := context.Background()
	for {
		l, err := s.Claim(ctx, run, "finisher", time.Minute)
		if err != nil {
			t.Fatal(err)
		}
		if l == nil {
			break
		}
		advance(t, db, s, l, nil, checkpoint.Counts{Rotated: 1}, true)
	}
	if ok, err := s.FinishPass(ctx, run); err != nil || !ok {
		t.Fatalf("FinishPass: %v, %v; want true, nil", ok, err)
	}
}

// advance runs Fence and Advance in one committed transaction.
func advance(t *testing.T, db *pgxpool.Pool, s *checkpoint.Store, l *checkpoint.Lease, cursor *string, c checkpoint.Counts, done bool) {
	t.Helper()
	ctx := context.Background()
	tx, err := db.Begin(ctx)
	if err != nil {
		t.Fatal(err)
	}
	defer func() { _ = tx.Rollback(ctx) }()
	if err := s.Fence(ctx, tx, l); err != nil {
		t.Fatalf("fence range %d: %v", l.Range, err)
	}
	if err := s.Advance(ctx, tx, l, checkpoint.Step{Cursor: cursor, Counts: c, Done: done}, time.Minute); err != nil {
		t.Fatalf("advance range %d: %v", l.Range, err)
	}
	if err := tx.Commit(ctx); err != nil {
		t.Fatal(err)
	}
}

func rangeInfo(t *testing.T, s *checkpoint.Store, run checkpoint.Run, n int) checkpoint.RangeInfo {
	t.Helper()
	rs, _, err := s.Ranges(context.Background(), run.ID, run.Pass)
	if err != nil {
		t.Fatal(err)
	}
	if n >= len(rs) {
		t.Fatalf("pass %d has %d ranges, want range %d", run.Pass, len(rs), n)
	}
	return rs[n]
}

func TestJoinPlansPassOneThenJoinsIt(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	db, s, _ := newStore(t, 1) // a migrated store; its run is another spec's
	spec := testSpec
	spec.Namespace = "join"
	var calls int
	first, err := s.Join(ctx, spec, dbNow(t, db), planner(3, &calls))
	if err != nil {
		t.Fatal(err)
	}
	if first.Pass != 1 || !first.NewPass || first.ID != spec.ID() || calls != 1 {
		t.Errorf("first Join: pass %d, new %v, id %q, planner calls %d; want 1, true, %q, 1",
			first.Pass, first.NewPass, first.ID, calls, spec.ID())
	}
	// A sibling starting while the pass is in progress joins it.
	second, err := s.Join(ctx, spec, dbNow(t, db), planner(5, &calls))
	if err != nil {
		t.Fatal(err)
	}
	if second.Pass != 1 || second.NewPass || calls != 1 {
		t.Errorf("second Join: pass %d, new %v, planner calls %d; want 1, false, 1", second.Pass, second.NewPass, calls)
	}
	st, err := s.Status(ctx, second)
	if err != nil {
		t.Fatal(err)
	}
	if st.Ranges != 3 || st.Pending != 3 {
		t.Errorf("status %+v: want 3 ranges, all pending", st)
	}
}

func TestRerunPlansPassTwo(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	db, s, run := newStore(t, 2)
	started := dbNow(t, db) // a process that started before the pass finished
	finishAll(t, db, s, run)

	var calls int
	sibling, err := s.Join(ctx, run.Spec, started, planner(2, &calls))
	if err != nil {
		t.Fatal(err)
	}
	if sibling.Pass != 1 || sibling.NewPass || calls != 0 {
		t.Errorf("Join by a process started before the pass finished: pass %d, new %v, planner calls %d; want 1, false, 0",
			sibling.Pass, sibling.NewPass, calls)
	}
	rerun, err := s.Join(ctx, run.Spec, dbNow(t, db), planner(4, &calls))
	if err != nil {
		t.Fatal(err)
	}
	if rerun.Pass != 2 || !rerun.NewPass || rerun.ID != run.ID || calls != 1 {
		t.Errorf("rerun Join: pass %d, new %v, id %q, planner calls %d; want 2, true, %q, 1",
			rerun.Pass, rerun.NewPass, rerun.ID, calls, run.ID)
	}
	st, err := s.Status(ctx, rerun)
	if err != nil {
		t.Fatal(err)
	}
	if st.Ranges != 4 || st.Pending != 4 || st.Counts.Rows() != 0 {
		t.Errorf("pass 2 status %+v: want 4 pending ranges and no counts", st)
	}
	if ok, err := s.FinishPass(ctx, rerun); err != nil || ok {
		t.Errorf("FinishPass on a pass with pending ranges: %v, %v; want false, nil", ok, err)
	}
}

func TestClaimOrder(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	_, s, run := newStore(t, 3)
	var tokens []int64
	for want := range 3 {
		l, err := s.Claim(ctx, run, "claimer", time.Minute)
		if err != nil || l == nil {
			t.Fatalf("claim %d: %+v, %v", want, l, err)
		}
		if l.Range != want || l.RunID != run.ID || l.Pass != run.Pass || l.Owner != "claimer" || l.Cursor != nil {
			t.Errorf("claim %d: %+v; want range %d of run %s pass %d, owner claimer, no cursor", want, l, want, run.ID, run.Pass)
		}
		for _, tok := range tokens {
			if l.Token <= tok {
				t.Errorf("claim %d: token %d not above an earlier token %d", want, l.Token, tok)
			}
		}
		tokens = append(tokens, l.Token)
	}
	if got := rangeInfo(t, s, run, 1); got.Lower == nil || *got.Lower != "100" || got.Upper == nil || *got.Upper != "200" {
		t.Errorf("range 1 bounds %v..%v; want 100..200", got.Lower, got.Upper)
	}
	if l, err := s.Claim(ctx, run, "late", time.Minute); err != nil || l != nil {
		t.Errorf("claim with every lease live: %+v, %v; want nil, nil", l, err)
	}
}

func TestAdvanceNilCursorKeepsCursor(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	db, s, run := newStore(t, 1)
	l, err := s.Claim(ctx, run, "a", time.Minute)
	if err != nil || l == nil {
		t.Fatalf("claim: %+v, %v", l, err)
	}
	advance(t, db, s, l, ptr("40"), checkpoint.Counts{Rotated: 3, Skipped: 1}, false)
	advance(t, db, s, l, nil, checkpoint.Counts{Quarantined: 2, Conflicted: 1}, false)
	got := rangeInfo(t, s, run, 0)
	want := checkpoint.Counts{Rotated: 3, Skipped: 1, Quarantined: 2, Conflicted: 1}
	if got.Cursor == nil || *got.Cursor != "40" || got.Counts != want || got.Pages != 2 || got.State != "running" || !got.LeaseLive {
		t.Errorf("after Advance with a nil cursor: cursor %v, counts %+v, pages %d, state %q, live %v; want \"40\", %+v, 2, running, true",
			got.Cursor, got.Counts, got.Pages, got.State, got.LeaseLive, want)
	}
	// done ends the lease and the range; nothing is left to claim.
	advance(t, db, s, l, nil, checkpoint.Counts{}, true)
	got = rangeInfo(t, s, run, 0)
	if got.Cursor == nil || *got.Cursor != "40" || got.State != "done" || got.Owner != "" || got.LeaseExpiresAt != nil || got.FinishedAt == nil {
		t.Errorf("after Advance done: cursor %v, state %q, owner %q, expires %v, finished %v; want \"40\", done, no owner, no expiry, finished",
			got.Cursor, got.State, got.Owner, got.LeaseExpiresAt, got.FinishedAt)
	}
	if l, err := s.Claim(ctx, run, "b", time.Minute); err != nil || l != nil {
		t.Errorf("claim after the only range is done: %+v, %v; want nil, nil", l, err)
	}
}

func TestReleaseFreesRangeAtOnce(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	db, s, run := newStore(t, 1)
	l, err := s.Claim(ctx, run, "a", time.Hour)
	if err != nil || l == nil {
		t.Fatalf("claim: %+v, %v", l, err)
	}
	advance(t, db, s, l, ptr("70"), checkpoint.Counts{Rotated: 7}, false)
	if err := s.Release(ctx, l); err != nil {
		t.Fatalf("release: %v", err)
	}
	got := rangeInfo(t, s, run, 0)
	if got.State != "pending" || got.Owner != "" || got.LeaseLive || got.Cursor == nil || *got.Cursor != "70" || got.Counts.Rotated != 7 {
		t.Errorf("after Release: state %q, owner %q, live %v, cursor %v, rotated %d; want pending, no owner, not live, \"70\", 7",
			got.State, got.Owner, got.LeaseLive, got.Cursor, got.Counts.Rotated)
	}
	// Claimable at once (the hour-long lease is not waited out), from the
	// released cursor, with a new token; the released lease is fenced.
	next, err := s.Claim(ctx, run, "b", time.Minute)
	if err != nil || next == nil {
		t.Fatalf("claim after Release: %+v, %v; want the range", next, err)
	}
	if next.Range != 0 || next.Token == l.Token || next.Cursor == nil || *next.Cursor != "70" {
		t.Errorf("claim after Release: %+v; want range 0, a new token, cursor \"70\"", next)
	}
	if err := s.Renew(ctx, l, time.Minute); !errors.Is(err, checkpoint.ErrFenced) {
		t.Errorf("Renew of the released lease: %v; want ErrFenced", err)
	}
	if err := s.Release(ctx, l); err != nil {
		t.Errorf("second Release of the released lease: %v; want nil (a lost lease is not an error)", err)
	}
	if got := rangeInfo(t, s, run, 0); got.State != "running" || got.Owner != "b" {
		t.Errorf("after a stale Release: state %q, owner %q; want running, b (the stale release changes nothing)", got.State, got.Owner)
	}
}
