package checkpoint

import (
	"context"
	"fmt"
	"strings"

	"github.com/jackc/pgx/v5"
)

// schemaSQL creates the bookkeeping tables. %[1]s is the quoted schema name.
const schemaSQL = `
CREATE SCHEMA IF NOT EXISTS %[1]s;
CREATE TABLE IF NOT EXISTS %[1]s.runs (
	run_id           text PRIMARY KEY,
	table_name       text NOT NULL,
	old_key_arn      text NOT NULL,
	new_key_arn      text NOT NULL,
	mode             text NOT NULL,
	namespace        text NOT NULL,
	pass             int  NOT NULL DEFAULT 0,
	pass_started_at  timestamptz,
	pass_finished_at timestamptz,
	created_at       timestamptz NOT NULL DEFAULT now()
);
CREATE TABLE IF NOT EXISTS %[1]s.ranges (
	run_id           text NOT NULL REFERENCES %[1]s.runs ON DELETE CASCADE,
	pass             int  NOT NULL,
	range_no         int  NOT NULL,
	lower_bound      text,
	upper_bound      text,
	cursor           text,
	state            text NOT NULL DEFAULT 'pending' CHECK (state IN ('pending', 'running', 'done')),
	owner            text,
	lease_token      bigint NOT NULL DEFAULT 0,
	lease_expires_at timestamptz,
	rows_rotated     bigint NOT NULL DEFAULT 0,
	rows_skipped     bigint NOT NULL DEFAULT 0,
	rows_other_key   bigint NOT NULL DEFAULT 0,
	rows_quarantined bigint NOT NULL DEFAULT 0,
	rows_conflicted  bigint NOT NULL DEFAULT 0,
	pages            bigint NOT NULL DEFAULT 0,
	claims           int    NOT NULL DEFAULT 0,
	started_at       timestamptz,
	finished_at      timestamptz,
	updated_at       timestamptz,
	PRIMARY KEY (run_id, pass, range_no)
);
CREATE SEQUENCE IF NOT EXISTS %[1]s.lease_tokens;
CREATE TABLE IF NOT EXISTS %[1]s.quarantine (
	run_id        text NOT NULL,
	row_id        text NOT NULL,
	error_class   text NOT NULL,
	pass          int  NOT NULL,
	first_seen_at timestamptz NOT NULL DEFAULT now(),
	last_seen_at  timestamptz NOT NULL DEFAULT now(),
	PRIMARY KEY (run_id, row_id)
);
CREATE TABLE IF NOT EXISTS %[1]s.events (
	id      bigserial PRIMARY KEY,
	run_id  text NOT NULL,
	pass    int  NOT NULL,
	at      timestamptz NOT NULL DEFAULT now(),
	event   text NOT NULL,
	owner   text,
	details jsonb
);
`

// Migrate creates the bookkeeping schema if it is missing. Concurrent callers
// (every pod of a Job at once) serialise on an advisory lock, because
// CREATE ... IF NOT EXISTS alone races on the catalog.
func (s *Store) Migrate(ctx context.Context) error {
	return pgx.BeginFunc(ctx, s.db, func(tx pgx.Tx) error {
		if _, err := tx.Exec(ctx, `SELECT pg_advisory_xact_lock(hashtext('reencrypt.schema'))`); err != nil {
			return err
		}
		_, err := tx.Exec(ctx, fmt.Sprintf(schemaSQL, s.schema))
		if err != nil {
			return fmt.Errorf("create bookkeeping schema %s: %w", s.schema, err)
		}
		return nil
	})
}

func quoteIdent(name string) string {
	return pgx.Identifier{strings.ToValidUTF8(name, "")}.Sanitize()
}
