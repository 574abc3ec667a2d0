package main

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"math"
	"os"
	"runtime/pprof"
	"slices"
	"sort"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/reencrypt/reencrypt/pkg/batch"
	"github.com/reencrypt/reencrypt/pkg/envelope"
	"github.com/reencrypt/reencrypt/pkg/kmsclient"
)

// Result is one scenario in one round.
type Result struct {
	Scenario string `json:"scenario"`
	Round    int    `json:"round"`
	Position int    `json:"position"` // 1-based place in the round's order

	Rows        int64   `json:"rows"`         // rows rotated (kms-ceiling: Decrypt operations)
	Seconds     float64 `json:"seconds"`      // the timed part (engine: engine.Run, after preflight)
	WallSeconds float64 `json:"wall_seconds"` // whole process / whole scenario
	RowsPerSec  float64 `json:"rows_per_s"`   // Rows / Seconds

	KMS           map[string]int64 `json:"kms_requests"`            // by operation, as counted by the proxy
	KMSTotal      int64            `json:"kms_requests_total"`      // every operation, preflight included
	KMSPerRow     float64          `json:"kms_per_row"`             // KMSTotal / Rows
	KMSPreflight  int64            `json:"kms_preflight,omitempty"` // engine: requests its preflight made, once per run
	KMSPagePerRow float64          `json:"kms_page_per_row"`        // (KMSTotal - KMSPreflight) / Rows: the per-row cost
	EngineKMS     map[string]int64 `json:"engine_kms,omitempty"`    // the engine's own attempt counts
	KMSRate       rates            `json:"kms_rate"`                // from 100-ms samples of the proxy counter
	ProxyMax1s    float64          `json:"proxy_max_1s"`            // the proxy's busiest 1-s window
	KMSWorkers    int              `json:"kms_workers,omitempty"`   // per page (engine) / in flight (ceiling)
	KMSLatencyMs  float64          `json:"kms_latency_ms,omitempty"`

	Pages           int64              `json:"pages,omitempty"`                     // pages that held rows
	PhaseP50Ms      map[string]float64 `json:"page_phase_p50_ms,omitempty"`         // read, rotate, commit
	PhaseShare      map[string]float64 `json:"page_phase_share,omitempty"`          // of the time spent in pages
	PageBusy        float64            `json:"range_workers_busy,omitempty"`        // time in pages / (engine seconds x RANGE_WORKERS)
	PageP50Ms       float64            `json:"page_p50_ms"`                         // naive: one row's transaction
	PageP99Ms       float64            `json:"page_p99_ms"`                         //
	PeakRSSMiB      float64            `json:"peak_rss_mib"`                        // engine subprocess only: its VmHWM, polled every 50 ms
	MaxRSSRusageMiB float64            `json:"maxrss_rusage_mib,omitempty"`         // ru_maxrss: inflated by the bench's own RSS at fork (vfork), kept for reference
	WALBytes        int64              `json:"wal_bytes"`                           // pg_current_wal_lsn() difference
	WALPerRow       float64            `json:"wal_bytes_per_row"`                   //
	WALFPI          int64              `json:"wal_full_page_images"`                // pg_stat_wal.wal_fpi difference (cluster-wide, like WALBytes)
	WALRecountRow   float64            `json:"wal_bytes_per_row_recount,omitempty"` // engine subprocess: of WALPerRow, what came after its run-finished line (the closing recount's pruning)
	Stats           *tableStats        `json:"table_stats,omitempty"`               // n_dead_tup etc. after the run
	CPU             cpuSnapshot        `json:"cpu_seconds"`                         // by process
	CPUEngine       float64            `json:"cpu_seconds_engine"`                  // the engine subprocess
	CPUEngineSys    float64            `json:"cpu_seconds_engine_system"`           // its kernel share (system calls: the network, Postgres's socket)
	ForeignCores    float64            `json:"foreign_cores"`                       // other processes' CPU use during the scenario, in cores (noise)
	IdleWait        float64            `json:"idle_wait_seconds,omitempty"`

	ReEncryptPerSec float64         `json:"reencrypt_per_s,omitempty"`           // kms-ceiling: ReEncrypt ops/s
	CPUDecrypt      *cpuSnapshot    `json:"cpu_seconds_decrypt_phase,omitempty"` // kms-ceiling: CPU of the Decrypt phase alone
	Verified        string          `json:"verified,omitempty"`
	Statements      []stmtStat      `json:"pg_statements,omitempty"`      // -statements: server time by statement
	WALStats        []walRecordStat `json:"wal_by_record_type,omitempty"` // -walstats
	Timeline        *timeline       `json:"timeline,omitempty"`           // engine: where its seconds went
	Problems        []string        `json:"problems,omitempty"`           // correctness: always fatal
	Notes           []string        `json:"notes,omitempty"`              // KMS-count expectations: fatal with -smoke
}

