package census

import (
	"context"
	"fmt"

	"github.com/jackc/pgx/v5"

	"github.com/reencrypt/reencrypt/pkg/checkpoint"
	"github.com/reencrypt/reencrypt/pkg/tokentable"
)

// Querier runs a query; *pgxpool.Pool, *pgx.Conn and pgx.Tx fit.
type Querier interface {
	Query(ctx context.Context, sql string, args ...any) (pgx.Rows, error)
}

// Row is one row as stored. Token is nil when the column is NULL.
type Row struct {
	ID    string // canonical text of the id
	Token []byte
}

// Bounds is a slice of the keyspace, (Lower, Upper]; a nil bound is open.
type Bounds = checkpoint.Bounds

// DefaultPageSize is the page size of a Walk given 0.
const DefaultPageSize = 5000

// Walk calls fn with every row of t whose id is in b, in id order, one page
// of at most pageSize rows at a time. fn may keep the rows it is given (each
// page is freshly allocated). An error from fn stops the walk and is
// returned as is.
func Walk(ctx context.Context, db Querier, t *tokentable.Table, b Bounds, pageSize int, fn func(page []Row) error) error {
	if pageSize <= 0 {
		pageSize = DefaultPageSize
	}
	q := newQueries(t)
	cursor := b.Lower
	for {
		rs, err := db.Query(ctx, q.pick(cursor, b.Upper), cursor, b.Upper, pageSize)
		if err != nil {
			return fmt.Errorf("read %s after %q: %w", t.Qualified(), deref(cursor), err)
		}
		page := make([]Row, 0, pageSize)
		for rs.Next() {
			var r Row
			if err := rs.Scan(&r.ID, &r.Token); err != nil {
				rs.Close()
				return fmt.Errorf("read %s: %w", t.Qualified(), err)
			}
			page = append(page, r)
		}
		if err := rs.Err(); err != nil {
			return fmt.Errorf("read %s after %q: %w", t.Qualified(), deref(cursor), err)
		}
		if len(page) > 0 {
			if err := fn(page); err != nil {
				return err
			}
		}
		if len(page) < pageSize { // a short page: the slice is done
			return nil
		}
		last := page[len(page)-1].ID
		if cursor != nil && *cursor == last {
			return fmt.Errorf("read %s: cursor did not advance past %q", t.Qualified(), last)
		}
		cursor = &last
	}
}

// ReadIDs returns the rows with these ids (those that still exist), in id
// order: verify re-reads its sample with it.
func ReadIDs(ctx context.Context, db Querier, t *tokentable.Table, ids []string) ([]Row, error) {
	q := newQueries(t)
	rs, err := db.Query(ctx, q.byIDs, ids)
	if err != nil {
		return nil, fmt.Errorf("read %d rows of %s: %w", len(ids), t.Qualified(), err)
	}
	out := make([]Row, 0, len(ids))
	for rs.Next() {
		var r Row
		if err := rs.Scan(&r.ID, &r.Token); err != nil {
			rs.Close()
			return nil, err
		}
		out = append(out, r)
	}
	return out, rs.Err()
}

func deref(s *string) string {
	if s == nil {
		return ""
	}
	return *s
}

// queries are the keyset statements for one table. Each bound combination
// has its own statement so that the planner always sees a plain index range:
// "$2 IS NULL OR id <= $2" would make it scan past the upper bound.
type queries struct {
	all, from, to, between, byIDs string
}

func newQueries(t *tokentable.Table) queries {
	id := pgx.Identifier{t.Spec.IDColumn}.Sanitize()
	tok := pgx.Identifier{t.Spec.TokenColumn}.Sanitize()
	sel := fmt.Sprintf(`SELECT t.%s::text, t.%s FROM %s AS t`, id, tok, t.QuotedName())
	// ORDER BY t.id, the column: a bare "id" would name the output column
	// id::text, and integer ids in text order ("10" < "9") would make the
	// keyset cursor skip rows.
	order := fmt.Sprintf(` ORDER BY t.%s LIMIT $3`, id)
	lower := fmt.Sprintf(`t.%s > $1::text::%s`, id, t.IDType)
	upper := fmt.Sprintf(`t.%s <= $2::text::%s`, id, t.IDType)
	return queries{
		// Every variant takes $1 (lower), $2 (upper), $3 (limit).
		// NULL ids sort last: without "IS NOT NULL" a one-page table would
		// hand them to the caller (see NullIDs).
		all:     sel + fmt.Sprintf(` WHERE $1::text IS NULL AND $2::text IS NULL AND t.%s IS NOT NULL`, id) + order,
		from:    sel + ` WHERE ` + lower + ` AND $2::text IS NULL` + order,
		to:      sel + ` WHERE $1::text IS NULL AND ` + upper + order,
		between: sel + ` WHERE ` + lower + ` AND ` + upper + order,
		byIDs:   sel + fmt.Sprintf(` WHERE t.%s = ANY($1::text[]::%s[]) ORDER BY t.%[1]s`, id, t.IDType),
	}
}

func (q queries) pick(lower, upper *string) string {
	switch {
	case lower != nil && upper != nil:
		return q.between
	case lower != nil:
		return q.from
	case upper != nil:
		return q.to
	}
	return q.all
}

// NullIDs counts the rows whose id is NULL, by key as Count does (the
// tracked keys always named). The keyset cursor never reads them, which is
// why tokentable.Inspect refuses an id column that allows NULL; plan shows them.
func NullIDs(ctx context.Context, db Querier, t *tokentable.Table, tracked ...string) (Census, error) {
	tok := pgx.Identifier{t.Spec.TokenColumn}.Sanitize()
	id := pgx.Identifier{t.Spec.IDColumn}.Sanitize()
	rs, err := db.Query(ctx, fmt.Sprintf(`SELECT %s FROM %s WHERE %s IS NULL`, tok, t.QuotedName(), id))
	if err != nil {
		return Census{}, fmt.Errorf("read rows of %s with a NULL id: %w", t.Qualified(), err)
	}
	defer rs.Close()
	c := NewCounter("", tracked...)
	page := make([]Row, 0, DefaultPageSize)
	for rs.Next() {
		var r Row
		if err := rs.Scan(&r.Token); err != nil {
			return Census{}, fmt.Errorf("read rows of %s with a NULL id: %w", t.Qualified(), err)
		}
		if page = append(page, r); len(page) == cap(page) {
			c.Add(page)
			page = page[:0]
		}
	}
	if err := rs.Err(); err != nil {
		return Census{}, fmt.Errorf("read rows of %s with a NULL id: %w", t.Qualified(), err)
	}
	if len(page) > 0 {
		c.Add(page)
	}
	return c.Census(), nil
}
