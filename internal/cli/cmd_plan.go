package cli

import (
	"context"
	"errors"
	"fmt"
	"io"
	"math"
	"text/tabwriter"
	"time"

	"github.com/spf13/pflag"

	"github.com/reencrypt/reencrypt/internal/textfmt"
	"github.com/reencrypt/reencrypt/pkg/batch"
	"github.com/reencrypt/reencrypt/pkg/census"
	"github.com/reencrypt/reencrypt/pkg/kmsclient"
	"github.com/reencrypt/reencrypt/pkg/tokentable"
)

func init() {
	registerCommand(command{path: []string{"plan"}, summary: "dry run: rows by key, KMS calls and time the run needs, key checks; writes nothing",
		vars: vars(varsDB, varsTable, varsKMS, varsDataKeys, []string{"MODE", "BATCH_SIZE", "RANGES", "RANGE_WORKERS", "LOCK_TIMEOUT"}),
		setup: func(fs *pflag.FlagSet) runFunc {
			asJSON := fs.Bool("json", false, "print the plan as JSON")
			return func(ctx context.Context, a *app, _ []string) error { return cmdPlan(ctx, a, *asJSON) }
		}})
}

// planReport is what `plan` prints; its JSON field names are the --json
// contract.
type planReport struct {
	Table     string    `json:"table"`
	IDType    string    `json:"id_type"`
	Mode      string    `json:"mode"`
	Namespace string    `json:"namespace"`
	OldKey    keyReport `json:"old_key"`
	NewKey    keyReport `json:"new_key"`

	Rows       planRows         `json:"rows"`
	OtherKeys  map[string]int64 `json:"other_keys,omitempty"`
	Unreadable map[string]int64 `json:"unreadable_by_class,omitempty"`
	// WrappedKeys are the distinct wrapped data keys of the rows under OLD.
	WrappedKeys wrappedReport `json:"wrapped_keys_under_old"`

	// Ranges is how many ranges a new pass will cut (RANGES is the most).
	Ranges   int          `json:"ranges"`
	KMSCalls kmsCallPlan  `json:"kms_calls"`
	Budget   budgetReport `json:"budget"`
	Estimate timeEstimate `json:"estimate"`
	WAL      walEstimate  `json:"wal"`
	Checks   []string     `json:"checks"`
	Warnings []string     `json:"warnings,omitempty"`
	// Refusals are why the run would refuse this table (exit 78).
	Refusals []string `json:"refusals,omitempty"`

	ScanSeconds float64 `json:"scan_seconds"`
	Written     int     `json:"rows_written"` // always 0: the contract of a dry run, stated
}

type keyReport struct {
	Ref   string `json:"ref"`
	ARN   string `json:"arn"`
	Alias string `json:"alias,omitempty"`
	State string `json:"state"`
}

func keyOf(k kmsclient.Key) keyReport {
	return keyReport{Ref: k.Ref, ARN: k.ARN, Alias: k.Alias(), State: string(k.State)}
}

type planRows struct {
	Total      int64 `json:"total"`
	UnderOld   int64 `json:"under_old"`
	UnderNew   int64 `json:"under_new"`
	OtherKeys  int64 `json:"under_other_keys"`
	Unreadable int64 `json:"unreadable"` // NULL or not an envelope: will be quarantined
	// Unreachable rows have a NULL id: the keyset cursor never reads them,
	// so the run refuses a table that can hold them.
	Unreachable         int64 `json:"unreachable_null_id"`
	UnreachableUnderOld int64 `json:"unreachable_under_old"`
}

type wrappedReport struct {
	Distinct int64 `json:"distinct"`
	Exact    bool  `json:"exact"`
}

// kmsCallPlan is the KMS work of the whole Job, per operation.
type kmsCallPlan struct {
	Decrypt         int64 `json:"Decrypt"`
	GenerateDataKey int64 `json:"GenerateDataKey"`
	ReEncrypt       int64 `json:"ReEncrypt"`
	// Preflight is per pod: 2 DescribeKey, the round trip on NEW (1
	// GenerateDataKey, 1 Decrypt) and, in rekey mode, up to 3 sample Decrypts;
	// in rewrap mode one sample ReEncrypt (the NAMESPACE check).
	PreflightPerPod int64 `json:"preflight_per_pod"`
	Total           int64 `json:"total"`
}