func nan() float64 { return math.NaN() }

// runAll runs the rounds: round 1 in the canonical order, round 2 reversed,
// and so on.
func (b *bench) runAll(ctx context.Context) (*report, error) {
	rep := newReport(b)
	if b.o.cpuProfile != "" {
		return rep, b.profile(ctx)
	}
	for round := 1; round <= b.o.rounds; round++ {
		order := slices.Clone(b.o.only)
		if round%2 == 0 {
			slices.Reverse(order)
		}
		b.logf("round %d/%d: %s", round, b.o.rounds, strings.Join(order, " "))
		for pos, sc := range order {
			if ctx.Err() != nil {
				return rep, ctx.Err()
			}
			r, err := b.runScenario(ctx, sc, round, pos+1)
			if err != nil {
				return rep, fmt.Errorf("round %d, %s: %w", round, sc, err)
			}
			rep.add(r)
			b.logf("  %-11s %10.0f %s/s  KMS/row %.4f  p50/p99 %.1f/%.1f ms  RSS %s MiB  WAL %.0f B/row  dead %s  other processes %.2f cores%s",
				sc, r.RowsPerSec, unit(sc), r.KMSPerRow, r.PageP50Ms, r.PageP99Ms, f1(r.PeakRSSMiB), r.WALPerRow, deadStr(r), r.ForeignCores, problemStr(r))
		}
	}
	rep.finish()
	return rep, nil
}

func unit(sc string) string {
	if sc == scKMS {
		return "ops"
	}
	return "rows"
}

func deadStr(r *Result) string {
	if r.Stats == nil {
		return "-"
	}
	return fmt.Sprint(r.Stats.Dead)
}

func problemStr(r *Result) string {
	if len(r.Problems) == 0 {
		return ""
	}
	return "  PROBLEMS: " + strings.Join(r.Problems, "; ")
}

// measured wraps a scenario with the measurements every scenario shares:
// proxy counts and rate samples, WAL, CPU by process.
type measured struct {
	b       *bench
	sampler *rateSampler
	lsn0    int64
	fpi0    int64 // pg_stat_wal.wal_fpi at the start, -1 if unknown
	cpu0    cpuSnapshot
	t0      time.Time
}

func (b *bench) startMeasure(ctx context.Context) (*measured, error) {
	m := &measured{b: b}
	if b.proxy != nil {
		b.proxy.ResetCounts()
		m.sampler = startSampler(b.proxy.Total)
	}
	var err error
	m.fpi0 = b.walFPI(ctx)
	if m.lsn0, err = b.walLSN(ctx); err != nil {
		return nil, err
	}
	m.cpu0 = takeCPU()
	m.t0 = time.Now()
	return m, nil
}

