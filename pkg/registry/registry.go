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
	"github.com/aws/smithy-go"
	"github.com/jackc/pgx/v5"

	"github.com/reencrypt/reencrypt/pkg/batch"
	"github.com/reencrypt/reencrypt/pkg/census"
	"github.com/reencrypt/reencrypt/pkg/kmsclient"
)

// Table is the registry's table name, in the token table's schema.
const Table = "token_encryption_keys"

// Key statuses.
const (
	StatusActive   = "active"   // new tokens are written under it
	StatusRotating = "rotating" // being rotated away from; tokens may still be under it
	StatusRetired  = "retired"  // no token is under it
)

// What the registry records for every key this tool manages.
const (
	Algorithm = "AES-256-GCM" // the envelope's data-key cipher
	Provider  = "aws-kms"
)

// Pending window limits of KMS ScheduleKeyDeletion, in days.
const (
	MinPendingDays = 7
	MaxPendingDays = 30
)

var (
	// ErrInUse: rows of the token table are still under the key.
	ErrInUse = errors.New("key still protects rows")
	// ErrRefused: the registry's state (or the request) does not allow the
	// change; the message says what to do first.
	ErrRefused = errors.New("refused by the key registry")
)

// Key is one row of the registry.
type Key struct {
	KeyID               string     `json:"key_id"` // the key ARN
	KeyVersion          int64      `json:"key_version"`
	Status              string     `json:"status"`
	Algorithm           string     `json:"algorithm"`
	Provider            string     `json:"provider"`
	Alias               string     `json:"alias,omitempty"`
	CreatedAt           *time.Time `json:"created_at,omitempty"`
	RetiredAt           *time.Time `json:"retired_at,omitempty"`
	DeletionScheduledAt *time.Time `json:"deletion_scheduled_at,omitempty"`
	DeletionDate        *time.Time `json:"deletion_date,omitempty"`
}

// Ref is a key as resolved from the configuration: its ARN, and the alias it
// was named by ("" when named by id or ARN).
type Ref struct {
	ARN   string
	Alias string
}

// Registry reads and writes token_encryption_keys.
type Registry struct {
	db     batch.DB
	schema string
	qname  string
}

// New returns the registry in schema (the token table's schema).
func New(db batch.DB, schema string) *Registry {
	return &Registry{db: db, schema: schema, qname: pgx.Identifier{schema, Table}.Sanitize()}
}

// Qualified is "schema.token_encryption_keys", for messages.
func (r *Registry) Qualified() string { return r.schema + "." + Table }

func refused(format string, args ...any) error {
	return fmt.Errorf("%w: %s", ErrRefused, fmt.Sprintf(format, args...))
}

var (
	required = []string{"key_id", "key_version", "status", "algorithm", "provider", "retired_at"}
	optional = []struct{ name, ddl string }{
		{"alias", "text"},
		{"created_at", "timestamptz DEFAULT now()"},
		{"deletion_scheduled_at", "timestamptz"},
		{"deletion_date", "timestamptz"},
	}
)

// columns returns the registry's column names, or nil when the table does
// not exist.
func (r *Registry) columns(ctx context.Context, q batch.DB) (map[string]bool, error) {
	rows, err := q.Query(ctx, `
		SELECT attname FROM pg_attribute
		WHERE attrelid = to_regclass($1) AND attnum > 0 AND NOT attisdropped`, r.qname)
	if err != nil {
		return nil, fmt.Errorf("inspect %s: %w", r.Qualified(), err)
	}
	defer rows.Close()
	var cols map[string]bool
	for rows.Next() {
		var name string
		if err := rows.Scan(&name); err != nil {
			return nil, err
		}
		if cols == nil {
			cols = map[string]bool{}
		}
		cols[name] = true
	}
	return cols, rows.Err()
}

