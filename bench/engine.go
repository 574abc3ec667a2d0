package main

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"os/exec"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/reencrypt/reencrypt/pkg/batch"
	"github.com/reencrypt/reencrypt/pkg/checkpoint"
	"github.com/reencrypt/reencrypt/pkg/kmsclient"
	"github.com/reencrypt/reencrypt/pkg/tokentable"
)

// engineRun is what one engine run reported: from its exit status, its
// rusage and its JSON log (LOG_LEVEL=debug adds one "page committed" line
// per page).
type engineRun struct {
	exit          int
	wall          time.Duration
	maxRSSKiB     int64         // ru_maxrss: includes this bench's RSS at fork (see runEngine)
	hwmKiB        int64         // VmHWM of the engine's own address space: its peak RSS
	cpu           time.Duration // user + system of the engine process
	cpuSys        time.Duration // its system (kernel) share: on legacy data mostly the KMS requests' sends and receives
	pageSeconds   []float64     // pages that held rows
	phaseSeconds  [3][]float64  // read, rotate (KMS + AES), commit of those pages
	pagesWithRows int64
	pages         int64
	rotated       int64
	engineSeconds float64          // engine.Run's own duration (after preflight)
	kmsWorkers    int              // per page, as the engine sized them
	kmsLatencyMs  float64          // preflight's measured KMS latency
	engineKMS     map[string]int64 // the engine's own KMS attempt counts
	preflightKMS  int64            // of which the preflight's (a fixed cost per run)
	stdout        string
	// From the log lines' times: the run joined, its first and last page
	// committed, it finished. Before the first page the engine cuts ranges;
	// after the last it recounts the table (exit 0 means no row under OLD).
	joined, firstPage, lastPage, finished time.Time
	// atFinish, when set, reads the WAL position when the run-finished line
	// arrives, before the closing recount (read the moment the line is
	// read, so a few ms late); walAtFinish is what it read, 0 if nothing.
	atFinish    func() int64
	walAtFinish int64

	mu    sync.Mutex
	lines []string // last lines of the log, for errors
}

func (r *engineRun) rowsPerSec() float64 {
	if r.engineSeconds <= 0 {
		return 0
	}
	return float64(r.rotated) / r.engineSeconds
}

func (r *engineRun) tail() string {
	r.mu.Lock()
	defer r.mu.Unlock()
	return strings.Join(r.lines, "\n")
}

// logLine digests one JSON log line of the engine.
func (r *engineRun) logLine(line []byte) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if len(r.lines) >= 40 {
		r.lines = r.lines[1:]
	}
	if !bytes.Contains(line, []byte(`"msg":"page committed"`)) {
		r.lines = append(r.lines, string(line))
	}
	var m map[string]any
	at := func() time.Time {
		t, _ := time.Parse(time.RFC3339Nano, fmt.Sprint(m["time"]))
		return t
	}
	switch {
	case bytes.Contains(line, []byte(`"msg":"run joined"`)):
		if json.Unmarshal(line, &m) == nil {
			r.joined = at()
		}
	case bytes.Contains(line, []byte(`"msg":"page committed"`)):
		if json.Unmarshal(line, &m) == nil && num(m["rows"]) > 0 {
			if r.firstPage.IsZero() {
				r.firstPage = at()
			}
			r.lastPage = at()
			r.pageSeconds = append(r.pageSeconds, num(m["seconds"]))
			for i, k := range phaseNames {
				r.phaseSeconds[i] = append(r.phaseSeconds[i], num(m[k+"_seconds"]))
			}
			r.pagesWithRows++
		}
	case bytes.Contains(line, []byte(`"msg":"preflight passed"`)):
		if json.Unmarshal(line, &m) == nil {
			r.kmsWorkers = int(num(m["kms_workers"]))
			r.kmsLatencyMs = num(m["kms_latency_ms"])
			if km, ok := m["kms_requests"].(map[string]any); ok {
				for _, v := range km {
					r.preflightKMS += int64(num(v))
				}
			}
		}
	case bytes.Contains(line, []byte(`"msg":"reencrypt run finished"`)):
		if r.atFinish != nil {
			r.walAtFinish = r.atFinish()
		}
		if json.Unmarshal(line, &m) == nil {
			r.finished = at()
			r.rotated = int64(num(m["rotated"]))
			r.pages = int64(num(m["pages"]))
			r.engineSeconds = num(m["seconds"])
			if km, ok := m["kms_requests"].(map[string]any); ok {
				r.engineKMS = map[string]int64{}
				for k, v := range km {
					r.engineKMS[k] = int64(num(v))
				}
			}
		}
	}
}

