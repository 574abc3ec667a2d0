package pacer

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"math"
	"slices"
	"sync"
	"time"

	"github.com/jackc/pgx/v5"
	"golang.org/x/time/rate"

	"github.com/reencrypt/reencrypt/pkg/checkpoint"
	"github.com/reencrypt/reencrypt/pkg/kmsclient"
	"github.com/reencrypt/reencrypt/pkg/metrics"
)

// Config says what to watch. Zero values disable a watch.
type Config struct {
	Table            string        // schema-qualified token table: the scope of the controls
	Owner            string        // this pod, as in leases
	KMSRateLimit     float64       // KMS requests/s for the whole Job (0: none)
	MaxRowsPerSecond float64       // rows/s for the whole Job (0: none)
	MaxReplicaLag    time.Duration // 0: replicas not watched
	Replicas         []Querier     // REPLICA_URLS, each watched with pg_last_xact_replay_timestamp
	PageRows         int           // BATCH_SIZE: the rows limiter's burst
	Poll             time.Duration // heartbeat and lag checks (default 1s)
}

// Querier is what the pacer needs from a replica's connection pool.
type Querier interface {
	QueryRow(ctx context.Context, sql string, args ...any) pgx.Row
}

// Tunables of the watches; see the package doc.
const (
	defaultPoll        = time.Second
	holdRecheck        = 200 * time.Millisecond // how often a held page looks again
	busyFactor         = 2.0                    // a commit over busyFactor × baseline is busy
	busyMinExcess      = 10 * time.Millisecond  // ... and at least this much over it
	busyMaxWait        = 2 * time.Second
	recentWeight       = 0.3   // of each commit in the fast average (~3 pages)
	baselineWeight     = 0.05  // of each commit in the baseline (~20 pages)
	baselineWeightBusy = 0.005 // ... while busy (~200 pages)
	lagResumeFactor    = 0.5   // held pages resume under this share of MAX_REPLICA_LAG
)

// Pacer paces one engine. Build it with New, run Run in the background.
type Pacer struct {
	cfg     Config
	store   *checkpoint.Store
	db      checkpoint.DB
	budget  *kmsclient.Budget
	log     *slog.Logger
	metrics *metrics.Metrics
	rows    *rate.Limiter

	mu            sync.Mutex
	controls      checkpoint.Controls
	live          int // pods seen in the last heartbeat, this one included
	lag           time.Duration
	lagHeld       bool
	busy          busyRule
	busyWait      time.Duration
	lastDecreases int64
	joined        bool      // a heartbeat has read the other pods
	followed      time.Time // the newest other pod's slow-down already followed
	held          map[string]bool
}

// Deps are what a pacer works with, as opposed to Config, what it watches.
type Deps struct {
	DB      checkpoint.DB
	Store   *checkpoint.Store
	Budget  *kmsclient.Budget // may be nil
	Log     *slog.Logger
	Metrics *metrics.Metrics // may be nil
}

// New returns a pacer.
func New(cfg Config, d Deps) *Pacer {
	if cfg.Poll <= 0 {
		cfg.Poll = defaultPoll
	}
	m := d.Metrics
	if m == nil {
		m = metrics.New(nil)
	}
	p := &Pacer{cfg: cfg, db: d.DB, store: d.Store, budget: d.Budget, log: d.Log, metrics: m, live: 1, held: map[string]bool{}}
	p.rows = rate.NewLimiter(rate.Inf, max(cfg.PageRows, 1))
	p.applyRates()
	return p
}

// Run records heartbeats and watches the replicas until ctx ends, then
// removes this pod's heartbeat. Errors are logged, never fatal: a pacer
// that cannot read keeps the last state it knew.
func (p *Pacer) Run(ctx context.Context) {
	t := time.NewTicker(p.cfg.Poll)
	defer t.Stop()
	defer func() {
		lctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 2*time.Second)
		defer cancel()
		_ = p.store.Leave(lctx, p.cfg.Table, p.cfg.Owner)
	}()
	for {
		if err := p.heartbeat(ctx); err != nil && ctx.Err() == nil {
			p.log.WarnContext(ctx, "pacer heartbeat failed; keeping the last pace", "err", err)
		}
		if err := p.checkLag(ctx); err != nil && ctx.Err() == nil {
			p.log.WarnContext(ctx, "replica lag check failed; keeping the last reading", "err", err)
		}
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
	}
}