func (m *measured) finish(ctx context.Context, r *Result) error {
	r.WallSeconds = time.Since(m.t0).Seconds()
	r.CPU = takeCPU().sub(m.cpu0)
	if r.WallSeconds > 0 {
		r.ForeignCores = max(0, r.CPU.Machine-r.CPU.Bench-r.CPU.Postgres-r.CPU.KMS-r.CPUEngine) / r.WallSeconds
	}
	lsn1, err := m.b.walLSN(ctx)
	if err != nil {
		return err
	}
	r.WALBytes = lsn1 - m.lsn0
	if fpi1 := m.b.walFPI(ctx); m.fpi0 >= 0 && fpi1 >= m.fpi0 {
		r.WALFPI = fpi1 - m.fpi0
	}
	if m.sampler != nil {
		r.KMSRate = m.sampler.finish()
		r.KMS = m.b.proxy.Counts()
		r.ProxyMax1s = m.b.proxy.MaxRate()
	} else {
		r.KMS = r.EngineKMS
	}
	for _, n := range r.KMS {
		r.KMSTotal += n
	}
	if r.Rows > 0 {
		r.KMSPerRow = float64(r.KMSTotal) / float64(r.Rows)
		r.KMSPagePerRow = float64(r.KMSTotal-r.KMSPreflight) / float64(r.Rows)
		if r.WALBytes > 0 && r.Scenario != scKMS {
			r.WALPerRow = float64(r.WALBytes) / float64(r.Rows)
		}
	}
	if r.Seconds > 0 {
		r.RowsPerSec = float64(r.Rows) / r.Seconds
	}
	if m.sampler == nil && r.Seconds > 0 {
		r.KMSRate = rates{Requests: r.KMSTotal, ActiveSeconds: r.Seconds, Mean: float64(r.KMSTotal) / r.Seconds, Sustained: float64(r.KMSTotal) / r.Seconds}
	}
	return nil
}