// ensure creates the table if absent, or checks a hand-made one and adds
// the optional columns it lacks. It runs inside the writer's transaction.
func (r *Registry) ensure(ctx context.Context, tx pgx.Tx) error {
	// CREATE ... IF NOT EXISTS races on the catalog between two callers.
	if _, err := tx.Exec(ctx, `SELECT pg_advisory_xact_lock(hashtext('reencrypt.registry'))`); err != nil {
		return err
	}
	cols, err := r.columns(ctx, txDB{tx})
	if err != nil {
		return err
	}
	if cols == nil {
		_, err := tx.Exec(ctx, fmt.Sprintf(`
			CREATE TABLE %[1]s (
				key_id                text PRIMARY KEY,
				key_version           integer NOT NULL,
				status                text NOT NULL CHECK (status IN ('active', 'rotating', 'retired')),
				algorithm             text NOT NULL,
				provider              text NOT NULL,
				alias                 text,
				created_at            timestamptz NOT NULL DEFAULT now(),
				retired_at            timestamptz,
				deletion_scheduled_at timestamptz,
				deletion_date         timestamptz
			);
			CREATE UNIQUE INDEX %[2]s ON %[1]s (status) WHERE status = 'active';`,
			r.qname, pgx.Identifier{Table + "_one_active"}.Sanitize()))
		if err != nil {
			return fmt.Errorf("create %s: %w", r.Qualified(), err)
		}
		return nil
	}
	var missing []string
	for _, c := range required {
		if !cols[c] {
			missing = append(missing, c)
		}
	}
	if len(missing) > 0 {
		return refused("%s exists but has no column %s; the registry needs %s",
			r.Qualified(), strings.Join(missing, ", "), strings.Join(required, ", "))
	}
	for _, c := range optional {
		if cols[c.name] {
			continue
		}
		// Only when missing: ALTER TABLE takes an exclusive lock, and the live
		// API may read this table. lock_timeout keeps a queue from forming.
		if _, err := tx.Exec(ctx, `SET LOCAL lock_timeout = '5s'`); err != nil {
			return err
		}
		if _, err := tx.Exec(ctx, fmt.Sprintf(`ALTER TABLE %s ADD COLUMN IF NOT EXISTS %s %s`,
			r.qname, pgx.Identifier{c.name}.Sanitize(), c.ddl)); err != nil {
			return fmt.Errorf("add column %s to %s: %w", c.name, r.Qualified(), err)
		}
	}
	return nil
}

// txDB lets the helpers that take a batch.DB run inside a transaction.
type txDB struct{ pgx.Tx }

func (t txDB) Begin(ctx context.Context) (pgx.Tx, error) { return t.Tx.Begin(ctx) }

// selectList reads every column, NULL for the optional ones a hand-made
// table does not have (list never alters the table).
func selectList(cols map[string]bool) string {
	opt := func(name, typ string) string {
		if cols[name] {
			return pgx.Identifier{name}.Sanitize() + "::" + typ
		}
		return "NULL::" + typ
	}
	return strings.Join([]string{"key_id::text", "key_version::bigint", "status::text", "coalesce(algorithm::text, '')",
		"coalesce(provider::text, '')", "coalesce(" + opt("alias", "text") + ", '')", opt("created_at", "timestamptz"),
		"retired_at::timestamptz", opt("deletion_scheduled_at", "timestamptz"), opt("deletion_date", "timestamptz")}, ", ")
}

func (r *Registry) load(ctx context.Context, q batch.DB, cols map[string]bool, where string, args ...any) ([]Key, error) {
	rows, err := q.Query(ctx, fmt.Sprintf(`SELECT %s FROM %s %s ORDER BY key_version, key_id`, selectList(cols), r.qname, where), args...)
	if err != nil {
		return nil, fmt.Errorf("read %s: %w", r.Qualified(), err)
	}
	defer rows.Close()
	var out []Key
	for rows.Next() {
		var k Key
		if err := rows.Scan(&k.KeyID, &k.KeyVersion, &k.Status, &k.Algorithm, &k.Provider, &k.Alias,
			&k.CreatedAt, &k.RetiredAt, &k.DeletionScheduledAt, &k.DeletionDate); err != nil {
			return nil, fmt.Errorf("read %s: %w", r.Qualified(), err)
		}
		out = append(out, k)
	}
	return out, rows.Err()
}

// List returns every key, oldest version first. exists is false (and the
// list empty) when the table has not been created yet: List never creates it.
func (r *Registry) List(ctx context.Context) (keys []Key, exists bool, err error) {
	cols, err := r.columns(ctx, r.db)
	if err != nil || cols == nil {
		return nil, false, err
	}
	keys, err = r.load(ctx, r.db, cols, "")
	return keys, true, err
}

// Get returns one key by ARN.
func (r *Registry) Get(ctx context.Context, arn string) (Key, bool, error) {
	cols, err := r.columns(ctx, r.db)
	if err != nil || cols == nil {
		return Key{}, false, err
	}
	keys, err := r.load(ctx, r.db, cols, "WHERE key_id = $1", arn)
	if err != nil || len(keys) == 0 {
		return Key{}, false, err
	}
	return keys[0], true, nil
}

