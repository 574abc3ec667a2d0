package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"sort"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/reencrypt/reencrypt/internal/kmsfault"
	"github.com/reencrypt/reencrypt/internal/seed"
	"github.com/reencrypt/reencrypt/internal/testbed"
	"github.com/reencrypt/reencrypt/pkg/kmsclient"
)

// world is what every phase shares.
type world struct {
	binDir   string // the engine build's temporary folder, when the bench built it
	o        options
	bin      string
	primary  *testbed.Postgres
	replica  *testbed.Postgres
	kms      *testbed.KMSServer
	proxy    *kmsfault.Proxy
	db       *pgxpool.Pool
	rdb      *pgxpool.Pool
	dsn      string
	rdsn     string
	old, new string // key ARNs
	api      *api
	lag      *lagSampler
	timeline *timeline
}

// phaseReport is one phase's figures.
type phaseReport struct {
	Name          string   `json:"name"`
	Seconds       float64  `json:"seconds"`
	API           apiStats `json:"api"`
	APIThrottlePc float64  `json:"api_kms_throttled_pct"`
	LagMaxS       float64  `json:"replica_lag_max_s"`
	LagP99S       float64  `json:"replica_lag_p99_s"`
	RowsPerS      float64  `json:"engine_rows_per_s,omitempty"`
	EngineKMSPerS float64  `json:"engine_kms_per_s,omitempty"`
	Exit          []int    `json:"exit_codes,omitempty"`
	LeftUnderOld  int64    `json:"rows_left_under_old"` // after the rotation: rows still under the key it rotated from
	Timeline      []tick   `json:"timeline,omitempty"`  // KMS traffic every 250 ms
	SettleS       float64  `json:"settle_s"`            // the wait before the phase for the API's retries to end
	// pause phase only
	PauseStopS     float64 `json:"pause_stop_s,omitempty"`      // from `pause` returning to the last commit
	PagesAfter     int64   `json:"pages_after_pause,omitempty"` // pages committed after `pause` returned
	ResumeFullS    float64 `json:"resume_full_speed_s,omitempty"`
	PausedAtS      float64 `json:"paused_at_s,omitempty"`  // seconds into the phase `pause` returned
	ResumedAtS     float64 `json:"resumed_at_s,omitempty"` // ... and `resume` did
	MovedWhilePaus int64   `json:"rows_moved_while_paused"`
}

type report struct {
	Date     string        `json:"date"`
	Machine  string        `json:"machine"`
	Rows     int           `json:"rows"`
	Quota    float64       `json:"kms_quota"`
	APIRate  float64       `json:"api_rate"`
	Phases   []phaseReport `json:"phases"`
	Failures []string      `json:"failures,omitempty"`
}

func run(ctx context.Context, o options) (*report, error) {
	w, err := setupWorld(ctx, o)
	defer w.close()
	if err != nil {
		return nil, err
	}
	rep := &report{Date: time.Now().UTC().Format("2006-01-02"), Machine: fmt.Sprintf("%d CPU, %s", runtime.NumCPU(), runtime.GOOS),
		Rows: o.rows, Quota: o.quota, APIRate: o.apiRate}

	apiCtx, stopAPI := context.WithCancel(ctx)
	var wg sync.WaitGroup
	wg.Go(func() { w.api.run(apiCtx) })
	wg.Go(func() { w.lag.run(apiCtx) })
	w.timeline = &timeline{w: w}
	wg.Go(func() { w.timeline.run(apiCtx) })
	defer func() { stopAPI(); wg.Wait() }()

	// 1. the API alone
	rep.Phases = append(rep.Phases, w.quiet(ctx, "baseline", o.baseline))
	// 2-4. rotations, alternating direction
	from, to := w.old, w.new
	for _, ph := range []struct {
		name string
		env  []string
	}{
		{"unpaced", []string{"KMS_ADAPTIVE=false", "MAX_REPLICA_LAG=0"}},
		{"default", []string{"REPLICA_URLS=" + w.rdsn}},
		{"gentle", []string{"REPLICA_URLS=" + w.rdsn, "MAX_REPLICA_LAG=1s"}},
	} {
		settled := w.settle(ctx)
		r, err := w.rotate(ctx, ph.name, from, to, ph.env)
		r.SettleS = settled.Seconds()
		r.LeftUnderOld = w.rotated(ctx, from)
		rep.Phases = append(rep.Phases, r)
		if err != nil {
			return rep, err
		}
		from, to = to, from
	}
	settled := w.settle(ctx)
	r, err := w.pausePhase(ctx, from, to)
	r.SettleS = settled.Seconds()
	r.LeftUnderOld = w.rotated(ctx, from)
	rep.Phases = append(rep.Phases, r)
	if err != nil {
		return rep, err
	}
	rep.judge(o)
	return rep, nil
}

