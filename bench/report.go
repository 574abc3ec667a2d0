package main

import (
	"bufio"
	"bytes"
	"encoding/json"
	"fmt"
	"io"
	"math"
	"os"
	"path/filepath"
	"runtime"
	"strings"
	"text/tabwriter"
	"time"
)

// report is what the invocation found: every result, and the medians,
// ratios and targets computed from them.
type report struct {
	Date     string              `json:"date"`
	Machine  map[string]any      `json:"machine"`
	Settings map[string]any      `json:"settings"`
	Setup    map[string]any      `json:"setup"`
	Results  []*Result           `json:"results"`
	Medians  map[string]*summary `json:"medians"`
	Ratios   []ratio             `json:"ratios"`
	Targets  []target            `json:"targets"`
	Latency  []latencyCheck      `json:"latency_mode,omitempty"`
	Failures []string            `json:"failures,omitempty"`

	b *bench
}

// summary is the medians of one scenario over the rounds.
type summary struct {
	Rounds        int                `json:"rounds"`
	RowsPerSec    float64            `json:"rows_per_s"`
	RowsPerSecAll []float64          `json:"rows_per_s_by_round"`
	Rows          float64            `json:"rows"`
	KMSPerRow     float64            `json:"kms_per_row"`
	KMSPagePerRow float64            `json:"kms_page_per_row"` // without the preflight's fixed requests
	KMSPreflight  float64            `json:"kms_preflight"`
	KMSMean       float64            `json:"kms_req_per_s_mean"`
	KMSSustained  float64            `json:"kms_req_per_s_sustained"`
	KMSMax1s      float64            `json:"kms_req_per_s_max_1s"` // max over rounds of the proxy's busiest second
	PageP50Ms     float64            `json:"page_p50_ms"`
	PageP99Ms     float64            `json:"page_p99_ms"`
	PeakRSSMiB    float64            `json:"peak_rss_mib"`
	PeakRSSMaxMiB float64            `json:"peak_rss_max_mib"`
	WALPerRow     float64            `json:"wal_bytes_per_row"`
	WALRecountRow float64            `json:"wal_bytes_per_row_recount,omitempty"` // engine: after its run-finished line
	WALRunRow     float64            `json:"wal_bytes_per_row_run,omitempty"`     // engine: up to it
	FPIPerKRows   float64            `json:"wal_fpi_per_1000_rows"`
	DeadTuples    float64            `json:"dead_tuples"`
	HotPct        float64            `json:"hot_update_pct"`
	Pages         float64            `json:"pages"`
	KMSWorkers    float64            `json:"kms_workers"`
	ReEncryptPerS float64            `json:"reencrypt_per_s,omitempty"`
	CPUPerKRows   map[string]float64 `json:"cpu_ms_per_1000_rows"`
	PhaseP50Ms    map[string]float64 `json:"page_phase_p50_ms,omitempty"`
	PhaseShare    map[string]float64 `json:"page_phase_share,omitempty"`
	PageBusy      float64            `json:"range_workers_busy,omitempty"`
	Timeline      *timeline          `json:"timeline,omitempty"`
	ForeignCores  float64            `json:"foreign_cores"`
}

type ratio struct {
	Name  string  `json:"name"`
	Value float64 `json:"value"`
	How   string  `json:"how"`
}

type target struct {
	Name   string  `json:"name"`
	Value  float64 `json:"value"`
	Want   string  `json:"want"`
	Status string  `json:"status"` // PASS, FAIL, n/a
}

type latencyCheck struct {
	Scenario  string  `json:"scenario"`
	Budget    float64 `json:"budget_per_s"`
	Max1s     float64 `json:"max_1s_per_s"`
	Mean      float64 `json:"mean_per_s"`
	Sustained float64 `json:"sustained_per_s"`
	Workers   int     `json:"kms_workers"`
	LatencyMs float64 `json:"kms_latency_ms"`
	Status    string  `json:"status"`
}

