package batch

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"math/rand/v2"
	"sync"
	"time"

	"github.com/jackc/pgx/v5/pgconn"

	"github.com/reencrypt/reencrypt/pkg/checkpoint"
	"github.com/reencrypt/reencrypt/pkg/kmsclient"
	"github.com/reencrypt/reencrypt/pkg/metrics"
	"github.com/reencrypt/reencrypt/pkg/tokentable"
)

// DB is what the engine needs from Postgres; *pgxpool.Pool fits.
type DB = checkpoint.DB

// Mode is how tokens are rotated.
type Mode string

const (
	// Rekey opens each token and seals it under a new data key generated
	// under NEW (one data key per page).
	Rekey Mode = "rekey"
	// Rewrap asks KMS to re-encrypt each wrapped data key from OLD to NEW;
	// nonce and ciphertext stay as they are, no plaintext enters the process.
	Rewrap Mode = "rewrap"
)

// Config is the engine's tuning. Zero values take the engine's defaults
// (the Default* constants, defaults.go).
type Config struct {
	Table     *tokentable.Table
	Old, New  kmsclient.Key
	Mode      Mode
	Namespace string

	BatchSize       int           // rows per page
	Workers         int           // KMS calls in flight per page
	RangeWorkers    int           // ranges worked at once by this process
	Ranges          int           // most ranges a pass is cut into; see planRanges
	LeaseTTL        time.Duration // lease length; renewed at a third of it
	PageTimeout     time.Duration // one page, KMS and commit included
	LockTimeout     time.Duration // a page's longest wait for a row lock; see pageTxSettings
	StopGrace       time.Duration // time to finish the page in flight on shutdown
	PageRetries     int           // transient failures of one page before giving up
	ConflictRetries int           // re-reads of rows the live API changed
	Owner           string        // this process in leases and logs

	// Pacer, when set, is asked before every page and told how long every
	// commit took (package pacer): pause, throttles, replica lag.
	Pacer Pacer

	Hooks Hooks // tests only (see hooks.go); nil in production
}

func (c Config) withDefaults() Config {
	c.BatchSize = cmp.Or(c.BatchSize, DefaultBatchSize)
	c.Workers = cmp.Or(c.Workers, DefaultWorkers)
	c.RangeWorkers = cmp.Or(c.RangeWorkers, DefaultRangeWorkers)
	c.Ranges = cmp.Or(c.Ranges, DefaultRanges)
	c.LeaseTTL = cmp.Or(c.LeaseTTL, DefaultLeaseTTL)
	c.PageTimeout = cmp.Or(c.PageTimeout, DefaultPageTimeout)
	c.LockTimeout = cmp.Or(c.LockTimeout, DefaultLockTimeout)
	c.StopGrace = cmp.Or(c.StopGrace, DefaultStopGrace)
	c.PageRetries = cmp.Or(c.PageRetries, DefaultPageRetries)
	c.ConflictRetries = cmp.Or(c.ConflictRetries, DefaultConflictRetries)
	c.Mode = cmp.Or(c.Mode, DefaultMode)
	c.Namespace = cmp.Or(c.Namespace, DefaultNamespace)
	return c
}

// Validate refuses settings the engine cannot run with.
func (c Config) Validate() error {
	switch {
	case c.Table == nil:
		return configErrorf("no table")
	case c.Old.ARN == "" || c.New.ARN == "":
		return fieldError(configErrorf("both keys must be resolved to ARNs"), FieldOldKey, FieldNewKey)
	case c.Old.ARN == c.New.ARN:
		return fieldError(configErrorf("%s and %s are the same key %s", c.Old.Ref, c.New.Ref, c.Old.ARN), FieldOldKey, FieldNewKey)
	case c.Mode != Rekey && c.Mode != Rewrap:
		return fieldError(configErrorf("%q: want rekey or rewrap", c.Mode), FieldMode)
	case c.BatchSize < MinBatchSize || c.BatchSize > MaxBatchSize:
		return fieldError(configErrorf("%d: want %d..%d", c.BatchSize, MinBatchSize, MaxBatchSize), FieldBatchSize)
	case c.Workers < 1 || c.Workers > MaxWorkers:
		return fieldError(configErrorf("%d: want 1..%d", c.Workers, MaxWorkers), FieldWorkers)
	case c.RangeWorkers < 1 || c.RangeWorkers > MaxRangeWorkers:
		return fieldError(configErrorf("%d: want 1..%d", c.RangeWorkers, MaxRangeWorkers), FieldRangeWorkers)
	case c.Ranges < 1 || c.Ranges > MaxRanges:
		return fieldError(configErrorf("%d: want 1..%d", c.Ranges, MaxRanges), FieldRanges)
	case c.LeaseTTL < MinLeaseTTL:
		return fieldError(configErrorf("%s: want at least %s", c.LeaseTTL, MinLeaseTTL), FieldLeaseTTL)
	case c.PageTimeout < MinPageTimeout:
		return fieldError(configErrorf("%s: want at least %s", c.PageTimeout, MinPageTimeout), FieldPageTimeout)
	case c.LockTimeout < MinLockTimeout:
		return fieldError(configErrorf("%s: want at least %s", c.LockTimeout, MinLockTimeout), FieldLockTimeout)
	case c.StopGrace < MinStopGrace:
		return fieldError(configErrorf("%s: want at least %s", c.StopGrace, MinStopGrace), FieldStopGrace)
	}
	return nil
}

