package tokentable

import (
	"context"
	"fmt"
	"time"

	"github.com/jackc/pgx/v5"
)

// Row is one row as stored. Token is nil when the column is NULL.
type Row struct {
	ID    string // canonical text of the id
	Token []byte
}

// Bounds is a slice of the keyspace: ids in (Lower, Upper], in the id
// column's canonical text (id::text). A nil bound is open. The engine's
// ranges (checkpoint.Bounds) are these.
type Bounds struct {
	Lower, Upper *string
}

// DefaultPageSize is the page size of a Walk given none.
const DefaultPageSize = 5000

// ReadPage reads the rows of t whose id is in b, in id order, at most limit
// of them: one keyset page (id > lower AND id <= upper ORDER BY id LIMIT n),
// read without locks. Rows with a NULL id are never read.
func ReadPage(ctx context.Context, db Querier, t *Table, b Bounds, limit int) ([]Row, error) {
	rs, err := db.Query(ctx, t.read.pick(b.Lower, b.Upper), b.Lower, b.Upper, limit)
	if err != nil {
		return nil, err
	}
	return CollectRows(rs, limit)
}

// ReadIDs returns the rows with these ids (those that still exist), in id
// order: the engine re-reads the rows that changed under it, verify its
// sample.
func ReadIDs(ctx context.Context, db Querier, t *Table, ids []string) ([]Row, error) {
	rs, err := db.Query(ctx, t.read.byIDs, ids)
	if err != nil {
		return nil, err
	}
	return CollectRows(rs, len(ids))
}

// CollectRows reads rows of (id::text, token) and closes rs.
func CollectRows(rs pgx.Rows, capacity int) ([]Row, error) {
	defer rs.Close()
	out := make([]Row, 0, capacity)
	for rs.Next() {
		var r Row
		if err := rs.Scan(&r.ID, &r.Token); err != nil {
			return nil, err
		}
		out = append(out, r)
	}
	return out, rs.Err()
}

// WalkOptions is what a Walk reads: the zero value reads the whole table
// in pages of DefaultPageSize rows.
type WalkOptions struct {
	Bounds   Bounds // the slice of the keyspace read; open ends when nil
	PageSize int    // rows per page; DefaultPageSize when 0
}

