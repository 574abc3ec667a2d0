package census

import (
	"context"
	"fmt"

	"github.com/reencrypt/reencrypt/pkg/tokentable"
)

// NullIDs counts the rows whose id is NULL, by key as Count does (the
// tracked keys always named). The keyset cursor never reads them, which is
// why tokentable.Inspect refuses an id column that allows NULL; plan shows them.
func NullIDs(ctx context.Context, db tokentable.Querier, t *tokentable.Table, tracked ...string) (Census, error) {
	rs, err := db.Query(ctx, fmt.Sprintf(`SELECT %s FROM %s WHERE %s IS NULL`, t.QuotedToken(), t.QuotedName(), t.QuotedID()))
	if err != nil {
		return Census{}, fmt.Errorf("read rows of %s with a NULL id: %w", t.Qualified(), err)
	}
	defer rs.Close()
	c := NewCounter("", tracked...)
	page := make([]tokentable.Row, 0, tokentable.DefaultPageSize)
	for rs.Next() {
		var r tokentable.Row
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