func setupWorld(ctx context.Context, o options) (*world, error) {
	w := &world{o: o}
	logf := func(format string, a ...any) { fmt.Fprintf(os.Stderr, "bench-online: "+format+"\n", a...) }
	var err error
	if w.bin = o.bin; w.bin == "" {
		dir, err := os.MkdirTemp("", "reencrypt-online-")
		if err != nil {
			return w, err
		}
		w.binDir = dir // removed by close: a build is 33 MB
		w.bin = filepath.Join(dir, "reencrypt")
		cmd := exec.CommandContext(ctx, "go", "build", "-o", w.bin, "./cmd/reencrypt")
		if out, err := cmd.CombinedOutput(); err != nil {
			return w, fmt.Errorf("go build ./cmd/reencrypt (run from the module root): %w\n%s", err, out)
		}
	}
	if w.primary, err = testbed.StartPostgres(ctx, testbed.PostgresOptions{Durable: true, Local: true}); err != nil {
		return w, err
	}
	if w.dsn, err = w.primary.CreateDatabase(ctx, "online"); err != nil {
		return w, err
	}
	if w.db, err = pgxpool.New(ctx, w.dsn); err != nil {
		return w, err
	}
	if err := seed.Schema(ctx, w.db, "public", "uuid"); err != nil {
		return w, err
	}
	if w.kms, err = testbed.StartLocalKMS(ctx); err != nil {
		return w, err
	}
	if w.old, err = w.kms.CreateKey(ctx, "online-old"); err != nil {
		return w, err
	}
	if w.new, err = w.kms.CreateKey(ctx, "online-new"); err != nil {
		return w, err
	}
	direct, err := w.kms.Client(ctx)
	if err != nil {
		return w, err
	}
	t0 := time.Now()
	ids, err := seed.Seed(ctx, w.db, kmsclient.NewClient(direct, "payment_methods", nil), seed.Options{Rows: o.rows, KeyARN: w.old, Workers: 32})
	if err != nil {
		return w, err
	}
	if _, err := w.db.Exec(ctx, `VACUUM ANALYZE payment_methods`); err != nil {
		return w, err
	}
	logf("seeded %d legacy rows in %s", len(ids), time.Since(t0).Round(time.Millisecond))
	if w.replica, err = w.primary.StartReplica(ctx); err != nil {
		return w, err
	}
	w.rdsn = w.replica.URL("online")
	if w.rdb, err = pgxpool.New(ctx, w.rdsn); err != nil {
		return w, err
	}
	if w.proxy, err = kmsfault.Start(w.kms.Endpoint()); err != nil {
		return w, err
	}
	w.proxy.Set(kmsfault.Faults{Quota: o.quota})
	w.api = newAPI(w.db, w.kms, w.proxy.Endpoint(), ids, w.old, o.apiRate)
	w.lag = &lagSampler{db: w.rdb}
	logf("primary, streaming replica, local-kms behind a %.0f/s quota, API at %.0f/s: ready", o.quota, o.apiRate)
	return w, nil
}

func (w *world) close() {
	if w.binDir != "" {
		_ = os.RemoveAll(w.binDir)
	}
	if w.proxy != nil {
		_ = w.proxy.Close()
	}
	for _, p := range []*pgxpool.Pool{w.db, w.rdb} {
		if p != nil {
			p.Close()
		}
	}
	if w.kms != nil {
		_ = w.kms.Stop()
	}
	for _, p := range []*testbed.Postgres{w.replica, w.primary} {
		if p != nil {
			_ = p.Stop()
		}
	}
}

// measure fills the shared figures of a phase over [from, to).
func (w *world) measure(r *phaseReport, from, to time.Time, apiAttempts, apiThrottled, proxyTotal int64) {
	r.Seconds = to.Sub(from).Seconds()
	r.API = w.api.window(from, to)
	r.API.KMSAttempt = w.api.attempts.Load() - apiAttempts
	r.API.Throttled = w.api.throttled.Load() - apiThrottled
	if r.API.KMSAttempt > 0 {
		r.APIThrottlePc = 100 * float64(r.API.Throttled) / float64(r.API.KMSAttempt)
	}
	r.LagMaxS, r.LagP99S = w.lag.window(from, to)
	r.Timeline = w.timeline.window(from, to)
	if r.Seconds > 0 {
		r.EngineKMSPerS = float64(w.proxy.Total()-proxyTotal-r.API.KMSAttempt) / r.Seconds
	}
}

func (w *world) counters() (int64, int64, int64) {
	return w.api.attempts.Load(), w.api.throttled.Load(), w.proxy.Total()
}

