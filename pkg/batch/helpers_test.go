package batch_test

import (
	"context"
	"io"
	"log/slog"
	"sync/atomic"
	"testing"
	"time"

	"github.com/aws/aws-sdk-go-v2/service/kms"

	"github.com/reencrypt/reencrypt/internal/fixture"
	"github.com/reencrypt/reencrypt/pkg/batch"
	"github.com/reencrypt/reencrypt/pkg/checkpoint"
	"github.com/reencrypt/reencrypt/pkg/kmsclient"
)

// countingKMS counts the calls that do rotation work.
type countingKMS struct {
	kmsclient.KMS
	decrypt, generate, reencrypt atomic.Int64
}

func (c *countingKMS) Decrypt(ctx context.Context, in *kms.DecryptInput, o ...func(*kms.Options)) (*kms.DecryptOutput, error) {
	c.decrypt.Add(1)
	return c.KMS.Decrypt(ctx, in, o...)
}

func (c *countingKMS) GenerateDataKey(ctx context.Context, in *kms.GenerateDataKeyInput, o ...func(*kms.Options)) (*kms.GenerateDataKeyOutput, error) {
	c.generate.Add(1)
	return c.KMS.GenerateDataKey(ctx, in, o...)
}

func (c *countingKMS) ReEncrypt(ctx context.Context, in *kms.ReEncryptInput, o ...func(*kms.Options)) (*kms.ReEncryptOutput, error) {
	c.reencrypt.Add(1)
	return c.KMS.ReEncrypt(ctx, in, o...)
}

func (c *countingKMS) total() int64 { return c.decrypt.Load() + c.generate.Load() + c.reencrypt.Load() }

type runOpts struct {
	mode     batch.Mode
	old, new kmsclient.Key
	batch    int
	lease    time.Duration
	owner    string
	ranges   int
	api      kmsclient.KMS
}

// rotate runs one engine to the end of its pass, as one process would.
func rotate(t *testing.T, e *fixture.Env, o runOpts) (batch.Summary, error) {
	t.Helper()
	ctx := context.Background()
	if o.old.ARN == "" {
		o.old, o.new = e.Old, e.New
	}
	if o.api == nil {
		o.api = e.API
	}
	table, err := batch.Inspect(ctx, e.DB, batch.TableSpec{Schema: "public", Name: "payment_methods", IDColumn: "id",
		TokenColumn: "encrypted_token", AuditTable: "payment_method_audit", AuditIDColumn: "payment_method_id"})
	if err != nil {
		t.Fatalf("inspect: %v", err)
	}
	store := checkpoint.New(e.DB, "reencrypt")
	if err := store.Migrate(ctx); err != nil {
		t.Fatalf("migrate: %v", err)
	}
	kc := kmsclient.NewClient(o.api, fixture.Namespace, kmsclient.NewCache(1024, time.Minute))
	eng, err := batch.New(batch.Config{Table: table, Old: o.old, New: o.new, Mode: o.mode,
		BatchSize: o.batch, LeaseTTL: o.lease, Owner: o.owner, Ranges: o.ranges, Workers: 8},
		e.DB, store, kc, slog.New(slog.NewJSONHandler(testWriter(t), nil)), nil)
	if err != nil {
		t.Fatalf("engine: %v", err)
	}
	return eng.Run(ctx)
}

type tWriter struct{ t *testing.T }

func (w tWriter) Write(p []byte) (int, error) { w.t.Log(string(p)); return len(p), nil }

func testWriter(t *testing.T) io.Writer {
	if testing.Verbose() {
		return tWriter{t}
	}
	return io.Discard
}