// Pacer decides when the next page may start; see package pacer.
type Pacer interface {
	// BeforePage waits until a page may start; it fails only when ctx ends.
	BeforePage(ctx context.Context) error
	// AfterPage is told how long a page's commit took.
	AfterPage(commit time.Duration)
}

// Engine rotates one table. Build it with New; Run may be called once.
type Engine struct {
	cfg     Config
	db      DB
	store   *checkpoint.Store
	kms     *kmsclient.Client
	kids    *kmsclient.KidResolver // kids that are key ids or aliases
	log     *slog.Logger
	metrics *metrics.Metrics
	sql     statements
	details []byte // the audit details shared by every row of the run

	jitter func(n int64) int64 // retry backoff draws: rand.Int64N

	run   checkpoint.Run
	mu    sync.Mutex
	total checkpoint.Counts // what this process did
	pages int64
}

// Deps are what an engine works with, as opposed to Config, what it does.
type Deps struct {
	DB      DB
	Store   *checkpoint.Store
	KMS     *kmsclient.Client
	Log     *slog.Logger
	Metrics *metrics.Metrics // may be nil
}

// New checks cfg and returns an engine.
func New(cfg Config, d Deps) (*Engine, error) {
	cfg = cfg.withDefaults()
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	m := d.Metrics
	if m == nil {
		m = metrics.New(nil)
	}
	return &Engine{cfg: cfg, db: d.DB, store: d.Store, kms: d.KMS, kids: kmsclient.NewKidResolver(d.KMS.API()), log: d.Log, metrics: m, sql: newStatements(cfg.Table),
		jitter: rand.Int64N}, nil
}

// Spec is the run this engine works on.
func (e *Engine) Spec() checkpoint.RunSpec {
	return checkpoint.RunSpec{
		Table: e.cfg.Table.Qualified(), OldARN: e.cfg.Old.ARN, NewARN: e.cfg.New.ARN,
		Mode: string(e.cfg.Mode), Namespace: e.cfg.Namespace,
	}
}

// Summary is what Run reports.
type Summary struct {
	RunID    string
	Pass     int
	Process  checkpoint.Counts     // rows this process handled
	PassAll  checkpoint.PassStatus // the whole pass, all processes
	Pages    int64
	Duration time.Duration
}

