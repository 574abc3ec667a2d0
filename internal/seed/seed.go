// Package seed creates the runbook's reference schema and fills it with
// tokens sealed under a given KMS key, the way a legacy writer did (one data
// key per row by default). The demo, the benchmark and the tests use it; the
// engine itself never needs it.
package seed

import (
	"context"
	"crypto/rand"
	"crypto/sha256"
	"encoding/base32"
	"fmt"
	"strconv"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
	"golang.org/x/sync/errgroup"

	"github.com/reencrypt/reencrypt/pkg/envelope"
	"github.com/reencrypt/reencrypt/pkg/kmsclient"
)

// DB is what seeding needs; *pgxpool.Pool and *pgx.Conn fit.
type DB interface {
	Exec(ctx context.Context, sql string, args ...any) (pgconn.CommandTag, error)
	CopyFrom(ctx context.Context, table pgx.Identifier, cols []string, src pgx.CopyFromSource) (int64, error)
}

// Schema creates the runbook's tables if they are missing: payment_methods
// and payment_method_audit, with uuid or bigint ids.
func Schema(ctx context.Context, db DB, schema, idType string) error {
	if idType != "uuid" && idType != "bigint" {
		return fmt.Errorf("id type %q: want uuid or bigint", idType)
	}
	s := pgx.Identifier{schema}.Sanitize()
	_, err := db.Exec(ctx, fmt.Sprintf(`
		CREATE SCHEMA IF NOT EXISTS %[1]s;
		CREATE TABLE IF NOT EXISTS %[1]s.payment_methods (
			id              %[2]s PRIMARY KEY,
			encrypted_token bytea,
			is_active       boolean NOT NULL DEFAULT true,
			created_at      timestamptz NOT NULL DEFAULT now(),
			updated_at      timestamptz NOT NULL DEFAULT now()
		);
		CREATE TABLE IF NOT EXISTS %[1]s.payment_method_audit (
			payment_method_id %[2]s,
			action            text NOT NULL,
			actor_type        text NOT NULL,
			details           jsonb,
			created_at        timestamptz NOT NULL DEFAULT now()
		);
		CREATE INDEX IF NOT EXISTS payment_method_audit_payment_method_id
			ON %[1]s.payment_method_audit (payment_method_id);`, s, idType))
	return err
}

// Plaintext is the demo token of a row: derived from its id so that the demo
// and the tests can check every row after a rotation without keeping a copy.
// It is fake card data, never a real secret.
func Plaintext(id string) []byte {
	h := sha256.Sum256([]byte("reencrypt demo token\x00" + id))
	return []byte("tok_" + base32.StdEncoding.WithPadding(base32.NoPadding).EncodeToString(h[:15]))
}

// Options say what to seed.
type Options struct {
	Schema     string // default "public"
	IDType     string // "uuid" (default) or "bigint"
	Rows       int
	FirstID    int64  // bigint ids start here (default 1)
	KeyARN     string // resolved key ARN to seal under
	Namespace  string // default "payment_methods"
	RowsPerKey int    // rows sharing one data key (default 1: a legacy writer)
	Workers    int    // KMS calls in flight (default 16)
}

// Seed inserts Rows tokens sealed under KeyARN and returns their ids in
// insertion order. Each token opens to Plaintext(id).
func Seed(ctx context.Context, db DB, kc *kmsclient.Client, o Options) ([]string, error) {
	o.Schema = or(o.Schema, "public")
	o.IDType = or(o.IDType, "uuid")
	o.Namespace = or(o.Namespace, "payment_methods")
	if o.RowsPerKey < 1 {
		o.RowsPerKey = 1
	}
	if o.Workers < 1 {
		o.Workers = 16
	}
	if o.FirstID == 0 {
		o.FirstID = 1
	}
	const chunk = 5000
	ids := make([]string, 0, o.Rows)
	for start := 0; start < o.Rows; start += chunk {
		n := min(chunk, o.Rows-start)
		batch := make([][]any, n)
		batchIDs := make([]string, n)
		for i := range n {
			batchIDs[i] = newID(o, start+i)
		}
		g, gctx := errgroup.WithContext(ctx)
		g.SetLimit(o.Workers)
		for k := 0; k < n; k += o.RowsPerKey {
			g.Go(func() error {
				dek, wdek, err := kc.GenerateDataKey(gctx, o.KeyARN)
				if err != nil {
					return err
				}
				defer dek.Zero()
				for i := k; i < min(k+o.RowsPerKey, n); i++ {
					env, err := envelope.SealRandom(dek, envelope.SealOptions{KID: o.KeyARN, WDEK: wdek, Namespace: o.Namespace, RowID: batchIDs[i]}, Plaintext(batchIDs[i]))
					if err != nil {
						return err
					}
					b, err := env.Marshal()
					if err != nil {
						return err
					}
					batch[i] = []any{idValue(o, batchIDs[i]), b}
				}
				return nil
			})
		}
		if err := g.Wait(); err != nil {
			return ids, fmt.Errorf("seal seed tokens: %w", err)
		}
		if _, err := db.CopyFrom(ctx, pgx.Identifier{o.Schema, "payment_methods"}, []string{"id", "encrypted_token"},
			pgx.CopyFromRows(batch)); err != nil {
			return ids, fmt.Errorf("insert seed tokens: %w", err)
		}
		ids = append(ids, batchIDs...)
	}
	return ids, nil
}

func newID(o Options, i int) string {
	if o.IDType == "bigint" {
		return strconv.FormatInt(o.FirstID+int64(i), 10)
	}
	return uuidV4()
}

func idValue(o Options, id string) any {
	if o.IDType == "bigint" {
		n, _ := strconv.ParseInt(id, 10, 64)
		return n
	}
	return id
}

func uuidV4() string {
	var b [16]byte
	_, _ = rand.Read(b[:])
	b[6] = b[6]&0x0f | 0x40
	b[8] = b[8]&0x3f | 0x80
	return fmt.Sprintf("%x-%x-%x-%x-%x", b[0:4], b[4:6], b[6:8], b[8:10], b[10:16])
}

func or(s, def string) string {
	if s == "" {
		return def
	}
	return s
}
