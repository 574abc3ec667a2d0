package pacer_test

import (
	"context"
	"errors"
	"io"
	"log/slog"
	"math"
	"os"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/service/kms"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/reencrypt/reencrypt/internal/fixture"
	"github.com/reencrypt/reencrypt/internal/kmsfault"
	"github.com/reencrypt/reencrypt/internal/testbed"
	"github.com/reencrypt/reencrypt/pkg/batch"
	"github.com/reencrypt/reencrypt/pkg/checkpoint"
	"github.com/reencrypt/reencrypt/pkg/kmsclient"
	"github.com/reencrypt/reencrypt/pkg/metrics"
	"github.com/reencrypt/reencrypt/pkg/pacer"
	"github.com/reencrypt/reencrypt/pkg/tokentable"
)

func TestMain(m *testing.M) { testbed.Main(m) }

func newPool(t *testing.T, url string) *pgxpool.Pool {
	t.Helper()
	p, err := pgxpool.New(context.Background(), url)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(p.Close)
	return p
}

func logger(t *testing.T) *slog.Logger {
	if testing.Verbose() {
		return slog.New(slog.NewTextHandler(tWriter{t}, nil))
	}
	return slog.New(slog.NewTextHandler(io.Discard, nil))
}

type tWriter struct{ t *testing.T }

func (w tWriter) Write(p []byte) (int, error) { w.t.Log(string(p)); return len(p), nil }

// held reports whether BeforePage is still waiting after d.
func held(p *pacer.Pacer, d time.Duration) bool {
	ctx, cancel := context.WithTimeout(context.Background(), d)
	defer cancel()
	return errors.Is(p.BeforePage(ctx), context.DeadlineExceeded)
}

// waitFor polls cond for up to limit (testbed.WaitFor).
func waitFor(t *testing.T, limit time.Duration, what string, cond func() bool) {
	t.Helper()
	testbed.WaitFor(t, what, limit, cond)
}

// settle waits until count stops moving for half a second (a page in
// flight commits in well under that here) and returns it.
// A page takes up to 100 rows / 150 KMS calls/s (the budget's slow start)
// = 0.7 s: a count still for 2 s has no page in flight.
func settle(t *testing.T, count func() int64) int64 {
	t.Helper()
	last, since := count(), time.Now()
	testbed.WaitFor(t, "the count to stop moving", 30*time.Second, func() bool {
		if n := count(); n != last {
			last, since = n, time.Now()
		}
		return time.Since(since) >= 2*time.Second
	})
	return last
}

