package main

import (
	"context"
	"fmt"
	"time"

	"github.com/jackc/pgx/v5"
	"golang.org/x/sync/errgroup"

	"github.com/reencrypt/reencrypt/pkg/tokentable"
)

// Scenario 0, the server-side ceiling: the page work of a rotation done by
// Postgres alone. A PL/pgSQL procedure per session reads a page by keyset,
// swaps its tokens by compare-and-swap with UPDATE FROM unnest, writes one
// audit row per swapped token, locks and advances its checkpoint row and
// commits, page after page: no client, no KMS, no AES, no round trip. As
// many sessions as the engine has range workers, each on a contiguous share
// of the ids, on the same data (the second rotation's template when there is
// one), the same durable Postgres, alternating with the other scenarios.
// It is the number the engine's write path is measured against.
//
// The "new" token is the old one changed where a rotation changes it
// (rotationChange): same length and the same bytes in common with the old
// token as a real rotation's, so the same tuple and WAL sizes; it is not a
// valid envelope (nothing opens it afterwards).
const serverCeilingSQL = `
CREATE SCHEMA bench_ceiling;
CREATE TABLE bench_ceiling.ranges (
	range_no   int PRIMARY KEY,
	lower      uuid NOT NULL,  -- exclusive
	upper      uuid NOT NULL,  -- inclusive
	cursor     uuid,
	rows       bigint NOT NULL DEFAULT 0,
	pages      int NOT NULL DEFAULT 0,
	done       boolean NOT NULL DEFAULT false,
	updated_at timestamptz
);
CREATE PROCEDURE bench_ceiling.rotate_range(r int, page_size int, details jsonb, lock_rows boolean)
LANGUAGE plpgsql AS $$
DECLARE
	cur  uuid;
	hi   uuid;
	ids  uuid[];
	olds bytea[];
	news bytea[];
	n    int;
	swapped int;
BEGIN
	SELECT lower, upper INTO cur, hi FROM bench_ceiling.ranges WHERE range_no = r;
	LOOP
		SELECT array_agg(p.id ORDER BY p.id), array_agg(p.tok ORDER BY p.id),
		       array_agg(bench_ceiling.rotation_change(p.tok) ORDER BY p.id)
		INTO ids, olds, news
		FROM (SELECT id, encrypted_token AS tok FROM payment_methods
		      WHERE id > cur AND id <= hi ORDER BY id LIMIT page_size) AS p;
		n := coalesce(array_length(ids, 1), 0);
		EXIT WHEN n = 0;
		PERFORM 1 FROM bench_ceiling.ranges WHERE range_no = r FOR UPDATE; -- the fence
		IF lock_rows THEN -- the engine's id-ordered row locks (scenario 0b)
			PERFORM 1 FROM payment_methods WHERE id = ANY(ids) ORDER BY id FOR UPDATE;
		END IF;
		WITH swapped AS (
			UPDATE payment_methods AS t SET encrypted_token = v.new_token
			FROM unnest(ids, olds, news) AS v(id, old_token, new_token)
			WHERE t.id = v.id AND t.encrypted_token = v.old_token
			RETURNING t.id
		)
		INSERT INTO payment_method_audit (payment_method_id, action, actor_type, details)
		SELECT id, 'token_reencrypted', 'system', details FROM swapped;
		GET DIAGNOSTICS swapped = ROW_COUNT;
		cur := ids[n];
		UPDATE bench_ceiling.ranges
		SET cursor = cur, rows = rows + swapped, pages = pages + 1, done = n < page_size, updated_at = now()
		WHERE range_no = r;
		COMMIT;
		EXIT WHEN n < page_size;
	END LOOP;
	UPDATE bench_ceiling.ranges SET done = true, updated_at = now() WHERE range_no = r;
	COMMIT;
END $$;`

// serverCeiling runs scenario 0 (or 0b, with lockRows) on the copy at
// dbURL and fills r. Scenario 0b adds the one thing the engine's swap does
// that the ceiling does not: it locks the page's rows in id order
// before updating them (so that a live API transaction locking rows in id
// order waits for the page instead of deadlocking with it). The difference
// between 0 and 0b is what that safety costs Postgres.
func (b *bench) serverCeiling(ctx context.Context, dbURL string, r *Result, lockRows bool) error {
	return b.runRanges(ctx, dbURL, r, "server ceiling", func(ctx context.Context, c *pgx.Conn, k int, details []byte) error {
		// Simple protocol: a procedure may COMMIT only when CALLed outside
		// any transaction, which the extended protocol's implicit one is not.
		_, err := c.Exec(ctx, `CALL bench_ceiling.rotate_range($1, $2, $3, $4)`, pgx.QueryExecModeSimpleProtocol,
			k, b.cfg.BatchSize, string(details), lockRows)
		return err
	})
}

