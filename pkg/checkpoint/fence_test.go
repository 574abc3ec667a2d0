package checkpoint_test

import (
	"context"
	"errors"
	"fmt"
	"testing"
	"time"

	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/reencrypt/reencrypt/internal/testbed"
	"github.com/reencrypt/reencrypt/pkg/checkpoint"
)

func TestMain(m *testing.M) { testbed.Main(m) }

func ptr(s string) *string { return &s }

// newStore returns a store on a fresh database and a run planned into n
// ranges.
func newStore(t *testing.T, n int) (*pgxpool.Pool, *checkpoint.Store, checkpoint.Run) {
	t.Helper()
	ctx := context.Background()
	db, err := pgxpool.New(ctx, testbed.Database(t))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(db.Close)
	s := checkpoint.New(db, "reencrypt")
	if err := s.Migrate(ctx); err != nil {
		t.Fatalf("migrate: %v", err)
	}
	var now time.Time
	if err := db.QueryRow(ctx, `SELECT now()`).Scan(&now); err != nil {
		t.Fatal(err)
	}
	run, err := s.Join(ctx, checkpoint.RunSpec{Table: "public.t", OldARN: "arn:old", NewARN: "arn:new", Mode: "rekey", Namespace: "ns"},
		now, func(context.Context) ([]checkpoint.Bounds, error) {
			out := make([]checkpoint.Bounds, n)
			for i := range out {
				if i > 0 {
					out[i].Lower = ptr(fmt.Sprint(i * 100))
				}
				if i < n-1 {
					out[i].Upper = ptr(fmt.Sprint((i + 1) * 100))
				}
			}
			return out, nil
		})
	if err != nil {
		t.Fatalf("join: %v", err)
	}
	return db, s, run
}

// rangeRow is everything a commit could change in a range.
func rangeRow(t *testing.T, db *pgxpool.Pool, run checkpoint.Run, n int) string {
	t.Helper()
	var row string
	err := db.QueryRow(context.Background(), `
		SELECT concat_ws('|', state, owner, lease_token, lease_expires_at, cursor, rows_rotated, rows_skipped,
			rows_other_key, rows_quarantined, rows_conflicted, pages, claims, finished_at, updated_at)
		FROM reencrypt.ranges WHERE run_id = $1 AND pass = $2 AND range_no = $3`, run.ID, run.Pass, n).Scan(&row)
	if err != nil {
		t.Fatal(err)
	}
	return row
}

