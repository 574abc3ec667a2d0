package batch_test

import (
	"context"
	"errors"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/reencrypt/reencrypt/internal/fixture"
	"github.com/reencrypt/reencrypt/pkg/batch"
	"github.com/reencrypt/reencrypt/pkg/metrics"
)

// signalDuringClaim is a database whose third range claim commits on the
// server while the process receives its shutdown signal: the claim's
// context is cancelled before the answer is read, as happens when SIGTERM
// lands in the middle of the claim's round trip.
type signalDuringClaim struct {
	*pgxpool.Pool
	claims atomic.Int64
	signal context.CancelFunc
}

func (d *signalDuringClaim) QueryRow(ctx context.Context, sql string, args ...any) pgx.Row {
	if !strings.Contains(sql, "SKIP LOCKED") || d.claims.Add(1) != 3 {
		return d.Pool.QueryRow(ctx, sql, args...)
	}
	return &claimRow{row: d.Pool.QueryRow(context.Background(), sql, args...), ctx: ctx, signal: d.signal}
}

type claimRow struct {
	row    pgx.Row
	ctx    context.Context
	signal context.CancelFunc
}

func (r *claimRow) Scan(dest ...any) error {
	err := r.row.Scan(dest...) // committed on the server
	r.signal()
	if r.ctx.Err() != nil {
		return r.ctx.Err() // ... but the client gave up waiting
	}
	return err
}

// TestSignalDuringClaim: a shutdown signal that lands while a range is being
// claimed must not leave that range leased to the exiting process (where it
// would sit, untouched, until its lease expired): the run stops with
// ErrInterrupted and every lease is given back.
func TestSignalDuringClaim(t *testing.T) {
	t.Parallel()
	e := fixture.New(t, "uuid")
	e.Seed(500, e.Old, 10)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	db := &signalDuringClaim{Pool: newPool(t, e, 6), signal: cancel}
	_, err := rotate(t, e, runOpts{mode: batch.Rekey, batch: 50, ranges: 8, rangeWorkers: 1,
		lease: time.Minute, db: db, ctx: ctx})
	if !errors.Is(err, batch.ErrInterrupted) {
		t.Fatalf("run: got %v, want ErrInterrupted", err)
	}
	if n := db.claims.Load(); n < 3 {
		t.Fatalf("%d claims, want the signal to land in the third", n)
	}
	if n := e.Int(`SELECT count(*) FROM reencrypt.ranges WHERE state = 'running' AND lease_expires_at > now()`); n != 0 {
		t.Errorf("ranges left leased to the stopped process: %d, want 0", n)
	}
	if n := e.Int(`SELECT count(*) FROM reencrypt.ranges WHERE state = 'done'`); n != 2 {
		t.Errorf("done ranges: %d, want 2 (the two claimed before the signal)", n)
	}
}

// slowCommitAnswer is a database whose page transactions that finish a
// range commit on the server at once but whose answer reaches the client
// only after the lease renewer has had time to run (a slow network, a busy
// client). The renewer then finds the range done, not running: that is no
// reason to consider the commit lost.
type slowCommitAnswer struct {
	*pgxpool.Pool
	delay time.Duration
}

func (d *slowCommitAnswer) Begin(ctx context.Context) (pgx.Tx, error) {
	tx, err := d.Pool.Begin(ctx)
	if err != nil {
		return nil, err
	}
	return &slowTx{Tx: tx, delay: d.delay}, nil
}

type slowTx struct {
	pgx.Tx
	delay     time.Duration
	finishing bool // the transaction marks its range done
}

func (tx *slowTx) Exec(ctx context.Context, sql string, args ...any) (pgconn.CommandTag, error) {
	if strings.Contains(sql, "rows_rotated = rows_rotated +") && len(args) > 10 {
		if done, ok := args[10].(bool); ok && done {
			tx.finishing = true
		}
	}
	return tx.Tx.Exec(ctx, sql, args...)
}

func (tx *slowTx) Commit(ctx context.Context) error {
	if err := tx.Tx.Commit(context.WithoutCancel(ctx)); err != nil || !tx.finishing {
		return err
	}
	select { // committed; the answer is on its way
	case <-ctx.Done():
		return ctx.Err() // what pgx reports when ctx ends while it waits
	case <-time.After(tx.delay):
		return nil
	}
}

// TestRangeDoneIsNotALostLease: the commit that finishes a range is not
// reported as failed (nor the lease as lost) when the lease renewer, running
// meanwhile, finds the range already done. Otherwise the process's counts
// miss that page and the log and fenced-commit metric report a takeover that
// never happened.
func TestRangeDoneIsNotALostLease(t *testing.T) {
	t.Parallel()
	const rows = 300
	e := fixture.New(t, "uuid")
	e.Seed(rows, e.Old, 10)
	m := metrics.New(nil)
	db := &slowCommitAnswer{Pool: newPool(t, e, 6), delay: 1500 * time.Millisecond}
	sum, err := rotate(t, e, runOpts{mode: batch.Rekey, batch: 100, ranges: 2, rangeWorkers: 2,
		lease: time.Second, db: db, metrics: m})
	if err != nil {
		t.Fatalf("run: %v", err)
	}
	if sum.Process.Rotated != rows || sum.PassAll.Counts.Rotated != rows {
		t.Errorf("rotated: process counted %d, pass %d; want %d both", sum.Process.Rotated, sum.PassAll.Counts.Rotated, rows)
	}
	if n := counter(t, m.FencedCommits); n != 0 {
		t.Errorf("fenced commits: %v, want 0 (no process took a range over)", n)
	}
	e.AssertAll(fixture.Check{Under: e.New})
}