// vmHWM reads VmHWM (kB) from a /proc/<pid>/status file; 0 if absent.
func vmHWM(path string) int64 {
	b, err := os.ReadFile(path)
	if err != nil {
		return 0
	}
	for _, line := range strings.Split(string(b), "\n") {
		if v, ok := strings.CutPrefix(line, "VmHWM:"); ok {
			var n int64
			fmt.Sscanf(strings.TrimSpace(v), "%d", &n)
			return n
		}
	}
	return 0
}

var phaseNames = [3]string{"read", "rotate", "commit"}

func num(v any) float64 {
	switch x := v.(type) {
	case float64:
		return x
	case json.Number:
		f, _ := x.Float64()
		return f
	}
	return 0
}

// lineWriter feeds whole lines to fn.
type lineWriter struct {
	mu  sync.Mutex
	buf []byte
	fn  func([]byte)
}

func (w *lineWriter) Write(p []byte) (int, error) {
	w.mu.Lock()
	defer w.mu.Unlock()
	w.buf = append(w.buf, p...)
	for {
		i := bytes.IndexByte(w.buf, '\n')
		if i < 0 {
			break
		}
		w.fn(w.buf[:i])
		w.buf = w.buf[i+1:]
	}
	return len(p), nil
}

// subprocessEnv is the environment of `reencrypt run`: nothing inherited
// but PATH/HOME/TMPDIR, the AWS variables, and the engine's own.
func (b *bench) subprocessEnv(dbURL, oldARN, newARN, mode string) []string {
	env := []string{}
	for _, k := range []string{"PATH", "HOME", "TMPDIR"} {
		if v, ok := os.LookupEnv(k); ok {
			env = append(env, k+"="+v)
		}
	}
	env = append(env, b.awsEnv...)
	for k, v := range b.engineEnv {
		env = append(env, k+"="+v)
	}
	return append(env, "DATABASE_URL="+dbURL, "OLD_KEY_ID="+oldARN, "NEW_KEY_ID="+newARN, "MODE="+mode)
}

// runEngine runs the real binary, `reencrypt run`, to the end. onStart, if
// set, is called with the child's pid once it runs.
func (b *bench) runEngine(ctx context.Context, dbURL, oldARN, newARN, mode string, onStart func(pid int)) (*engineRun, error) {
	return b.runBinary(ctx, b.bin, engineArgs{dbURL, oldARN, newARN, mode}, onStart)
}

// engineArgs are what a `reencrypt run` is told besides the shared settings.
type engineArgs struct{ dbURL, oldARN, newARN, mode string }

// runBinary is runEngine with the binary at bin (-bin-b: a second build
// compared side by side in the same rounds).
func (b *bench) runBinary(ctx context.Context, bin string, a engineArgs, onStart func(pid int)) (*engineRun, error) {
	dbURL, oldARN, newARN, mode := a.dbURL, a.oldARN, a.newARN, a.mode
	r := &engineRun{}
	r.atFinish = func() int64 { // adminDB is this goroutine's alone while the engine runs
		n, err := b.walLSN(ctx)
		if err != nil {
			return 0
		}
		return n
	}
	cmd := exec.CommandContext(ctx, bin, "run")
	cmd.Env = b.subprocessEnv(dbURL, oldARN, newARN, mode)
	var stdout bytes.Buffer
	cmd.Stdout = &stdout
	stderr, err := cmd.StderrPipe()
	if err != nil {
		return nil, err
	}
	cmd.WaitDelay = 5 * time.Second
	start := time.Now()
	if err := cmd.Start(); err != nil {
		return nil, fmt.Errorf("start %s: %w", bin, err)
	}
	if onStart != nil {
		onStart(cmd.Process.Pid)
	}
	// Peak RSS: VmHWM of the child's own address space, polled until it
	// exits. (ru_maxrss is no good here: os/exec starts the child with
	// CLONE_VM|CLONE_VFORK, and Linux carries the shared address space's
	// high-water mark — this bench's own RSS — into the child's maxrss at
	// exec.)
	hwmDone := make(chan struct{})
	var hwmKiB atomic.Int64
	go func() {
		defer close(hwmDone)
		path := fmt.Sprintf("/proc/%d/status", cmd.Process.Pid)
		for {
			if v := vmHWM(path); v > 0 {
				hwmKiB.Store(max(hwmKiB.Load(), v))
			} else {
				return // gone (or a zombie: no VmHWM line)
			}
			time.Sleep(50 * time.Millisecond)
		}
	}()
	sc := bufio.NewScanner(stderr)
	sc.Buffer(make([]byte, 64<<10), 4<<20)
	for sc.Scan() {
		r.logLine(sc.Bytes())
	}
	err = cmd.Wait()
	r.wall = time.Since(start)
	<-hwmDone
	r.hwmKiB = hwmKiB.Load()
	r.stdout = stdout.String()
	var ee *exec.ExitError
	if err != nil && !errors.As(err, &ee) {
		return r, err
	}
	r.exit = cmd.ProcessState.ExitCode()
	if ru, ok := cmd.ProcessState.SysUsage().(*syscall.Rusage); ok {
		r.maxRSSKiB = ru.Maxrss // KiB on Linux
		r.cpu = time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
		r.cpuSys = time.Duration(ru.Stime.Nano())
	}
	if ctx.Err() != nil {
		return r, ctx.Err()
	}
	return r, nil
}

