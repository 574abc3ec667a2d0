package census

import (
	"context"
	"fmt"

	"github.com/jackc/pgx/v5"

	"github.com/reencrypt/reencrypt/pkg/tokentable"
)

// Scan calls fn with every row of schema.table (id as text, token as
// stored) in one statement, so that the whole table is read in one snapshot:
// the key-deletion guard counts this way inside its locked transaction. The
// table need not have been inspected: only the two columns are read.
func Scan(ctx context.Context, db tokentable.Querier, schema, table, idColumn, tokenColumn string, fn func(tokentable.Row) error) error {
	q := fmt.Sprintf(`SELECT t.%s::text, t.%s FROM %s AS t`, pgx.Identifier{idColumn}.Sanitize(),
		pgx.Identifier{tokenColumn}.Sanitize(), pgx.Identifier{schema, table}.Sanitize())
	rs, err := db.Query(ctx, q)
	if err != nil {
		return fmt.Errorf("read %s.%s: %w", schema, table, err)
	}
	defer rs.Close()
	for rs.Next() {
		var r tokentable.Row
		if err := rs.Scan(&r.ID, &r.Token); err != nil {
			return fmt.Errorf("read %s.%s: %w", schema, table, err)
		}
		if err := fn(r); err != nil {
			return err
		}
	}
	if err := rs.Err(); err != nil {
		return fmt.Errorf("read %s.%s: %w", schema, table, err)
	}
	return nil
}