// A real streaming replica whose replay is paused falls behind while the
// primary writes: pages are held until it has caught up again.
func TestReplicaLagHoldsPages(t *testing.T) {
	ctx := context.Background()
	primary := testbed.PrivatePostgres(t, testbed.PostgresOptions{})
	name := testbed.DatabaseName(t.Name())
	dsn, err := primary.CreateDatabase(ctx, name)
	if err != nil {
		t.Fatal(err)
	}
	db := newPool(t, dsn)
	if _, err := db.Exec(ctx, `CREATE TABLE w (id bigserial PRIMARY KEY, at timestamptz DEFAULT now())`); err != nil {
		t.Fatal(err)
	}
	store := checkpoint.New(db, "reencrypt")
	if err := store.Migrate(ctx); err != nil {
		t.Fatal(err)
	}
	replica := testbed.Replica(t, primary)
	rdb := newPool(t, replica.URL(name))
	waitFor(t, time.Minute, "replica has the database", func() bool {
		var n int
		return rdb.QueryRow(ctx, `SELECT count(*) FROM w`).Scan(&n) == nil
	})

	m := metrics.New(nil)
	p := pacer.New(pacer.Config{Table: "public.t", Owner: "pod-1", MaxReplicaLag: time.Second,
		Replicas: []pacer.Querier{rdb}, PageRows: 100, Poll: 100 * time.Millisecond},
		pacer.Deps{DB: db, Store: store, Log: logger(t), Metrics: m})
	runCtx, stop := context.WithCancel(ctx)
	var wg sync.WaitGroup
	wg.Go(func() { p.Run(runCtx) })
	defer func() { stop(); wg.Wait() }()

	if held(p, 500*time.Millisecond) {
		t.Fatal("pages held while the replica is caught up")
	}
	if _, err := rdb.Exec(ctx, `SELECT pg_wal_replay_pause()`); err != nil {
		t.Fatal(err)
	}
	writes, stopWrites := context.WithCancel(ctx)
	defer stopWrites()
	wg.Go(func() {
		for writes.Err() == nil {
			_, _ = db.Exec(writes, `INSERT INTO w DEFAULT VALUES`)
			time.Sleep(20 * time.Millisecond) // the point: a steady stream of writes for the replica to fall behind on
		}
	})
	waitFor(t, 20*time.Second, "pages held for replica lag", func() bool { return held(p, 300*time.Millisecond) })
	if state, reasons := p.State(); state != "throttled" || len(reasons) != 1 || reasons[0] != metrics.HeldReplicaLag {
		t.Errorf("state %s %v, want throttled [replica_lag]", state, reasons)
	}
	stopWrites()
	if _, err := rdb.Exec(ctx, `SELECT pg_wal_replay_resume()`); err != nil {
		t.Fatal(err)
	}
	waitFor(t, 20*time.Second, "pages released once the replica caught up", func() bool { return !held(p, 300*time.Millisecond) })
	if state, _ := p.State(); state != "running" {
		t.Errorf("state %s after the replica caught up, want running", state)
	}
}

// pod is one engine with its own pool, cache and pacer, as one process.
type pod struct {
	pacer *pacer.Pacer
	sum   batch.Summary
	err   error
}

func startPod(t *testing.T, ctx context.Context, e *fixture.Env, owner string, wg *sync.WaitGroup) *pod {
	t.Helper()
	db := newPool(t, e.URL)
	table, err := tokentable.Inspect(ctx, db, e.Spec())
	if err != nil {
		t.Fatal(err)
	}
	store := checkpoint.New(db, "reencrypt")
	if err := store.Migrate(ctx); err != nil {
		t.Fatal(err)
	}
	budget := kmsclient.NewBudget(600, 1) // slow enough to pause mid-run
	api := budgeted{KMS: e.API, budget: budget}
	kc := kmsclient.NewClient(api, fixture.Namespace, kmsclient.NewCache(1024, time.Minute))
	pd := &pod{pacer: pacer.New(pacer.Config{Table: table.Qualified(), Owner: owner, PageRows: 100, Poll: 100 * time.Millisecond},
		pacer.Deps{DB: db, Store: store, Budget: budget, Log: logger(t)})}
	eng, err := batch.New(batch.Config{Table: table, Old: e.Old, New: e.New, BatchSize: 100, Workers: 8,
		RangeWorkers: 2, LeaseTTL: 5 * time.Second, StopGrace: time.Second, Owner: owner, Pacer: pd.pacer},
		batch.Deps{DB: db, Store: store, KMS: kc, Log: logger(t)})
	if err != nil {
		t.Fatal(err)
	}
	pctx, stop := context.WithCancel(ctx)
	wg.Go(func() { pd.pacer.Run(pctx) })
	wg.Go(func() {
		defer stop()
		pd.sum, pd.err = eng.Run(ctx)
	})
	return pd
}

// budgeted paces calls on a budget, as the SDK client's middleware does.
type budgeted struct {
	kmsclient.KMS
	budget *kmsclient.Budget
}

