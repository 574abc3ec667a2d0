package checkpoint

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/jackc/pgx/v5"
)

// This file holds the read-only queries of `status`, `verify` and the
// progress reporter. None of them creates or changes anything: call Exists
// first, because a database that never saw a run has no bookkeeping schema
// and a read-only command must not create one.

// Exists reports whether the bookkeeping tables are there, refusing
// (ErrSchemaTooNew) a schema migrated by a newer release.
func (s *Store) Exists(ctx context.Context) (bool, error) {
	var ok bool
	err := s.db.QueryRow(ctx, `SELECT to_regclass($1) IS NOT NULL AND to_regclass($2) IS NOT NULL AND to_regclass($3) IS NOT NULL`,
		s.schema+".runs", s.schema+".ranges", s.schema+".quarantine").Scan(&ok)
	if err != nil {
		return false, fmt.Errorf("look up bookkeeping schema %s: %w", s.name, err)
	}
	if ok {
		// A newer release's schema may mean something else by these rows.
		if err := s.CheckVersion(ctx); err != nil {
			return false, err
		}
	}
	return ok, nil
}

// RunInfo is one recorded run at its current pass.
type RunInfo struct {
	ID, Table, OldARN, NewARN, Mode, Namespace string
	Pass                                       int
	PassStartedAt, PassFinishedAt              *time.Time
	CreatedAt                                  time.Time
}

// Run is the handle the other Store methods take for this run's pass.
func (r RunInfo) Run() Run {
	return Run{ID: r.ID, Pass: r.Pass, Spec: RunSpec{Table: r.Table, OldARN: r.OldARN, NewARN: r.NewARN, Mode: r.Mode, Namespace: r.Namespace}}
}

const runColumns = `run_id, table_name, old_key_arn, new_key_arn, mode, namespace, pass, pass_started_at, pass_finished_at, created_at`

func scanRun(row pgx.Row) (RunInfo, error) {
	var r RunInfo
	err := row.Scan(&r.ID, &r.Table, &r.OldARN, &r.NewARN, &r.Mode, &r.Namespace, &r.Pass, &r.PassStartedAt, &r.PassFinishedAt, &r.CreatedAt)
	return r, err
}

// Runs lists the runs recorded for table ("schema.table"; "" for every
// table), most recently active first.
func (s *Store) Runs(ctx context.Context, table string) ([]RunInfo, error) {
	rows, err := s.db.Query(ctx, fmt.Sprintf(`
		SELECT %s FROM %s.runs WHERE $1 = '' OR table_name = $1
		ORDER BY coalesce(pass_started_at, created_at) DESC, run_id`, runColumns, s.schema), table)
	if err != nil {
		return nil, fmt.Errorf("list runs: %w", err)
	}
	defer rows.Close()
	var out []RunInfo
	for rows.Next() {
		r, err := scanRun(rows)
		if err != nil {
			return nil, fmt.Errorf("list runs: %w", err)
		}
		out = append(out, r)
	}
	return out, rows.Err()
}

// LookupRun returns the run with this id, or ok false.
func (s *Store) LookupRun(ctx context.Context, runID string) (RunInfo, bool, error) {
	r, err := scanRun(s.db.QueryRow(ctx, fmt.Sprintf(`SELECT %s FROM %s.runs WHERE run_id = $1`, runColumns, s.schema), runID))
	if errors.Is(err, pgx.ErrNoRows) {
		return r, false, nil
	}
	if err != nil {
		return r, false, fmt.Errorf("read run %s: %w", runID, err)
	}
	return r, true, nil
}

// RangeInfo is one range of a pass as recorded.
type RangeInfo struct {
	Range                            int
	Lower, Upper, Cursor             *string
	State                            string // pending, running, done
	Owner                            string
	LeaseToken                       int64
	LeaseExpiresAt                   *time.Time
	LeaseLive                        bool // running with a lease that has not expired
	Counts                           Counts
	Pages                            int64
	Claims                           int
	StartedAt, FinishedAt, UpdatedAt *time.Time
}

// Ranges returns the ranges of one pass in order, and the database's clock
// (rates and ETAs are computed against it, not against this host's).
func (s *Store) Ranges(ctx context.Context, runID string, pass int) ([]RangeInfo, time.Time, error) {
	var now time.Time
	if err := s.db.QueryRow(ctx, `SELECT now()`).Scan(&now); err != nil {
		return nil, now, fmt.Errorf("read database clock: %w", err)
	}
	rows, err := s.db.Query(ctx, fmt.Sprintf(`
		SELECT range_no, lower_bound, upper_bound, cursor, state, coalesce(owner, ''), lease_token, lease_expires_at,
			state = 'running' AND lease_expires_at >= now(),
			rows_rotated, rows_skipped, rows_other_key, rows_quarantined, rows_conflicted,
			pages, claims, started_at, finished_at, updated_at
		FROM %s.ranges WHERE run_id = $1 AND pass = $2 ORDER BY range_no`, s.schema), runID, pass)
	if err != nil {
		return nil, now, fmt.Errorf("read ranges of run %s pass %d: %w", runID, pass, err)
	}
	defer rows.Close()
	var out []RangeInfo
	for rows.Next() {
		var r RangeInfo
		c := &r.Counts
		if err := rows.Scan(&r.Range, &r.Lower, &r.Upper, &r.Cursor, &r.State, &r.Owner, &r.LeaseToken, &r.LeaseExpiresAt,
			&r.LeaseLive, &c.Rotated, &c.Skipped, &c.OtherKey, &c.Quarantined, &c.Conflicted,
			&r.Pages, &r.Claims, &r.StartedAt, &r.FinishedAt, &r.UpdatedAt); err != nil {
			return nil, now, fmt.Errorf("read ranges of run %s: %w", runID, err)
		}
		out = append(out, r)
	}
	return out, now, rows.Err()
}