// Begin records the start of a rotation from old to new in one transaction:
// old becomes rotating and new active, each inserted (with the next
// key_version) when not yet recorded. It is idempotent, and it also records
// a rollback (the same call with the keys swapped). It refuses when a key is
// retired or when a third key is active or rotating (another rotation is in
// flight). changed is false when the registry already said so.
func (r *Registry) Begin(ctx context.Context, old, new Ref) (changed bool, err error) {
	if old.ARN == "" || new.ARN == "" || old.ARN == new.ARN {
		return false, refused("begin needs two different keys (got %q and %q)", old.ARN, new.ARN)
	}
	err = pgx.BeginFunc(ctx, r.db, func(tx pgx.Tx) error {
		if err := r.ensure(ctx, tx); err != nil {
			return err
		}
		// Serialise writers of the registry; readers (the live API) go on.
		if _, err := tx.Exec(ctx, fmt.Sprintf(`LOCK TABLE %s IN SHARE ROW EXCLUSIVE MODE`, r.qname)); err != nil {
			return fmt.Errorf("lock %s: %w", r.Qualified(), err)
		}
		cols, err := r.columns(ctx, txDB{tx})
		if err != nil {
			return err
		}
		keys, err := r.load(ctx, txDB{tx}, cols, "")
		if err != nil {
			return err
		}
		var o, n *Key
		var maxVersion int64
		for i := range keys {
			k := &keys[i]
			maxVersion = max(maxVersion, k.KeyVersion)
			switch k.KeyID {
			case old.ARN:
				o = k
			case new.ARN:
				n = k
			default:
				if k.Status == StatusActive || k.Status == StatusRotating {
					return refused("%s is %s in %s, and it is neither OLD_KEY_ID (%s) nor NEW_KEY_ID (%s): "+
						"finish that rotation (keys retire) or set OLD_KEY_ID to the active key", k.KeyID, k.Status, r.Qualified(), old.ARN, new.ARN)
				}
			}
		}
		if o != nil && o.Status == StatusRetired {
			return refused("OLD_KEY_ID %s is retired: a rotation starts from the active key", old.ARN)
		}
		if n != nil && n.Status == StatusRetired {
			return refused("NEW_KEY_ID %s is retired: a retired key is not made active again", new.ARN)
		}
		if o != nil && o.Status == StatusRotating && n != nil && n.Status == StatusActive {
			return nil // already begun
		}
		changed = true
		// OLD first: at most one key is active at any moment.
		if o == nil {
			maxVersion++
			if err := r.insert(ctx, tx, cols, old, maxVersion, StatusRotating); err != nil {
				return err
			}
		} else if err := r.setStatus(ctx, tx, cols, old, StatusRotating); err != nil {
			return err
		}
		if n == nil {
			maxVersion++
			return r.insert(ctx, tx, cols, new, maxVersion, StatusActive)
		}
		return r.setStatus(ctx, tx, cols, new, StatusActive)
	})
	return changed, err
}

func (r *Registry) insert(ctx context.Context, tx pgx.Tx, cols map[string]bool, k Ref, version int64, status string) error {
	names := []string{"key_id", "key_version", "status", "algorithm", "provider"}
	args := []any{k.ARN, version, status, Algorithm, Provider}
	if cols["alias"] {
		names = append(names, "alias")
		args = append(args, nullIfEmpty(k.Alias))
	}
	ph := make([]string, len(args))
	for i := range ph {
		ph[i] = fmt.Sprintf("$%d", i+1)
	}
	_, err := tx.Exec(ctx, fmt.Sprintf(`INSERT INTO %s (%s) VALUES (%s)`, r.qname, strings.Join(names, ", "), strings.Join(ph, ", ")), args...)
	if err != nil {
		return fmt.Errorf("record %s as %s: %w", k.ARN, status, err)
	}
	return nil
}

func (r *Registry) setStatus(ctx context.Context, tx pgx.Tx, cols map[string]bool, k Ref, status string) error {
	var err error
	if cols["alias"] {
		_, err = tx.Exec(ctx, fmt.Sprintf(`UPDATE %s SET status = $2, alias = coalesce($3, alias) WHERE key_id = $1`, r.qname),
			k.ARN, status, nullIfEmpty(k.Alias))
	} else {
		_, err = tx.Exec(ctx, fmt.Sprintf(`UPDATE %s SET status = $2 WHERE key_id = $1`, r.qname), k.ARN, status)
	}
	if err != nil {
		return fmt.Errorf("mark %s %s: %w", k.ARN, status, err)
	}
	return nil
}

func nullIfEmpty(s string) *string {
	if s == "" {
		return nil
	}
	return &s
}

// InUseError says how many rows are still under a key.
type InUseError struct {
	KeyARN string
	Table  string
	Rows   int64
}

func (e *InUseError) Error() string {
	return fmt.Sprintf("%d rows of %s are still under %s", e.Rows, e.Table, e.KeyARN)
}

func (e *InUseError) Is(target error) bool { return target == ErrInUse }

// checkUnused counts the rows of t under arn (every envelope parsed) and
// returns an *InUseError when there is any.
func checkUnused(ctx context.Context, db batch.DB, t *batch.Table, arn string) error {
	n, err := census.RowsUnder(ctx, db, t, arn)
	if err != nil {
		return fmt.Errorf("count rows under %s: %w", arn, err)
	}
	if n > 0 {
		return &InUseError{KeyARN: arn, Table: t.Qualified(), Rows: n}
	}
	return nil
}