func (p *Pacer) heartbeat(ctx context.Context) error {
	p.mu.Lock()
	decreases := p.budget.Decreases()
	decreased := decreases > p.lastDecreases
	p.lastDecreases = decreases
	rep := checkpoint.PacerReport{Owner: p.cfg.Owner, KMSRate: finite(p.budget.PerSecond()), State: p.stateLocked(), Reasons: p.reasonsLocked()}
	p.mu.Unlock()
	pods, err := p.store.Heartbeat(ctx, p.cfg.Table, rep, decreased)
	if err != nil {
		return err
	}
	var newest time.Time
	var self *time.Time
	for _, o := range pods {
		if o.Owner == p.cfg.Owner {
			self = o.KMSDecreasedAt
		} else if o.KMSDecreasedAt != nil && o.KMSDecreasedAt.After(newest) {
			newest = *o.KMSDecreasedAt
		}
	}
	p.mu.Lock()
	defer p.mu.Unlock()
	p.live = max(len(pods), 1)
	// Follow another pod's slow-down once, unless this pod slowed down at
	// the same time or later on its own. The first heartbeat only learns
	// where the others stand: their slow-downs before this pod joined are
	// already in the rates they run at.
	switch {
	case !p.joined:
		p.joined, p.followed = true, newest
	case newest.After(p.followed):
		if self == nil || newest.After(*self) {
			p.budget.Follow()
		}
		p.followed = newest
	}
	p.applyRatesLocked()
	return nil
}

func finite(f float64) float64 {
	if math.IsInf(f, 0) {
		return 0
	}
	return f
}

// checkLag reads the largest replay lag of the watched replicas.
func (p *Pacer) checkLag(ctx context.Context) error {
	if p.cfg.MaxReplicaLag <= 0 {
		return nil
	}
	var worst float64
	var errs []error
	var onPrimary *float64
	if err := p.db.QueryRow(ctx, `SELECT max(extract(epoch FROM coalesce(replay_lag, interval '0')))::float8 FROM pg_catalog.pg_stat_replication`).Scan(&onPrimary); err != nil {
		errs = append(errs, fmt.Errorf("pg_stat_replication: %w", err))
	} else if onPrimary != nil {
		worst = *onPrimary
	}
	for i, r := range p.cfg.Replicas {
		var lag *float64
		// An idle primary sends nothing to replay: a replica that has
		// replayed all it received is not behind, however old its last
		// transaction is.
		err := r.QueryRow(ctx, `SELECT CASE WHEN pg_catalog.pg_last_wal_receive_lsn() = pg_catalog.pg_last_wal_replay_lsn() THEN 0
			ELSE extract(epoch FROM now() - pg_catalog.pg_last_xact_replay_timestamp()) END::float8`).Scan(&lag)
		if err != nil {
			errs = append(errs, fmt.Errorf("replica %d of REPLICA_URLS: %w", i+1, err))
			continue
		}
		if lag != nil {
			worst = max(worst, *lag)
		}
	}
	lag := time.Duration(worst * float64(time.Second))
	p.metrics.ReplicaLag.Set(worst)
	p.mu.Lock()
	p.lag = lag
	switch {
	case lag > p.cfg.MaxReplicaLag:
		p.lagHeld = true
	case lag <= time.Duration(float64(p.cfg.MaxReplicaLag)*lagResumeFactor):
		p.lagHeld = false
	}
	p.mu.Unlock()
	return errors.Join(errs...)
}

// BeforePage waits until a page may start: not paused, replicas caught up,
// the database not busy, and the rows rate allowing a page. It reads the
// operator's controls first, so a pause takes effect before the next page
// of every pod. It returns ctx's error when ctx ends while waiting.
func (p *Pacer) BeforePage(ctx context.Context) error {
	for first := true; ; first = false {
		c, err := p.store.Controls(ctx, p.cfg.Table)
		if err != nil && ctx.Err() == nil {
			if first {
				p.log.WarnContext(ctx, "read controls; keeping the last ones", "err", err)
			}
		} else if err == nil {
			p.mu.Lock()
			p.controls = c
			p.applyRatesLocked()
			p.mu.Unlock()
		}
		p.mu.Lock()
		paused, lagHeld, lag := p.controls.Paused, p.lagHeld, p.lag
		p.mark(metrics.HeldPaused, paused, "reason", p.controls.Reason, "by", p.controls.UpdatedBy)
		p.mark(metrics.HeldReplicaLag, lagHeld, "lag_seconds", lag.Seconds(), "max_seconds", p.cfg.MaxReplicaLag.Seconds())
		wait := p.busyWait
		p.mu.Unlock()
		if !paused && !lagHeld {
			if err := sleep(ctx, wait); err != nil {
				return err
			}
			return p.rows.WaitN(ctx, min(p.cfg.PageRows, p.rows.Burst()))
		}
		if err := sleep(ctx, holdRecheck); err != nil {
			return err
		}
	}
}