func newReport(b *bench) *report {
	o := b.o
	host, _ := os.Hostname()
	budget := "unlimited (KMS_RATE_LIMIT=0)"
	if o.kmsBudget > 0 {
		budget = fmt.Sprintf("%g requests/s (KMS_RATE_LIMIT)", o.kmsBudget)
	}
	rep := &report{
		b:    b,
		Date: time.Now().Format(time.RFC3339),
		Machine: map[string]any{
			"host": host, "cpus": runtime.NumCPU(), "cpu_model": cpuModel(), "mem_gib": memGiB(),
			"go": runtime.Version(), "os": runtime.GOOS + "/" + runtime.GOARCH,
			"postgres": b.pgVersion, "postgres_external": b.pg != nil && b.pg.External(),
			"kms": b.kmsName,
		},
		Settings: map[string]any{
			"rows": o.rows, "rounds": o.rounds, "batch_size": b.cfg.BatchSize, "scenarios": o.only,
			"kms_latency": o.kmsLatency.String(), "kms_jitter": o.kmsJitter.String(), "kms_budget": budget,
			"kms_proxy": o.proxy, "range_workers": b.cfg.RangeWorkers, "ranges": b.cfg.RangeCount(),
			"kms_concurrency": b.cfg.KMSConcurrency, "dek_cache_size": b.cfg.DEKCacheSize,
			"naive_rows": o.naiveRows, "kms_ops": len(b.wdeks), "verify": o.verify, "smoke": o.smoke,
			"engine_env": b.engineEnv,
		},
		Setup:   b.setupInfo,
		Medians: map[string]*summary{},
	}
	return rep
}

func (rep *report) add(r *Result) {
	rep.Results = append(rep.Results, r)
	for _, p := range r.Problems {
		rep.Failures = append(rep.Failures, fmt.Sprintf("round %d %s: %s", r.Round, r.Scenario, p))
	}
	if rep.b.o.smoke {
		for _, n := range r.Notes {
			rep.Failures = append(rep.Failures, fmt.Sprintf("round %d %s: %s", r.Round, r.Scenario, n))
		}
	}
}

