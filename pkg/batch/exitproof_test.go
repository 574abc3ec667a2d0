package batch_test

import (
	"context"
	"errors"
	"strings"
	"sync/atomic"
	"testing"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/reencrypt/reencrypt/internal/fixture"
	"github.com/reencrypt/reencrypt/pkg/batch"
)

// statusKillDB is a pool whose pass-status reads fail for real once the
// pass is finished: the connection the read is sent on is terminated by the
// server (pg_terminate_backend) just before.
type statusKillDB struct {
	*pgxpool.Pool
	finished atomic.Bool
	killed   atomic.Int64
}

func (d *statusKillDB) Exec(ctx context.Context, sql string, args ...any) (pgconn.CommandTag, error) {
	tag, err := d.Pool.Exec(ctx, sql, args...)
	if err == nil && strings.Contains(sql, "pass_finished_at = clock_timestamp()") {
		d.finished.Store(true)
	}
	return tag, err
}

func (d *statusKillDB) QueryRow(ctx context.Context, sql string, args ...any) pgx.Row {
	if !d.finished.Load() || !strings.Contains(sql, "count(*) FILTER (WHERE state = 'done')") {
		return d.Pool.QueryRow(ctx, sql, args...)
	}
	c, err := d.Pool.Acquire(ctx)
	if err != nil {
		return errRow{err}
	}
	pid := c.Conn().PgConn().PID()
	var ok bool
	if err := d.Pool.QueryRow(ctx, `SELECT pg_terminate_backend($1, 10000)`, pid).Scan(&ok); err != nil || !ok {
		c.Release()
		return errRow{errors.Join(errors.New("terminate the status read's connection"), err)}
	}
	d.killed.Add(1)
	return releasingRow{c.QueryRow(ctx, sql, args...), c}
}

type errRow struct{ err error }

func (r errRow) Scan(...any) error { return r.err }

type releasingRow struct {
	pgx.Row
	c *pgxpool.Conn
}

func (r releasingRow) Scan(dst ...any) error {
	defer r.c.Release()
	return r.Row.Scan(dst...)
}

// TestFinalStatusReadFailureIsTransient: the pass is finished but the read
// of its totals fails. Run cannot know whether rows were quarantined or left
// conflicted, so it must not report success: a transient error (exit 75).
func TestFinalStatusReadFailureIsTransient(t *testing.T) {
	t.Parallel()
	e := fixture.New(t, "bigint")
	ids := e.Seed(300, e.Old, 1)
	e.SetToken(ids[42], []byte{0xA5, 1, 2, 3}) // quarantined: the run must not exit 0
	db := &statusKillDB{Pool: newPool(t, e, 6)}

	_, err := rotate(t, e, runOpts{batch: 50, db: db})
	if db.killed.Load() == 0 {
		t.Fatal("the final status read was never made to fail")
	}
	if err == nil || !batch.IsTransient(err) {
		t.Fatalf("run with its final status read failing: got %v, want a transient error", err)
	}
	if q := e.Quarantined(); len(q) != 1 {
		t.Errorf("quarantined rows: %v, want the one broken row", q)
	}
}