func (b *bench) runScenario(ctx context.Context, sc string, round, pos int) (*Result, error) {
	r := &Result{Scenario: sc, Round: round, Position: pos, PageP50Ms: nan(), PageP99Ms: nan(), PeakRSSMiB: nan()}
	if b.o.waitIdle > 0 {
		w, foreign := waitIdle(ctx, b.o.waitIdle)
		r.IdleWait = w.Seconds()
		if foreign >= 0.2 {
			b.logf("  (machine still busy after %s: other processes use %.1f cores)", w.Round(time.Second), foreign)
		}
	}
	if sc == scKMS {
		return r, b.kmsCeiling(ctx, r)
	}
	tpl := b.tplLegacy
	switch sc {
	case scSecond, scSecondB:
		tpl = b.tplSecond
	case scPG:
		tpl = b.tplFake
	case scServer, scLocked, scClient:
		if b.tplSecond != "" { // the second rotation's data
			tpl = b.tplSecond
		}
	}
	name := b.dbName(fmt.Sprintf("r%d_%s", round, sc))
	dbURL, err := b.createDB(ctx, name, tpl)
	if err != nil {
		return nil, err
	}
	defer b.dropDB(ctx, name)
	if b.o.statements {
		if err := resetStatements(ctx, dbURL); err != nil {
			return nil, err
		}
	}

	m, err := b.startMeasure(ctx)
	if err != nil {
		return nil, err
	}
	n := int64(b.o.rows)
	old, nw, nw2 := b.keys[0], b.keys[1], b.keys[2]
	var want expect
	var run *engineRun
	switch sc {
	case scServer, scLocked:
		err = b.serverCeiling(ctx, dbURL, r, sc == scLocked)
	case scClient:
		err = b.minimalClient(ctx, dbURL, r)
	case scPG:
		run, err = b.runEngineInProcess(ctx, dbURL, old, nw, batch.Rekey, b.fake)
		want = expect{under: map[string]int64{nw.ARN: n}, audit: n, kc: b.fakeKC}
	case scNaive:
		err = b.naive(ctx, dbURL, r)
		want = expect{under: map[string]int64{nw.ARN: r.Rows}, audit: r.Rows}
		if r.Rows < n {
			want.under[old.ARN] = n - r.Rows
		}
	case scRekey, scRewrap:
		mode := "rekey"
		if sc == scRewrap {
			mode = "rewrap"
		}
		run, err = b.runEngine(ctx, dbURL, old.ARN, nw.ARN, mode, nil)
		want = expect{under: map[string]int64{nw.ARN: n}, audit: n}
	case scSecond:
		run, err = b.runEngine(ctx, dbURL, nw.ARN, nw2.ARN, "rekey", nil)
		want = expect{under: map[string]int64{nw2.ARN: n}, audit: n}
	case scSecondB:
		run, err = b.runBinary(ctx, b.o.binB, engineArgs{dbURL, nw.ARN, nw2.ARN, "rekey"}, nil)
		want = expect{under: map[string]int64{nw2.ARN: n}, audit: n}
	}
	if err != nil {
		return nil, err
	}
	if run != nil {
		r.Rows, r.Seconds = run.rotated, run.engineSeconds
		r.Pages, r.KMSWorkers, r.KMSLatencyMs, r.EngineKMS = run.pagesWithRows, run.kmsWorkers, run.kmsLatencyMs, run.engineKMS
		r.KMSPreflight = run.preflightKMS
		r.Timeline = run.timeline()
		if run.hwmKiB > 0 {
			r.PeakRSSMiB = float64(run.hwmKiB) / 1024
		}
		r.MaxRSSRusageMiB = float64(run.maxRSSKiB) / 1024
		r.CPUEngine, r.CPUEngineSys = run.cpu.Seconds(), run.cpuSys.Seconds()
		ps := slices.Clone(run.pageSeconds)
		sort.Float64s(ps)
		r.PageP50Ms, r.PageP99Ms = quantile(ps, 0.50)*1000, quantile(ps, 0.99)*1000
		var inPages float64
		for _, x := range run.pageSeconds {
			inPages += x
		}
		if inPages > 0 && run.engineSeconds > 0 {
			r.PageBusy = inPages / (run.engineSeconds * float64(b.cfg.RangeWorkers))
			r.PhaseP50Ms, r.PhaseShare = map[string]float64{}, map[string]float64{}
			for i, k := range phaseNames {
				v := slices.Clone(run.phaseSeconds[i])
				var sum float64
				for _, x := range v {
					sum += x
				}
				sort.Float64s(v)
				r.PhaseP50Ms[k] = quantile(v, 0.5) * 1000
				r.PhaseShare[k] = sum / inPages
			}
		}
		if run.exit != 0 {
			r.Problems = append(r.Problems, fmt.Sprintf("engine exited %d:\n%s", run.exit, run.tail()))
		}
		if run.rotated != n {
			r.Problems = append(r.Problems, fmt.Sprintf("engine rotated %d rows, want %d", run.rotated, n))
		}
	}
	if err := m.finish(ctx, r); err != nil {
		return nil, err
	}
	if b.o.walStats && r.WALBytes > 0 {
		if r.WALStats, err = b.readWALStats(ctx, m.lsn0, m.lsn0+r.WALBytes, r.Rows); err != nil {
			return nil, err
		}
	}
	if run != nil && run.walAtFinish > m.lsn0 && r.Rows > 0 && r.WALPerRow > 0 {
		r.WALRecountRow = float64(m.lsn0+r.WALBytes-run.walAtFinish) / float64(r.Rows)
	}
	if b.o.statements {
		if r.Statements, err = readStatements(ctx, dbURL, r.Rows); err != nil {
			return nil, err
		}
	}
	st, err := tokenTableStats(ctx, dbURL, r.Rows)
	if err != nil {
		return nil, err
	}
	r.Stats = &st
	verify := b.verify
	if sc == scServer || sc == scLocked || sc == scClient {
		verify = func(ctx context.Context, dbURL string, _ expect) ([]string, string) {
			return b.checkServerCeiling(ctx, dbURL, r)
		}
	}
	probs, checked := verify(ctx, dbURL, want)
	r.Problems = append(r.Problems, probs...)
	r.Verified = checked
	r.Notes = append(r.Notes, b.checkKMS(r)...)
	return r, nil
}