func (rep *report) finish() {
	by := map[string][]*Result{}
	for _, r := range rep.Results {
		by[r.Scenario] = append(by[r.Scenario], r)
	}
	for sc, rs := range by {
		s := &summary{Rounds: len(rs), CPUPerKRows: map[string]float64{}}
		col := func(f func(*Result) float64) float64 {
			v := make([]float64, len(rs))
			for i, r := range rs {
				v[i] = f(r)
			}
			return median(v)
		}
		for _, r := range rs {
			s.RowsPerSecAll = append(s.RowsPerSecAll, r.RowsPerSec)
			s.KMSMax1s = max(s.KMSMax1s, r.ProxyMax1s, r.KMSRate.Max1s)
			if !math.IsNaN(r.PeakRSSMiB) {
				s.PeakRSSMaxMiB = max(s.PeakRSSMaxMiB, r.PeakRSSMiB)
			}
		}
		s.RowsPerSec = col(func(r *Result) float64 { return r.RowsPerSec })
		s.Rows = col(func(r *Result) float64 { return float64(r.Rows) })
		s.KMSPerRow = col(func(r *Result) float64 { return r.KMSPerRow })
		s.KMSPagePerRow = col(func(r *Result) float64 { return r.KMSPagePerRow })
		s.KMSPreflight = col(func(r *Result) float64 { return float64(r.KMSPreflight) })
		s.KMSMean = col(func(r *Result) float64 { return r.KMSRate.Mean })
		s.KMSSustained = col(func(r *Result) float64 { return r.KMSRate.Sustained })
		s.PageP50Ms = col(func(r *Result) float64 { return r.PageP50Ms })
		s.PageP99Ms = col(func(r *Result) float64 { return r.PageP99Ms })
		s.PeakRSSMiB = col(func(r *Result) float64 { return r.PeakRSSMiB })
		s.WALPerRow = col(func(r *Result) float64 { return r.WALPerRow })
		s.FPIPerKRows = col(func(r *Result) float64 {
			if r.Rows == 0 || r.WALBytes == 0 {
				return nan()
			}
			return 1000 * float64(r.WALFPI) / float64(r.Rows)
		})
		if rs[0].WALRecountRow > 0 {
			s.WALRecountRow = col(func(r *Result) float64 { return r.WALRecountRow })
			s.WALRunRow = col(func(r *Result) float64 { return r.WALPerRow - r.WALRecountRow })
		}
		s.Pages = col(func(r *Result) float64 { return float64(r.Pages) })
		s.KMSWorkers = col(func(r *Result) float64 { return float64(r.KMSWorkers) })
		s.ReEncryptPerS = col(func(r *Result) float64 { return r.ReEncryptPerSec })
		s.ForeignCores = col(func(r *Result) float64 { return r.ForeignCores })
		if rs[0].PhaseP50Ms != nil {
			s.PageBusy = col(func(r *Result) float64 { return r.PageBusy })
			s.PhaseP50Ms, s.PhaseShare = map[string]float64{}, map[string]float64{}
			for _, k := range phaseNames {
				s.PhaseP50Ms[k] = col(func(r *Result) float64 { return r.PhaseP50Ms[k] })
				s.PhaseShare[k] = col(func(r *Result) float64 { return r.PhaseShare[k] })
			}
		}
		if rs[0].Timeline != nil {
			tl := func(f func(*timeline) float64) float64 {
				return col(func(r *Result) float64 {
					if r.Timeline == nil {
						return nan()
					}
					return f(r.Timeline)
				})
			}
			s.Timeline = &timeline{
				BeforePages: tl(func(t *timeline) float64 { return t.BeforePages }),
				Pages:       tl(func(t *timeline) float64 { return t.Pages }),
				AfterPages:  tl(func(t *timeline) float64 { return t.AfterPages }),
			}
		}
		if sc != scKMS {
			s.DeadTuples = col(func(r *Result) float64 {
				if r.Stats == nil {
					return nan()
				}
				return float64(r.Stats.Dead)
			})
			s.HotPct = col(func(r *Result) float64 {
				if r.Stats == nil || r.Stats.Updates == 0 {
					return nan()
				}
				return 100 * float64(r.Stats.HotUpdates) / float64(r.Stats.Updates)
			})
		} else {
			s.DeadTuples, s.HotPct, s.WALPerRow = nan(), nan(), nan()
		}
		perK := func(f func(*Result) float64) float64 {
			return col(func(r *Result) float64 {
				if r.Rows == 0 {
					return nan()
				}
				return 1e6 * f(r) / float64(r.Rows)
			})
		}
		cpuOf := func(r *Result) cpuSnapshot {
			if r.CPUDecrypt != nil { // KMS ceiling: the Decrypt phase, per Decrypt
				return *r.CPUDecrypt
			}
			return r.CPU
		}
		s.CPUPerKRows["engine"] = perK(func(r *Result) float64 { return r.CPUEngine })
		s.CPUPerKRows["engine_user"] = perK(func(r *Result) float64 { return r.CPUEngine - r.CPUEngineSys })
		s.CPUPerKRows["engine_system"] = perK(func(r *Result) float64 { return r.CPUEngineSys })
		s.CPUPerKRows["bench_process"] = perK(func(r *Result) float64 { return cpuOf(r).Bench })
		s.CPUPerKRows["postgres"] = perK(func(r *Result) float64 { return cpuOf(r).Postgres })
		s.CPUPerKRows["kms"] = perK(func(r *Result) float64 { return cpuOf(r).KMS })
		s.CPUPerKRows["total"] = s.CPUPerKRows["engine"] + s.CPUPerKRows["bench_process"] + s.CPUPerKRows["postgres"] + s.CPUPerKRows["kms"]
		rep.Medians[sc] = s
	}
	rep.ratiosAndTargets()
}

func (rep *report) get(sc string) *summary { return rep.Medians[sc] }

