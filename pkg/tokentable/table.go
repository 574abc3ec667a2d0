package tokentable

import (
	"context"
	"errors"
	"fmt"

	"github.com/jackc/pgx/v5"
)

// Querier reads; *pgxpool.Pool, *pgx.Conn and pgx.Tx fit.
type Querier interface {
	Query(ctx context.Context, sql string, args ...any) (pgx.Rows, error)
	QueryRow(ctx context.Context, sql string, args ...any) pgx.Row
}

// ErrConfig marks a table or column the configuration names wrongly, or
// one the engine cannot page: retrying will not help, a human must fix it.
// batch.ErrConfig is this same error.
var ErrConfig = errors.New("configuration refused")

type configError struct{ msg string }

func (e *configError) Error() string        { return e.msg }
func (e *configError) Is(target error) bool { return target == ErrConfig }

func configErrorf(format string, args ...any) error {
	return &configError{msg: fmt.Sprintf(format, args...)}
}

// Spec names the token table and its audit table as configured.
type Spec struct {
	Schema        string // default "public"
	Name          string // default "payment_methods"
	IDColumn      string // default "id"
	TokenColumn   string // default "encrypted_token"
	AuditTable    string // default "payment_method_audit", in Schema
	AuditIDColumn string // default "payment_method_id"
}

// Table is a Spec checked against the database, with its identifiers
// quoted for SQL. Only Inspect builds one.
type Table struct {
	Spec   Spec
	IDType string // "uuid", "bigint" or "integer"

	qname, qid, qtoken string // quoted table, id column, token column
	qaudit, qauditID   string
	read               reads // keyset statements (read.go)
}

// Qualified is "schema.table" as configured, for messages and run ids.
func (t *Table) Qualified() string { return t.Spec.Schema + "." + t.Spec.Name }

// QuotedName is the quoted, schema-qualified table name.
func (t *Table) QuotedName() string { return t.qname }

// QuotedID is the quoted id column.
func (t *Table) QuotedID() string { return t.qid }

// QuotedToken is the quoted token column.
func (t *Table) QuotedToken() string { return t.qtoken }

// QuotedAudit is the quoted, schema-qualified audit table name.
func (t *Table) QuotedAudit() string { return t.qaudit }

// QuotedAuditID is the quoted id column of the audit table.
func (t *Table) QuotedAuditID() string { return t.qauditID }

func quote(parts ...string) string { return pgx.Identifier(parts).Sanitize() }

