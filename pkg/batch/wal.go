package batch

import (
	"context"
	"errors"
	"fmt"

	"github.com/reencrypt/reencrypt/pkg/tokentable"
)

// WALSample is the write-ahead log one sample page of the run wrote.
type WALSample struct {
	Rows  int   // rows the sample page swapped
	Bytes int64 // WAL written by their swap and audit rows
}

// PerRow is the WAL per rotated row; 0 when nothing was sampled.
func (s WALSample) PerRow() float64 {
	if s.Rows == 0 {
		return 0
	}
	return float64(s.Bytes) / float64(s.Rows)
}

// SampleWAL measures the WAL a page of the run writes, so that `plan` can
// say how much the whole run will write before it starts (max_wal_size,
// replica bandwidth). It runs the engine's own swap statement on the first
// page of non-NULL tokens, each token rewritten with itself (a token of the
// same size, as a rotation writes) with its audit row, between two reads of
// the WAL insert position, in a transaction it always rolls back. Nothing
// is kept, but the WAL is what the run writes: heap tuples, index entries,
// audit rows and the full-page images of pages not written since the last
// checkpoint. Row locks are taken for the sample's length only, bounded by
// lockTimeout; rows the live API holds are skipped, not waited for.
func SampleWAL(ctx context.Context, db DB, t *tokentable.Table, rows int, lockTimeout string) (s WALSample, err error) {
	tx, err := db.Begin(ctx)
	if err != nil {
		return s, fmt.Errorf("sample WAL: %w", err)
	}
	defer func() { _ = tx.Rollback(context.WithoutCancel(ctx)) }() // always: a dry run writes nothing
	if _, err := tx.Exec(ctx, `SELECT pg_catalog.set_config('lock_timeout', $1, true), pg_catalog.set_config('statement_timeout', '30s', true)`, lockTimeout); err != nil {
		return s, fmt.Errorf("sample WAL: %w", err)
	}
	rs, err := tx.Query(ctx, fmt.Sprintf(`SELECT %[1]s::text, %[2]s FROM %[3]s WHERE %[2]s IS NOT NULL ORDER BY %[1]s LIMIT $1 FOR UPDATE SKIP LOCKED`,
		t.QuotedID(), t.QuotedToken(), t.QuotedName()), rows)
	if err != nil {
		return s, fmt.Errorf("sample WAL: read a page: %w", err)
	}
	page, err := tokentable.CollectRows(rs, rows)
	if err != nil {
		return s, fmt.Errorf("sample WAL: read a page: %w", err)
	}
	if len(page) == 0 {
		return s, nil
	}
	ids, tokens := make([]string, len(page)), make([][]byte, len(page))
	for i, r := range page {
		ids[i], tokens[i] = r.ID, r.Token
	}
	details := tokentable.AuditDetails{ // the size of the run's own
		RunID: "0000000000000000", Pass: 1, Mode: string(Rewrap),
		OldKeyARN: "arn:aws:kms:xx-xxxx-0:000000000000:key/00000000-0000-0000-0000-000000000000",
		NewKeyARN: "arn:aws:kms:xx-xxxx-0:000000000000:key/00000000-0000-0000-0000-000000000000",
	}.JSON()
	var before, after int64
	const position = `SELECT (pg_catalog.pg_current_wal_insert_lsn() - '0/0'::pg_catalog.pg_lsn)::int8`
	if err := tx.QueryRow(ctx, position).Scan(&before); err != nil {
		return s, fmt.Errorf("sample WAL: %w", err)
	}
	// The swap statement answers with the number of rows it swapped.
	if err := tx.QueryRow(ctx, newStatements(t).swap, ids, tokens, tokens, details).Scan(&s.Rows); err != nil {
		return WALSample{}, fmt.Errorf("sample WAL: swap: %w", err)
	}
	if err := tx.QueryRow(ctx, position).Scan(&after); err != nil {
		return WALSample{}, fmt.Errorf("sample WAL: %w", err)
	}
	s.Bytes = after - before
	if s.Rows == 0 {
		return WALSample{}, errors.New("sample WAL: no row of the sample page was swapped")
	}
	return s, nil
}
