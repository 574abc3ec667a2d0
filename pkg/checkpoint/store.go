package checkpoint

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"

	"github.com/reencrypt/reencrypt/pkg/tokentable"
)

// DB is what the store needs from a connection pool (*pgxpool.Pool fits).
type DB interface {
	Begin(ctx context.Context) (pgx.Tx, error)
	Exec(ctx context.Context, sql string, args ...any) (pgconn.CommandTag, error)
	Query(ctx context.Context, sql string, args ...any) (pgx.Rows, error)
	QueryRow(ctx context.Context, sql string, args ...any) pgx.Row
}

// ErrFenced means the lease was taken over by another process: the caller
// must roll back and stop working on the range.
var ErrFenced = errors.New("lease lost: another process owns this range")

// Store reads and writes the bookkeeping tables.
type Store struct {
	db     DB
	name   string // as configured
	schema string // quoted
	build  string // recorded by Join; "" records nothing
}

// New returns a Store on the bookkeeping schema (default "reencrypt").
func New(db DB, schema string) *Store {
	if schema == "" {
		schema = "reencrypt"
	}
	return &Store{db: db, name: schema, schema: quoteIdent(schema)}
}

// Schema is the quoted schema name, for callers that join on these tables.
func (s *Store) Schema() string { return s.schema }

// SetBuild names the build of this process (internal/buildinfo's
// Info.Build), which Join records with the run: as first_build when it
// creates the run, and as last_build every time. Call it before Join.
func (s *Store) SetBuild(build string) { s.build = build }

// Build is the build SetBuild named.
func (s *Store) Build() string { return s.build }

// RunSpec identifies a rotation. The same spec always gives the same run id.
type RunSpec struct {
	Table     string // schema-qualified, as configured
	OldARN    string
	NewARN    string
	Mode      string
	Namespace string
}

// ID is a short stable id: the first 16 hex digits of a SHA-256 of the spec.
func (r RunSpec) ID() string {
	h := sha256.Sum256([]byte(r.Table + "\x00" + r.OldARN + "\x00" + r.NewARN + "\x00" + r.Mode + "\x00" + r.Namespace))
	return hex.EncodeToString(h[:8])
}

// Run is a run joined by this process, at one pass.
type Run struct {
	Spec RunSpec
	ID   string
	Pass int
	// NewPass is true when this process planned the pass.
	NewPass bool
}

// Bounds is one range of the keyspace (tokentable.Bounds): ids in
// (Lower, Upper], in the id column's canonical text. A nil bound is open.
type Bounds = tokentable.Bounds

// Planner cuts the keyspace into ranges. It is called at most once per pass.
type Planner func(ctx context.Context) ([]Bounds, error)

// Join joins the run's current pass, or plans the next one when there is
// none yet or the current one finished before this process started
// (processStart, in database time): that is a rerun, and a rerun sweeps again.
func (s *Store) Join(ctx context.Context, spec RunSpec, processStart time.Time, plan Planner) (Run, error) {
	run := Run{Spec: spec, ID: spec.ID()}
	err := pgx.BeginFunc(ctx, s.db, func(tx pgx.Tx) error {
		_, err := tx.Exec(ctx, fmt.Sprintf(`
			INSERT INTO %s.runs (run_id, table_name, old_key_arn, new_key_arn, mode, namespace, first_build)
			VALUES ($1, $2, $3, $4, $5, $6, nullif($7, '')) ON CONFLICT (run_id) DO NOTHING`, s.schema),
			run.ID, spec.Table, spec.OldARN, spec.NewARN, spec.Mode, spec.Namespace, s.build)
		if err != nil {
			return fmt.Errorf("record run: %w", err)
		}
		// Locks the run's row, as FOR UPDATE would, and records this build.
		var finished *time.Time
		err = tx.QueryRow(ctx, fmt.Sprintf(`
			UPDATE %s.runs SET
				last_build = coalesce(nullif($2, ''), last_build),
				last_build_at = CASE WHEN $2 = '' THEN last_build_at ELSE now() END
			WHERE run_id = $1
			RETURNING pass, pass_finished_at`, s.schema),
			run.ID, s.build).Scan(&run.Pass, &finished)
		if err != nil {
			return fmt.Errorf("lock run: %w", err)
		}
		if run.Pass > 0 && (finished == nil || !finished.Before(processStart)) {
			return nil // join the pass in progress, or the one a sibling just finished
		}
		ranges, err := plan(ctx)
		if err != nil {
			return fmt.Errorf("plan ranges: %w", err)
		}
		if len(ranges) == 0 {
			return fmt.Errorf("plan ranges: planner returned no range")
		}
		run.Pass++
		run.NewPass = true
		if _, err := tx.Exec(ctx, fmt.Sprintf(`
			UPDATE %s.runs SET pass = $2, pass_started_at = now(), pass_finished_at = NULL
			WHERE run_id = $1`, s.schema), run.ID, run.Pass); err != nil {
			return err
		}
		rows := make([][]any, len(ranges))
		for i, b := range ranges {
			rows[i] = []any{run.ID, run.Pass, i, b.Lower, b.Upper}
		}
		_, err = tx.CopyFrom(ctx, pgx.Identifier{s.name, "ranges"},
			[]string{"run_id", "pass", "range_no", "lower_bound", "upper_bound"}, pgx.CopyFromRows(rows))
		if err != nil {
			return fmt.Errorf("store plan: %w", err)
		}
		return nil
	})
	return run, err
}