func (rep *report) ratiosAndTargets() {
	o := rep.b.o
	srv, pg, kmsC, naive := rep.get(scServer), rep.get(scPG), rep.get(scKMS), rep.get(scNaive)
	rk, rw, sec := rep.get(scRekey), rep.get(scRewrap), rep.get(scSecond)
	addR := func(name, how string, v float64) { rep.Ratios = append(rep.Ratios, ratio{name, v, how}) }
	addT := func(name, want string, v float64, ok bool, have bool) {
		st := "n/a"
		if have && !math.IsNaN(v) {
			st = "FAIL"
			if ok {
				st = "PASS"
			}
		}
		rep.Targets = append(rep.Targets, target{name, v, want, st})
	}
	// KMS utilisation: rows/s times KMS requests per row, over the ceiling's
	// operations/s = "rows/s per KMS request/s" of the issue.
	util := func(e *summary, ceiling float64) float64 {
		if e == nil || ceiling <= 0 {
			return nan()
		}
		return e.RowsPerSec * e.KMSPerRow / ceiling
	}
	div := func(a, b *summary) float64 {
		if a == nil || b == nil || b.RowsPerSec <= 0 {
			return nan()
		}
		return a.RowsPerSec / b.RowsPerSec
	}
	var dec, reenc float64
	if kmsC != nil {
		dec, reenc = kmsC.RowsPerSec, kmsC.ReEncryptPerS
	}
	rkK, rwK := util(rk, dec), util(rw, dec)
	rwKre := util(rw, reenc)
	addR("rekey vs KMS ceiling", "rekey rows/s x KMS requests/row / ceiling Decrypt ops/s", rkK)
	addR("rewrap vs KMS ceiling", "rewrap rows/s x KMS requests/row / ceiling ReEncrypt ops/s (same concurrency)", rwKre)
	addR("rewrap vs KMS Decrypt ceiling", "rewrap rows/s x KMS requests/row / ceiling Decrypt ops/s (an operation rewrap does not call)", rwK)
	addR("ReEncrypt ceiling / Decrypt ceiling", "what one ReEncrypt costs the endpoint against one Decrypt", func() float64 {
		if dec <= 0 || reenc <= 0 {
			return nan()
		}
		return reenc / dec
	}())
	addR("rekey vs naive", "rows/s / naive rows/s", div(rk, naive))
	addR("rewrap vs naive", "rows/s / naive rows/s", div(rw, naive))
	addR("second vs Postgres ceiling", "rows/s / pg-ceiling rows/s", div(sec, pg))
	addR("second-b vs second", "rows/s of the -bin-b build / rows/s of -bin, same rounds", div(rep.get(scSecondB), sec))
	addR("second vs naive", "rows/s / naive rows/s", div(sec, naive))
	addR("rekey vs Postgres ceiling", "rows/s / pg-ceiling rows/s", div(rk, pg))
	for _, sc := range []string{scLocked, scClient, scPG, scNaive, scRekey, scRewrap, scSecond, scSecondB} {
		addR(sc+" vs server-side ceiling", "rows/s / server-ceiling rows/s (scenario 0)", div(rep.get(sc), srv))
	}

	unlimited := o.kmsBudget == 0 && o.kmsLatency == 0
	addT("rekey >= 0.8 x KMS ceiling (Decrypt)", ">= 0.8", rkK, rkK >= 0.8, unlimited)
	// Each mode is judged on the ceiling of the operation it sends: rewrap
	// sends only ReEncrypt, which the endpoint serves more slowly than
	// Decrypt, so no rewrap could reach 0.8 x the Decrypt ceiling wherever
	// ReEncrypt/Decrypt is below 0.8; that ratio is reported above.
	addT("rewrap >= 0.8 x KMS ceiling (ReEncrypt)", ">= 0.8", rwKre, rwKre >= 0.8, unlimited)
	addT("rekey >= 5 x naive", ">= 5", div(rk, naive), div(rk, naive) >= 5, true)
	addT("rewrap >= 5 x naive", ">= 5", div(rw, naive), div(rw, naive) >= 5, true)
	addT("second >= 0.7 x server-side ceiling (scenario 0)", ">= 0.7", div(sec, srv), div(sec, srv) >= 0.7, true)
	addT("second >= 40 x naive", ">= 40", div(sec, naive), div(sec, naive) >= 40, true)
	if sec != nil {
		lim := 2 / float64(rep.b.cfg.BatchSize)
		// The target is the per-row cost; the preflight's requests (two
		// DescribeKey, a GenerateDataKey/Decrypt round trip under NEW, a
		// sample Decrypt under OLD) are a fixed cost per run, shown apart.
		addT(fmt.Sprintf("second: KMS calls/row in pages <= 2/BATCH_SIZE (%.4f)", lim), fmt.Sprintf("<= %.4f", lim), sec.KMSPagePerRow, sec.KMSPagePerRow <= lim*1.000001, true)
		addR("second: KMS calls/row with the preflight", fmt.Sprintf("%.0f preflight requests per run included", sec.KMSPreflight), sec.KMSPerRow)
		if sec.Pages > 0 {
			perPage := sec.KMSPagePerRow * sec.Rows / sec.Pages
			addR("second: KMS calls per page", fmt.Sprintf("%.0f pages of %.0f rows on average (BATCH_SIZE %d)", sec.Pages, sec.Rows/sec.Pages, rep.b.cfg.BatchSize), perPage)
		}
	}
	for _, sc := range []string{scRekey, scRewrap, scSecond} {
		if s := rep.get(sc); s != nil && !math.IsNaN(s.PeakRSSMaxMiB) && s.PeakRSSMaxMiB > 0 {
			addT(sc+": peak RSS < 100 MB", "< 95.4 MiB", s.PeakRSSMaxMiB, s.PeakRSSMaxMiB < 100e6/(1<<20), true)
		}
	}
	if o.rssBase != "" {
		base, err := readMedians(o.rssBase)
		if err != nil {
			rep.Failures = append(rep.Failures, "-rss-baseline: "+err.Error())
		}
		for _, sc := range []string{scRekey, scRewrap, scSecond} {
			s, bs := rep.get(sc), base[sc]
			if s == nil || bs == nil || bs.PeakRSSMaxMiB <= 0 || s.PeakRSSMaxMiB <= 0 {
				continue
			}
			v := s.PeakRSSMaxMiB / bs.PeakRSSMaxMiB
			addT(fmt.Sprintf("%s: peak RSS %.1f MiB within 1.25 x %.1f MiB at %.0f rows", sc, s.PeakRSSMaxMiB, bs.PeakRSSMaxMiB, bs.Rows),
				"<= 1.25", v, v <= 1.25, true)
		}
	}
	if o.kmsBudget > 0 || o.kmsLatency > 0 {
		for _, sc := range []string{scRekey, scRewrap, scSecond} {
			var rs []*Result
			for _, r := range rep.Results {
				if r.Scenario == sc {
					rs = append(rs, r)
				}
			}
			if len(rs) == 0 {
				continue
			}
			lc := latencyCheck{Scenario: sc, Budget: o.kmsBudget, Status: "n/a"}
			var mean, sus, lat, wk []float64
			for _, r := range rs {
				lc.Max1s = max(lc.Max1s, r.ProxyMax1s, r.KMSRate.Max1s)
				mean = append(mean, r.KMSRate.Mean)
				sus = append(sus, r.KMSRate.Sustained)
				lat = append(lat, r.KMSLatencyMs)
				wk = append(wk, float64(r.KMSWorkers))
			}
			lc.Mean, lc.Sustained, lc.LatencyMs, lc.Workers = median(mean), median(sus), median(lat), int(median(wk))
			if o.kmsBudget > 0 && sc != scSecond { // second rotation is not KMS-bound
				ok := lc.Max1s <= o.kmsBudget && lc.Sustained >= 0.9*o.kmsBudget
				lc.Status = map[bool]string{true: "PASS", false: "FAIL"}[ok]
				addT(fmt.Sprintf("%s: >= %.0f/s sustained, never above %.0f/s (latency %s)", sc, 0.9*o.kmsBudget, o.kmsBudget, o.kmsLatency),
					fmt.Sprintf("max1s <= %.0f, sustained >= %.0f", o.kmsBudget, 0.9*o.kmsBudget), lc.Sustained, ok, true)
			}
			rep.Latency = append(rep.Latency, lc)
		}
	}
}