// runEngineInProcess runs pkg/batch's engine in this process, configured as
// cmd/reencrypt would configure it from the same variables (no preflight:
// the keys are already resolved). api, when set, replaces the KMS client
// (the Postgres ceiling runs against fakeKMS).
func (b *bench) runEngineInProcess(ctx context.Context, dbURL string, oldK, newK kmsclient.Key, mode batch.Mode,
	api kmsclient.KMS) (*engineRun, error) {
	r := &engineRun{}
	cfg := b.cfg
	pc, err := pgxpool.ParseConfig(dbURL)
	if err != nil {
		return nil, err
	}
	pc.MaxConns = batch.PoolConns(cfg.RangeWorkers) // as cmd/reencrypt
	pc.ConnConfig.RuntimeParams["application_name"] = "reencrypt"
	pool, err := pgxpool.NewWithConfig(ctx, pc)
	if err != nil {
		return nil, err
	}
	defer pool.Close()

	budget := kmsclient.NewBudget(cfg.KMSRateLimit, cfg.ShardCount)
	if api == nil {
		if api, err = kmsclient.New(ctx, kmsclient.Options{MaxAttempts: cfg.KMSMaxAttempts, Budget: budget, SDKOnly: !cfg.KMSDirect}); err != nil {
			return nil, err
		}
	}
	cache := kmsclient.NewCache(cfg.DEKCacheSize, cfg.DEKCacheTTL)
	defer cache.Purge()
	kc := kmsclient.NewClient(api, cfg.Namespace, cache)
	workers := cfg.KMSConcurrency
	if workers == 0 {
		lat, err := batch.RoundTrip(ctx, kc, newK.ARN, cfg.Namespace)
		if err != nil {
			return nil, err
		}
		workers = budget.Concurrency(lat, 4, 64)
		r.kmsLatencyMs = float64(lat.Microseconds()) / 1000
	}
	r.kmsWorkers = workers

	table, err := tokentable.Inspect(ctx, pool, tokentable.Spec{Schema: cfg.TableSchema, Name: cfg.Table, IDColumn: cfg.IDColumn,
		TokenColumn: cfg.TokenColumn, AuditTable: cfg.AuditTable, AuditIDColumn: cfg.AuditIDColumn})
	if err != nil {
		return nil, err
	}
	store := checkpoint.New(pool, cfg.StateSchema)
	if err := store.Migrate(ctx); err != nil {
		return nil, err
	}
	lw := &lineWriter{fn: r.logLine}
	log := slog.New(slog.NewJSONHandler(lw, &slog.HandlerOptions{Level: slog.LevelDebug}))
	host, _ := os.Hostname()
	eng, err := batch.New(batch.Config{
		Table: table, Old: oldK, New: newK, Mode: mode, Namespace: cfg.Namespace,
		BatchSize: cfg.BatchSize, Workers: max(workers, 1), RangeWorkers: cfg.RangeWorkers,
		Ranges: cfg.RangeCount(), LeaseTTL: cfg.LeaseTTL, PageTimeout: cfg.PageTimeout,
		StopGrace: cfg.StopGrace, Owner: fmt.Sprintf("%s/%d/bench", host, os.Getpid()),
	}, batch.Deps{DB: pool, Store: store, KMS: kc, Log: log})
	if err != nil {
		return nil, err
	}
	start := time.Now()
	sum, runErr := eng.Run(ctx)
	r.wall = time.Since(start)
	r.rotated = sum.Process.Rotated
	r.pages = sum.Pages
	r.engineSeconds = sum.Duration.Seconds()
	if runErr != nil {
		r.exit = 1
		r.lines = append(r.lines, "run: "+runErr.Error())
	}
	return r, nil
}

var _ io.Writer = (*lineWriter)(nil)

// timeline splits an engine run's seconds: from joining the run to its first
// page (cutting ranges), pages, and from the last page to the end (the
// recount, final status). Nil when the log did not say.
type timeline struct {
	BeforePages float64 `json:"before_first_page_s"`
	Pages       float64 `json:"pages_s"`
	AfterPages  float64 `json:"after_last_page_s"`
}

func (r *engineRun) timeline() *timeline {
	if r.joined.IsZero() || r.firstPage.IsZero() || r.finished.IsZero() {
		return nil
	}
	return &timeline{
		BeforePages: r.firstPage.Sub(r.joined).Seconds(),
		Pages:       r.lastPage.Sub(r.firstPage).Seconds(),
		AfterPages:  r.finished.Sub(r.lastPage).Seconds(),
	}
}