// checkKMS compares the KMS requests with what the scenario must cost.
// Preflight costs 2 DescribeKey, 1 GenerateDataKey and 1 Decrypt (the
// round trip), plus, in rekey, 1-3 sample Decrypts.
func (b *bench) checkKMS(r *Result) []string {
	var notes []string
	k := r.KMS
	bad := func(format string, a ...any) { notes = append(notes, fmt.Sprintf(format, a...)) }
	rows, pages := r.Rows, r.Pages
	switch r.Scenario {
	case scServer, scLocked, scClient:
		if r.KMSTotal != 0 {
			bad("%s made %d KMS requests, want 0", r.Scenario, r.KMSTotal)
		}
	case scPG:
		if r.KMSTotal != 0 {
			bad("pg-ceiling made %d KMS requests, want 0", r.KMSTotal)
		}
	case scNaive:
		if k["Decrypt"] != rows || k["GenerateDataKey"] != rows || r.KMSTotal != 2*rows {
			bad("naive: %v for %d rows, want one Decrypt and one GenerateDataKey per row", k, rows)
		}
	case scRekey: // legacy: one Decrypt per row, one GenerateDataKey per page
		if k["ReEncrypt"] != 0 || k["Decrypt"] < rows || k["Decrypt"] > rows+4 || k["GenerateDataKey"] > pages+1 {
			bad("rekey: %v for %d rows in %d pages, want Decrypt in [rows, rows+4], GenerateDataKey <= pages+1", k, rows, pages)
		}
	case scRewrap: // one ReEncrypt per row, nothing else but preflight
		if k["ReEncrypt"] != rows+1 || k["Decrypt"] > 1 || k["GenerateDataKey"] > 1 {
			bad("rewrap: %v for %d rows, want ReEncrypt = rows + 1 (the preflight's NAMESPACE check), Decrypt <= 1, GenerateDataKey <= 1", k, rows)
		}
	case scSecond, scSecondB: // one Decrypt and one GenerateDataKey per page, every page full
		// Ranges are cut at row positions in whole pages, so the first
		// rotation filled every page with one data key and this one's pages
		// line up with them.
		full := (rows + int64(b.cfg.BatchSize) - 1) / int64(b.cfg.BatchSize)
		if inPages := r.KMSTotal - r.KMSPreflight; k["ReEncrypt"] != 0 || inPages > 2*full {
			bad("second rotation: %v (%d by the preflight) for %d rows, want at most 2 per page of %d rows (%d) besides the preflight",
				k, r.KMSPreflight, rows, b.cfg.BatchSize, 2*full)
		}
		if pages != full {
			bad("second rotation: %d pages for %d rows, want %d (every page full but the last)", pages, rows, full)
		}
	case scKMS:
		if k["Decrypt"] != r.Rows+1 || k["ReEncrypt"] != r.Rows || k["GenerateDataKey"] != 1 {
			bad("kms-ceiling: %v for %d operations of each kind", k, r.Rows)
		}
	}
	return notes
}