// TestFencedAfterTakeover: a lease that expired and was claimed by another
// process (a new fencing token) can no longer commit anything: Fence,
// Advance and Renew answer ErrFenced, Release is a no-op, and the range row
// is exactly as the new owner left it. The new owner's lease works.
func TestFencedAfterTakeover(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	db, s, run := newStore(t, 2)

	old, err := s.Claim(ctx, run, "zombie", time.Minute)
	if err != nil || old == nil {
		t.Fatalf("first claim: %v, %v", old, err)
	}
	// While the lease is live, nobody else gets that range.
	other, err := s.Claim(ctx, run, "other", time.Minute)
	if err != nil || other == nil || other.Range == old.Range {
		t.Fatalf("second claim: got %+v, %v; want the other range", other, err)
	}
	if none, err := s.Claim(ctx, run, "third", time.Minute); err != nil || none != nil {
		t.Fatalf("claim with every lease live: got %+v, %v; want nil, nil", none, err)
	}

	// The zombie pauses past its lease; another process takes the range.
	if _, err := db.Exec(ctx, `UPDATE reencrypt.ranges SET lease_expires_at = now() - interval '1s'
		WHERE run_id = $1 AND range_no = $2`, run.ID, old.Range); err != nil {
		t.Fatal(err)
	}
	taker, err := s.Claim(ctx, run, "taker", time.Minute)
	if err != nil || taker == nil {
		t.Fatalf("takeover claim: %v, %v", taker, err)
	}
	if taker.Range != old.Range || taker.Token <= old.Token {
		t.Fatalf("takeover got range %d token %d, want range %d with a token above %d", taker.Range, taker.Token, old.Range, old.Token)
	}
	before := rangeRow(t, db, run, old.Range)

	// The zombie wakes up and tries to commit a page.
	tx, err := db.Begin(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if err := s.Fence(ctx, tx, old); !errors.Is(err, checkpoint.ErrFenced) {
		t.Errorf("Fence with the lost lease: got %v, want ErrFenced", err)
	}
	_ = tx.Rollback(ctx)

	tx, err = db.Begin(ctx)
	if err != nil {
		t.Fatal(err)
	}
	err = s.Advance(ctx, tx, old, checkpoint.Step{Cursor: ptr("150"), Counts: checkpoint.Counts{Rotated: 50}, Done: true}, time.Minute)
	if !errors.Is(err, checkpoint.ErrFenced) {
		t.Errorf("Advance with the lost lease: got %v, want ErrFenced", err)
	}
	if err := tx.Commit(ctx); err != nil {
		t.Fatal(err)
	}
	if old.Cursor != nil {
		t.Errorf("a fenced Advance moved the zombie's cursor to %q", *old.Cursor)
	}
	if err := s.Renew(ctx, old, time.Minute); !errors.Is(err, checkpoint.ErrFenced) {
		t.Errorf("Renew with the lost lease: got %v, want ErrFenced", err)
	}
	if err := s.Release(ctx, old); err != nil {
		t.Errorf("Release with the lost lease: got %v, want nil (a no-op)", err)
	}
	if got := rangeRow(t, db, run, old.Range); got != before {
		t.Errorf("the zombie changed the range:\n got %s\nwant %s", got, before)
	}

	// The new owner commits as usual.
	tx, err = db.Begin(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if err := s.Fence(ctx, tx, taker); err != nil {
		t.Fatalf("Fence with the live lease: %v", err)
	}
	if err := s.Advance(ctx, tx, taker, checkpoint.Step{Cursor: ptr("150"), Counts: checkpoint.Counts{Rotated: 50}, Done: false}, time.Minute); err != nil {
		t.Fatalf("Advance with the live lease: %v", err)
	}
	if err := tx.Commit(ctx); err != nil {
		t.Fatal(err)
	}
	var cursor string
	var rotated int64
	if err := db.QueryRow(ctx, `SELECT cursor, rows_rotated FROM reencrypt.ranges WHERE run_id = $1 AND range_no = $2`,
		run.ID, taker.Range).Scan(&cursor, &rotated); err != nil {
		t.Fatal(err)
	}
	if cursor != "150" || rotated != 50 {
		t.Errorf("after the owner's Advance: cursor %q, rotated %d; want \"150\", 50", cursor, rotated)
	}
	// A takeover resumes from the cursor the previous owner committed.
	if _, err := db.Exec(ctx, `UPDATE reencrypt.ranges SET lease_expires_at = now() - interval '1s'
		WHERE run_id = $1 AND range_no = $2`, run.ID, taker.Range); err != nil {
		t.Fatal(err)
	}
	again, err := s.Claim(ctx, run, "next", time.Minute)
	if err != nil || again == nil || again.Cursor == nil || *again.Cursor != "150" {
		t.Fatalf("claim after expiry: got %+v, %v; want range %d resumed at cursor 150", again, err, taker.Range)
	}
}

// TestFenceBlocksConcurrentTakeover: Fence locks the range row, so a claim
// racing with an open page transaction cannot take the range until that
// transaction ends, and once it has, the old lease is fenced.
func TestFenceBlocksConcurrentTakeover(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	db, s, run := newStore(t, 1)
	l, err := s.Claim(ctx, run, "a", time.Second)
	if err != nil || l == nil {
		t.Fatalf("claim: %v, %v", l, err)
	}
	// The lease expires (set in SQL rather than waited for; Fence checks the
	// fencing token, not the expiry) and the page transaction is open: a
	// claim skips the locked row rather than taking it under the open
	// transaction.
	expireLease(t, db, l)
	tx, err := db.Begin(ctx)
	if err != nil {
		t.Fatal(err)
	}
	defer func() { _ = tx.Rollback(ctx) }()
	if err := s.Fence(ctx, tx, l); err != nil {
		t.Fatalf("fence: %v", err)
	}
	if n := countExpired(t, db, run); n != 1 {
		t.Fatalf("expired leases: %d, want 1", n)
	}
	c2, cancel := context.WithTimeout(ctx, 2*time.Second)
	defer cancel()
	if got, err := s.Claim(c2, run, "b", time.Minute); err != nil || got != nil {
		t.Fatalf("claim while the range row is locked by a page: got %+v, %v; want nil, nil", got, err)
	}
	if err := s.Advance(ctx, tx, l, checkpoint.Step{Cursor: ptr("50"), Counts: checkpoint.Counts{Rotated: 5}, Done: true}, time.Minute); err != nil {
		t.Fatalf("advance: %v", err)
	}
	if err := tx.Commit(ctx); err != nil {
		t.Fatal(err)
	}
	st, err := s.Status(ctx, run)
	if err != nil {
		t.Fatal(err)
	}
	if !st.Complete() || st.Counts.Rotated != 5 {
		t.Errorf("status %+v: want complete with 5 rotated", st)
	}
}

func countExpired(t *testing.T, db *pgxpool.Pool, run checkpoint.Run) int {
	t.Helper()
	var n int
	if err := db.QueryRow(context.Background(), `SELECT count(*) FROM reencrypt.ranges
		WHERE run_id = $1 AND state = 'running' AND lease_expires_at < now()`, run.ID).Scan(&n); err != nil {
		t.Fatal(err)
	}
	return n
}

// expireLease makes l's lease expired now, in the database, instead of
// waiting out its TTL.
func expireLease(t *testing.T, db *pgxpool.Pool, l *checkpoint.Lease) {
	t.Helper()
	tag, err := db.Exec(context.Background(), `UPDATE reencrypt.ranges SET lease_expires_at = now() - interval '1s'
		WHERE run_id = $1 AND pass = $2 AND range_no = $3 AND lease_token = $4`, l.RunID, l.Pass, l.Range, l.Token)
	if err != nil {
		t.Fatal(err)
	}
	if tag.RowsAffected() != 1 {
		t.Fatalf("expire lease on range %d: %d rows updated, want 1", l.Range, tag.RowsAffected())
	}
}
