package main

import (
	"context"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgtype"
)

// Scenario 0c, the minimal client: scenario 0b's page work driven from Go
// over the wire, and nothing else (no KMS, no AES, no lease, no key lock, no
// per-transaction settings). Each session reads a page by keyset (ids as
// uuid, in binary), changes each token in Go as scenario 0 does in SQL
// (rotationChange), and writes the page in one pipelined round trip that is one
// transaction: the checkpoint row's lock (the fence), the id-ordered row
// locks, the compare-and-swap with its audit rows and the checkpoint's
// advance. Two round trips per page, the fewest for a client that reads
// before it writes. So 0b to 0c is what being a client costs on this machine
// (the protocol, and the client's own CPU on the cores Postgres uses), and
// 0c to 6 is what the engine does on top of that.
const (
	clientReadSQL  = `SELECT id, encrypted_token FROM payment_methods WHERE id > $1 AND id <= $2 ORDER BY id LIMIT $3`
	clientFenceSQL = `SELECT 1 FROM bench_ceiling.ranges WHERE range_no = $1 FOR UPDATE`
	clientWriteSQL = `
		WITH locked AS MATERIALIZED (
			SELECT id FROM payment_methods WHERE id = ANY($1::uuid[]) ORDER BY id FOR UPDATE
		), swapped AS (
			UPDATE payment_methods AS t SET encrypted_token = v.new_token
			FROM unnest($1::uuid[], $2::bytea[], $3::bytea[]) AS v(id, old_token, new_token)
			WHERE t.id = v.id AND t.encrypted_token = v.old_token AND (SELECT count(*) FROM locked) >= 0
			RETURNING t.id
		), audited AS (
			INSERT INTO payment_method_audit (payment_method_id, action, actor_type, details)
			SELECT id, 'token_reencrypted', 'system', $4::jsonb FROM swapped
		)
		UPDATE bench_ceiling.ranges
		SET cursor = $5, rows = rows + (SELECT count(*) FROM swapped), pages = pages + 1, done = $6, updated_at = now()
		WHERE range_no = $7`
)

// minimalClient runs scenario 0c on the copy at dbURL and fills r.
func (b *bench) minimalClient(ctx context.Context, dbURL string, r *Result) error {
	return b.runRanges(ctx, dbURL, r, "minimal client", func(ctx context.Context, c *pgx.Conn, k int, details []byte) error {
		return clientRange(ctx, c, k, b.cfg.BatchSize, details)
	})
}

// clientRange rotates range k of bench_ceiling.ranges, page by page.
func clientRange(ctx context.Context, c *pgx.Conn, k, pageSize int, details []byte) error {
	var cur, hi pgtype.UUID
	if err := c.QueryRow(ctx, `SELECT lower, upper FROM bench_ceiling.ranges WHERE range_no = $1`, k).Scan(&cur, &hi); err != nil {
		return err
	}
	ids := make([]pgtype.UUID, 0, pageSize)
	olds := make([][]byte, 0, pageSize)
	news := make([][]byte, 0, pageSize)
	for {
		ids, olds, news = ids[:0], olds[:0], news[:0]
		rows, err := c.Query(ctx, clientReadSQL, cur, hi, pageSize)
		if err != nil {
			return err
		}
		var id pgtype.UUID
		var tok []byte
		_, err = pgx.ForEachRow(rows, []any{&id, &tok}, func() error {
			ids, olds, news = append(ids, id), append(olds, tok), append(news, rotationChange(tok))
			tok = nil // a fresh slice for the next row: olds keeps this one
			return nil
		})
		if err != nil {
			return err
		}
		if len(ids) == 0 {
			break
		}
		cur = ids[len(ids)-1]
		last := len(ids) < pageSize
		// Sent outside any explicit transaction, the batch's statements
		// run in the implicit transaction of its single Sync: all or none.
		batch := &pgx.Batch{}
		batch.Queue(clientFenceSQL, k)
		batch.Queue(clientWriteSQL, ids, olds, news, details, cur, last, k)
		if err := c.SendBatch(ctx, batch).Close(); err != nil {
			return err
		}
		if last {
			break
		}
	}
	_, err := c.Exec(ctx, `UPDATE bench_ceiling.ranges SET done = true, updated_at = now() WHERE range_no = $1`, k)
	return err
}