// AfterPage tells the pacer how long a page's commit took.
func (p *Pacer) AfterPage(commit time.Duration) {
	p.mu.Lock()
	defer p.mu.Unlock()
	wait := p.busy.observe(commit)
	p.busyWait = wait
	p.mark(metrics.HeldDatabaseBusy, wait > 0, "commit_ms", commit.Milliseconds(),
		"recent_ms", p.busy.recent.Milliseconds(), "baseline_ms", p.busy.baseline.Milliseconds())
}

// busyRule is the database_busy rule (see the package doc): two running
// averages of commit latency, a fast one (the last few pages) and a slow
// baseline (the last few dozen). When the fast one is over busyFactor × the
// baseline and at least busyMinExcess over it, the next page waits the
// excess (at most busyMaxWait): a busier database gets proportionally fewer
// pages, one slow commit (an fsync stall, a checkpoint) barely counts, and
// an idle database is not slowed at all. While busy the baseline follows
// only slowly, so a database that stays busy is still seen as busy for
// minutes, not for a few pages.
type busyRule struct {
	recent, baseline time.Duration
}

func (r *busyRule) observe(commit time.Duration) (wait time.Duration) {
	if r.baseline == 0 {
		r.baseline, r.recent = commit, commit
		return 0
	}
	r.recent += time.Duration(recentWeight * float64(commit-r.recent))
	busy := r.recent > time.Duration(busyFactor*float64(r.baseline)) && r.recent-r.baseline >= busyMinExcess
	weight := baselineWeight
	if busy {
		wait = min(r.recent-r.baseline, busyMaxWait)
		weight = baselineWeightBusy
	}
	r.baseline += time.Duration(weight * float64(commit-r.baseline))
	return wait
}

// applyRates splits the Job-wide rates across the live pods.
func (p *Pacer) applyRates() {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.applyRatesLocked()
}

func (p *Pacer) applyRatesLocked() {
	n := float64(max(p.live, 1))
	rows := positiveMin(p.cfg.MaxRowsPerSecond, p.controls.RowsRate)
	if rows > 0 {
		p.rows.SetLimit(rate.Limit(rows / n))
	} else {
		p.rows.SetLimit(rate.Inf)
	}
	p.mark(metrics.HeldRowsRate, rows > 0, "rows_per_s", rows)
	kmsCap := positiveMin(p.cfg.KMSRateLimit, p.controls.KMSRate)
	if kmsCap > 0 {
		p.budget.SetCap(kmsCap / n)
	} else {
		p.budget.SetCap(0)
	}
	p.mark(metrics.HeldKMSRate, p.controls.KMSRate > 0, "kms_per_s", p.controls.KMSRate)
	perSec, ceiling := p.budget.PerSecond(), math.Min(p.budget.Ceiling(), kmsCapOrInf(kmsCap, n))
	p.mark(metrics.HeldKMSThrottling, perSec < ceiling*0.99, "kms_budget_per_s", finite(perSec))
	p.metrics.KMSBudget.Set(finite(perSec))
}

func kmsCapOrInf(c, n float64) float64 {
	if c <= 0 {
		return math.Inf(1)
	}
	return c / n
}

// positiveMin is the smaller of the positive values, 0 when neither is.
func positiveMin(a, b float64) float64 {
	switch {
	case a <= 0:
		return max(b, 0)
	case b <= 0:
		return a
	}
	return min(a, b)
}

// mark records whether reason holds pages back, logging each change.
func (p *Pacer) mark(reason string, on bool, attrs ...any) {
	if p.held[reason] == on {
		return
	}
	p.held[reason] = on
	v := 0.0
	if on {
		v = 1
	}
	p.metrics.Held.WithLabelValues(reason).Set(v)
	if reason == metrics.HeldDatabaseBusy || reason == metrics.HeldKMSThrottling {
		p.log.Debug("pace", append([]any{"reason", reason, "held", on}, attrs...)...)
		return
	}
	if on {
		p.log.Info("pages held back", append([]any{"reason", reason}, attrs...)...)
	} else {
		p.log.Info("pages no longer held back", "reason", reason)
	}
}

// State is running, paused or throttled (held back for any other reason).
func (p *Pacer) State() (string, []string) {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.stateLocked(), p.reasonsLocked()
}

func (p *Pacer) stateLocked() string {
	switch {
	case p.held[metrics.HeldPaused]:
		return "paused"
	case len(p.reasonsLocked()) > 0:
		return "throttled"
	}
	return "running"
}

func (p *Pacer) reasonsLocked() []string {
	var out []string
	for _, r := range metrics.HeldReasons {
		if p.held[r] {
			out = append(out, r)
		}
	}
	return slices.Clip(out)
}

func sleep(ctx context.Context, d time.Duration) error {
	if d <= 0 {
		return ctx.Err()
	}
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-ctx.Done():
		return ctx.Err()
	case <-t.C:
		return nil
	}
}