func (w *world) quiet(ctx context.Context, name string, d time.Duration) phaseReport {
	a, t, p := w.counters()
	from := time.Now()
	select {
	case <-ctx.Done():
	case <-time.After(d):
	}
	r := phaseReport{Name: name}
	w.measure(&r, from, time.Now(), a, t, p)
	r.EngineKMSPerS = 0
	return r
}

func (w *world) env(from, to string, extra []string) []string {
	env := append([]string{"PATH=" + os.Getenv("PATH"), "HOME=" + os.Getenv("HOME"),
		"AWS_CONFIG_FILE=/nonexistent", "AWS_SHARED_CREDENTIALS_FILE=/nonexistent"}, w.kms.Env()...)
	env = append(env, "AWS_ENDPOINT_URL_KMS="+w.proxy.Endpoint(),
		"DATABASE_URL="+w.dsn, "OLD_KEY_ID="+from, "NEW_KEY_ID="+to, "MODE=rewrap",
		fmt.Sprintf("KMS_RATE_LIMIT=%g", w.o.quota), fmt.Sprintf("BATCH_SIZE=%d", w.o.batch),
		"PROGRESS=off", "LOG_LEVEL=info", "LEASE_TTL=20s")
	if v, ok := os.LookupEnv("KMS_DIRECT"); ok { // to compare the engine's two KMS paths
		env = append(env, "KMS_DIRECT="+v)
	}
	return append(env, extra...)
}

// settle waits, before a rotation phase, until the API has had no KMS
// attempt throttled for settleQuiet (at most settleMax): after the unpaced
// phase the API's SDK is still retrying throttled requests for seconds, and
// a phase started into those retries measures them, not its own settings
// (2026-12-05: 25 and 771 API errors in the default phase, throttled from
// its first window, against 0-1 after a clean start). How a budget copes
// with starting into a retry storm is its own question.
func (w *world) settle(ctx context.Context) time.Duration {
	const settleQuiet, settleMax = 2 * time.Second, time.Minute
	start := time.Now()
	last, quietSince := w.api.throttled.Load(), time.Now()
	for ctx.Err() == nil && time.Since(start) < settleMax && time.Since(quietSince) < settleQuiet {
		time.Sleep(50 * time.Millisecond)
		if n := w.api.throttled.Load(); n != last {
			last, quietSince = n, time.Now()
		}
	}
	return time.Since(start)
}

// rotated counts the rows whose token names key `to`.
func (w *world) rotated(ctx context.Context, to string) int64 {
	var n int64
	_ = w.db.QueryRow(ctx, `SELECT count(*) FROM payment_methods WHERE position($1::bytea IN encrypted_token) > 0`, []byte(to)).Scan(&n)
	return n
}

// rotate runs one rotation to its end with the API running.
func (w *world) rotate(ctx context.Context, name, from, to string, extra []string) (phaseReport, error) {
	w.api.setKey(to)
	a, t, p := w.counters()
	start := time.Now()
	cmd := exec.CommandContext(ctx, w.bin, "run")
	cmd.Env = w.env(from, to, extra)
	var logs strings.Builder
	cmd.Stdout, cmd.Stderr = io.Discard, &logs
	err := cmd.Run()
	end := time.Now()
	r := phaseReport{Name: name, Exit: []int{cmd.ProcessState.ExitCode()}}
	w.measure(&r, start, end, a, t, p)
	r.RowsPerS = float64(w.o.rows) / end.Sub(start).Seconds()
	if err != nil {
		return r, fmt.Errorf("%s: reencrypt run: %w\n%s", name, err, tailOf(logs.String()))
	}
	return r, nil
}

