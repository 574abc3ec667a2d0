package checkpoint

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"math"
	"time"

	"github.com/jackc/pgx/v5"
)

// Controls are an operator's orders for every pod working on one table.
type Controls struct {
	Paused    bool       `json:"paused"`
	KMSRate   float64    `json:"kms_rate,omitempty"`  // requests/s for the Job; 0: KMS_RATE_LIMIT
	RowsRate  float64    `json:"rows_rate,omitempty"` // rows/s for the Job; 0: MAX_ROWS_PER_SECOND
	Reason    string     `json:"reason,omitempty"`
	UpdatedBy string     `json:"updated_by,omitempty"` // the database role that gave them
	UpdatedAt *time.Time `json:"updated_at,omitempty"`
}

// Controls reads the orders for table; none recorded is the zero value.
func (s *Store) Controls(ctx context.Context, table string) (Controls, error) {
	var c Controls
	var kms, rows *float64
	var reason *string
	err := s.db.QueryRow(ctx, fmt.Sprintf(`
		SELECT paused, kms_rate, rows_rate, reason, updated_by, updated_at FROM %s.controls WHERE table_name = $1`, s.schema),
		table).Scan(&c.Paused, &kms, &rows, &reason, &c.UpdatedBy, &c.UpdatedAt)
	if errors.Is(err, pgx.ErrNoRows) {
		return Controls{}, nil
	}
	if err != nil {
		return Controls{}, fmt.Errorf("read controls of %s: %w", table, err)
	}
	c.KMSRate, c.RowsRate = deref(kms), deref(rows)
	if reason != nil {
		c.Reason = *reason
	}
	return c, nil
}

func deref(f *float64) float64 {
	if f == nil {
		return 0
	}
	return *f
}

func nullRate(f float64) *float64 {
	if f <= 0 || math.IsInf(f, 0) || math.IsNaN(f) {
		return nil
	}
	return &f
}

// SetControls applies change to table's orders and records the change as an
// event (who: the database role; when: now), in one transaction.
func (s *Store) SetControls(ctx context.Context, table, event string, change func(*Controls)) (Controls, error) {
	var c Controls
	err := pgx.BeginFunc(ctx, s.db, func(tx pgx.Tx) error {
		if _, err := tx.Exec(ctx, fmt.Sprintf(`
			INSERT INTO %s.controls (table_name) VALUES ($1) ON CONFLICT (table_name) DO NOTHING`, s.schema), table); err != nil {
			return fmt.Errorf("record controls of %s: %w", table, err)
		}
		var kms, rows *float64
		var reason *string
		if err := tx.QueryRow(ctx, fmt.Sprintf(`
			SELECT paused, kms_rate, rows_rate, reason FROM %s.controls WHERE table_name = $1 FOR UPDATE`, s.schema),
			table).Scan(&c.Paused, &kms, &rows, &reason); err != nil {
			return fmt.Errorf("read controls of %s: %w", table, err)
		}
		c.KMSRate, c.RowsRate = deref(kms), deref(rows)
		if reason != nil {
			c.Reason = *reason
		}
		change(&c)
		if err := tx.QueryRow(ctx, fmt.Sprintf(`
			UPDATE %s.controls SET paused = $2, kms_rate = $3, rows_rate = $4, reason = nullif($5, ''),
				updated_by = current_user, updated_at = now()
			WHERE table_name = $1 RETURNING updated_by, updated_at`, s.schema),
			table, c.Paused, nullRate(c.KMSRate), nullRate(c.RowsRate), c.Reason).Scan(&c.UpdatedBy, &c.UpdatedAt); err != nil {
			return fmt.Errorf("write controls of %s: %w", table, err)
		}
		details, err := json.Marshal(c)
		if err != nil {
			return err
		}
		if _, err := tx.Exec(ctx, fmt.Sprintf(`
			INSERT INTO %s.events (table_name, event, owner, details) VALUES ($1, $2, current_user, $3)`, s.schema),
			table, event, details); err != nil {
			return fmt.Errorf("record event %s: %w", event, err)
		}
		return nil
	})
	return c, err
}