type budgetReport struct {
	KMSRateLimit  float64 `json:"kms_rate_limit"` // 0 = unlimited
	ShardCount    int     `json:"shard_count"`
	PerPod        float64 `json:"per_pod_per_s"` // 0 = unlimited
	KMSLatencyMS  float64 `json:"kms_latency_ms"`
	InFlightQuota int     `json:"kms_calls_in_flight_per_pod"`
	// PodRate is what one pod can reach: its budget, or what its calls in
	// flight allow at the measured latency, whichever is lower.
	PodRate float64 `json:"pod_rate_per_s"`
}

// walEstimate is the write-ahead log the run will write: bytes per row
// measured on a sample page (batch.SampleWAL, rolled back), times the rows
// under OLD. Zero when it could not be sampled (see Warnings).
type walEstimate struct {
	SampleRows  int     `json:"sample_rows"`
	BytesPerRow float64 `json:"bytes_per_row"`
	TotalBytes  int64   `json:"total_bytes"`
}

type timeEstimate struct {
	JobSeconds    float64 `json:"job_seconds"`     // SHARD_COUNT pods sharing the work
	OnePodSeconds float64 `json:"one_pod_seconds"` // one pod alone at its share of the budget
	Note          string  `json:"note"`
}

// cmdPlan is the dry run. It checks what the run's preflight checks, then
// reads every row once in keyset pages to count them by key. Its only KMS
// calls are the preflight's (two DescribeKey, one round trip on NEW, and in
// rekey mode up to three sample Decrypts of rows under OLD, in rewrap mode
// one sample ReEncrypt); it writes
// nothing, not even the bookkeeping schema.
func cmdPlan(ctx context.Context, a *app, asJSON bool) error {
	cfg := a.cfg
	db, err := a.db(ctx)
	if err != nil {
		return err
	}
	kc, err := a.client(ctx)
	if err != nil {
		return err
	}
	mode := batch.Mode(cfg.Mode)
	checked, err := batch.Preflight(ctx, db, kc, batch.PreflightOptions{Spec: a.tableSpec(), OldRef: cfg.OldKeyID, NewRef: cfg.NewKeyID, Namespace: cfg.Namespace, Mode: mode})
	var nullable *tokentable.NullableIDError
	if err != nil && !(errors.As(err, &nullable) && checked != nil) {
		return fmt.Errorf("plan: the run would refuse to start: %w", err)
	}
	refusal := err // nil, or the NULL-able id column's FieldError
	t := checked.Table
	a.log.InfoContext(ctx, "plan: preflight passed, counting rows", "table", t.Qualified(),
		"old_key_arn", checked.Old.ARN, "new_key_arn", checked.New.ARN)

	start := time.Now()
	lastLog := start
	c, err := census.Count(ctx, db, t, census.CountOptions{PageSize: cfg.BatchSize, Focus: checked.Old.ARN, Tracked: []string{checked.New.ARN},
		Progress: func(c census.Census) {
			if time.Since(lastLog) >= progressEvery {
				lastLog = time.Now()
				a.log.InfoContext(ctx, "plan: counting", "rows", c.Rows, "seconds", int(time.Since(start).Seconds()))
			}
		}})
	if err != nil {
		return tempErr(fmt.Errorf("plan: count rows: %w", err))
	}

	r := planReport{
		Table: t.Qualified(), IDType: t.IDType, Mode: cfg.Mode, Namespace: cfg.Namespace,
		OldKey: keyOf(checked.Old), NewKey: keyOf(checked.New),
		Unreadable:  c.Unreadable,
		ScanSeconds: round2(time.Since(start).Seconds()),
	}
	r.Rows = planRows{Total: c.Rows, UnderOld: c.ByKey[checked.Old.ARN], UnderNew: c.ByKey[checked.New.ARN],
		Unreadable: c.UnreadableRows(), OtherKeys: c.OtherKeysRows}
	for kid, n := range c.ByKey {
		if kid != checked.Old.ARN && kid != checked.New.ARN && n > 0 {
			if r.OtherKeys == nil {
				r.OtherKeys = map[string]int64{}
			}
			r.OtherKeys[kid] = n
			r.Rows.OtherKeys += n
		}
	}
	if c.OtherKeysRows > 0 {
		if r.OtherKeys == nil {
			r.OtherKeys = map[string]int64{}
		}
		r.OtherKeys["(more keys, not named)"] = c.OtherKeysRows
	}
	if len(r.Unreadable) == 0 {
		r.Unreadable = nil
	}
	if nullable != nil {
		if err := r.addUnreachable(ctx, a, checked, nameFields(refusal)); err != nil {
			return err
		}
	}
	ranges, err := batch.PlanRanges(ctx, db, t, cfg.RangeCount(), cfg.BatchSize)
	if err != nil {
		return tempErr(fmt.Errorf("plan: cut ranges: %w", err))
	}
	r.Ranges = ranges.Ranges
	if f := c.Focus; f != nil {
		r.WrappedKeys = wrappedReport{Distinct: f.Distinct, Exact: f.Exact}
		r.KMSCalls = a.kmsCalls(mode, f, ranges)
	}
	r.Budget, r.Estimate = a.estimate(checked.KMSLatency, r.KMSCalls)
	if nullable == nil {
		r.sampleWAL(ctx, a, checked.Table)
	}
	if nullable == nil {
		r.Checks = append(r.Checks, fmt.Sprintf("table %s and audit table %s.%s have the columns the run needs (%s ids, unique, NOT NULL)",
			t.Qualified(), t.Spec.Schema, t.Spec.AuditTable, t.IDType))
	}
	r.Checks = append(r.Checks,
		fmt.Sprintf("OLD_KEY_ID %s resolves to %s, %s", checked.Old.Ref, checked.Old.ARN, checked.Old.State),
		fmt.Sprintf("NEW_KEY_ID %s resolves to %s, %s", checked.New.Ref, checked.New.ARN, checked.New.State),
		fmt.Sprintf("round trip on NEW (GenerateDataKey, seal, Decrypt, open): ok, %.1f ms per call",
			float64(checked.KMSLatency.Microseconds())/1000),
	)
	if mode == batch.Rekey {
		r.Checks = append(r.Checks, "sample tokens under OLD open with namespace "+cfg.Namespace)
	}
	if r.Rows.Unreadable > 0 {
		r.Warnings = append(r.Warnings, fmt.Sprintf("%s rows are NULL or not envelope-v1: the run quarantines them and exits 65", num(r.Rows.Unreadable)))
	}
	if r.Rows.OtherKeys > 0 {
		r.Warnings = append(r.Warnings, fmt.Sprintf("%s rows are under other keys: the run counts them and leaves them alone", num(r.Rows.OtherKeys)))
	}
	if r.Rows.UnderOld == 0 {
		r.Warnings = append(r.Warnings, "no row is under OLD: the run has nothing to rotate")
	}
	if mode == batch.Rekey && cfg.DEKCacheSize > 0 && r.WrappedKeys.Distinct > int64(cfg.DEKCacheSize) &&
		c.Focus.PerPageDistinct > r.WrappedKeys.Distinct {
		r.Warnings = append(r.Warnings, fmt.Sprintf("wrapped keys are shared across pages and outnumber DEK_CACHE_SIZE (%d): Decrypts may reach %s",
			cfg.DEKCacheSize, num(c.Focus.PerPageDistinct)))
	}
	a.log.InfoContext(ctx, "plan done", "rows", r.Rows.Total, "under_old", r.Rows.UnderOld, "under_new", r.Rows.UnderNew,
		"kms_calls", r.KMSCalls.Total, "job_seconds", int(r.Estimate.JobSeconds))
	if asJSON {
		if err := writeJSON(a.stdout, r); err != nil {
			return err
		}
	} else {
		r.print(a.stdout)
	}
	if nullable != nil {
		return fmt.Errorf("plan: the run would refuse to start: %w", refusal)
	}
	return nil
}