func f0(v float64) string {
	if math.IsNaN(v) {
		return "-"
	}
	return commas(int64(math.Round(v)))
}

func f1(v float64) string {
	if math.IsNaN(v) {
		return "-"
	}
	return fmt.Sprintf("%.1f", v)
}

func f4(v float64) string {
	if math.IsNaN(v) {
		return "-"
	}
	return fmt.Sprintf("%.4f", v)
}

func commas(n int64) string {
	s := fmt.Sprint(n)
	neg := strings.HasPrefix(s, "-")
	s = strings.TrimPrefix(s, "-")
	var out []string
	for len(s) > 3 {
		out = append([]string{s[len(s)-3:]}, out...)
		s = s[:len(s)-3]
	}
	out = append([]string{s}, out...)
	if neg {
		return "-" + strings.Join(out, ",")
	}
	return strings.Join(out, ",")
}

var titles = map[string]string{
	scServer:  "0 server-side ceiling",
	scLocked:  "0b server-side, row locks",
	scClient:  "0c minimal Go client, row locks",
	scPG:      "1 Postgres ceiling",
	scKMS:     "2 KMS ceiling",
	scNaive:   "3 naive baseline",
	scRekey:   "4 engine rekey",
	scRewrap:  "5 engine rewrap",
	scSecond:  "6 second rotation",
	scSecondB: "6b second, -bin-b",
}

