package registry

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"time"

	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/service/kms"
	"github.com/aws/aws-sdk-go-v2/service/kms/types"
	"github.com/jackc/pgx/v5"

	"github.com/reencrypt/reencrypt/pkg/census"
	"github.com/reencrypt/reencrypt/pkg/checkpoint"
	"github.com/reencrypt/reencrypt/pkg/kmsclient"
	"github.com/reencrypt/reencrypt/pkg/tokentable"
)

// Guard is what the key-deletion guard needs besides the registry.
type Guard struct {
	// KMS resolves kids (and key_ids) that are not key ARNs. Without it such
	// a kid fails the check.
	KMS kmsclient.KMS
	// State is the state schema: the tables recorded per key (key_tables)
	// and the quarantine. Without it only the configured table is counted.
	State *checkpoint.Store
	// Namespace is the configured table's AAD namespace, for the report.
	Namespace string
	// Report, when set, is told the count before the status change or the
	// KMS call (schedule-deletion prints it).
	Report func(Usage)
}

// TableCount is what the guard found in one table for one key.
type TableCount struct {
	Table       string `json:"table"` // schema.table
	TokenColumn string `json:"token_column"`
	Namespace   string `json:"namespace,omitempty"`
	Configured  bool   `json:"configured"` // named by the configuration now
	Recorded    bool   `json:"recorded"`   // in key_tables for the key
	// Missing: recorded, but the table or a column no longer exists, so it
	// cannot be proved empty. It blocks.
	Missing bool `json:"missing,omitempty"`
	// Unlisted: quarantined rows of a run off the key, in a table nothing
	// recorded the columns of; they cannot be read, and they block.
	Unlisted bool  `json:"unlisted,omitempty"`
	Scanned  int64 `json:"scanned"`
	// Rows under the key: kid resolved to it, plus quarantined rows whose
	// token is unreadable or whose kid cannot be resolved.
	Rows        int64 `json:"rows"`
	Quarantined int64 `json:"quarantined"` // of Rows
	// Unresolvable: rows whose kid KMS does not know (NotFound); reported,
	// not counted, unless quarantined off the key.
	Unresolvable int64 `json:"unresolvable"`
}

// Blocks reports whether this table forbids retiring or deleting the key.
func (t TableCount) Blocks() bool { return t.Rows > 0 || t.Missing || t.Unlisted }

// Usage is the guard's count for one key over every table.
type Usage struct {
	KeyARN string       `json:"key_arn"`
	Tables []TableCount `json:"tables"`
}

// Blocks reports whether any table forbids retiring or deleting the key.
func (u Usage) Blocks() bool {
	for _, t := range u.Tables {
		if t.Blocks() {
			return true
		}
	}
	return false
}

// Rows is the number of rows under the key over every table.
func (u Usage) Rows() int64 {
	var n int64
	for _, t := range u.Tables {
		n += t.Rows
	}
	return n
}

// InUseError says where rows are still under a key.
type InUseError struct {
	KeyARN string
	Rows   int64 // over every table
	Usage  Usage
	// During: the rows appeared while KMS scheduled the deletion, which was
	// then cancelled.
	During string
}

func (e *InUseError) Error() string {
	var parts []string
	for _, t := range e.Usage.Tables {
		switch {
		case t.Missing:
			parts = append(parts, fmt.Sprintf("%s (recorded for this key) no longer exists or lacks column %s: it cannot be proved empty", t.Table, t.TokenColumn))
		case t.Unlisted:
			parts = append(parts, fmt.Sprintf("%d quarantined rows of %s (a run from this key) cannot be read: no table record names its columns", t.Quarantined, t.Table))
		case t.Rows > 0 && t.Quarantined > 0:
			parts = append(parts, fmt.Sprintf("%d rows of %s (%d quarantined)", t.Rows, t.Table, t.Quarantined))
		case t.Rows > 0:
			parts = append(parts, fmt.Sprintf("%d rows of %s", t.Rows, t.Table))
		}
	}
	msg := fmt.Sprintf("still under %s: %s", e.KeyARN, strings.Join(parts, "; "))
	if e.During != "" {
		msg += "; " + e.During
	}
	return msg
}

func (e *InUseError) Is(target error) bool { return target == ErrInUse }

// WithReport sets the guard's Report.
func (r *Registry) WithReport(fn func(Usage)) *Registry {
	r.guard.Report = fn
	return r
}