// Lease is a claimed range. Token fences every write made under it.
type Lease struct {
	RunID  string
	Pass   int
	Range  int
	Token  int64
	Owner  string
	Bounds Bounds
	Cursor *string // last id done; nil = start at Bounds.Lower
}

// Claim takes one range of the pass that is not done and whose lease is free
// or expired, with a fresh fencing token. It returns nil when there is none.
func (s *Store) Claim(ctx context.Context, run Run, owner string, ttl time.Duration) (*Lease, error) {
	l := &Lease{RunID: run.ID, Pass: run.Pass, Owner: owner}
	err := s.db.QueryRow(ctx, fmt.Sprintf(`
		UPDATE %[1]s.ranges r SET
			state = 'running', owner = $3, lease_token = nextval($5::text::regclass),
			lease_expires_at = now() + $4 * interval '1 millisecond',
			claims = claims + 1, started_at = coalesce(started_at, now()), updated_at = now()
		WHERE r.run_id = $1 AND r.pass = $2 AND r.range_no = (
			-- A scalar subquery runs once (an InitPlan); a join against it could
			-- be rescanned per row and claim many ranges at once.
			SELECT range_no FROM %[1]s.ranges
			WHERE run_id = $1 AND pass = $2 AND state <> 'done'
			  AND (lease_expires_at IS NULL OR lease_expires_at < now())
			ORDER BY range_no
			LIMIT 1
			FOR UPDATE SKIP LOCKED)
		RETURNING r.range_no, r.lease_token, r.lower_bound, r.upper_bound, r.cursor`,
		s.schema),
		run.ID, run.Pass, owner, ttl.Milliseconds(), s.schema+".lease_tokens").
		Scan(&l.Range, &l.Token, &l.Bounds.Lower, &l.Bounds.Upper, &l.Cursor)
	if errors.Is(err, pgx.ErrNoRows) {
		return nil, nil
	}
	if err != nil {
		return nil, fmt.Errorf("claim range: %w", err)
	}
	return l, nil
}

// Renew extends the lease. ErrFenced when it was taken over.
func (s *Store) Renew(ctx context.Context, l *Lease, ttl time.Duration) error {
	tag, err := s.db.Exec(ctx, fmt.Sprintf(`
		UPDATE %s.ranges SET lease_expires_at = now() + $5 * interval '1 millisecond', updated_at = now()
		WHERE run_id = $1 AND pass = $2 AND range_no = $3 AND lease_token = $4 AND state = 'running'`, s.schema),
		l.RunID, l.Pass, l.Range, l.Token, ttl.Milliseconds())
	if err != nil {
		return fmt.Errorf("renew lease on range %d: %w", l.Range, err)
	}
	if tag.RowsAffected() == 0 {
		return fmt.Errorf("range %d: %w", l.Range, ErrFenced)
	}
	return nil
}

// Fence locks the range row inside tx and checks that the lease is still
// ours. Call it first in every page transaction.
func (s *Store) Fence(ctx context.Context, tx pgx.Tx, l *Lease) error {
	var one int
	return fenceResult(l, tx.QueryRow(ctx, s.fenceSQL(), l.RunID, l.Pass, l.Range, l.Token).Scan(&one))
}