// PacerReport is what one pod says of its pace in its heartbeat.
type PacerReport struct {
	Owner          string     `json:"owner"`
	KMSRate        float64    `json:"kms_rate"` // its KMS budget now; +Inf is reported as 0
	KMSDecreasedAt *time.Time `json:"kms_decreased_at,omitempty"`
	State          string     `json:"state"`             // running | paused | throttled
	Reasons        []string   `json:"reasons,omitempty"` // why, when not running
	SeenAt         time.Time  `json:"seen_at"`
}

// pacerTTL is how long a pod counts as live after its last heartbeat.
const pacerTTL = 5 * time.Second

// Heartbeat records this pod's report (decreased: it slowed down for
// throttling since its last heartbeat) and returns the reports of every
// live pod on table, its own included.
func (s *Store) Heartbeat(ctx context.Context, table string, r PacerReport, decreased bool) ([]PacerReport, error) {
	if _, err := s.db.Exec(ctx, fmt.Sprintf(`
		INSERT INTO %s.pacers AS p (table_name, owner, kms_rate, kms_decreased_at, state, reasons, seen_at)
		VALUES ($1, $2, $3, CASE WHEN $4 THEN now() END, $5, $6, now())
		ON CONFLICT (table_name, owner) DO UPDATE SET kms_rate = $3,
			kms_decreased_at = CASE WHEN $4 THEN now() ELSE p.kms_decreased_at END,
			state = $5, reasons = $6, seen_at = now()`, s.schema),
		table, r.Owner, nullRate(r.KMSRate), decreased, r.State, nonNil(r.Reasons)); err != nil {
		return nil, fmt.Errorf("pacer heartbeat: %w", err)
	}
	return s.Pacers(ctx, table, pacerTTL)
}

// Pacers returns the pods on table seen within ttl.
func (s *Store) Pacers(ctx context.Context, table string, ttl time.Duration) ([]PacerReport, error) {
	rows, err := s.db.Query(ctx, fmt.Sprintf(`
		SELECT owner, coalesce(kms_rate, 0), kms_decreased_at, state, reasons, seen_at FROM %s.pacers
		WHERE table_name = $1 AND seen_at > now() - $2 * interval '1 millisecond' ORDER BY owner`, s.schema),
		table, ttl.Milliseconds())
	if err != nil {
		return nil, fmt.Errorf("read pacers of %s: %w", table, err)
	}
	return pgx.CollectRows(rows, func(row pgx.CollectableRow) (PacerReport, error) {
		var r PacerReport
		err := row.Scan(&r.Owner, &r.KMSRate, &r.KMSDecreasedAt, &r.State, &r.Reasons, &r.SeenAt)
		return r, err
	})
}

// Leave ages this pod's heartbeat out, so the others' shares grow at once.
// It does not delete it: the Job's role has no DELETE on the state schema.
func (s *Store) Leave(ctx context.Context, table, owner string) error {
	_, err := s.db.Exec(ctx, fmt.Sprintf(`UPDATE %s.pacers SET seen_at = '-infinity', state = 'stopped'
		WHERE table_name = $1 AND owner = $2`, s.schema), table, owner)
	return err
}

func nonNil(s []string) []string {
	if s == nil {
		return []string{}
	}
	return s
}

// Pace is what status shows of the steering of table: the operator's
// controls and the live pods. ok is false on a state schema older than the
// controls (nothing to show, nothing to refuse).
func (s *Store) Pace(ctx context.Context, table string) (c Controls, pods []PacerReport, ok bool, err error) {
	if err := s.db.QueryRow(ctx, `SELECT to_regclass($1) IS NOT NULL AND to_regclass($2) IS NOT NULL`,
		s.schema+".controls", s.schema+".pacers").Scan(&ok); err != nil || !ok {
		return c, nil, false, err
	}
	if c, err = s.Controls(ctx, table); err != nil {
		return c, nil, true, err
	}
	pods, err = s.Pacers(ctx, table, pacerTTL)
	return c, pods, true, err
}