// lockKey takes the key's advisory lock exclusively: the engine's page
// transactions writing under the key take it shared, so none commits until
// tx ends.
func lockKey(ctx context.Context, tx pgx.Tx, arn string) error {
	if _, err := tx.Exec(ctx, `SELECT pg_advisory_xact_lock($1)`, checkpoint.KeyLockID(arn)); err != nil {
		return fmt.Errorf("lock key %s: %w", arn, err)
	}
	return nil
}

// lockRow finds the registry row naming arn and locks it FOR UPDATE.
func (r *Registry) lockRow(ctx context.Context, tx pgx.Tx, cols map[string]string, arn string) (Key, error) {
	keys, err := r.load(ctx, txDB{tx}, cols, loading{})
	if err != nil {
		return Key{}, err
	}
	k, err := r.lookup(keys, arn)
	if err != nil || k.KeyID == "" {
		return k, err
	}
	if _, err := tx.Exec(ctx, fmt.Sprintf(`SELECT 1 FROM %s WHERE key_id = $1 FOR UPDATE`, r.qname), k.KeyID); err != nil {
		return k, fmt.Errorf("lock %s row of %s: %w", r.Qualified(), arn, err)
	}
	// Re-read under the lock: the status may have changed meanwhile.
	keys, err = r.load(ctx, txDB{tx}, cols, loading{where: "WHERE key_id = $1", args: []any{k.KeyID}})
	if err != nil || len(keys) == 0 {
		return Key{}, err
	}
	keys[0].ARN = arn
	return keys[0], nil
}

// Count counts the rows under arn in the configured table t and in every
// table recorded for the key, attributing quarantined rows; q should be the
// transaction holding the key's lock.
func (r *Registry) Count(ctx context.Context, q checkpoint.DB, arn string, t *tokentable.Table) (Usage, error) {
	u := Usage{KeyARN: arn}
	type spec struct {
		checkpoint.KeyTable
		configured, recorded bool
	}
	var specs []spec
	index := map[string]int{}
	add := func(k checkpoint.KeyTable, configured, recorded bool) {
		id := k.Qualified() + "\x00" + k.TokenColumn
		if i, ok := index[id]; ok {
			specs[i].configured = specs[i].configured || configured
			specs[i].recorded = specs[i].recorded || recorded
			return
		}
		index[id] = len(specs)
		specs = append(specs, spec{k, configured, recorded})
	}
	if t != nil {
		add(checkpoint.KeyTable{Schema: t.Spec.Schema, Table: t.Spec.Name, TokenColumn: t.Spec.TokenColumn,
			IDColumn: t.Spec.IDColumn, Namespace: r.guard.Namespace}, true, false)
	}
	var quarantined map[string]map[string]bool
	if st := r.guard.State; st != nil {
		recorded, err := st.KeyTables(ctx, q, arn)
		if err != nil {
			return u, err
		}
		for _, k := range recorded {
			add(k, false, true)
		}
		if quarantined, err = st.QuarantinedUnder(ctx, q, arn); err != nil {
			return u, err
		}
	}
	seen := map[string]bool{}
	for _, s := range specs {
		c, err := r.countTable(ctx, q, arn, s.KeyTable, quarantined[s.Qualified()])
		if err != nil {
			return u, err
		}
		c.Configured, c.Recorded = s.configured, s.recorded
		u.Tables = append(u.Tables, c)
		seen[s.Qualified()] = true
	}
	for table, ids := range quarantined {
		if !seen[table] && len(ids) > 0 {
			n := int64(len(ids))
			u.Tables = append(u.Tables, TableCount{Table: table, Unlisted: true, Rows: n, Quarantined: n})
		}
	}
	return u, nil
}

// countTable counts one table in one statement (one snapshot).
func (r *Registry) countTable(ctx context.Context, q checkpoint.DB, arn string, k checkpoint.KeyTable, quarantined map[string]bool) (TableCount, error) {
	c := TableCount{Table: k.Qualified(), TokenColumn: k.TokenColumn, Namespace: k.Namespace}
	var n int
	err := q.QueryRow(ctx, `
		SELECT count(*) FROM pg_attribute
		WHERE attrelid = to_regclass($1) AND attname IN ($2, $3) AND attnum > 0 AND NOT attisdropped`,
		pgx.Identifier{k.Schema, k.Table}.Sanitize(), k.IDColumn, k.TokenColumn).Scan(&n)
	if err != nil {
		return c, fmt.Errorf("inspect %s: %w", c.Table, err)
	}
	if n < 2 {
		c.Missing = true
		return c, nil
	}
	spec := tokentable.Spec{Schema: k.Schema, Name: k.Table, IDColumn: k.IDColumn, TokenColumn: k.TokenColumn}
	err = census.Scan(ctx, q, spec, func(row tokentable.Row) error {
		c.Scanned++
		held := quarantined[row.ID]
		env, _ := tokentable.ParseToken(row.Token)
		if env == nil { // NULL or unreadable: only OLD can help a quarantined one
			if held {
				c.Rows++
				c.Quarantined++
			}
			return nil
		}
		kidARN, found, err := r.res.ARN(ctx, env.KID)
		if err != nil {
			return fmt.Errorf("resolve the kid of a row of %s: %w", c.Table, err)
		}
		switch {
		case !found:
			c.Unresolvable++
			if held {
				c.Rows++
				c.Quarantined++
			}
		case kidARN == arn:
			c.Rows++
			if held {
				c.Quarantined++
			}
		}
		return nil
	})
	return c, err
}

