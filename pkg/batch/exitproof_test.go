package batch_test

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"strings"
	"sync"
	"sync/atomic"
	"testing"

	"github.com/aws/aws-sdk-go-v2/service/kms"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/reencrypt/reencrypt/internal/fixture"
	"github.com/reencrypt/reencrypt/internal/seed"
	"github.com/reencrypt/reencrypt/pkg/batch"
	"github.com/reencrypt/reencrypt/pkg/envelope"
	"github.com/reencrypt/reencrypt/pkg/kmsclient"
)

// statusKillDB is a pool whose pass-status reads fail for real once the
// pass is finished: the connection the read is sent on is terminated by the
// server (pg_terminate_backend) just before.
type statusKillDB struct {
	*pgxpool.Pool
	finished atomic.Bool
	killed   atomic.Int64
}

func (d *statusKillDB) Exec(ctx context.Context, sql string, args ...any) (pgconn.CommandTag, error) {
	tag, err := d.Pool.Exec(ctx, sql, args...)
	if err == nil && strings.Contains(sql, "pass_finished_at = clock_timestamp()") {
		d.finished.Store(true)
	}
	return tag, err
}

func (d *statusKillDB) QueryRow(ctx context.Context, sql string, args ...any) pgx.Row {
	if !d.finished.Load() || !strings.Contains(sql, "count(*) FILTER (WHERE state = 'done')") {
		return d.Pool.QueryRow(ctx, sql, args...)
	}
	c, err := d.Pool.Acquire(ctx)
	if err != nil {
		return errRow{err}
	}
	pid := c.Conn().PgConn().PID()
	var ok bool
	if err := d.Pool.QueryRow(ctx, `SELECT pg_terminate_backend($1, 10000)`, pid).Scan(&ok); err != nil || !ok {
		c.Release()
		return errRow{errors.Join(errors.New("terminate the status read's connection"), err)}
	}
	d.killed.Add(1)
	return releasingRow{c.QueryRow(ctx, sql, args...), c}
}

type errRow struct{ err error }

func (r errRow) Scan(...any) error { return r.err }

type releasingRow struct {
	pgx.Row
	c *pgxpool.Conn
}

func (r releasingRow) Scan(dst ...any) error {
	defer r.c.Release()
	return r.Row.Scan(dst...)
}

// TestFinalStatusReadFailureIsTransient: the pass is finished but the read
// of its totals fails. Run cannot know whether rows were quarantined or left
// conflicted, so it must not report success: a transient error (exit 75).
func TestFinalStatusReadFailureIsTransient(t *testing.T) {
	t.Parallel()
	e := fixture.New(t, "bigint")
	ids := e.Seed(300, e.Old, 1)
	e.SetToken(ids[42], []byte{0xA5, 1, 2, 3}) // quarantined: the run must not exit 0
	db := &statusKillDB{Pool: newPool(t, e, 6)}

	_, err := rotate(t, e, runOpts{batch: 50, db: db})
	if db.killed.Load() == 0 {
		t.Fatal("the final status read was never made to fail")
	}
	if err == nil || !batch.IsTransient(err) {
		t.Fatalf("run with its final status read failing: got %v, want a transient error", err)
	}
	if q := e.Quarantined(); len(q) != 1 {
		t.Errorf("quarantined rows: %v, want the one broken row", q)
	}
}

// hotRowsKMS plays a live API that rewrites a few hot rows between every
// read and write of the engine: when the engine unwraps the data key of a
// hot row's current token (it has read the row and has not written yet),
// the API rewrites every hot row first. It writes under OLD for the first
// `underOld` rounds, then under NEW (its deploy switched keys).
type hotRowsKMS struct {
	kmsclient.KMS
	e        *fixture.Env
	hot      []string
	underOld int

	mu      sync.Mutex
	current [][]byte // the wrapped keys of the hot rows' current tokens under OLD
	rounds  int
	latest  map[string][]byte
	err     error
}

func (k *hotRowsKMS) Decrypt(ctx context.Context, in *kms.DecryptInput, o ...func(*kms.Options)) (*kms.DecryptOutput, error) {
	k.mu.Lock()
	for _, w := range k.current {
		if bytes.Equal(w, in.CiphertextBlob) {
			k.rewrite(ctx)
			break
		}
	}
	k.mu.Unlock()
	return k.KMS.Decrypt(ctx, in, o...)
}

// rewrite writes every hot row once; k.mu is held.
func (k *hotRowsKMS) rewrite(ctx context.Context) {
	key := k.e.Old
	if k.rounds >= k.underOld {
		key = k.e.New
	}
	k.rounds++
	k.current = nil
	for _, id := range k.hot {
		pt := fmt.Appendf(nil, "tok_hot_%d_%s", k.rounds, id)
		tok, err := k.e.TrySeal(ctx, key, id, pt)
		if err == nil {
			_, err = k.e.DB.Exec(ctx, `UPDATE payment_methods SET encrypted_token = $2 WHERE id = $1::text::bigint`, id, tok)
		}
		if err != nil {
			k.err = errors.Join(k.err, err)
			return
		}
		k.latest[id] = pt
		if key == k.e.Old {
			env, _ := envelope.Parse(tok)
			k.current = append(k.current, env.WDEK)
		}
	}
}

// TestLastConflictRetryRereads: hot rows change between every read and
// write of the engine, under OLD until the last conflict retry and under
// NEW at it. Rows the API moved to NEW are done, not conflicted: the run
// must end with nothing left (exit 0), not send the pass round again (75).
func TestLastConflictRetryRereads(t *testing.T) {
	t.Parallel()
	const retries = 2
	e := fixture.New(t, "bigint")
	ids := e.Seed(40, e.Old, 1)
	api := &hotRowsKMS{KMS: e.API, e: e, hot: []string{ids[3], ids[17], ids[30]}, underOld: retries, latest: map[string][]byte{}}
	for _, id := range api.hot {
		env, err := envelope.Parse(e.Token(id))
		if err != nil {
			t.Fatal(err)
		}
		api.current = append(api.current, env.WDEK)
	}

	sum, err := rotate(t, e, runOpts{batch: 100, ranges: 1, rangeWorkers: 1, conflicts: retries, api: api})
	api.mu.Lock()
	rounds, werr := api.rounds, api.err
	api.mu.Unlock()
	if werr != nil {
		t.Fatalf("live writer: %v", werr)
	}
	if rounds != retries+1 {
		t.Errorf("the writer rewrote the hot rows %d times, want %d (once per swap try)", rounds, retries+1)
	}
	if err != nil {
		t.Fatalf("run: got %v, want nil: the hot rows are under NEW, nothing is left", err)
	}
	if c := sum.PassAll.Counts; c.Conflicted != 0 || c.Rotated != 37 || c.Skipped != 3 {
		t.Errorf("pass counts %+v, want 37 rotated, 3 skipped (under NEW by the API), 0 conflicted", c)
	}
	e.AssertAll(fixture.Check{Under: e.New, Want: func(id string) []byte {
		if pt, ok := api.latest[id]; ok {
			return pt
		}
		return seed.Plaintext(id)
	}})
}