// TestPauseWithinOnePage: two pods rotate one table; an operator pause
// stops both before each one's next page (at most the pages in flight
// commit), nothing moves while paused, and resume finishes the run with
// every row rotated once.
func TestPauseWithinOnePage(t *testing.T) {
	ctx := context.Background()
	e := fixture.New(t, "uuid")
	ids := e.Seed(6_000, e.Old, 1)
	store := checkpoint.New(e.DB, "reencrypt")
	if err := store.Migrate(ctx); err != nil {
		t.Fatal(err)
	}
	var wg sync.WaitGroup
	pods := []*pod{startPod(t, ctx, e, "pod-a", &wg), startPod(t, ctx, e, "pod-b", &wg)}
	rotated := func() int64 {
		return e.Int(`SELECT count(*) FROM payment_method_audit WHERE action = 'token_reencrypted'`)
	}
	pages := func() int64 { return e.Int(`SELECT coalesce(sum(pages), 0) FROM reencrypt.ranges`) }
	waitFor(t, time.Minute, "first 1,000 rows rotated", func() bool { return rotated() >= 1_000 })

	if _, err := store.SetControls(ctx, "public.payment_methods", "paused", func(c *checkpoint.Controls) {
		c.Paused, c.Reason = true, "test"
	}); err != nil {
		t.Fatal(err)
	}
	atPause := pages()
	waitFor(t, 10*time.Second, "both pods report paused", func() bool {
		for _, p := range pods {
			if s, _ := p.pacer.State(); s != "paused" {
				return false
			}
		}
		return true
	})
	// A pod reports paused when one of its range workers is held; the page
	// the other had in flight may still commit. Then nothing may move.
	stopped := settle(t, pages)
	// Still paused: a page asked for now is held, on both pods (each check
	// waits 300 ms for BeforePage). Only then is the count compared again.
	waitFor(t, 10*time.Second, "both pods hold the next page", func() bool {
		for _, p := range pods {
			if !held(p.pacer, 300*time.Millisecond) {
				return false
			}
		}
		return true
	})
	if still := pages(); still != stopped {
		t.Fatalf("%d pages committed while paused", still-stopped)
	}
	// 2 pods × 2 range workers: at most the page each worker had in flight.
	if after := stopped - atPause; after > 4 {
		t.Errorf("%d pages committed after the pause, want at most the 4 in flight", after)
	}
	if n := rotated(); n >= int64(len(ids)) {
		t.Fatalf("all %d rows rotated before the pause took effect: the test proves nothing", n)
	}
	var by string
	if err := e.DB.QueryRow(ctx, `SELECT owner FROM reencrypt.events WHERE event = 'paused' AND table_name = 'public.payment_methods'`).Scan(&by); err != nil || by != "postgres" {
		t.Errorf("pause event by %q (%v), want the role postgres", by, err)
	}

	if _, err := store.SetControls(ctx, "public.payment_methods", "resumed", func(c *checkpoint.Controls) { c.Paused = false }); err != nil {
		t.Fatal(err)
	}
	wg.Wait()
	for _, p := range pods {
		if p.err != nil {
			t.Errorf("pod: %v", p.err)
		}
	}
	if n := rotated(); n != int64(len(ids)) {
		t.Errorf("%d rows rotated, want %d", n, len(ids))
	}
	e.AssertAll(fixture.Check{Under: e.New})
}

func (b budgeted) Decrypt(ctx context.Context, in *kms.DecryptInput, o ...func(*kms.Options)) (*kms.DecryptOutput, error) {
	if err := b.budget.Wait(ctx); err != nil {
		return nil, err
	}
	return b.KMS.Decrypt(ctx, in, o...)
}

func (b budgeted) GenerateDataKey(ctx context.Context, in *kms.GenerateDataKeyInput, o ...func(*kms.Options)) (*kms.GenerateDataKeyOutput, error) {
	if err := b.budget.Wait(ctx); err != nil {
		return nil, err
	}
	return b.KMS.GenerateDataKey(ctx, in, o...)
}

