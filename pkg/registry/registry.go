package registry

import (
	"context"
	"errors"
	"fmt"
	"regexp"
	"sort"
	"strconv"
	"strings"
	"time"

	"github.com/aws/smithy-go"
	"github.com/jackc/pgx/v5"

	"github.com/reencrypt/reencrypt/pkg/checkpoint"
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
	KeyID string `json:"key_id"` // as stored: the key ARN, or (runbook rows) an alias or key id
	// ARN is the key KeyID names ("" when KMS does not know it, or KMS was
	// not asked): equal to KeyID for the rows this tool writes.
	ARN string `json:"key_arn,omitempty"`
	// KeyVersion is read as text: the runbook's table holds 'v1', 'v2', ...
	KeyVersion          string     `json:"key_version"`
	Status              string     `json:"status"`
	Algorithm           string     `json:"algorithm"`
	Provider            string     `json:"provider"`
	Alias               string     `json:"alias,omitempty"`
	CreatedAt           *time.Time `json:"created_at,omitempty"`
	RetiredAt           *time.Time `json:"retired_at,omitempty"`
	DeletionScheduledAt *time.Time `json:"deletion_scheduled_at,omitempty"`
	DeletionDate        *time.Time `json:"deletion_date,omitempty"`

	unresolved error // why KeyID could not be resolved (not NotFound), if so
}

// Ref is a key as resolved from the configuration: its ARN, and the alias it
// was named by ("" when named by id or ARN).
type Ref struct {
	ARN   string
	Alias string
}

// Registry reads and writes token_encryption_keys.
type Registry struct {
	db     checkpoint.DB
	schema string
	qname  string
	guard  Guard
	res    *resolver
}

// New returns the registry in schema (the token table's schema).
func New(db checkpoint.DB, schema string) *Registry {
	return &Registry{db: db, schema: schema, qname: pgx.Identifier{schema, Table}.Sanitize(), res: newResolver(nil)}
}

// WithGuard sets what the key-deletion guard and the resolution of key_ids
// that are not ARNs need. Without it, only ARNs resolve and only the
// configured table is counted.
func (r *Registry) WithGuard(g Guard) *Registry {
	r.guard = g
	r.res = newResolver(g.KMS)
	return r
}

// Qualified is "schema.token_encryption_keys", for messages.
func (r *Registry) Qualified() string { return r.schema + "." + Table }

func refused(format string, args ...any) error {
	return fmt.Errorf("%w: %s", ErrRefused, fmt.Sprintf(format, args...))
}

// required are the runbook's columns. The others this tool's own table has
// (alias, deletion_scheduled_at, deletion_date) are used when present and
// never added: the runbook's table is not altered.
var required = []string{"key_id", "key_version", "status", "algorithm", "provider", "retired_at"}

// columns returns the registry's columns and their types, or nil when the
// table does not exist.
func (r *Registry) columns(ctx context.Context, q checkpoint.DB) (map[string]string, error) {
	rows, err := q.Query(ctx, `
		SELECT attname, format_type(atttypid, atttypmod) FROM pg_attribute
		WHERE attrelid = to_regclass($1) AND attnum > 0 AND NOT attisdropped`, r.qname)
	if err != nil {
		return nil, fmt.Errorf("inspect %s: %w", r.Qualified(), err)
	}
	defer rows.Close()
	var cols map[string]string
	for rows.Next() {
		var name, typ string
		if err := rows.Scan(&name, &typ); err != nil {
			return nil, err
		}
		if cols == nil {
			cols = map[string]string{}
		}
		cols[name] = typ
	}
	return cols, rows.Err()
}

// ensure creates the table if absent, or checks that an existing one has the
// runbook's columns. It never alters an existing table. It runs inside the
// writer's transaction.
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
		if _, ok := cols[c]; !ok {
			missing = append(missing, c)
		}
	}
	if len(missing) > 0 {
		return refused("%s exists but has no column %s; the registry needs %s",
			r.Qualified(), strings.Join(missing, ", "), strings.Join(required, ", "))
	}
	return nil
}