// Run joins the run, works ranges until the pass is complete or ctx is
// cancelled, and returns what was done. Errors: ErrInterrupted on shutdown,
// a *PartialError when rows were left behind, kmsclient.ErrKeyUnusable when a
// key became unusable, checkpoint errors or transient errors otherwise (also
// when the finished pass's totals cannot be read: nil is never a guess).
func (e *Engine) Run(ctx context.Context) (Summary, error) {
	start := time.Now()
	var dbStart time.Time
	var run checkpoint.Run
	// Joining (and planning a pass) is one transaction: retried like a page,
	// so that a connection killed in the pool does not end the run at once.
	err := e.retry(ctx, "join run", e.log, func() error {
		if dbStart.IsZero() {
			if err := e.db.QueryRow(ctx, `SELECT now()`).Scan(&dbStart); err != nil {
				return fmt.Errorf("read database clock: %w", err)
			}
		}
		var err error
		run, err = e.store.Join(ctx, e.Spec(), dbStart, func(ctx context.Context) ([]checkpoint.Bounds, error) {
			return planRanges(ctx, e.db, e.cfg.Table, e.cfg.Ranges, e.cfg.BatchSize)
		})
		return err
	})
	if err != nil {
		return Summary{}, err
	}
	e.run = run
	e.details = tokentable.AuditDetails{RunID: run.ID, Pass: run.Pass, Mode: string(e.cfg.Mode),
		OldKeyARN: e.cfg.Old.ARN, NewKeyARN: e.cfg.New.ARN}.JSON()
	log := e.log.With("run_id", run.ID, "pass", run.Pass)
	log.Info("run joined", "new_pass", run.NewPass, "table", e.cfg.Table.Qualified(), "mode", e.cfg.Mode,
		"old_key_arn", e.cfg.Old.ARN, "new_key_arn", e.cfg.New.ARN, "owner", e.cfg.Owner)
	_ = e.store.Event(ctx, e.db, checkpoint.Event{Run: run, Name: "process_started", Owner: e.cfg.Owner,
		Details: map[string]any{"new_pass": run.NewPass, "build": e.store.Build()}})

	err = e.workRanges(ctx, log)

	sum := Summary{RunID: run.ID, Pass: run.Pass, Duration: time.Since(start)}
	e.mu.Lock()
	sum.Process, sum.Pages = e.total, e.pages
	e.mu.Unlock()

	endCtx, cancel := context.WithTimeout(context.WithoutCancel(ctx), finishTimeout)
	defer cancel()
	if err == nil {
		if _, ferr := e.store.FinishPass(endCtx, run); ferr != nil {
			err = ferr
		}
	}
	if st, serr := e.store.Status(endCtx, run); serr == nil {
		sum.PassAll = st
	} else if err == nil {
		// Without the pass's totals nothing proves that no row was
		// quarantined or left conflicted: never success, a rerun reads them.
		err = transient(fmt.Errorf("read the totals of the finished pass: %w", serr))
	}
	if err == nil && (sum.PassAll.Counts.Quarantined > 0 || sum.PassAll.Counts.Conflicted > 0) {
		err = &PartialError{RunID: run.ID, Quarantined: sum.PassAll.Counts.Quarantined, Conflicted: sum.PassAll.Counts.Conflicted}
	}
	outcome := "done"
	if err != nil {
		outcome = "stopped"
	}
	_ = e.store.Event(endCtx, e.db, checkpoint.Event{Run: run, Name: "process_" + outcome, Owner: e.cfg.Owner, Details: map[string]any{
		"rotated": sum.Process.Rotated, "skipped": sum.Process.Skipped, "other_key": sum.Process.OtherKey,
		"quarantined": sum.Process.Quarantined, "conflicted": sum.Process.Conflicted, "pages": sum.Pages,
		"error": errString(err),
	}})
	return sum, err
}

func errString(err error) string {
	if err == nil {
		return ""
	}
	return err.Error()
}

// workRanges runs RangeWorkers claim loops and returns the first fatal error.
func (e *Engine) workRanges(ctx context.Context, log *slog.Logger) error {
	ctx, cancel := context.WithCancelCause(ctx)
	defer cancel(nil)
	var wg sync.WaitGroup
	errs := make([]error, e.cfg.RangeWorkers)
	end := newPassEnd()
	for w := range e.cfg.RangeWorkers {
		wg.Go(func() {
			errs[w] = e.claimLoop(ctx, log, end)
			if errs[w] != nil && !errors.Is(errs[w], ErrInterrupted) {
				cancel(errs[w]) // a fatal error stops the siblings
			}
		})
	}
	wg.Wait()
	if cause := context.Cause(ctx); cause != nil && !errors.Is(cause, context.Canceled) {
		return cause
	}
	for _, err := range errs {
		if err != nil {
			return err
		}
	}
	return nil
}

// passEnd is how the claim loop that finds its pass complete wakes this
// process's other claim loops, waiting for the last ranges to be finished:
// the run then ends with its last page, not up to a claim poll later. Only
// the pass's end wakes them. A waiting loop never claims before its poll is
// over: claiming at once whenever a range ends raised the KMS demand a run
// shares with the live API (see 0344ca6).
type passEnd struct {
	once sync.Once
	done chan struct{}
}

func newPassEnd() *passEnd { return &passEnd{done: make(chan struct{})} }

// reached marks the pass complete; the first call wakes the waiting loops.
func (p *passEnd) reached() { p.once.Do(func() { close(p.done) }) }