// runRanges is scenarios 0, 0b and 0c: it prepares the copy at dbURL
// (prepareCeiling), opens one session per range worker, times work on each
// session's range (k from 1) run concurrently, and reads the totals into r.
func (b *bench) runRanges(ctx context.Context, dbURL string, r *Result, name string,
	work func(ctx context.Context, c *pgx.Conn, k int, details []byte) error) error {
	conn, details, err := b.prepareCeiling(ctx, dbURL)
	if err != nil {
		return err
	}
	defer conn.Close(context.Background())
	conns := make([]*pgx.Conn, b.cfg.RangeWorkers)
	for i := range conns {
		if conns[i], err = pgx.Connect(ctx, dbURL); err != nil {
			return err
		}
		defer conns[i].Close(context.Background())
	}
	start := time.Now()
	g, gctx := errgroup.WithContext(ctx)
	for i, c := range conns {
		g.Go(func() error { return work(gctx, c, i+1, details) })
	}
	if err := g.Wait(); err != nil {
		return fmt.Errorf("%s: %w", name, err)
	}
	r.Seconds = time.Since(start).Seconds()
	return ceilingTotals(ctx, conn, r)
}

// ceilingTotals reads what the sessions of scenario 0 (0b, 0c) recorded in
// their checkpoint rows into r.
func ceilingTotals(ctx context.Context, conn *pgx.Conn, r *Result) error {
	var notDone, sessions int64
	if err := conn.QueryRow(ctx, `SELECT coalesce(sum(rows), 0), coalesce(sum(pages), 0), count(*) FILTER (WHERE NOT done), count(*) FROM bench_ceiling.ranges`).
		Scan(&r.Rows, &r.Pages, &notDone, &sessions); err != nil {
		return err
	}
	if notDone > 0 {
		r.Problems = append(r.Problems, fmt.Sprintf("%s: %d of %d ranges not done", r.Scenario, notDone, sessions))
	}
	return nil
}

// prepareCeiling creates scenario 0's schema on the copy at dbURL (its
// procedure and its checkpoint table, with one range per range worker, cut
// at row positions like the engine's: each session gets the same number of
// rows) and returns a connection to it and the audit details to write. Not
// timed.
func (b *bench) prepareCeiling(ctx context.Context, dbURL string) (*pgx.Conn, []byte, error) {
	sessions := b.cfg.RangeWorkers
	conn, err := pgx.Connect(ctx, dbURL)
	if err != nil {
		return nil, nil, err
	}
	fail := func(err error) (*pgx.Conn, []byte, error) {
		conn.Close(context.Background())
		return nil, nil, err
	}
	if _, err := conn.Exec(ctx, serverCeilingSQL+rotationChangeSQL); err != nil {
		return fail(fmt.Errorf("server ceiling: create the procedure: %w", err))
	}
	var total int64
	if err := conn.QueryRow(ctx, `SELECT count(*) FROM payment_methods`).Scan(&total); err != nil {
		return fail(err)
	}
	lower := "00000000-0000-0000-0000-000000000000"
	for k := 1; k <= sessions; k++ {
		upper := "ffffffff-ffff-ffff-ffff-ffffffffffff"
		if k < sessions {
			if err := conn.QueryRow(ctx, `SELECT id::text FROM payment_methods ORDER BY id OFFSET $1 LIMIT 1`,
				(int64(k)*total)/int64(sessions)-1).Scan(&upper); err != nil {
				return fail(fmt.Errorf("server ceiling: cut ranges: %w", err))
			}
		}
		if _, err := conn.Exec(ctx, `INSERT INTO bench_ceiling.ranges (range_no, lower, upper) VALUES ($1, $2, $3)`, k, lower, upper); err != nil {
			return fail(err)
		}
		lower = upper
	}
	details := tokentable.AuditDetails{RunID: "00000000-0000-0000-0000-000000000000", Pass: 1, Mode: "rekey",
		OldKeyARN: b.keys[1].ARN, NewKeyARN: b.keys[2].ARN}.JSON()
	return conn, details, nil
}

// checkServerCeiling checks that the ceiling did the whole work: every row
// swapped once, with one audit row each.
func (b *bench) checkServerCeiling(ctx context.Context, dbURL string, r *Result) (problems []string, checked string) {
	conn, err := pgx.Connect(ctx, dbURL)
	if err != nil {
		return []string{"verify: " + err.Error()}, ""
	}
	defer conn.Close(context.Background())
	var rows, audit, auditIDs int64
	if err := conn.QueryRow(ctx, `SELECT (SELECT count(*) FROM payment_methods),
		(SELECT count(*) FROM payment_method_audit WHERE action = 'token_reencrypted'),
		(SELECT count(DISTINCT payment_method_id) FROM payment_method_audit WHERE action = 'token_reencrypted')`).
		Scan(&rows, &audit, &auditIDs); err != nil {
		return []string{"verify: " + err.Error()}, ""
	}
	if r.Rows != rows || audit != rows || auditIDs != rows {
		problems = append(problems, fmt.Sprintf("server ceiling: %d rows swapped, %d audit rows for %d ids, want %d each", r.Rows, audit, auditIDs, rows))
	}
	return problems, fmt.Sprintf("%d rows swapped, %d audit rows (tokens not opened: the ceiling writes no envelope)", r.Rows, audit)
}