// Retire marks a rotating key retired, after checking that no row of t, of
// any table recorded for the key, nor any quarantined row from it, is under
// it. The count and the status change are one transaction holding the key's
// lock exclusively. already is true when it was retired before.
func (r *Registry) Retire(ctx context.Context, arn string, t *tokentable.Table) (k Key, already bool, err error) {
	cols, err := r.columns(ctx, r.db)
	if err != nil {
		return k, false, err
	}
	if cols == nil {
		return k, false, refused("%s is not in %s (keys begin records it)", arn, r.Qualified())
	}
	err = pgx.BeginFunc(ctx, r.db, func(tx pgx.Tx) error {
		if err := lockKey(ctx, tx, arn); err != nil {
			return err
		}
		k, err = r.lockRow(ctx, tx, cols, arn)
		switch {
		case err != nil:
			return err
		case k.KeyID == "":
			return refused("%s is not in %s (keys begin records it)", arn, r.Qualified())
		case k.Status == StatusRetired:
			already = true
			return nil
		case k.Status == StatusActive:
			return refused("%s is the active key: begin a rotation away from it, run it, then retire it", arn)
		case k.Status != StatusRotating:
			return refused("%s has status %q; only a rotating key is retired", arn, k.Status)
		}
		if err := r.check(ctx, tx, arn, t, ""); err != nil {
			return err
		}
		tag, err := tx.Exec(ctx, fmt.Sprintf(`UPDATE %s SET status = 'retired', retired_at = now() WHERE key_id = $1 AND status = 'rotating'`, r.qname), k.KeyID)
		if err != nil {
			return fmt.Errorf("retire %s: %w", arn, err)
		}
		if tag.RowsAffected() != 1 {
			return refused("%s changed status meanwhile; look again with keys list", arn)
		}
		return nil
	})
	if err != nil || already {
		return k, already, err
	}
	k, _, err = r.Get(ctx, arn)
	return k, false, err
}

// check counts, reports and refuses (*InUseError) while any table blocks.
func (r *Registry) check(ctx context.Context, tx pgx.Tx, arn string, t *tokentable.Table, during string) error {
	u, err := r.Count(ctx, txDB{tx}, arn, t)
	if err != nil {
		return fmt.Errorf("count rows under %s: %w", arn, err)
	}
	if r.guard.Report != nil && during == "" {
		r.guard.Report(u)
	}
	if u.Blocks() {
		return &InUseError{KeyARN: arn, Rows: u.Rows(), Usage: u, During: during}
	}
	return nil
}