// txDB lets the helpers that take a checkpoint.DB run inside a transaction.
type txDB struct{ pgx.Tx }

func (t txDB) Begin(ctx context.Context) (pgx.Tx, error) { return t.Tx.Begin(ctx) }

// selectList reads every column, NULL for the optional ones a hand-made
// table does not have.
func selectList(cols map[string]string) string {
	opt := func(name, typ string) string {
		if _, ok := cols[name]; ok {
			return pgx.Identifier{name}.Sanitize() + "::" + typ
		}
		return "NULL::" + typ
	}
	return strings.Join([]string{"key_id::text", "coalesce(key_version::text, '')", "status::text", "coalesce(algorithm::text, '')",
		"coalesce(provider::text, '')", "coalesce(" + opt("alias", "text") + ", '')", opt("created_at", "timestamptz"),
		"retired_at::timestamptz", opt("deletion_scheduled_at", "timestamptz"), opt("deletion_date", "timestamptz")}, ", ")
}

// loading is which rows load reads (where, with its args; all when empty)
// and how: strict makes a failed resolution an error; otherwise the row's
// ARN stays "" and the error is kept on the row (see lookup).
type loading struct {
	strict bool
	where  string
	args   []any
}

// load reads rows and resolves each key_id to the ARN it names.
func (r *Registry) load(ctx context.Context, q checkpoint.DB, cols map[string]string, l loading) ([]Key, error) {
	strict := l.strict
	rows, err := q.Query(ctx, fmt.Sprintf(`SELECT %s FROM %s %s`, selectList(cols), r.qname, l.where), l.args...)
	if err != nil {
		return nil, fmt.Errorf("read %s: %w", r.Qualified(), err)
	}
	var out []Key
	for rows.Next() {
		var k Key
		if err := rows.Scan(&k.KeyID, &k.KeyVersion, &k.Status, &k.Algorithm, &k.Provider, &k.Alias,
			&k.CreatedAt, &k.RetiredAt, &k.DeletionScheduledAt, &k.DeletionDate); err != nil {
			rows.Close()
			return nil, fmt.Errorf("read %s: %w", r.Qualified(), err)
		}
		out = append(out, k)
	}
	rows.Close()
	if err := rows.Err(); err != nil {
		return nil, fmt.Errorf("read %s: %w", r.Qualified(), err)
	}
	for i := range out {
		arn, _, err := r.res.ARN(ctx, out[i].KeyID)
		if err != nil {
			err = fmt.Errorf("%s: key_id %q: %w", r.Qualified(), out[i].KeyID, err)
			if strict {
				return nil, err
			}
		}
		out[i].ARN, out[i].unresolved = arn, err
	}
	sort.SliceStable(out, func(i, j int) bool {
		a, b := versionNumber(out[i].KeyVersion), versionNumber(out[j].KeyVersion)
		if a != b {
			return a < b
		}
		return out[i].KeyID < out[j].KeyID
	})
	return out, nil
}

// List returns every key, oldest version first. exists is false (and the
// list empty) when the table has not been created yet: List never creates it.
// A key_id KMS cannot resolve now is listed with an empty ARN.
func (r *Registry) List(ctx context.Context) (keys []Key, exists bool, err error) {
	cols, err := r.columns(ctx, r.db)
	if err != nil || cols == nil {
		return nil, false, err
	}
	keys, err = r.load(ctx, r.db, cols, loading{})
	return keys, true, err
}

// Get returns the row naming the key arn (by ARN, key id or an alias that
// points at it today).
func (r *Registry) Get(ctx context.Context, arn string) (Key, bool, error) {
	cols, err := r.columns(ctx, r.db)
	if err != nil || cols == nil {
		return Key{}, false, err
	}
	keys, err := r.load(ctx, r.db, cols, loading{})
	if err != nil {
		return Key{}, false, err
	}
	k, err := r.lookup(keys, arn)
	return k, err == nil && k.KeyID != "", err
}