// TestPodsShareTheKMSBudget: two pods share one KMS_RATE_LIMIT through the
// state schema. While both are live each grows to half of it and no more;
// when KMS throttles one of them (local-kms behind the fault proxy), the
// other slows down with it although it was never throttled itself.
func TestPodsShareTheKMSBudget(t *testing.T) {
	ctx := context.Background()
	e := fixture.New(t, "uuid")
	store := checkpoint.New(e.DB, "reencrypt")
	if err := store.Migrate(ctx); err != nil {
		t.Fatal(err)
	}
	proxy, err := kmsfault.Start(e.KMS.Endpoint())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = proxy.Close() })
	for _, kv := range e.KMS.Env() {
		name, val, _ := strings.Cut(kv, "=")
		t.Setenv(name, val)
	}
	t.Setenv("AWS_ENDPOINT_URL_KMS", proxy.Endpoint())
	t.Setenv("AWS_CONFIG_FILE", os.DevNull)
	t.Setenv("AWS_SHARED_CREDENTIALS_FILE", os.DevNull)

	const limit = 600.0
	pctx, stop := context.WithCancel(ctx)
	var wg sync.WaitGroup
	defer func() { stop(); wg.Wait() }()
	type member struct {
		budget *kmsclient.Budget
		api    kmsclient.KMS
	}
	join := func(owner string) member {
		budget := kmsclient.NewBudget(limit, 1) // the pacer splits it by live pods
		api, err := kmsclient.New(ctx, kmsclient.Options{Budget: budget, MaxAttempts: 1})
		if err != nil {
			t.Fatal(err)
		}
		p := pacer.New(pacer.Config{Table: "public.payment_methods", Owner: owner, KMSRateLimit: limit, PageRows: 100,
			Poll: 100 * time.Millisecond}, pacer.Deps{DB: e.DB, Store: store, Budget: budget, Log: logger(t)})
		wg.Go(func() { p.Run(pctx) })
		return member{budget, api}
	}
	// traffic sends requests as fast as m's budget lets it, for d or until
	// done says so.
	traffic := func(m member, d time.Duration, done func() bool) {
		tctx, cancel := context.WithTimeout(ctx, d)
		defer cancel()
		var tw sync.WaitGroup
		for range 16 {
			tw.Go(func() {
				for tctx.Err() == nil && !done() {
					_, _ = m.api.DescribeKey(tctx, &kms.DescribeKeyInput{KeyId: aws.String(e.New.ARN)})
				}
			})
		}
		tw.Wait()
	}
	never := func() bool { return false }
	a, b := join("pod-a"), join("pod-b")
	waitFor(t, 5*time.Second, "both pods' heartbeats", func() bool {
		_, pods, _, err := store.Pace(ctx, "public.payment_methods")
		return err == nil && len(pods) == 2
	})

	traffic(b, 4*time.Second, never) // slow start, then up to its share
	if r := b.budget.PerSecond(); r != limit/2 {
		t.Fatalf("pod-b's budget after 4 s of unthrottled traffic: %.0f/s, want its half of %.0f", r, limit)
	}

	// Throttle pod-a until its first slow-down, the one a pod that joined
	// earlier must not mistake for history.
	proxy.Set(kmsfault.Faults{Throttle: 1})
	traffic(a, 3*time.Second, func() bool { return a.budget.Decreases() > 0 })
	proxy.Set(kmsfault.Faults{})
	if a.budget.Decreases() == 0 {
		t.Fatal("pod-a was throttled for 3 s and never slowed down: the test proves nothing")
	}
	waitFor(t, 3*time.Second, "pod-b follows pod-a's slow-down", func() bool { return b.budget.PerSecond() < limit/2 })
	// One step (x0.8) per slow-down of pod-a, never more than pod-a took.
	steps := a.budget.Decreases()
	if r, floor := b.budget.PerSecond(), limit/2*math.Pow(0.8, float64(steps)); r < 0.99*floor {
		t.Errorf("pod-b slowed to %.0f/s, more than pod-a's %d slow-downs allow (%.0f/s)", r, steps, floor)
	}
}