// naive is what a typical re-encryption script does: one row at a time,
// read it, Decrypt its data key, GenerateDataKey for it, re-seal, and one
// transaction (UPDATE + audit row) per row. Same KMS client settings as the
// engine, no data-key cache (every legacy row has its own data key anyway).
func (b *bench) naive(ctx context.Context, dbURL string, r *Result) error {
	limit := b.o.rows
	if b.o.naiveRows > 0 {
		limit = min(limit, b.o.naiveRows)
	}
	conn, err := pgx.Connect(ctx, dbURL)
	if err != nil {
		return err
	}
	defer conn.Close(context.Background())
	cfg := b.cfg
	api, err := kmsclient.New(ctx, kmsclient.Options{MaxAttempts: cfg.KMSMaxAttempts, Budget: kmsclient.NewBudget(cfg.KMSRateLimit, cfg.ShardCount), SDKOnly: !cfg.KMSDirect})
	if err != nil {
		return err
	}
	kc := kmsclient.NewClient(api, namespace, nil)
	old, nw := b.keys[0].ARN, b.keys[1].ARN
	details, _ := json.Marshal(map[string]any{"script": "naive", "old_key_arn": old, "new_key_arn": nw})
	lat := make([]float64, 0, limit)
	var last string
	start := time.Now()
	for i := 0; i < limit; i++ {
		t0 := time.Now()
		var id string
		var tok []byte
		// (AS row_id: a bare "id" in ORDER BY would mean the text output column.)
		if i == 0 {
			err = conn.QueryRow(ctx, `SELECT id::text AS row_id, encrypted_token FROM payment_methods ORDER BY id LIMIT 1`).Scan(&id, &tok)
		} else {
			err = conn.QueryRow(ctx, `SELECT id::text AS row_id, encrypted_token FROM payment_methods WHERE id > $1::uuid ORDER BY id LIMIT 1`, last).Scan(&id, &tok)
		}
		if errors.Is(err, pgx.ErrNoRows) {
			break
		}
		if err != nil {
			return fmt.Errorf("naive read: %w", err)
		}
		last = id
		env, err := envelope.Parse(tok)
		if err != nil {
			return fmt.Errorf("naive row %s: %w", id, err)
		}
		dek, err := kc.Decrypt(ctx, old, env.WDEK)
		if err != nil {
			return err
		}
		plain, err := envelope.Open(env, dek, namespace, id)
		dek.Zero()
		if err != nil {
			return fmt.Errorf("naive row %s: %w", id, err)
		}
		ndek, nwdek, err := kc.GenerateDataKey(ctx, nw)
		if err != nil {
			return err
		}
		fresh, err := envelope.SealRandom(ndek, envelope.SealOptions{KID: nw, WDEK: nwdek, Namespace: namespace, RowID: id}, plain)
		ndek.Zero()
		clear(plain)
		if err != nil {
			return err
		}
		out, err := fresh.Marshal()
		if err != nil {
			return err
		}
		err = pgx.BeginFunc(ctx, conn, func(tx pgx.Tx) error {
			if _, err := tx.Exec(ctx, `UPDATE payment_methods SET encrypted_token = $2 WHERE id = $1::uuid`, id, out); err != nil {
				return err
			}
			_, err := tx.Exec(ctx, `INSERT INTO payment_method_audit (payment_method_id, action, actor_type, details)
				VALUES ($1::uuid, 'token_reencrypted', 'system', $2::jsonb)`, id, details)
			return err
		})
		if err != nil {
			return fmt.Errorf("naive write: %w", err)
		}
		lat = append(lat, time.Since(t0).Seconds())
	}
	r.Seconds = time.Since(start).Seconds()
	r.Rows = int64(len(lat))
	r.Pages = r.Rows
	sort.Float64s(lat)
	r.PageP50Ms, r.PageP99Ms = quantile(lat, 0.5)*1000, quantile(lat, 0.99)*1000
	return nil
}

// kmsCeiling times KMS Decrypt, then ReEncrypt, of distinct legacy data
// keys with as many requests in flight as the engine can have: its per-page
// workers (KMS_CONCURRENCY, or sized from latency and budget as the engine
// does) times RANGE_WORKERS pages at once. Same client settings as the
// engine (retries, budget), no cache.
func (b *bench) kmsCeiling(ctx context.Context, r *Result) error {
	cfg := b.cfg
	var mu sync.Mutex
	var lat []float64
	observe := func(op, result string, took time.Duration) {
		if op == "Decrypt" {
			mu.Lock()
			lat = append(lat, took.Seconds())
			mu.Unlock()
		}
	}
	budget := kmsclient.NewBudget(cfg.KMSRateLimit, cfg.ShardCount)
	api, err := kmsclient.New(ctx, kmsclient.Options{MaxAttempts: cfg.KMSMaxAttempts, Budget: budget, Observe: observe, SDKOnly: !cfg.KMSDirect})
	if err != nil {
		return err
	}
	kc := kmsclient.NewClient(api, namespace, nil)
	m, err := b.startMeasure(ctx)
	if err != nil {
		return err
	}
	latency, err := batch.RoundTrip(ctx, kc, b.keys[1].ARN, namespace)
	if err != nil {
		return err
	}
	workers := cfg.KMSConcurrency
	if workers == 0 {
		workers = budget.Concurrency(latency, 4, 64)
	}
	inflight := workers * cfg.RangeWorkers
	r.KMSWorkers, r.KMSLatencyMs = inflight, float64(latency.Microseconds())/1000
	mu.Lock()
	lat = lat[:0]
	mu.Unlock()

	n := len(b.wdeks)
	old, nw := b.keys[0].ARN, b.keys[1].ARN
	timed := func(op func(wdek []byte) error) (time.Duration, error) {
		var next atomic.Int64
		var wg sync.WaitGroup
		var firstErr error
		var once sync.Once
		start := time.Now()
		for range inflight {
			wg.Go(func() {
				for {
					i := int(next.Add(1)) - 1
					if i >= n || ctx.Err() != nil {
						return
					}
					if err := op(b.wdeks[i]); err != nil {
						once.Do(func() { firstErr = err })
						return
					}
				}
			})
		}
		wg.Wait()
		return time.Since(start), firstErr
	}
	cpuDec0 := takeCPU()
	dDec, err := timed(func(w []byte) error {
		dek, err := kc.Decrypt(ctx, old, w)
		dek.Zero()
		return err
	})
	if err != nil {
		return err
	}
	cd := takeCPU().sub(cpuDec0)
	r.CPUDecrypt = &cd
	dRe, err := timed(func(w []byte) error {
		_, err := kc.ReEncrypt(ctx, w, old, nw)
		return err
	})
	if err != nil {
		return err
	}
	r.Rows, r.Seconds = int64(n), dDec.Seconds()
	r.ReEncryptPerSec = float64(n) / dRe.Seconds()
	mu.Lock()
	sort.Float64s(lat)
	r.PageP50Ms, r.PageP99Ms = quantile(lat, 0.5)*1000, quantile(lat, 0.99)*1000
	mu.Unlock()
	if err := m.finish(ctx, r); err != nil {
		return err
	}
	r.WALBytes, r.WALPerRow = 0, 0
	r.Notes = append(r.Notes, b.checkKMS(r)...)
	return nil
}