// sampleWAL measures the run's WAL per row on one page, rolled back. It is
// advice, not a check: a role without UPDATE on the table, or a busy page,
// leaves a warning and the plan goes on.
func (r *planReport) sampleWAL(ctx context.Context, a *app, t *tokentable.Table) {
	db, err := a.db(ctx)
	if err == nil {
		var s batch.WALSample
		s, err = batch.SampleWAL(ctx, db, t, a.cfg.BatchSize, a.cfg.LockTimeout.String())
		if err == nil && s.Rows > 0 {
			r.WAL = walEstimate{SampleRows: s.Rows, BytesPerRow: round2(s.PerRow()),
				TotalBytes: int64(s.PerRow() * float64(r.Rows.UnderOld))}
			return
		}
	}
	if err == nil {
		err = errors.New("no row to sample")
	}
	r.Warnings = append(r.Warnings, fmt.Sprintf("WAL not estimated: %v", redactErr(err)))
}

// addUnreachable counts the rows with a NULL id, which the run's cursor
// would never read, and records why the run refuses the table.
func (r *planReport) addUnreachable(ctx context.Context, a *app, checked *batch.Checked, why error) error {
	db, err := a.db(ctx)
	if err != nil {
		return err
	}
	c, err := census.NullIDs(ctx, db, checked.Table, checked.Old.ARN)
	if err != nil {
		return tempErr(fmt.Errorf("plan: %w", err))
	}
	r.Rows.Unreachable, r.Rows.UnreachableUnderOld = c.Rows, c.ByKey[checked.Old.ARN]
	r.Refusals = append(r.Refusals, fmt.Sprintf("rows with a NULL id now: %s, under OLD: %s. %v",
		num(c.Rows), num(r.Rows.UnreachableUnderOld), why))
	return nil
}