func (rep *report) print(w io.Writer) {
	o, b := rep.b.o, rep.b
	bw := bufio.NewWriter(w)
	defer bw.Flush()
	fmt.Fprintf(bw, "\nreencrypt bench, %s: %s rows, BATCH_SIZE %d, %d round(s), medians\n", rep.Date[:10], commas(int64(o.rows)), b.cfg.BatchSize, o.rounds)
	fmt.Fprintf(bw, "machine: %v CPUs (%v), %v GiB, %s; Postgres %s (durable%s); KMS %s",
		rep.Machine["cpus"], rep.Machine["cpu_model"], rep.Machine["mem_gib"], runtime.Version(), b.pgVersion,
		map[bool]string{true: ", TEST_DATABASE_URL", false: ", throwaway"}[b.pg.External()], b.kmsName)
	if b.proxy != nil {
		fmt.Fprintf(bw, " via counting proxy (+%s latency, %s jitter)", o.kmsLatency, o.kmsJitter)
	}
	fmt.Fprintf(bw, "\nengine: KMS budget %v, RANGE_WORKERS %d, RANGES %d, KMS_CONCURRENCY %d (0 = auto), DEK_CACHE_SIZE %d\n",
		rep.Settings["kms_budget"], b.cfg.RangeWorkers, b.cfg.RangeCount(), b.cfg.KMSConcurrency, b.cfg.DEKCacheSize)
	if len(rep.Results) == 0 {
		return
	}
	fmt.Fprintln(bw)
	tw := tabwriter.NewWriter(bw, 0, 0, 2, ' ', tabwriter.AlignRight)
	srv := rep.get(scServer)
	fmt.Fprintln(tw, "scenario\t rows/s\t x server\t rows\t KMS/row\t KMS req/s mean\t max 1s\t page p50 ms\t p99 ms\t peak RSS MiB\t WAL B/row\t dead tuples\t HOT %\t")
	for _, sc := range allScenarios {
		s := rep.get(sc)
		if s == nil {
			continue
		}
		kpr, rows := f4(s.KMSPerRow), f0(s.Rows)
		if sc == scKMS {
			kpr = "-"
			rows += " ops"
		}
		xs := "-"
		if srv != nil && srv.RowsPerSec > 0 && sc != scKMS && s.RowsPerSec > 0 {
			xs = fmt.Sprintf("%.2f", s.RowsPerSec/srv.RowsPerSec)
		}
		fmt.Fprintf(tw, "%s\t %s\t %s\t %s\t %s\t %s\t %s\t %s\t %s\t %s\t %s\t %s\t %s\t\n", titles[sc], f0(s.RowsPerSec), xs, rows, kpr,
			f0(s.KMSMean), f0(s.KMSMax1s), f1(s.PageP50Ms), f1(s.PageP99Ms), f1(s.PeakRSSMiB), f0(s.WALPerRow), f0(s.DeadTuples), f0(s.HotPct))
	}
	tw.Flush()
	fmt.Fprintln(bw, "\nnotes: KMS ceiling rows/s = Decrypt ops/s; its page columns = one Decrypt's latency. Naive: page = one row's transaction, over its first",
		map[bool]string{true: "rows", false: commas(int64(o.naiveRows)) + " rows"}[o.naiveRows == 0 || o.naiveRows >= o.rows]+".",
		"Peak RSS: the engine subprocess's own VmHWM (not ru_maxrss, which the vfork start inflates with the bench's RSS).")
	if s := rep.get(scKMS); s != nil {
		fmt.Fprintf(bw, "KMS ceiling: %s Decrypt/s and %s ReEncrypt/s with %s requests in flight (per-page workers x RANGE_WORKERS).\n",
			f0(s.RowsPerSec), f0(s.ReEncryptPerS), f0(s.KMSWorkers))
	}

	fmt.Fprintln(bw, "\nrows/s by round (order alternates), [other processes' CPU use meanwhile, in cores: machine noise]:")
	for _, sc := range allScenarios {
		var parts []string
		for _, r := range rep.Results {
			if r.Scenario == sc {
				parts = append(parts, fmt.Sprintf("%s [%.2f]", f0(r.RowsPerSec), r.ForeignCores))
			}
		}
		if len(parts) > 0 {
			fmt.Fprintf(bw, "  %-20s %s\n", titles[sc], strings.Join(parts, "  "))
		}
	}
	fmt.Fprintln(bw, "\nWAL by round, B/row [full-page images per 1,000 rows, pg_stat_wal]: a page's first change after a checkpoint writes all of it")
	for _, sc := range allScenarios {
		var parts []string
		for _, r := range rep.Results {
			if r.Scenario == sc && r.WALPerRow > 0 {
				parts = append(parts, fmt.Sprintf("%s [%.0f]", f0(r.WALPerRow), 1000*float64(r.WALFPI)/float64(r.Rows)))
			}
		}
		if len(parts) > 0 {
			fmt.Fprintf(bw, "  %-20s %s\n", titles[sc], strings.Join(parts, "  "))
		}
	}
	fmt.Fprintf(bw, "\nCPU ms per 1,000 rows by process (KMS ceiling: per 1,000 Decrypts); CPU-bound limit = %d cores / total:\n", runtime.NumCPU())
	tw = tabwriter.NewWriter(bw, 0, 0, 2, ' ', tabwriter.AlignRight)
	fmt.Fprintln(tw, "scenario\t engine\t (user / kernel)\t bench (proxy + in-process work)\t postgres\t local-kms\t total\t CPU-bound limit rows/s\t")
	for _, sc := range allScenarios {
		if s := rep.get(sc); s != nil {
			c := s.CPUPerKRows
			limit := nan()
			if c["total"] > 0 {
				limit = float64(runtime.NumCPU()) * 1e6 / c["total"]
			}
			split := "-"
			if c["engine"] > 0 {
				split = f1(c["engine_user"]) + " / " + f1(c["engine_system"])
			}
			fmt.Fprintf(tw, "%s\t %s\t %s\t %s\t %s\t %s\t %s\t %s\t\n", titles[sc], f1(c["engine"]), split, f1(c["bench_process"]), f1(c["postgres"]), f1(c["kms"]), f1(c["total"]), f0(limit))
		}
	}
	tw.Flush()

	fmt.Fprintln(bw, "\nwhere an engine page's time goes (from its debug line; medians over rounds):")
	tw = tabwriter.NewWriter(bw, 0, 0, 2, ' ', tabwriter.AlignRight)
	fmt.Fprintln(tw, "scenario\t read p50 ms\t rotate (KMS+AES) p50 ms\t commit p50 ms\t share read/rotate/commit\t range workers busy\t s before 1st page / pages / after last\t WAL B/row: run / closing recount\t")
	for _, sc := range allScenarios {
		if s := rep.get(sc); s != nil && s.PhaseP50Ms != nil {
			p, sh := s.PhaseP50Ms, s.PhaseShare
			tl := "-"
			if t := s.Timeline; t != nil {
				tl = fmt.Sprintf("%.1f / %.1f / %.1f", t.BeforePages, t.Pages, t.AfterPages)
			}
			wal := "-"
			if s.WALRecountRow > 0 {
				wal = fmt.Sprintf("%.0f / %.0f", s.WALRunRow, s.WALRecountRow)
			}
			fmt.Fprintf(tw, "%s\t %s\t %s\t %s\t %.0f%% / %.0f%% / %.0f%%\t %.0f%%\t %s\t %s\t\n", titles[sc], f1(p["read"]), f1(p["rotate"]), f1(p["commit"]),
				100*sh["read"], 100*sh["rotate"], 100*sh["commit"], 100*s.PageBusy, tl, wal)
		}
	}
	tw.Flush()

	rep.printStatements(bw)
	printed := false
	for _, r := range rep.Results {
		if len(r.WALStats) == 0 {
			continue
		}
		if !printed {
			fmt.Fprintln(bw, "\nWAL by record type (-walstats, pg_walinspect), per row:")
			printed = true
		}
		printWALStats(bw, fmt.Sprintf("%s (round %d)", titles[r.Scenario], r.Round), r.WALStats)
	}

	fmt.Fprintln(bw, "\nratios (of medians):")
	for _, r := range rep.Ratios {
		if !math.IsNaN(r.Value) {
			fmt.Fprintf(bw, "  %-34s %8.3f   (%s)\n", r.Name, r.Value, r.How)
		}
	}
	if len(rep.Latency) > 0 {
		fmt.Fprintf(bw, "\nlatency mode: +%s (+ up to %s jitter) per KMS request, budget %s\n", o.kmsLatency, o.kmsJitter, rep.Settings["kms_budget"])
		tw = tabwriter.NewWriter(bw, 0, 0, 2, ' ', tabwriter.AlignRight)
		fmt.Fprintln(tw, "scenario\t workers/page\t preflight latency ms\t req/s max 1s\t mean\t sustained\t status\t")
		for _, l := range rep.Latency {
			fmt.Fprintf(tw, "%s\t %d\t %s\t %s\t %s\t %s\t %s\t\n", titles[l.Scenario], l.Workers, f1(l.LatencyMs), f0(l.Max1s), f0(l.Mean), f0(l.Sustained), l.Status)
		}
		tw.Flush()
	}
	fmt.Fprintln(bw, "\ntargets (issue 5):")
	if o.smoke {
		fmt.Fprintln(bw, "  not judged with -smoke (too small to time; the JSON still has the figures)")
	}
	for _, t := range rep.Targets {
		if o.smoke {
			break
		}
		fmt.Fprintf(bw, "  %-4s  %-58s %10s  (want %s)\n", t.Status, t.Name, f4(t.Value), t.Want)
	}
	if !(o.kmsBudget == 0 && o.kmsLatency == 0) {
		fmt.Fprintln(bw, "  (the KMS-ceiling targets are judged only with no budget and no added latency)")
	}
	var notes []string
	for _, r := range rep.Results {
		for _, n := range r.Notes {
			notes = append(notes, fmt.Sprintf("round %d %s: %s", r.Round, r.Scenario, n))
		}
	}
	if len(notes) > 0 {
		fmt.Fprintln(bw, "\nKMS-count expectations not met:\n  "+strings.Join(notes, "\n  "))
	}
	var ver []string
	for _, r := range rep.Results {
		if r.Verified != "" {
			ver = append(ver, fmt.Sprintf("r%d %s: %s", r.Round, r.Scenario, r.Verified))
		}
	}
	if len(ver) > 0 {
		status := "all correct"
		if len(rep.Failures) > 0 {
			status = fmt.Sprintf("%d PROBLEM(S)", len(rep.Failures))
		}
		fmt.Fprintf(bw, "\ncorrectness (%s): %s\n", status, ver[0])
		for _, v := range ver[1:] {
			fmt.Fprintf(bw, "  %s\n", v)
		}
	}
}

