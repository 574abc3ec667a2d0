package main

import (
	"context"
	"fmt"
	"io"
	"sort"

	"github.com/jackc/pgx/v5"
)

// walRecordStat is one WAL record type's share of a scenario's WAL
// (pg_walinspect's pg_get_wal_stats, per record type).
type walRecordStat struct {
	Type          string  `json:"type"` // resource manager/record type, e.g. Heap/UPDATE
	Count         int64   `json:"count"`
	Bytes         int64   `json:"bytes"` // record and full-page image bytes together
	FPIBytes      int64   `json:"fpi_bytes"`
	BytesPerRow   float64 `json:"bytes_per_row"`
	RecordsPerRow float64 `json:"records_per_row"`
}

// readWALStats splits the WAL between two positions by record type
// (-walstats). It needs pg_walinspect (Postgres 15+) and the WAL still on
// disk: a scenario's WAL is read right after it, before a later checkpoint
// can recycle it.
func (b *bench) readWALStats(ctx context.Context, from, to, rows int64) ([]walRecordStat, error) {
	if b.pgNum < 150000 {
		return nil, fmt.Errorf("-walstats needs pg_walinspect (Postgres 15+), have %s", b.pgVersion)
	}
	if _, err := b.adminDB.Exec(ctx, `CREATE EXTENSION IF NOT EXISTS pg_walinspect`); err != nil {
		return nil, fmt.Errorf("pg_walinspect: %w", err)
	}
	rs, err := b.adminDB.Query(ctx, `
		SELECT "resource_manager/record_type", count, record_size + fpi_size, fpi_size
		FROM pg_get_wal_stats($1::pg_lsn, $2::pg_lsn, true)
		WHERE count > 0`, lsnText(from), lsnText(to))
	if err != nil {
		return nil, fmt.Errorf("pg_get_wal_stats: %w", err)
	}
	stats, err := pgx.CollectRows(rs, func(r pgx.CollectableRow) (walRecordStat, error) {
		var s walRecordStat
		err := r.Scan(&s.Type, &s.Count, &s.Bytes, &s.FPIBytes)
		if rows > 0 {
			s.BytesPerRow = float64(s.Bytes) / float64(rows)
			s.RecordsPerRow = float64(s.Count) / float64(rows)
		}
		return s, err
	})
	sort.Slice(stats, func(i, j int) bool { return stats[i].Bytes > stats[j].Bytes })
	return stats, err
}

// lsnText is a WAL byte position as pg_lsn's text (X/X).
func lsnText(n int64) string { return fmt.Sprintf("%X/%X", uint64(n)>>32, uint64(n)&0xFFFFFFFF) }

func printWALStats(w io.Writer, title string, stats []walRecordStat) {
	fmt.Fprintf(w, "  %s:\n    B/row   FPI B/row   records/row  type\n", title)
	for _, s := range stats {
		if s.BytesPerRow < 1 {
			continue
		}
		fmt.Fprintf(w, "    %7.1f  %9.1f  %11.3f  %s\n", s.BytesPerRow, s.BytesPerRow*float64(s.FPIBytes)/float64(max(s.Bytes, 1)), s.RecordsPerRow, s.Type)
	}
}