// kmsCalls estimates the KMS requests of the whole Job from the census of
// the rows under OLD, the way the engine spends them: rekey unwraps each
// distinct wrapped key once or twice (the data-key cache carries it across
// pages once it is seen to be shared) and
// generates one data key per page that holds rows under OLD; rewrap re-wraps
// each distinct wrapped key of each page (ReEncrypt results are not cached).
// The ranges are the ones the run will cut: of whole pages, the census's
// pages are the run's; cut at sampled ids (large tables), each range may
// end in one more, short page.
func (a *app) kmsCalls(mode batch.Mode, f *census.WrappedKeys, ranges batch.RangePlan) kmsCallPlan {
	cfg := a.cfg
	var k kmsCallPlan
	if f.Rows > 0 {
		pages := f.PagesWithRows
		if !ranges.WholePages {
			pages = min(f.Rows, pages+int64(ranges.Ranges))
		}
		switch mode {
		case batch.Rewrap:
			k.ReEncrypt = f.PerPageDistinct
		default:
			k.Decrypt = f.Distinct
			if f.PerPageDistinct > f.Distinct {
				// Keys shared across pages: the cache keeps a key one row of a
				// page needs only once it comes back (kmsclient.Cache), so
				// such a key may cost two Decrypts. An upper bound.
				k.Decrypt = min(f.PerPageDistinct, 2*f.Distinct)
			}
			if cfg.DEKCacheSize == 0 {
				k.Decrypt = f.PerPageDistinct
			}
			k.GenerateDataKey = pages
		}
	}
	k.PreflightPerPod = 4
	if mode == batch.Rekey {
		k.PreflightPerPod += 3
	} else {
		k.PreflightPerPod++ // the sample ReEncrypt
	}
	k.Total = k.Decrypt + k.GenerateDataKey + k.ReEncrypt + k.PreflightPerPod*int64(cfg.ShardCount)
	return k
}