// pausePhase runs two pods, pauses them a quarter of the way and resumes
// them 3 s later.
func (w *world) pausePhase(ctx context.Context, from, to string) (phaseReport, error) {
	w.api.setKey(to)
	r := phaseReport{Name: "pause"}
	a, t, p := w.counters()
	start := time.Now()
	base := w.rotated(ctx, to)
	var cmds []*exec.Cmd
	var logs [2]strings.Builder
	for i := range 2 {
		cmd := exec.CommandContext(ctx, w.bin, "run")
		cmd.Env = w.env(from, to, []string{"SHARD_COUNT=2", fmt.Sprintf("SHARD_INDEX=%d", i)})
		cmd.Stdout, cmd.Stderr = io.Discard, &logs[i]
		cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
		if err := cmd.Start(); err != nil {
			return r, err
		}
		cmds = append(cmds, cmd)
	}
	// What the pods committed, from their checkpoints: rows under `to`
	// also grow with the API's own writes.
	progress := func() (pages, rows int64) {
		_ = w.db.QueryRow(ctx, `SELECT coalesce(sum(pages), 0), coalesce(sum(rows_rotated), 0)
			FROM reencrypt.ranges r JOIN reencrypt.runs u USING (run_id)
			WHERE u.old_key_arn = $1 AND r.pass = u.pass`, from).Scan(&pages, &rows)
		return pages, rows
	}
	pages := func() int64 { n, _ := progress(); return n }
	rotated := func() int64 { _, n := progress(); return n }
	for w.rotated(ctx, to)-base < int64(w.o.rows/4) && ctx.Err() == nil {
		time.Sleep(20 * time.Millisecond)
	}
	rowsRate := w.rateOver(ctx, to, time.Second)
	if err := w.operator(ctx, "pause", "--reason", "bench-online"); err != nil {
		return r, err
	}
	paused := time.Now()
	r.PausedAtS = paused.Sub(start).Seconds()
	atPause := pages()
	// The last commit: the page count stops moving.
	last, lastAt := atPause, paused
	for time.Since(lastAt) < 2*time.Second && ctx.Err() == nil {
		time.Sleep(10 * time.Millisecond)
		if n := pages(); n != last {
			last, lastAt = n, time.Now()
		}
	}
	r.PauseStopS = lastAt.Sub(paused).Seconds()
	r.PagesAfter = last - atPause
	before := rotated()
	time.Sleep(time.Second)
	r.MovedWhilePaus = rotated() - before
	if err := w.operator(ctx, "resume"); err != nil {
		return r, err
	}
	resumed := time.Now()
	r.ResumedAtS = resumed.Sub(start).Seconds()
	for ctx.Err() == nil && time.Since(resumed) < time.Minute {
		if w.rateOver(ctx, to, 500*time.Millisecond) >= 0.8*rowsRate {
			break
		}
	}
	r.ResumeFullS = time.Since(resumed).Seconds()
	var errs []error
	for i, cmd := range cmds {
		err := cmd.Wait()
		r.Exit = append(r.Exit, cmd.ProcessState.ExitCode())
		if err != nil {
			errs = append(errs, fmt.Errorf("pod %d: %w\n%s", i, err, tailOf(logs[i].String())))
		}
	}
	end := time.Now()
	w.measure(&r, start, end, a, t, p)
	r.RowsPerS = float64(w.o.rows) / end.Sub(start).Seconds()
	return r, errors.Join(errs...)
}

// rateOver measures rows/s reaching key `to` over d.
func (w *world) rateOver(ctx context.Context, to string, d time.Duration) float64 {
	a := w.rotated(ctx, to)
	time.Sleep(d)
	return float64(w.rotated(ctx, to)-a) / d.Seconds()
}

// operator runs `reencrypt <args>` against the table, as an operator would.
func (w *world) operator(ctx context.Context, args ...string) error {
	cmd := exec.CommandContext(ctx, w.bin, args...)
	cmd.Env = w.env(w.old, w.new, nil)
	out, err := cmd.CombinedOutput()
	if err != nil {
		return fmt.Errorf("reencrypt %s: %w\n%s", strings.Join(args, " "), err, tailOf(string(out)))
	}
	return nil
}

func tailOf(s string) string {
	if len(s) > 3000 {
		return "..." + s[len(s)-3000:]
	}
	return s
}

// lagSampler reads the replica's replay lag every 100 ms.
type lagSampler struct {
	db      *pgxpool.Pool
	mu      sync.Mutex
	samples []lagSample
}

type lagSample struct {
	at  time.Time
	lag float64
}

func (l *lagSampler) run(ctx context.Context) {
	t := time.NewTicker(100 * time.Millisecond)
	defer t.Stop()
	for {
		var lag float64
		err := l.db.QueryRow(ctx, `SELECT CASE WHEN pg_last_wal_receive_lsn() = pg_last_wal_replay_lsn() THEN 0
			ELSE extract(epoch FROM now() - pg_last_xact_replay_timestamp()) END::float8`).Scan(&lag)
		if err == nil {
			l.mu.Lock()
			l.samples = append(l.samples, lagSample{time.Now(), lag})
			l.mu.Unlock()
		}
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
	}
}

func (l *lagSampler) window(from, to time.Time) (maxLag, p99 float64) {
	l.mu.Lock()
	defer l.mu.Unlock()
	var v []float64
	for _, s := range l.samples {
		if !s.at.Before(from) && s.at.Before(to) {
			v = append(v, s.lag)
		}
	}
	if len(v) == 0 {
		return 0, 0
	}
	sort.Float64s(v)
	return v[len(v)-1], v[min(len(v)-1, len(v)*99/100)]
}