// QueueFence is Fence as the first statement of a batch that tx sends at
// once (pgx pipelines it with what follows): the batch's Close returns its
// error, ErrFenced included, and the transaction must then roll back,
// whatever the later statements did.
func (s *Store) QueueFence(b *pgx.Batch, l *Lease) {
	b.Queue(s.fenceSQL(), l.RunID, l.Pass, l.Range, l.Token).QueryRow(func(row pgx.Row) error {
		var one int
		return fenceResult(l, row.Scan(&one))
	})
}

func (s *Store) fenceSQL() string {
	return fmt.Sprintf(`
		SELECT 1 FROM %s.ranges
		WHERE run_id = $1 AND pass = $2 AND range_no = $3 AND lease_token = $4 AND state = 'running'
		FOR UPDATE`, s.schema)
}

func fenceResult(l *Lease, err error) error {
	if errors.Is(err, pgx.ErrNoRows) {
		return fmt.Errorf("range %d: %w", l.Range, ErrFenced)
	}
	if err != nil {
		return fmt.Errorf("fence range %d: %w", l.Range, err)
	}
	return nil
}

// Counts are what one page did.
type Counts struct {
	Rotated, Skipped, OtherKey, Quarantined, Conflicted int64
}

// Add returns the sum of two counts.
func (c Counts) Add(o Counts) Counts {
	return Counts{c.Rotated + o.Rotated, c.Skipped + o.Skipped, c.OtherKey + o.OtherKey,
		c.Quarantined + o.Quarantined, c.Conflicted + o.Conflicted}
}

// Rows is the number of rows the counts cover.
func (c Counts) Rows() int64 {
	return c.Rotated + c.Skipped + c.OtherKey + c.Quarantined + c.Conflicted
}

// Step is what one page transaction records for its range.
type Step struct {
	Cursor *string // the last id done; nil keeps the cursor where it is
	Counts Counts  // added to the range's counts
	Done   bool    // the range is finished
}

// Advance moves the cursor, adds the counts, renews the lease and, when
// st.Done, marks the range finished — inside tx, after Fence. It does not
// touch l.Cursor: tx may still roll back, so the caller moves it after COMMIT.
func (s *Store) Advance(ctx context.Context, tx pgx.Tx, l *Lease, st Step, ttl time.Duration) error {
	cursor, c, done := st.Cursor, st.Counts, st.Done
	tag, err := tx.Exec(ctx, fmt.Sprintf(`
		UPDATE %s.ranges SET
			cursor = coalesce($5, cursor),
			rows_rotated = rows_rotated + $6, rows_skipped = rows_skipped + $7,
			rows_other_key = rows_other_key + $8, rows_quarantined = rows_quarantined + $9,
			rows_conflicted = rows_conflicted + $10, pages = pages + 1,
			state = CASE WHEN $11 THEN 'done' ELSE state END,
			finished_at = CASE WHEN $11 THEN now() ELSE finished_at END,
			owner = CASE WHEN $11 THEN NULL ELSE owner END,
			lease_expires_at = CASE WHEN $11 THEN NULL ELSE now() + $12 * interval '1 millisecond' END,
			updated_at = now()
		WHERE run_id = $1 AND pass = $2 AND range_no = $3 AND lease_token = $4 AND state = 'running'`, s.schema),
		l.RunID, l.Pass, l.Range, l.Token, cursor,
		c.Rotated, c.Skipped, c.OtherKey, c.Quarantined, c.Conflicted, done, ttl.Milliseconds())
	if err != nil {
		return fmt.Errorf("advance range %d: %w", l.Range, err)
	}
	if tag.RowsAffected() == 0 {
		return fmt.Errorf("range %d: %w", l.Range, ErrFenced)
	}
	return nil
}

// Release gives the range back (its lease expires now) so another process
// can claim it at once; used on shutdown. A lost lease is not an error here.
func (s *Store) Release(ctx context.Context, l *Lease) error {
	_, err := s.db.Exec(ctx, fmt.Sprintf(`
		UPDATE %s.ranges SET lease_expires_at = now(), owner = NULL, state = 'pending', updated_at = now()
		WHERE run_id = $1 AND pass = $2 AND range_no = $3 AND lease_token = $4 AND state = 'running'`, s.schema),
		l.RunID, l.Pass, l.Range, l.Token)
	if err != nil {
		return fmt.Errorf("release range %d: %w", l.Range, err)
	}
	return nil
}