// claimLoop claims ranges until none is left in the pass. When every
// remaining range is leased by a live process it waits: a lease that
// expires (its owner died) is taken over.
func (e *Engine) claimLoop(ctx context.Context, log *slog.Logger, end *passEnd) error {
	poll := min(e.cfg.LeaseTTL/3, maxClaimPoll)
	for {
		if ctx.Err() != nil {
			return ErrInterrupted
		}
		// The claim runs on a context the shutdown signal does not cancel: a
		// claim cancelled in flight may still commit on the server and leave
		// the range leased to a process that is exiting. A lease obtained
		// after the signal is released by workRange at once.
		var lease *checkpoint.Lease
		err := e.retry(ctx, "claim", log, func() error {
			cctx, ccancel := context.WithTimeout(context.WithoutCancel(ctx), e.cfg.LeaseTTL)
			defer ccancel()
			var err error
			lease, err = e.store.Claim(cctx, e.run, e.cfg.Owner, e.cfg.LeaseTTL)
			return err
		})
		if err != nil {
			if ctx.Err() != nil {
				return ErrInterrupted
			}
			return err
		}
		if lease == nil {
			var st checkpoint.PassStatus
			err := e.retry(ctx, "read pass status", log, func() error {
				var err error
				st, err = e.store.Status(ctx, e.run)
				return err
			})
			if err != nil {
				if ctx.Err() != nil {
					return ErrInterrupted
				}
				return err
			}
			e.metrics.Ranges.WithLabelValues("done").Set(float64(st.Done))
			e.metrics.Ranges.WithLabelValues("running").Set(float64(st.Running))
			e.metrics.Ranges.WithLabelValues("pending").Set(float64(st.Pending))
			if st.Complete() {
				end.reached()
				return nil
			}
			select {
			case <-ctx.Done():
				return ErrInterrupted
			case <-end.done: // a sibling found the pass complete
				return nil
			case <-time.After(poll):
			}
			continue
		}
		rlog := log.With("range", lease.Range, "lease_token", lease.Token)
		rlog.Info("range claimed", "lower", deref(lease.Bounds.Lower), "upper", deref(lease.Bounds.Upper), "cursor", deref(lease.Cursor))
		err = e.workRange(ctx, lease, rlog)
		switch {
		case err == nil:
			rlog.Info("range finished")
		case errors.Is(err, checkpoint.ErrFenced):
			e.metrics.FencedCommits.Inc()
			rlog.Warn("lease lost to another process; range dropped", "err", err)
		default:
			return err
		}
	}
}

func deref(s *string) string {
	if s == nil {
		return ""
	}
	return *s
}

// workRange walks one leased range page by page. It renews the lease in the
// background; on shutdown it lets the page in flight finish (or roll back
// after StopGrace) and releases the lease so another process can go on.
func (e *Engine) workRange(ctx context.Context, l *checkpoint.Lease, log *slog.Logger) error {
	// Pages run on a context that the shutdown signal does not cancel at once:
	// it is cancelled StopGrace after the signal, or when the lease is lost.
	work, cancelWork := context.WithCancelCause(context.WithoutCancel(ctx))
	defer cancelWork(nil)
	stopTimer := context.AfterFunc(ctx, func() {
		t := time.AfterFunc(e.cfg.StopGrace, func() { cancelWork(ErrInterrupted) })
		context.AfterFunc(work, func() { t.Stop() })
	})
	defer stopTimer()

	renewDone := make(chan struct{})
	go func() {
		defer close(renewDone)
		tick := time.NewTicker(e.cfg.LeaseTTL / 3)
		defer tick.Stop()
		for {
			select {
			case <-work.Done():
				return
			case <-tick.C:
				if err := e.store.Renew(work, l, e.cfg.LeaseTTL); errors.Is(err, checkpoint.ErrFenced) {
					cancelWork(err)
					return
				} else if err != nil && work.Err() == nil {
					log.Warn("lease renewal failed; will retry", "err", err)
				}
			}
		}
	}()
	defer func() { cancelWork(nil); <-renewDone }()

	for {
		if ctx.Err() != nil {
			e.release(l, log)
			return ErrInterrupted
		}
		if p := e.cfg.Pacer; p != nil {
			// Held back (paused, throttled) with no transaction open; the
			// lease is still renewed. A signal ends the wait at once.
			if err := p.BeforePage(ctx); err != nil {
				e.release(l, log)
				return ErrInterrupted
			}
		}
		done, err := e.pageWithRetry(work, l, log)
		if err != nil {
			if cause := context.Cause(work); errors.Is(cause, checkpoint.ErrFenced) {
				return cause
			}
			if errors.Is(err, checkpoint.ErrFenced) {
				return err
			}
			e.release(l, log)
			if ctx.Err() != nil {
				return ErrInterrupted
			}
			return err
		}
		if done {
			return nil
		}
	}
}

func (e *Engine) release(l *checkpoint.Lease, log *slog.Logger) {
	ctx, cancel := context.WithTimeout(context.Background(), releaseTimeout)
	defer cancel()
	if err := e.store.Release(ctx, l); err != nil {
		log.Warn("release lease", "err", err)
	}
}

