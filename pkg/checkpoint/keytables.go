package checkpoint

import (
	"context"
	"fmt"

	"github.com/jackc/pgx/v5"
)

// KeyTable is a token table seen under a key: by a run (for its OLD and NEW
// keys) or by `keys begin`. The key-deletion guard counts in every one.
type KeyTable struct {
	Schema, Table, TokenColumn, IDColumn, Namespace string
}

// Qualified is "schema.table", as RunSpec.Table and messages name it.
func (k KeyTable) Qualified() string { return k.Schema + "." + k.Table }

// RecordKeyTable records that t holds tokens under each of keyARNs (once;
// a repeat only moves last_seen_at). The state schema must be migrated.
func (s *Store) RecordKeyTable(ctx context.Context, t KeyTable, keyARNs ...string) error {
	for _, arn := range keyARNs {
		_, err := s.db.Exec(ctx, fmt.Sprintf(`
			INSERT INTO %s.key_tables (key_arn, table_schema, table_name, token_column, id_column, namespace)
			VALUES ($1, $2, $3, $4, $5, $6)
			ON CONFLICT (key_arn, table_schema, table_name, token_column) DO UPDATE
			SET id_column = excluded.id_column, namespace = excluded.namespace, last_seen_at = now()`, s.schema),
			arn, t.Schema, t.Table, t.TokenColumn, t.IDColumn, t.Namespace)
		if err != nil {
			return fmt.Errorf("record table %s for key %s: %w", t.Qualified(), arn, err)
		}
	}
	return nil
}

// KeyTables returns the tables recorded for keyARN, or none when the state
// schema has no key_tables table (never migrated, or older).
func (s *Store) KeyTables(ctx context.Context, q Querier, keyARN string) ([]KeyTable, error) {
	var exists bool
	if err := q.QueryRow(ctx, `SELECT to_regclass($1) IS NOT NULL`, s.schema+".key_tables").Scan(&exists); err != nil {
		return nil, fmt.Errorf("look up %s.key_tables: %w", s.name, err)
	}
	if !exists {
		return nil, nil
	}
	rows, err := q.Query(ctx, fmt.Sprintf(`
		SELECT table_schema, table_name, token_column, id_column, namespace FROM %s.key_tables
		WHERE key_arn = $1 ORDER BY table_schema, table_name, token_column`, s.schema), keyARN)
	if err != nil {
		return nil, fmt.Errorf("read %s.key_tables: %w", s.name, err)
	}
	defer rows.Close()
	var out []KeyTable
	for rows.Next() {
		var k KeyTable
		if err := rows.Scan(&k.Schema, &k.Table, &k.TokenColumn, &k.IDColumn, &k.Namespace); err != nil {
			return nil, err
		}
		out = append(out, k)
	}
	return out, rows.Err()
}

// QuarantinedUnder returns the ids of the rows quarantined by runs from
// keyARN (runs whose OLD it was), by table as RunSpec.Table names it.
func (s *Store) QuarantinedUnder(ctx context.Context, q Querier, keyARN string) (map[string]map[string]bool, error) {
	var exists bool
	if err := q.QueryRow(ctx, `SELECT to_regclass($1) IS NOT NULL AND to_regclass($2) IS NOT NULL`,
		s.schema+".quarantine", s.schema+".runs").Scan(&exists); err != nil {
		return nil, fmt.Errorf("look up %s.quarantine: %w", s.name, err)
	}
	if !exists {
		return nil, nil
	}
	rows, err := q.Query(ctx, fmt.Sprintf(`
		SELECT r.table_name, q.row_id FROM %[1]s.quarantine q JOIN %[1]s.runs r USING (run_id)
		WHERE r.old_key_arn = $1`, s.schema), keyARN)
	if err != nil {
		return nil, fmt.Errorf("read %s.quarantine: %w", s.name, err)
	}
	defer rows.Close()
	out := map[string]map[string]bool{}
	for rows.Next() {
		var table, id string
		if err := rows.Scan(&table, &id); err != nil {
			return nil, err
		}
		if out[table] == nil {
			out[table] = map[string]bool{}
		}
		out[table][id] = true
	}
	return out, rows.Err()
}

// Querier runs queries; a pool or a transaction fits.
type Querier interface {
	Query(ctx context.Context, sql string, args ...any) (pgx.Rows, error)
	QueryRow(ctx context.Context, sql string, args ...any) pgx.Row
}