// Walk calls fn with every row of t whose id is in o.Bounds, in id order,
// one page of at most o.PageSize rows at a time. fn may keep the rows it is
// given (each page is freshly allocated). An error from fn stops the walk
// and is returned as is.
func Walk(ctx context.Context, db Querier, t *Table, o WalkOptions, fn func(page []Row) error) error {
	b, pageSize := o.Bounds, o.PageSize
	if pageSize <= 0 {
		pageSize = DefaultPageSize
	}
	cursor := b.Lower
	for {
		page, err := ReadPage(ctx, db, t, Bounds{Lower: cursor, Upper: b.Upper}, pageSize)
		if err != nil {
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

// Containing is what WalkContaining looks for, and its page size.
type Containing struct {
	Needles  [][]byte // a row matches when its token contains one of them
	PageSize int      // rows of the table per statement; 0: DefaultPageSize
	// Retry, when not nil, says whether a failed page read is read again:
	// a read at a cursor loses and doubles nothing when repeated. Up to
	// readAttempts reads per page, with a growing pause between them.
	Retry func(error) bool
}

// readAttempts and readPause bound the rereads of one page: about 25 s in
// all, longer than a Postgres restart or a managed failover's switch.
const (
	readAttempts = 8
	readPause    = 200 * time.Millisecond
)

// WalkContaining is Walk over the whole table for the rows whose token
// contains at least one of the needles as a byte string: Postgres searches
// each page and sends only the matches, so a count that only cares about
// tokens holding certain bytes (the rows under one key hold its key id)
// does not ship the table. Pages hold pageSize rows of the table (0:
// DefaultPageSize) and fn sees only their matches (possibly none; it is
// not called then). Rows with a NULL id or token never match.
func WalkContaining(ctx context.Context, db Querier, t *Table, c Containing, fn func(matches []Row) error) error {
	needles, pageSize := c.Needles, c.PageSize
	if pageSize <= 0 {
		pageSize = DefaultPageSize
	}
	var cursor *string
	for attempt := 1; ; attempt++ {
		rows, last, matches, err := t.readContaining(ctx, db, cursor, pageSize, needles)
		if err != nil {
			if c.Retry == nil || attempt >= readAttempts || !c.Retry(err) {
				return err
			}
			select {
			case <-ctx.Done():
				return fmt.Errorf("%w (then: %w)", err, context.Cause(ctx))
			case <-time.After(readPause << (attempt - 1)):
			}
			continue
		}
		attempt = 0
		if len(matches) > 0 {
			if err := fn(matches); err != nil {
				return err
			}
		}
		if rows < pageSize || last == nil {
			return nil
		}
		if cursor != nil && *cursor == *last {
			return fmt.Errorf("read %s: cursor did not advance past %q", t.Qualified(), *last)
		}
		cursor = last
	}
}

// readContaining reads one page of WalkContaining: how many rows of the
// table it covered, the last id, and the matching rows.
func (t *Table) readContaining(ctx context.Context, db Querier, cursor *string, pageSize int, needles [][]byte) (rows int, last *string, matches []Row, err error) {
	q := t.read.containingAll
	if cursor != nil {
		q = t.read.containingFrom
	}
	rs, err := db.Query(ctx, q, cursor, pageSize, needles)
	if err != nil {
		return 0, nil, nil, fmt.Errorf("read %s after %q: %w", t.Qualified(), deref(cursor), err)
	}
	defer rs.Close()
	for rs.Next() {
		var id *string
		var tok []byte
		if err := rs.Scan(&rows, &last, &id, &tok); err != nil {
			return 0, nil, nil, fmt.Errorf("read %s: %w", t.Qualified(), err)
		}
		if id != nil {
			matches = append(matches, Row{ID: *id, Token: tok})
		}
	}
	if err := rs.Err(); err != nil {
		return 0, nil, nil, fmt.Errorf("read %s after %q: %w", t.Qualified(), deref(cursor), err)
	}
	return rows, last, matches, nil
}

func deref(s *string) string {
	if s == nil {
		return ""
	}
	return *s
}

// reads are the keyset statements for one table, built once by Inspect.
// Each bound combination has its own statement so that the planner always
// sees a plain index range: "$2 IS NULL OR id <= $2" would make it scan past
// the upper bound.
type reads struct {
	all, from, to, between, byIDs string
	containingAll, containingFrom string // WalkContaining's pages
}

func newReads(t *Table) reads {
	sel := fmt.Sprintf(`SELECT t.%s::text, t.%s FROM %s AS t`, t.qid, t.qtoken, t.qname)
	// ORDER BY t.id, the column: a bare "id" would name the output column
	// id::text, and integer ids in text order ("10" < "9") would make the
	// keyset cursor skip rows.
	order := fmt.Sprintf(` ORDER BY t.%s LIMIT $3`, t.qid)
	lower := fmt.Sprintf(`t.%s > $1::text::%s`, t.qid, t.IDType)
	upper := fmt.Sprintf(`t.%s <= $2::text::%s`, t.qid, t.IDType)
	return reads{
		// Every variant takes $1 (lower), $2 (upper), $3 (limit) so callers
		// pass the same arguments; unused ones are compared with NULL.
		// NULL ids sort last: without "IS NOT NULL" a one-page table would
		// hand them to the caller (see census.NullIDs).
		all:     sel + fmt.Sprintf(` WHERE $1::text IS NULL AND $2::text IS NULL AND t.%s IS NOT NULL`, t.qid) + order,
		from:    sel + ` WHERE ` + lower + ` AND $2::text IS NULL` + order,
		to:      sel + ` WHERE $1::text IS NULL AND ` + upper + order,
		between: sel + ` WHERE ` + lower + ` AND ` + upper + order,
		byIDs:   sel + fmt.Sprintf(` WHERE t.%s = ANY($1::text[]::%s[]) ORDER BY t.%[1]s`, t.qid, t.IDType),

		containingAll:  containing(t, `$1::text IS NULL`),
		containingFrom: containing(t, lower),
	}
}

// containing is one page of WalkContaining: the page's row count and last
// id, and its rows whose token holds one of the needles ($3), or a single
// row of NULLs when none does. The tokens are searched where they are
// stored; only the matches travel.
func containing(t *Table, lower string) string {
	return fmt.Sprintf(`
		WITH page AS MATERIALIZED (
			SELECT t.%[1]s AS k, t.%[2]s AS tok FROM %[3]s AS t
			WHERE %[4]s AND t.%[1]s IS NOT NULL ORDER BY t.%[1]s LIMIT $2
		)
		SELECT n.rows, n.last, c.k::text, c.tok
		FROM (SELECT count(*) AS rows, (SELECT p.k::text FROM page AS p ORDER BY p.k DESC LIMIT 1) AS last FROM page) AS n
		LEFT JOIN page AS c ON EXISTS (SELECT 1 FROM unnest($3::bytea[]) AS x(needle) WHERE position(x.needle IN c.tok) > 0)`,
		t.qid, t.qtoken, t.qname, lower)
}

func (q reads) pick(lower, upper *string) string {
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
