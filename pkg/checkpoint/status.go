package checkpoint

import (
	"context"
	"encoding/json"
	"fmt"

	"github.com/jackc/pgx/v5/pgconn"
)

// PassStatus summarises the ranges of one pass.
type PassStatus struct {
	Ranges, Done, Running, Pending int
	// LiveLeases counts running ranges whose lease has not expired.
	LiveLeases int
	Counts     Counts
}

// Complete reports whether every range of the pass is done.
func (p PassStatus) Complete() bool { return p.Ranges > 0 && p.Done == p.Ranges }

// Status reads the pass's ranges.
func (s *Store) Status(ctx context.Context, run Run) (PassStatus, error) {
	var p PassStatus
	err := s.db.QueryRow(ctx, fmt.Sprintf(`
		SELECT count(*),
			count(*) FILTER (WHERE state = 'done'),
			count(*) FILTER (WHERE state = 'running'),
			count(*) FILTER (WHERE state = 'pending'),
			count(*) FILTER (WHERE state = 'running' AND lease_expires_at >= now()),
			coalesce(sum(rows_rotated), 0), coalesce(sum(rows_skipped), 0),
			coalesce(sum(rows_other_key), 0), coalesce(sum(rows_quarantined), 0),
			coalesce(sum(rows_conflicted), 0)
		FROM %s.ranges WHERE run_id = $1 AND pass = $2`, s.schema), run.ID, run.Pass).
		Scan(&p.Ranges, &p.Done, &p.Running, &p.Pending, &p.LiveLeases,
			&p.Counts.Rotated, &p.Counts.Skipped, &p.Counts.OtherKey, &p.Counts.Quarantined, &p.Counts.Conflicted)
	if err != nil {
		return p, fmt.Errorf("read pass %d of run %s: %w", run.Pass, run.ID, err)
	}
	return p, nil
}

// FinishPass records the end of the pass once every range is done. It
// returns true for the one caller that recorded it.
func (s *Store) FinishPass(ctx context.Context, run Run) (bool, error) {
	tag, err := s.db.Exec(ctx, fmt.Sprintf(`
		UPDATE %[1]s.runs SET pass_finished_at = clock_timestamp()
		WHERE run_id = $1 AND pass = $2 AND pass_finished_at IS NULL
		  AND NOT EXISTS (SELECT 1 FROM %[1]s.ranges WHERE run_id = $1 AND pass = $2 AND state <> 'done')`, s.schema),
		run.ID, run.Pass)
	if err != nil {
		return false, fmt.Errorf("finish pass %d: %w", run.Pass, err)
	}
	return tag.RowsAffected() == 1, nil
}

// Quarantined is a row left untouched because its token could not be read.
type Quarantined struct {
	RowID string
	Class string // a short error class, never token or key bytes
}

// Execer runs a statement; pgx.Tx and *pgxpool.Pool fit. (A statement
// that returns rows takes a Querier.)
type Execer interface {
	Exec(ctx context.Context, sql string, args ...any) (pgconn.CommandTag, error)
}

// Quarantine records rows in tx and returns the ids seen for the first time
// in this run, so the caller audits each bad row once however often it reruns.
func (s *Store) Quarantine(ctx context.Context, tx Querier, run Run, rows []Quarantined) ([]string, error) {
	if len(rows) == 0 {
		return nil, nil
	}
	ids := make([]string, len(rows))
	classes := make([]string, len(rows))
	for i, r := range rows {
		ids[i], classes[i] = r.RowID, r.Class
	}
	res, err := tx.Query(ctx, fmt.Sprintf(`
		INSERT INTO %s.quarantine AS q (run_id, row_id, error_class, pass)
		SELECT $1, u.id, u.class, $2 FROM unnest($3::text[], $4::text[]) AS u(id, class)
		ON CONFLICT (run_id, row_id) DO UPDATE
			SET last_seen_at = now(), error_class = excluded.error_class, pass = excluded.pass
		RETURNING q.row_id, (q.xmax = 0) AS first_time`, s.schema),
		run.ID, run.Pass, ids, classes)
	if err != nil {
		return nil, fmt.Errorf("quarantine %d rows: %w", len(rows), err)
	}
	var fresh []string
	for res.Next() {
		var id string
		var first bool
		if err := res.Scan(&id, &first); err != nil {
			res.Close()
			return nil, err
		}
		if first {
			fresh = append(fresh, id)
		}
	}
	return fresh, res.Err()
}

// Event is one entry of a run's event log. Name and Owner are both
// strings: named fields keep them from being swapped.
type Event struct {
	Run     Run
	Name    string // process_started, process_done, ...
	Owner   string // the process that records it
	Details any    // stored as JSON
}

// Event appends to the run's event log (run start, pass planned, run end).
func (s *Store) Event(ctx context.Context, db Execer, ev Event) error {
	js, err := json.Marshal(ev.Details)
	if err != nil {
		return err
	}
	_, err = db.Exec(ctx, fmt.Sprintf(`
		INSERT INTO %s.events (run_id, pass, event, owner, details) VALUES ($1, $2, $3, $4, $5)`, s.schema),
		ev.Run.ID, ev.Run.Pass, ev.Name, ev.Owner, js)
	if err != nil {
		return fmt.Errorf("record event %s: %w", ev.Name, err)
	}
	return nil
}