// Inspect checks that the configured tables and columns exist with the types
// the engine needs, and refuses (ErrConfig) before any write otherwise; a
// refusal a setting explains is a *FieldError naming it. The
// id column must be NOT NULL with a valid unique index (a primary key is
// both): the keyset cursor reads every row only then. It requires nothing to
// be created or migrated in the user's schema.
func Inspect(ctx context.Context, db Querier, spec Spec) (*Table, error) {
	t := &Table{Spec: spec}
	cols, err := columns(ctx, db, spec.Schema, spec.Name)
	if err != nil {
		return nil, err
	}
	idType, ok := cols[spec.IDColumn]
	if !ok {
		return nil, fieldError(configErrorf("table %s.%s has no column %q", spec.Schema, spec.Name, spec.IDColumn), FieldIDColumn)
	}
	switch idType {
	case "uuid", "bigint", "integer":
		t.IDType = idType
	default:
		return nil, configErrorf("id column %q of %s.%s is %s; reencrypt pages by uuid, bigint or integer ids",
			spec.IDColumn, spec.Schema, spec.Name, idType)
	}
	tokType, ok := cols[spec.TokenColumn]
	if !ok {
		return nil, fieldError(configErrorf("table %s.%s has no column %q", spec.Schema, spec.Name, spec.TokenColumn), FieldTokenColumn)
	}
	if tokType != "bytea" {
		return nil, configErrorf("token column %q of %s.%s is %s, not bytea", spec.TokenColumn, spec.Schema, spec.Name, tokType)
	}
	t.qname = quote(spec.Schema, spec.Name)
	t.qid = quote(spec.IDColumn)
	t.qtoken = quote(spec.TokenColumn)
	t.read = newReads(t)

	var unique, notNull bool
	err = db.QueryRow(ctx, `
		SELECT EXISTS (
			SELECT 1 FROM pg_index i
			WHERE i.indrelid = a.attrelid AND i.indkey[0] = a.attnum AND i.indisunique AND i.indisvalid
			  AND i.indnkeyatts = 1 AND i.indpred IS NULL), a.attnotnull
		FROM pg_attribute a WHERE a.attrelid = $1::regclass AND a.attname = $2`, t.qname, spec.IDColumn).Scan(&unique, &notNull)
	if err != nil {
		return nil, fmt.Errorf("inspect indexes of %s: %w", t.Qualified(), err)
	}
	if !unique {
		return nil, configErrorf("id column %q of %s has no unique index; keyset pagination needs one", spec.IDColumn, t.Qualified())
	}

	acols, err := columns(ctx, db, spec.Schema, spec.AuditTable)
	if err != nil {
		return nil, err
	}
	want := map[string]string{spec.AuditIDColumn: idType, "action": "text", "actor_type": "text", "details": "jsonb"}
	for col, typ := range want {
		got, ok := acols[col]
		if !ok {
			return nil, configErrorf("audit table %s.%s has no column %q", spec.Schema, spec.AuditTable, col)
		}
		if got != typ && !(typ == "text" && got == "character varying") {
			return nil, configErrorf("audit column %q of %s.%s is %s, want %s", col, spec.Schema, spec.AuditTable, got, typ)
		}
	}
	t.qaudit = quote(spec.Schema, spec.AuditTable)
	t.qauditID = quote(spec.AuditIDColumn)
	if !notNull {
		// Last, so that every other refusal comes first and t is complete.
		return t, fieldError(&NullableIDError{Table: t.Qualified(), Column: spec.IDColumn}, FieldIDColumn)
	}
	return t, nil
}

// NullableIDError refuses an id column that allows NULL: the keyset cursor
// (id > $1) never reads a row whose id is NULL, so a run could exit 0 with
// such a row still under OLD. It is ErrConfig. Inspect returns it (in a
// FieldError naming the id column) with a complete Table, so that plan can
// still count the table and show why.
type NullableIDError struct {
	Table  string // schema.table
	Column string
}

func (e *NullableIDError) Error() string {
	return fmt.Sprintf("id column %q of %s allows NULL: rows with a NULL id are never read by the keyset cursor "+
		"and would stay under the old key; give every row an id and run ALTER TABLE %s ALTER COLUMN %s SET NOT NULL, "+
		"or use the primary key as the id column (reencrypt plan counts the rows with a NULL id)",
		e.Column, e.Table, e.Table, quote(e.Column))
}

func (e *NullableIDError) Is(target error) bool { return target == ErrConfig }

// columns maps column name to its SQL type for a table, or ErrConfig when the
// table does not exist.
func columns(ctx context.Context, db Querier, schema, name string) (map[string]string, error) {
	var oid *uint32
	err := db.QueryRow(ctx, `SELECT to_regclass($1)::oid`, quote(schema, name)).Scan(&oid)
	if err != nil {
		return nil, fmt.Errorf("look up table %s.%s: %w", schema, name, err)
	}
	if oid == nil {
		return nil, fieldError(configErrorf("table %s.%s does not exist", schema, name),
			FieldTableSchema, FieldTable, FieldAuditTable, FieldDatabase)
	}
	rows, err := db.Query(ctx, `
		SELECT attname, format_type(atttypid, atttypmod) FROM pg_attribute
		WHERE attrelid = $1 AND attnum > 0 AND NOT attisdropped`, *oid)
	if err != nil {
		return nil, fmt.Errorf("read columns of %s.%s: %w", schema, name, err)
	}
	cols := map[string]string{}
	for rows.Next() {
		var col, typ string
		if err := rows.Scan(&col, &typ); err != nil {
			return nil, err
		}
		cols[col] = typ
	}
	if err := rows.Err(); err != nil {
		return nil, err
	}
	if len(cols) == 0 {
		return nil, errors.New("no columns")
	}
	return cols, nil
}
