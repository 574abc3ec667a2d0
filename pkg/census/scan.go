package census

import (
	"context"
	"fmt"

	"github.com/jackc/pgx/v5"

	"github.com/reencrypt/reencrypt/pkg/tokentable"
)

// Scan calls fn with every row of the table s names (id as text, token as
// stored) in one statement, so that the whole table is read in one snapshot:
// the key-deletion guard counts this way inside its locked transaction. The
// table need not have been inspected: only s's Schema, Name, IDColumn and
// TokenColumn are used, all four named, not four strings in a row.
func Scan(ctx context.Context, db tokentable.Querier, s tokentable.Spec, fn func(tokentable.Row) error) error {
	schema, table := s.Schema, s.Name
	q := fmt.Sprintf(`SELECT t.%s::text, t.%s FROM %s AS t`, pgx.Identifier{s.IDColumn}.Sanitize(),
		pgx.Identifier{s.TokenColumn}.Sanitize(), pgx.Identifier{schema, table}.Sanitize())
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