// estimate turns the calls into time: each pod gets KMS_RATE_LIMIT /
// SHARD_COUNT requests per second, unless its calls in flight cannot reach
// that at the measured latency.
func (a *app) estimate(latency time.Duration, calls kmsCallPlan) (budgetReport, timeEstimate) {
	cfg := a.cfg
	b := budgetReport{KMSRateLimit: cfg.KMSRateLimit, ShardCount: cfg.ShardCount,
		KMSLatencyMS: round2(float64(latency.Microseconds()) / 1000)}
	budget := kmsclient.NewBudget(cfg.KMSRateLimit, cfg.ShardCount)
	perPod := budget.Ceiling() // the rate it starts towards, not its slow start
	if !math.IsInf(perPod, 1) {
		b.PerPod = round2(perPod)
	}
	workers := cfg.KMSConcurrency
	if workers == 0 {
		workers = budget.Concurrency(latency, 4, 64) // as `run` sizes it
	}
	b.InFlightQuota = workers * cfg.RangeWorkers
	podRate := perPod
	if latency > 0 {
		podRate = min(podRate, float64(b.InFlightQuota)/latency.Seconds())
	}
	b.PodRate = round2(podRate)
	e := timeEstimate{Note: "KMS-bound estimate at the configured budget and the latency measured now; database time is not included"}
	if podRate > 0 && !math.IsInf(podRate, 1) {
		work := float64(calls.Total - calls.PreflightPerPod*int64(cfg.ShardCount))
		e.JobSeconds = round2(work/(podRate*float64(cfg.ShardCount)) + float64(calls.PreflightPerPod)/podRate)
		e.OnePodSeconds = round2((work + float64(calls.PreflightPerPod)) / podRate)
	}
	return b, e
}