// pageWithRetry runs one page, retrying transient failures (IsTransient)
// with capped, jittered exponential backoff. Nothing else is retried: key,
// configuration and fencing errors, and errors no one recognises (a bug
// fails fast).
func (e *Engine) pageWithRetry(ctx context.Context, l *checkpoint.Lease, log *slog.Logger) (bool, error) {
	var done bool
	err := e.retry(ctx, "page", log, func() error {
		var err error
		done, err = e.page(ctx, l, log)
		if err != nil && IsTransient(err) {
			e.metrics.PageFailures.Inc()
		}
		return err
	})
	if err != nil {
		return false, fmt.Errorf("range %d after cursor %q: %w", l.Range, deref(l.Cursor), err)
	}
	return done, nil
}

// retry runs fn (a page, a claim, a status read), retrying the failures
// IsTransient recognises (a terminated connection, a database restart,
// throttling) with capped exponential backoff and full jitter (a failed page
// has been rolled back). Claims and status reads need it as much as pages:
// without it one dropped pooled connection stops a worker that was merely
// polling for work, and with it every sibling.
func (e *Engine) retry(ctx context.Context, what string, log *slog.Logger, fn func() error) error {
	deadConns := 0 // pooled connections found killed, retried at once
	for attempt := 1; ; attempt++ {
		err := fn()
		if err == nil {
			return nil
		}
		// A connection killed while idle in the pool (pg_terminate_backend,
		// a failover) fails the first statement sent on it. The next one
		// from the pool may be dead too: try them all at once, without
		// counting them as attempts, before backing off.
		if connKilled(err) && deadConns < maxDeadConns && ctx.Err() == nil {
			deadConns++
			attempt--
			log.Debug(what+": pooled connection was killed; retrying at once", "err", err)
			continue
		}
		if !IsTransient(err) || ctx.Err() != nil || attempt >= e.cfg.PageRetries {
			if IsTransient(err) {
				err = transient(err)
			}
			return fmt.Errorf("%s: %w", what, err)
		}
		backoff := retryDelay(attempt, e.jitter)
		log.Warn(what+" failed; retrying", "attempt", attempt, "backoff", backoff, "err", err)
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(backoff):
		}
	}
}

// The backoff between tries of retry: the ceiling doubles from
// retryBackoffBase up to retryBackoffCap, and the delay is drawn uniformly
// below it ("full jitter"), so that the pods of a Job that failed together
// (a database failover) do not come back together, in lockstep, every time.
const (
	retryBackoffBase = 500 * time.Millisecond
	retryBackoffCap  = 15 * time.Second
)

// retryDelay is the delay before try attempt+1: uniform in [0, ceiling)
// where ceiling is min(retryBackoffCap, retryBackoffBase·2^(attempt−1)).
// n draws in [0, n) (rand.Int64N; tests pass a seeded source).
func retryDelay(attempt int, n func(int64) int64) time.Duration {
	ceiling := min(retryBackoffBase<<min(max(attempt-1, 0), 16), retryBackoffCap)
	return time.Duration(n(int64(ceiling)))
}

// maxDeadConns bounds the immediate retries of one call on killed pooled
// connections: as many as the largest pool a run opens holds
// (PoolConns(MaxRangeWorkers)), so that a failover that killed them all
// costs no backoff and no try at any RangeWorkers.
const maxDeadConns = MaxRangeWorkers + PoolSpareConns

// connKilled reports an error of a connection the server terminated
// (SQLSTATE 57P01 admin_shutdown, 57P02 crash_shutdown). A server that is
// starting up (57P03) is waited for with the usual backoff instead.
func connKilled(err error) bool {
	var pgErr *pgconn.PgError
	return errors.As(err, &pgErr) && (pgErr.Code == "57P01" || pgErr.Code == "57P02")
}

// Timeouts of the engine's short bookkeeping statements, each on a context
// of its own that the shutdown signal does not cancel.
const (
	// finishTimeout bounds Run's closing writes and reads (finish the pass,
	// read its totals, record the process's end event): a few small
	// statements, which must not hang an exiting process.
	finishTimeout = 5 * time.Second
	// releaseTimeout bounds the one UPDATE that gives a lease back on
	// shutdown; a release that fails only means the lease expires instead.
	releaseTimeout = 3 * time.Second
	// maxClaimPoll is the longest wait between claim attempts while every
	// remaining range is leased by a live process (a third of LeaseTTL when
	// that is shorter): an expired lease is taken over within about a second.
	maxClaimPoll = time.Second
)

// Progress is what this process has done so far.
func (e *Engine) Progress() checkpoint.Counts {
	e.mu.Lock()
	defer e.mu.Unlock()
	return e.total
}
