package batch_test

import (
	"context"
	"fmt"
	"io"
	"log/slog"
	"sync/atomic"
	"testing"
	"time"

	"github.com/aws/aws-sdk-go-v2/service/kms"
	"github.com/jackc/pgx/v5/pgxpool"
	dto "github.com/prometheus/client_model/go"

	"github.com/reencrypt/reencrypt/internal/fixture"
	"github.com/reencrypt/reencrypt/pkg/batch"
	"github.com/reencrypt/reencrypt/pkg/checkpoint"
	"github.com/reencrypt/reencrypt/pkg/kmsclient"
	"github.com/reencrypt/reencrypt/pkg/metrics"
	"github.com/reencrypt/reencrypt/pkg/tokentable"
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
	mode         batch.Mode
	old, new     kmsclient.Key
	batch        int
	lease        time.Duration
	owner        string
	ranges       int
	rangeWorkers int
	conflicts    int // ConflictRetries (default: the engine's)
	lockTimeout  time.Duration
	api          kmsclient.KMS
	db           batch.DB         // default: a pool of the engine's own, closed after the run
	metrics      *metrics.Metrics // default: a throwaway set
	logs         io.Writer        // default: the test log when -v
	cache        *kmsclient.Cache // default: 1024 keys for a minute, purged after the run
	hooks        batch.Hooks
	ctx          context.Context
}

// rotate runs one engine to the end of its pass, as one process would: with
// a connection pool of its own (sized like the CLI's), its own data-key
// cache and its own owner name. Set-up failures are returned, not fatal, so
// that it may run on a goroutine of its own (then pass o.db).
func rotate(t *testing.T, e *fixture.Env, o runOpts) (batch.Summary, error) {
	t.Helper()
	ctx := o.ctx
	if ctx == nil {
		ctx = context.Background()
	}
	if o.old.ARN == "" {
		o.old, o.new = e.Old, e.New
	}
	if o.api == nil {
		o.api = e.API
	}
	if o.db == nil {
		o.db = newPool(t, e, int32(max(o.rangeWorkers, 2)+4))
	}
	if o.logs == nil {
		o.logs = testWriter(t)
	}
	table, err := tokentable.Inspect(ctx, o.db, e.Spec())
	if err != nil {
		return batch.Summary{}, fmt.Errorf("test set-up: inspect: %w", err)
	}
	// Migrate on the fixture's pool: o.db may be a wrapper, and Migrate
	// needs a pool's configuration for its own connection.
	if err := checkpoint.New(e.DB, "reencrypt").Migrate(ctx); err != nil {
		return batch.Summary{}, fmt.Errorf("test set-up: migrate: %w", err)
	}
	store := checkpoint.New(o.db, "reencrypt")
	cache := o.cache
	if cache == nil {
		cache = kmsclient.NewCache(1024, time.Minute)
		defer cache.Purge()
	}
	kc := kmsclient.NewClient(o.api, fixture.Namespace, cache)
	eng, err := batch.New(batch.Config{Table: table, Old: o.old, New: o.new, Mode: o.mode,
		BatchSize: o.batch, LeaseTTL: o.lease, Owner: o.owner, Ranges: o.ranges, Workers: 8,
		RangeWorkers: o.rangeWorkers, StopGrace: time.Second, ConflictRetries: o.conflicts, Hooks: o.hooks,
		LockTimeout: o.lockTimeout},
		batch.Deps{DB: o.db, Store: store, KMS: kc, Log: slog.New(slog.NewJSONHandler(o.logs, nil)), Metrics: o.metrics})
	if err != nil {
		return batch.Summary{}, fmt.Errorf("test set-up: engine: %w", err)
	}
	return eng.Run(ctx)
}

// newPool opens a pool of at most conns connections to the test database,
// closed when the test ends.
func newPool(t *testing.T, e *fixture.Env, conns int32) *pgxpool.Pool {
	t.Helper()
	pc, err := pgxpool.ParseConfig(e.URL)
	if err != nil {
		t.Fatal(err)
	}
	pc.MaxConns = conns
	p, err := pgxpool.NewWithConfig(context.Background(), pc)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(p.Close)
	return p
}

// counter reads a counter of a metrics set.
func counter(t *testing.T, c interface{ Write(*dto.Metric) error }) float64 {
	t.Helper()
	var m dto.Metric
	if err := c.Write(&m); err != nil {
		t.Fatal(err)
	}
	return m.GetCounter().GetValue()
}

type tWriter struct{ t *testing.T }

func (w tWriter) Write(p []byte) (int, error) { w.t.Log(string(p)); return len(p), nil }

func testWriter(t *testing.T) io.Writer {
	if testing.Verbose() {
		return tWriter{t}
	}
	return io.Discard
}