func (rep *report) writeJSON(path string) error {
	if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
		return err
	}
	b, err := marshalNaNSafe(rep)
	if err != nil {
		return err
	}
	var out bytes.Buffer
	if err := json.Indent(&out, b, "", "  "); err != nil {
		return err
	}
	out.WriteByte('\n')
	return os.WriteFile(path, out.Bytes(), 0o644)
}

func cpuModel() string {
	b, err := os.ReadFile("/proc/cpuinfo")
	if err != nil {
		return runtime.GOARCH
	}
	for _, line := range strings.Split(string(b), "\n") {
		if strings.HasPrefix(line, "model name") {
			if _, v, ok := strings.Cut(line, ":"); ok {
				return strings.TrimSpace(v)
			}
		}
	}
	return runtime.GOARCH
}

func memGiB() float64 {
	b, err := os.ReadFile("/proc/meminfo")
	if err != nil {
		return 0
	}
	var kb float64
	for _, line := range strings.Split(string(b), "\n") {
		if strings.HasPrefix(line, "MemTotal:") {
			fmt.Sscanf(strings.TrimSpace(strings.TrimPrefix(line, "MemTotal:")), "%f", &kb)
		}
	}
	return math.Round(kb/1024/1024*10) / 10
}

// readMedians reads the medians of an earlier JSON result.
func readMedians(path string) (map[string]*summary, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return nil, err
	}
	var r struct {
		Medians map[string]*summary `json:"medians"`
	}
	if err := json.Unmarshal(b, &r); err != nil {
		return nil, fmt.Errorf("%s: %w", path, err)
	}
	return r.Medians, nil
}