// lookup is find for retire and schedule-deletion: a row whose key_id KMS
// would not resolve (access denied to an old key's alias) does not stop them
// when another row names the key; with none, that error is returned.
// (Begin stays strict: it must know every active or rotating row.)
func (r *Registry) lookup(keys []Key, arn string) (Key, error) {
	k, err := r.find(keys, arn)
	if err != nil || k.KeyID != "" {
		return k, err
	}
	for _, key := range keys {
		if key.unresolved != nil {
			return Key{}, key.unresolved
		}
	}
	return Key{}, nil
}

// find returns the one row naming arn (a zero Key when none); two rows
// naming the same key are refused rather than guessed between.
func (r *Registry) find(keys []Key, arn string) (Key, error) {
	var found []Key
	for _, k := range keys {
		if k.ARN == arn {
			found = append(found, k)
		}
	}
	switch len(found) {
	case 0:
		return Key{}, nil
	case 1:
		return found[0], nil
	}
	ids := make([]string, len(found))
	for i, k := range found {
		ids[i] = fmt.Sprintf("%q (version %s, %s)", k.KeyID, k.KeyVersion, k.Status)
	}
	return Key{}, refused("%s has %d rows naming key %s: %s; keep one of them", r.Qualified(), len(found), arn, strings.Join(ids, ", "))
}

// Begin records the start of a rotation from old to new in one transaction:
// old becomes rotating and new active, each inserted (with the next
// key_version) when no row names it yet. It is idempotent, and it also records
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
		keys, err := r.load(ctx, txDB{tx}, cols, loading{strict: true})
		if err != nil {
			return err
		}
		o, err := r.find(keys, old.ARN)
		if err != nil {
			return err
		}
		n, err := r.find(keys, new.ARN)
		if err != nil {
			return err
		}
		for _, k := range keys {
			if k.ARN != old.ARN && k.ARN != new.ARN && (k.Status == StatusActive || k.Status == StatusRotating) {
				return refused("%s is %s in %s, and it is neither OLD_KEY_ID (%s) nor NEW_KEY_ID (%s): "+
					"finish that rotation (keys retire) or set OLD_KEY_ID to the active key", k.KeyID, k.Status, r.Qualified(), old.ARN, new.ARN)
			}
		}
		if o.Status == StatusRetired {
			return refused("OLD_KEY_ID %s is retired: a rotation starts from the active key", old.ARN)
		}
		if n.Status == StatusRetired {
			return refused("NEW_KEY_ID %s is retired: a retired key is not made active again", new.ARN)
		}
		if o.Status == StatusRotating && n.Status == StatusActive {
			return nil // already begun
		}
		changed = true
		w := writer{r: r, tx: tx, cols: cols, keys: keys}
		// OLD first: at most one key is active at any moment.
		if err := w.mark(ctx, o, old, StatusRotating); err != nil {
			return err
		}
		return w.mark(ctx, n, new, StatusActive)
	})
	return changed, err
}

// writer writes Begin's rows with the columns and the patterns the table
// already has.
type writer struct {
	r    *Registry
	tx   pgx.Tx
	cols map[string]string
	keys []Key
}