// RunTotals sums a run's counts over every pass it made: what a rerun's
// pass alone (mostly rows skipped, already under NEW) does not show.
func (s *Store) RunTotals(ctx context.Context, runID string) (Counts, error) {
	var c Counts
	err := s.db.QueryRow(ctx, fmt.Sprintf(`
		SELECT coalesce(sum(rows_rotated), 0)::bigint, coalesce(sum(rows_skipped), 0)::bigint,
			coalesce(sum(rows_other_key), 0)::bigint, coalesce(sum(rows_quarantined), 0)::bigint,
			coalesce(sum(rows_conflicted), 0)::bigint
		FROM %s.ranges WHERE run_id = $1`, s.schema), runID).
		Scan(&c.Rotated, &c.Skipped, &c.OtherKey, &c.Quarantined, &c.Conflicted)
	if err != nil {
		return c, fmt.Errorf("read the totals of run %s: %w", runID, err)
	}
	return c, nil
}

// QuarantineReport is the quarantine of one run.
type QuarantineReport struct {
	// Total rows ever quarantined in the run; Current those seen again in
	// the run's current pass (a rerun that fixed a row leaves it in Total).
	Total, Current int64
	// ByClass counts the current pass's rows by error class.
	ByClass map[string]int64
	// Rows lists current-pass rows, by row id, up to the limit asked for.
	Rows []QuarantineRow
}

// QuarantineRow is one quarantined row: its id and error class, never bytes.
type QuarantineRow struct {
	RowID, Class string
	Pass         int
	FirstSeen    time.Time
	LastSeen     time.Time
}

// QuarantineSummary summarises the quarantine of a run at pass and lists up to
// limit of the current rows.
func (s *Store) QuarantineSummary(ctx context.Context, runID string, pass, limit int) (QuarantineReport, error) {
	q := QuarantineReport{ByClass: map[string]int64{}}
	rows, err := s.db.Query(ctx, fmt.Sprintf(`
		SELECT error_class, count(*) FILTER (WHERE pass = $2), count(*)
		FROM %s.quarantine WHERE run_id = $1 GROUP BY error_class ORDER BY error_class`, s.schema), runID, pass)
	if err != nil {
		return q, fmt.Errorf("read quarantine of run %s: %w", runID, err)
	}
	for rows.Next() {
		var class string
		var cur, all int64
		if err := rows.Scan(&class, &cur, &all); err != nil {
			rows.Close()
			return q, err
		}
		if cur > 0 {
			q.ByClass[class] = cur
		}
		q.Current += cur
		q.Total += all
	}
	if err := rows.Err(); err != nil {
		return q, fmt.Errorf("read quarantine of run %s: %w", runID, err)
	}
	if limit <= 0 {
		return q, nil
	}
	rows, err = s.db.Query(ctx, fmt.Sprintf(`
		SELECT row_id, error_class, pass, first_seen_at, last_seen_at FROM %s.quarantine
		WHERE run_id = $1 AND pass = $2 ORDER BY row_id LIMIT $3`, s.schema), runID, pass, limit)
	if err != nil {
		return q, fmt.Errorf("list quarantine of run %s: %w", runID, err)
	}
	defer rows.Close()
	for rows.Next() {
		var r QuarantineRow
		if err := rows.Scan(&r.RowID, &r.Class, &r.Pass, &r.FirstSeen, &r.LastSeen); err != nil {
			return q, err
		}
		q.Rows = append(q.Rows, r)
	}
	return q, rows.Err()
}

// QuarantineClasses returns, for each of rowIDs quarantined by one of runIDs,
// the class it was last quarantined under: verify names it beside a row it
// finds still under the old key.
func (s *Store) QuarantineClasses(ctx context.Context, runIDs, rowIDs []string) (map[string]string, error) {
	out := map[string]string{}
	if len(runIDs) == 0 || len(rowIDs) == 0 {
		return out, nil
	}
	rows, err := s.db.Query(ctx, fmt.Sprintf(`
		SELECT DISTINCT ON (row_id) row_id, error_class FROM %s.quarantine
		WHERE run_id = ANY($1) AND row_id = ANY($2) ORDER BY row_id, last_seen_at DESC`, s.schema), runIDs, rowIDs)
	if err != nil {
		return nil, fmt.Errorf("read quarantine: %w", err)
	}
	defer rows.Close()
	for rows.Next() {
		var id, class string
		if err := rows.Scan(&id, &class); err != nil {
			return nil, err
		}
		out[id] = class
	}
	return out, rows.Err()
}

// RotatedTotal sums rows_rotated over every pass of the given runs: the
// number of token_reencrypted audit rows those runs must have written, since
// both are committed in the same transaction.
func (s *Store) RotatedTotal(ctx context.Context, runIDs []string) (int64, error) {
	var n int64
	err := s.db.QueryRow(ctx, fmt.Sprintf(`SELECT coalesce(sum(rows_rotated), 0)::bigint FROM %s.ranges WHERE run_id = ANY($1)`, s.schema),
		runIDs).Scan(&n)
	if err != nil {
		return 0, fmt.Errorf("sum rotated rows: %w", err)
	}
	return n, nil
}

// CurrentPass returns the run's current pass and its status, for the
// progress reporter of a process that has not been told which pass its
// engine joined. ok is false while the run is not recorded yet.
func (s *Store) CurrentPass(ctx context.Context, runID string) (RunInfo, PassStatus, bool, error) {
	r, ok, err := s.LookupRun(ctx, runID)
	if err != nil || !ok || r.Pass == 0 {
		return r, PassStatus{}, false, err
	}
	st, err := s.Status(ctx, r.Run())
	return r, st, err == nil, err
}