// Retire marks a rotating key retired, after checking that no row of t is
// under it. already is true when it was retired before.
func (r *Registry) Retire(ctx context.Context, arn string, t *batch.Table) (k Key, already bool, err error) {
	k, ok, err := r.Get(ctx, arn)
	switch {
	case err != nil:
		return k, false, err
	case !ok:
		return k, false, refused("%s is not in %s (keys begin records it)", arn, r.Qualified())
	case k.Status == StatusRetired:
		return k, true, nil
	case k.Status == StatusActive:
		return k, false, refused("%s is the active key: begin a rotation away from it, run it, then retire it", arn)
	case k.Status != StatusRotating:
		return k, false, refused("%s has status %q; only a rotating key is retired", arn, k.Status)
	}
	if err := checkUnused(ctx, r.db, t, arn); err != nil {
		return k, false, err
	}
	err = pgx.BeginFunc(ctx, r.db, func(tx pgx.Tx) error {
		if err := r.ensure(ctx, tx); err != nil {
			return err
		}
		tag, err := tx.Exec(ctx, fmt.Sprintf(`UPDATE %s SET status = 'retired', retired_at = now() WHERE key_id = $1 AND status = 'rotating'`, r.qname), arn)
		if err != nil {
			return fmt.Errorf("retire %s: %w", arn, err)
		}
		if tag.RowsAffected() != 1 {
			return refused("%s changed status meanwhile; look again with keys list", arn)
		}
		return nil
	})
	if err != nil {
		return k, false, err
	}
	k, _, err = r.Get(ctx, arn)
	return k, false, err
}

// ScheduleDeletion asks KMS to delete a retired key after pendingDays (7 to
// 30), after checking again that no row of t is under it, and records it.
// A key KMS already has pending deletion is recorded, not scheduled again;
// already is true then.
func (r *Registry) ScheduleDeletion(ctx context.Context, api kmsclient.KMS, arn string, pendingDays int, t *batch.Table) (k Key, already bool, err error) {
	if pendingDays < MinPendingDays || pendingDays > MaxPendingDays {
		return k, false, refused("--pending-days %d: KMS accepts %d to %d", pendingDays, MinPendingDays, MaxPendingDays)
	}
	k, ok, err := r.Get(ctx, arn)
	switch {
	case err != nil:
		return k, false, err
	case !ok:
		return k, false, refused("%s is not in %s; only a retired key may be deleted", arn, r.Qualified())
	case k.Status != StatusRetired:
		return k, false, refused("%s is %s, not retired: retire it first (keys retire), which checks no row is under it", arn, k.Status)
	}
	if err := checkUnused(ctx, r.db, t, arn); err != nil {
		return k, false, err
	}
	if err := pgx.BeginFunc(ctx, r.db, func(tx pgx.Tx) error { return r.ensure(ctx, tx) }); err != nil {
		return k, false, err
	}
	desc, err := api.DescribeKey(ctx, &kms.DescribeKeyInput{KeyId: aws.String(arn)})
	if err != nil {
		return k, false, kmsError("DescribeKey", arn, err)
	}
	var when *time.Time
	if md := desc.KeyMetadata; md != nil && md.KeyState == types.KeyStatePendingDeletion {
		already, when = true, md.DeletionDate
	} else {
		out, err := api.ScheduleKeyDeletion(ctx, &kms.ScheduleKeyDeletionInput{
			KeyId: aws.String(arn), PendingWindowInDays: aws.Int32(int32(pendingDays)),
		})
		if err != nil {
			return k, false, kmsError("ScheduleKeyDeletion", arn, err)
		}
		when = out.DeletionDate
	}
	// Recorded even when the key was already pending: the KMS call may have
	// succeeded before a failed registry write.
	_, err = r.db.Exec(ctx, fmt.Sprintf(`
		UPDATE %s SET deletion_scheduled_at = coalesce(deletion_scheduled_at, now()), deletion_date = $2
		WHERE key_id = $1`, r.qname), arn, when)
	if err != nil {
		return k, already, fmt.Errorf("record deletion of %s (KMS has scheduled it): %w", arn, err)
	}
	k, _, err = r.Get(ctx, arn)
	return k, already, err
}

// kmsError classifies a KMS failure the way kmsclient does, so that
// errors.Is(err, kmsclient.ErrKeyUnusable) holds for access denied and the like.
func kmsError(op, arn string, err error) error {
	e := &kmsclient.Error{Op: op, KeyARN: arn, Err: err}
	var ae smithy.APIError
	if errors.As(err, &ae) {
		e.Code = ae.ErrorCode()
	}
	return e
}