// mark sets the status of the row naming ref (row, when it exists) or
// inserts one with the next version. A row that named the key by alias or
// key id gets its key ARN as key_id: the runbook's switch step moves the
// alias to NEW, after which the alias would name the wrong key.
func (w *writer) mark(ctx context.Context, row Key, ref Ref, status string) error {
	if row.KeyID == "" {
		return w.insert(ctx, ref, status)
	}
	set := []string{"status = $2", "key_id = $3"}
	args := []any{row.KeyID, status, ref.ARN}
	if _, ok := w.cols["alias"]; ok {
		alias := ref.Alias
		if alias == "" && !IsKeyARN(row.KeyID) && strings.Contains(row.KeyID, "alias/") {
			alias = row.KeyID
		}
		set = append(set, "alias = coalesce($4, alias)")
		args = append(args, nullIfEmpty(alias))
	}
	_, err := w.tx.Exec(ctx, fmt.Sprintf(`UPDATE %s SET %s WHERE key_id = $1`, w.r.qname, strings.Join(set, ", ")), args...)
	if err != nil {
		return fmt.Errorf("mark %s %s: %w", ref.ARN, status, err)
	}
	return nil
}

func (w *writer) insert(ctx context.Context, k Ref, status string) error {
	versions := make([]string, len(w.keys))
	for i, key := range w.keys {
		versions[i] = key.KeyVersion
	}
	version := NextVersion(versions, isTextType(w.cols["key_version"]))
	names := []string{"key_id", "key_version", "status", "algorithm", "provider"}
	args := []any{k.ARN, version, status, w.pattern(func(k Key) string { return k.Algorithm }, Algorithm),
		w.pattern(func(k Key) string { return k.Provider }, Provider)}
	if _, ok := w.cols["alias"]; ok {
		names = append(names, "alias")
		args = append(args, nullIfEmpty(k.Alias))
	}
	ph := make([]string, len(args))
	for i := range ph {
		ph[i] = fmt.Sprintf("$%d", i+1)
	}
	// The version is sent as text and cast to the column's own type.
	ph[1] = "$2::text::" + w.cols["key_version"]
	_, err := w.tx.Exec(ctx, fmt.Sprintf(`INSERT INTO %s (%s) VALUES (%s)`, w.r.qname, strings.Join(names, ", "), strings.Join(ph, ", ")), args...)
	if err != nil {
		return fmt.Errorf("record %s as %s: %w", k.ARN, status, err)
	}
	w.keys = append(w.keys, Key{KeyID: k.ARN, ARN: k.ARN, KeyVersion: version, Status: status})
	return nil
}

// pattern returns the value the existing rows agree on (the runbook writes
// provider 'aws_kms'), or def when they are none or disagree.
func (w *writer) pattern(field func(Key) string, def string) string {
	v := ""
	for _, k := range w.keys {
		switch f := field(k); {
		case f == "":
		case v == "":
			v = f
		case v != f:
			return def
		}
	}
	if v == "" {
		return def
	}
	return v
}

var versionRE = regexp.MustCompile(`^(.*?)([0-9]+)$`)

// versionNumber is the trailing number of a version ("v12" → 12), -1 when
// there is none.
func versionNumber(v string) int64 {
	m := versionRE.FindStringSubmatch(strings.TrimSpace(v))
	if m == nil {
		return -1
	}
	n, err := strconv.ParseInt(m[2], 10, 64)
	if err != nil {
		return -1
	}
	return n
}

// NextVersion continues the versions' pattern: the version with the
// highest trailing number gives the prefix, and the number goes up by one
// (1, 2 → 3; 'v1', 'v2' → 'v3'; 'key-7' → 'key-8'). Versions with no
// trailing number are ignored. With none to continue, it is 1, or 'v1' in
// a text column (the runbook's pattern).
func NextVersion(versions []string, text bool) string {
	best, prefix := int64(-1), ""
	for _, v := range versions {
		m := versionRE.FindStringSubmatch(strings.TrimSpace(v))
		if m == nil {
			continue
		}
		if n := versionNumber(v); n > best {
			best, prefix = n, m[1]
		}
	}
	if best < 0 {
		if text {
			return "v1"
		}
		return "1"
	}
	return prefix + strconv.FormatInt(best+1, 10)
}

func isTextType(t string) bool {
	return t == "text" || strings.HasPrefix(t, "character")
}

func nullIfEmpty(s string) *string {
	if s == "" {
		return nil
	}
	return &s
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