// ScheduleDeletion asks KMS to delete a retired key after pendingDays (7 to
// 30), and records it. In one transaction holding the key's lock
// exclusively, it counts (as Retire does) immediately before the KMS call,
// and counts again after it: rows that appeared meanwhile (a writer that
// does not take the lock, such as the live API) make it cancel the deletion
// (CancelKeyDeletion, and EnableKey when the key was enabled) and roll the
// registry back. A key KMS already has pending deletion is recorded, not
// scheduled again; already is true then.
func (r *Registry) ScheduleDeletion(ctx context.Context, api kmsclient.KMS, arn string, pendingDays int, t *tokentable.Table) (k Key, already bool, err error) {
	if pendingDays < MinPendingDays || pendingDays > MaxPendingDays {
		return k, false, refused("--pending-days %d: KMS accepts %d to %d", pendingDays, MinPendingDays, MaxPendingDays)
	}
	cols, err := r.columns(ctx, r.db)
	if err != nil {
		return k, false, err
	}
	if cols == nil {
		return k, false, refused("%s is not in %s; only a retired key may be deleted", arn, r.Qualified())
	}
	err = pgx.BeginFunc(ctx, r.db, func(tx pgx.Tx) error {
		if err := lockKey(ctx, tx, arn); err != nil {
			return err
		}
		k, err = r.lockRow(ctx, tx, cols, arn)
		switch {
		case err != nil:
			return err
		case k.KeyID == "":
			return refused("%s is not in %s; only a retired key may be deleted", arn, r.Qualified())
		case k.Status != StatusRetired:
			return refused("%s is %s, not retired: retire it first (keys retire), which checks no row is under it", arn, k.Status)
		}
		if err := r.check(ctx, tx, arn, t, ""); err != nil {
			return err
		}
		var when *time.Time
		already, when, err = r.scheduleOnce(ctx, tx, deletion{api: api, arn: arn, pendingDays: pendingDays, t: t})
		if err != nil {
			return err
		}
		// Recorded even when the key was already pending: the KMS call may
		// have succeeded before a failed registry write.
		if _, ok := cols["deletion_date"]; ok {
			if _, ok := cols["deletion_scheduled_at"]; ok {
				_, err = tx.Exec(ctx, fmt.Sprintf(`
					UPDATE %s SET deletion_scheduled_at = coalesce(deletion_scheduled_at, now()), deletion_date = $2
					WHERE key_id = $1`, r.qname), k.KeyID, when)
				if err != nil {
					return fmt.Errorf("record deletion of %s (KMS has scheduled it): %w", arn, err)
				}
			}
		}
		k.DeletionDate = when
		return nil
	})
	if err != nil {
		return k, already, err
	}
	got, ok, err := r.Get(ctx, arn)
	if err == nil && ok {
		if got.DeletionDate == nil {
			got.DeletionDate = k.DeletionDate
		}
		k = got
	}
	return k, already, err
}

// deletion is ScheduleDeletion's request: the key arn, deleted through api
// after pendingDays, as long as no row of t (or of the tables the key was
// recorded for) is under it.
type deletion struct {
	api         kmsclient.KMS
	arn         string
	pendingDays int
	t           *tokentable.Table
}

// scheduleOnce makes the KMS call (unless the key is already pending) and
// counts again after it, cancelling the deletion if rows appeared.
func (r *Registry) scheduleOnce(ctx context.Context, tx pgx.Tx, d deletion) (already bool, when *time.Time, err error) {
	api, arn, pendingDays, t := d.api, d.arn, d.pendingDays, d.t
	desc, err := api.DescribeKey(ctx, &kms.DescribeKeyInput{KeyId: aws.String(arn)})
	if err != nil {
		return false, nil, kmsError("DescribeKey", arn, err)
	}
	md := desc.KeyMetadata
	if md != nil && md.KeyState == types.KeyStatePendingDeletion {
		return true, md.DeletionDate, nil
	}
	out, err := api.ScheduleKeyDeletion(ctx, &kms.ScheduleKeyDeletionInput{
		KeyId: aws.String(arn), PendingWindowInDays: aws.Int32(int32(pendingDays)),
	})
	if err != nil {
		return false, nil, kmsError("ScheduleKeyDeletion", arn, err)
	}
	after := r.check(ctx, tx, arn, t, "they appeared while KMS scheduled the deletion, which is cancelled")
	var inUse *InUseError
	if after == nil {
		return false, out.DeletionDate, nil
	}
	// Rows appeared (or the count failed): undo the call. The transaction
	// rolls back, so the registry keeps its previous state.
	if cerr := cancelDeletion(context.WithoutCancel(ctx), api, arn, md != nil && md.KeyState == types.KeyStateEnabled); cerr != nil {
		return false, nil, fmt.Errorf("%v; AND CANCELLING THE DELETION FAILED, cancel it by hand now "+
			"(aws kms cancel-key-deletion --key-id %s, then aws kms enable-key --key-id %s): %w", after, arn, arn, cerr)
	}
	if errors.As(after, &inUse) {
		return false, nil, after
	}
	return false, nil, fmt.Errorf("count after ScheduleKeyDeletion failed, so the deletion was cancelled: %w", after)
}

func cancelDeletion(ctx context.Context, api kmsclient.KMS, arn string, enable bool) error {
	if _, err := api.CancelKeyDeletion(ctx, &kms.CancelKeyDeletionInput{KeyId: aws.String(arn)}); err != nil {
		return kmsError("CancelKeyDeletion", arn, err)
	}
	if !enable {
		return nil
	}
	if _, err := api.EnableKey(ctx, &kms.EnableKeyInput{KeyId: aws.String(arn)}); err != nil {
		return kmsError("EnableKey", arn, err)
	}
	return nil
}