// profile runs each engine scenario of -only once, in this process, under
// the CPU profiler (the proxy, when on, is in this process too: focus on
// pkg/batch, pkg/envelope, pgx and the SDK in the profile).
func (b *bench) profile(ctx context.Context) error {
	for _, sc := range b.o.only {
		var oldK, newK = b.keys[0], b.keys[1]
		mode, tpl := batch.Rekey, b.tplLegacy
		var api kmsclient.KMS
		switch sc {
		case scRewrap:
			mode = batch.Rewrap
		case scSecond:
			oldK, newK, tpl = b.keys[1], b.keys[2], b.tplSecond
		case scPG:
			api, tpl = b.fake, b.tplFake
		case scRekey:
		case scKMS:
			path := strings.TrimSuffix(b.o.cpuProfile, ".pprof") + "." + sc + ".pprof"
			f, err := os.Create(path)
			if err != nil {
				return err
			}
			if err := pprof.StartCPUProfile(f); err != nil {
				f.Close()
				return err
			}
			r := &Result{Scenario: sc}
			err = b.kmsCeiling(ctx, r)
			pprof.StopCPUProfile()
			f.Close()
			if err != nil {
				return err
			}
			c := r.CPUDecrypt
			fmt.Printf("%-11s in-process: %d Decrypt in %.2fs = %.0f/s, %d in flight; Decrypt phase CPU s: bench(client+proxy) %.1f, kms %.1f; profile %s\n",
				sc, r.Rows, r.Seconds, r.RowsPerSec, r.KMSWorkers, c.Bench, c.KMS, path)
			continue
		default:
			continue
		}
		name := b.dbName("prof_" + sc)
		dbURL, err := b.createDB(ctx, name, tpl)
		if err != nil {
			return err
		}
		path := strings.TrimSuffix(b.o.cpuProfile, ".pprof") + "." + sc + ".pprof"
		f, err := os.Create(path)
		if err != nil {
			return err
		}
		if err := pprof.StartCPUProfile(f); err != nil {
			f.Close()
			return err
		}
		cpu0 := takeCPU()
		run, err := b.runEngineInProcess(ctx, dbURL, oldK, newK, mode, api)
		cpu := takeCPU().sub(cpu0)
		pprof.StopCPUProfile()
		f.Close()
		b.dropDB(ctx, name)
		if err != nil {
			return err
		}
		fmt.Printf("%-11s in-process: %d rows in %.2fs = %.0f rows/s, %d pages, workers %d; CPU s: bench(engine+proxy) %.1f, postgres %.1f, kms %.1f; profile %s\n",
			sc, run.rotated, run.engineSeconds, run.rowsPerSec(), run.pages, run.kmsWorkers, cpu.Bench, cpu.Postgres, cpu.KMS, path)
		if run.exit != 0 {
			fmt.Println(run.tail())
		}
	}
	return nil
}