func (r *planReport) print(w io.Writer) {
	fmt.Fprintf(w, "reencrypt plan: dry run, nothing kept (one sample page is swapped and rolled back to measure its WAL)\n\n")
	tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', 0)
	fmt.Fprintf(tw, "table\t%s (%s ids), mode %s, namespace %s\n", r.Table, r.IDType, r.Mode, r.Namespace)
	fmt.Fprintf(tw, "OLD key\t%s → %s (%s)\n", r.OldKey.Ref, r.OldKey.ARN, r.OldKey.State)
	fmt.Fprintf(tw, "NEW key\t%s → %s (%s)\n", r.NewKey.Ref, r.NewKey.ARN, r.NewKey.State)
	tw.Flush()

	fmt.Fprintf(w, "\nrows (counted from every envelope's kid, no KMS call)\n")
	tw = tabwriter.NewWriter(w, 0, 0, 2, ' ', tabwriter.AlignRight)
	fmt.Fprintf(tw, "  total\t%s\t\n", num(r.Rows.Total))
	fmt.Fprintf(tw, "  under OLD (to rotate)\t%s\t\n", num(r.Rows.UnderOld))
	fmt.Fprintf(tw, "  under NEW (skipped)\t%s\t\n", num(r.Rows.UnderNew))
	fmt.Fprintf(tw, "  under other keys (left alone)\t%s\t\n", num(r.Rows.OtherKeys))
	fmt.Fprintf(tw, "  NULL or unreadable (quarantined)\t%s\t  %s\n", num(r.Rows.Unreadable), classes(r.Unreadable))
	if r.Rows.Unreachable > 0 {
		fmt.Fprintf(tw, "  NULL id (the run cannot reach them)\t%s\t  %s under OLD\n", num(r.Rows.Unreachable), num(r.Rows.UnreachableUnderOld))
	}
	exact := "exact"
	if !r.WrappedKeys.Exact {
		exact = "estimated"
	}
	fmt.Fprintf(tw, "  distinct wrapped data keys under OLD\t%s\t  %s\n", num(r.WrappedKeys.Distinct), exact)
	tw.Flush()
	if len(r.OtherKeys) > 0 {
		fmt.Fprintf(w, "  other keys:\n")
		for _, k := range sortedKeys(r.OtherKeys) {
			fmt.Fprintf(w, "    %s  %s\n", k, num(r.OtherKeys[k]))
		}
	}

	fmt.Fprintf(w, "\nKMS calls the run will need (%s, whole Job, %d ranges)\n", r.Mode, r.Ranges)
	tw = tabwriter.NewWriter(w, 0, 0, 2, ' ', tabwriter.AlignRight)
	if r.Mode == string(batch.Rewrap) {
		fmt.Fprintf(tw, "  ReEncrypt\t%s\t  one per distinct wrapped key in each page\n", num(r.KMSCalls.ReEncrypt))
	} else {
		fmt.Fprintf(tw, "  Decrypt\t%s\t  one per distinct wrapped key under OLD (cached)\n", num(r.KMSCalls.Decrypt))
		fmt.Fprintf(tw, "  GenerateDataKey\t%s\t  one per page holding rows under OLD\n", num(r.KMSCalls.GenerateDataKey))
	}
	fmt.Fprintf(tw, "  preflight\t%s\t  per pod (DescribeKey ×2, round trip on NEW%s)\n", num(r.KMSCalls.PreflightPerPod),
		map[bool]string{true: ", sample Decrypts", false: ", a sample ReEncrypt"}[r.Mode == string(batch.Rekey)])
	fmt.Fprintf(tw, "  total\t%s\t\n", num(r.KMSCalls.Total))
	tw.Flush()

	fmt.Fprintf(w, "\nbudget and time\n")
	if r.Budget.KMSRateLimit == 0 {
		fmt.Fprintf(w, "  KMS_RATE_LIMIT unlimited, SHARD_COUNT %d\n", r.Budget.ShardCount)
	} else {
		fmt.Fprintf(w, "  KMS_RATE_LIMIT %s req/s for the Job, SHARD_COUNT %d: %s req/s per pod\n",
			trimFloat(r.Budget.KMSRateLimit), r.Budget.ShardCount, trimFloat(r.Budget.PerPod))
	}
	fmt.Fprintf(w, "  KMS latency now %.1f ms, %d calls in flight per pod: a pod reaches %s req/s\n",
		r.Budget.KMSLatencyMS, r.Budget.InFlightQuota, trimFloat(r.Budget.PodRate))
	fmt.Fprintf(w, "  ~%s for the whole Job (%d pods), ~%s for one pod alone\n",
		human(seconds(r.Estimate.JobSeconds)), r.Budget.ShardCount, human(seconds(r.Estimate.OnePodSeconds)))
	fmt.Fprintf(w, "  (%s)\n", r.Estimate.Note)
	if r.WAL.SampleRows > 0 {
		fmt.Fprintf(w, "\nwrite-ahead log the run will write (size max_wal_size and replica bandwidth for it)\n")
		fmt.Fprintf(w, "  ~%s: %s bytes per row (measured on a page of %d rows, rolled back) × %s rows under OLD\n",
			bytesHuman(r.WAL.TotalBytes), num(int64(r.WAL.BytesPerRow)), r.WAL.SampleRows, num(r.Rows.UnderOld))
	}

	fmt.Fprintf(w, "\nchecks passed\n")
	for _, c := range r.Checks {
		fmt.Fprintf(w, "  ok  %s\n", c)
	}
	if len(r.Warnings) > 0 {
		fmt.Fprintf(w, "\nwarnings\n")
		for _, s := range r.Warnings {
			fmt.Fprintf(w, "  !   %s\n", s)
		}
	}
	if len(r.Refusals) > 0 {
		fmt.Fprintf(w, "\nthe run would refuse to start (exit 78)\n")
		for _, s := range r.Refusals {
			fmt.Fprintf(w, "  x   %s\n", s)
		}
	}
	fmt.Fprintf(w, "\ncounted in %s; nothing was written.\n", human(seconds(r.ScanSeconds)))
}

// classes lists counts by class: "auth_failed 2, null_token 1".
func classes(m map[string]int64) string { return textfmt.Classes(m) }

func sortedKeys[V any](m map[string]V) []string { return textfmt.SortedKeys(m) }

func trimFloat(f float64) string {
	if f == math.Trunc(f) {
		return num(int64(f))
	}
	return fmt.Sprintf("%.1f", f)
}
