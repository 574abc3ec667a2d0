package main

import (
	"context"
	"flag"
	"fmt"
	"time"

	"github.com/reencrypt/reencrypt/internal/seed"
	"github.com/reencrypt/reencrypt/pkg/batch"
	"github.com/reencrypt/reencrypt/pkg/kmsclient"
)

func init() {
	registerWithFlags("seed", "create the reference schema and fill it with demo tokens under a key (demo, tests)", func(fs *flag.FlagSet) runFunc {
		rows := fs.Int("rows", 1000, "tokens to insert")
		key := fs.String("key", "", "KMS key to seal under (default OLD_KEY_ID)")
		idType := fs.String("id-type", "uuid", "id type of a newly created table: uuid or bigint")
		perKey := fs.Int("rows-per-key", 1, "rows sharing one data key (1 = a legacy writer)")
		return func(ctx context.Context, a *app, _ []string) error {
			return cmdSeed(ctx, a, *rows, *key, *idType, *perKey)
		}
	})
}

func cmdSeed(ctx context.Context, a *app, rows int, key, idType string, perKey int) error {
	if rows < 0 {
		return configError("--rows %d: want >= 0", rows)
	}
	if key == "" {
		key = a.cfg.OldKeyID
	}
	if key == "" {
		return configError("seed needs --key or OLD_KEY_ID")
	}
	if a.cfg.Table != "payment_methods" || a.cfg.TokenColumn != "encrypted_token" || a.cfg.IDColumn != "id" {
		return configError("seed fills the reference schema only (TABLE=payment_methods, ID_COLUMN=id, TOKEN_COLUMN=encrypted_token)")
	}
	db, err := a.db(ctx)
	if err != nil {
		return err
	}
	kc, err := a.client(ctx)
	if err != nil {
		return err
	}
	k, err := kmsclient.Resolve(ctx, kc.API(), key)
	if err != nil {
		return err
	}
	if err := seed.Schema(ctx, db, a.cfg.TableSchema, idType); err != nil {
		return fmt.Errorf("create reference schema: %w", err)
	}
	t, err := batch.Inspect(ctx, db, a.tableSpec())
	if err != nil {
		return err
	}
	var first int64 = 1
	if t.IDType != "uuid" {
		if err := db.QueryRow(ctx, fmt.Sprintf(`SELECT coalesce(max(id), 0) + 1 FROM %s`, t.QuotedName())).Scan(&first); err != nil {
			return err
		}
	}
	start := time.Now()
	_, err = seed.Seed(ctx, db, kc, seed.Options{
		Schema: a.cfg.TableSchema, IDType: seedIDType(t.IDType), Rows: rows, FirstID: first, KeyARN: k.ARN,
		Namespace: a.cfg.Namespace, RowsPerKey: perKey,
	})
	if err != nil {
		return err
	}
	fmt.Fprintf(a.stdout, "seeded %d tokens under %s into %s in %s\n", rows, k.ARN, t.Qualified(), time.Since(start).Round(time.Millisecond))
	return nil
}

func seedIDType(t string) string {
	if t == "uuid" {
		return t
	}
	return "bigint"
}
