package cli

import (
	"context"
	"fmt"
	"time"

	"github.com/reencrypt/reencrypt/internal/buildinfo"
	"github.com/spf13/pflag"

	"github.com/reencrypt/reencrypt/pkg/batch"
	"github.com/reencrypt/reencrypt/pkg/census"
	"github.com/reencrypt/reencrypt/pkg/checkpoint"
	"github.com/reencrypt/reencrypt/pkg/kmsclient"
	"github.com/reencrypt/reencrypt/pkg/registry"
	"github.com/reencrypt/reencrypt/pkg/tokentable"
)

func init() {
	registerCommand(command{path: []string{"run"}, summary: "rotate every token from OLD_KEY_ID to NEW_KEY_ID (rerun to resume)",
		setup: func(*pflag.FlagSet) runFunc { return cmdRun }}) // every variable
}

func cmdRun(ctx context.Context, a *app, _ []string) error {
	cfg := a.cfg
	a.log.InfoContext(ctx, "reencrypt run starting", "build", buildinfo.Get(), "config", cfg.Redacted(), "owner", a.owner())
	db, err := a.db(ctx)
	if err != nil {
		return err
	}
	kc, err := a.client(ctx)
	if err != nil {
		return err
	}
	checked, err := batch.Preflight(ctx, db, kc, batch.PreflightOptions{Spec: a.tableSpec(), OldRef: cfg.OldKeyID, NewRef: cfg.NewKeyID, Namespace: cfg.Namespace, Mode: batch.Mode(cfg.Mode)})
	if err != nil {
		return err
	}
	workers := cfg.KMSConcurrency
	if workers == 0 {
		workers = a.budget.Concurrency(checked.KMSLatency, 4, 64)
	}
	a.log.InfoContext(ctx, "preflight passed",
		"old_key_arn", checked.Old.ARN, "new_key_arn", checked.New.ARN, "id_type", checked.Table.IDType,
		"kms_latency_ms", float64(checked.KMSLatency.Microseconds())/1000,
		"kms_budget_per_s", a.budget.Ceiling(), "kms_workers", workers,
		"kms_requests", a.kmsRequestCounts()) // the preflight's own: a fixed cost per run

	// A warning, not a refusal: the registry is the runbook's record of
	// the rotation, and the Job's role may not even read it.
	registryNote := a.registryDisagrees(ctx, db, checked.Old.ARN, checked.New.ARN)
	if registryNote != "" {
		a.warnRegistry(registryNote, checked)
	}

	if err := batch.CheckWritePrivileges(ctx, db, checked.Table); err != nil {
		return err
	}
	store := checkpoint.New(db, cfg.StateSchema)
	store.SetBuild(buildinfo.Get().Build()) // recorded with the run: which build rotated it
	if err := store.Migrate(ctx); err != nil {
		return err
	}
	// Before the first write: the key-deletion guard counts this table for
	// both keys from now on, whatever TABLE says when a key is retired.
	if err := store.RecordKeyTable(ctx, a.keyTable(), checked.Old.ARN, checked.New.ARN); err != nil {
		return err
	}
	stopMetrics, err := a.serveMetrics(ctx)
	if err != nil {
		return err
	}
	defer stopMetrics()
	pace, stopPace, err := a.startPacer(ctx, db, store, checked.Table)
	if err != nil {
		return err
	}
	defer stopPace()

	engine, err := batch.New(batch.Config{
		Table: checked.Table, Old: checked.Old, New: checked.New,
		Mode: batch.Mode(cfg.Mode), Namespace: cfg.Namespace,
		BatchSize: cfg.BatchSize, Workers: workers, RangeWorkers: cfg.RangeWorkers,
		Ranges: cfg.RangeCount(), LeaseTTL: cfg.LeaseTTL, PageTimeout: cfg.PageTimeout, LockTimeout: cfg.LockTimeout,
		StopGrace: cfg.StopGrace, Owner: a.owner(), Hooks: a.hooks, Pacer: pace,
	}, batch.Deps{DB: db, Store: store, KMS: kc, Log: a.log, Metrics: a.metrics})
	if err != nil {
		return err
	}
	stopProgress := a.startProgress(ctx, store, engine)
	sum, runErr := engine.Run(ctx)
	stopProgress()
	a.pushMetrics()

	p := sum.Process
	rate := 0.0
	if sum.Duration > 0 {
		rate = float64(p.Rows()) / sum.Duration.Seconds()
	}
	a.log.InfoContext(ctx, "reencrypt run finished",
		"run_id", sum.RunID, "pass", sum.Pass, "rotated", p.Rotated, "skipped", p.Skipped,
		"other_key", p.OtherKey, "quarantined", p.Quarantined, "conflicted", p.Conflicted,
		"pages", sum.Pages, "seconds", sum.Duration.Round(time.Millisecond).Seconds(), "rows_per_s", int(rate),
		"pass_ranges_done", sum.PassAll.Done, "pass_ranges", sum.PassAll.Ranges,
		"pass_rotated", sum.PassAll.Counts.Rotated, "pass_quarantined", sum.PassAll.Counts.Quarantined,
		"kms_requests", a.kmsRequestCounts())
	fmt.Fprintf(a.stdout, "run %s pass %d: rotated %d, already under the new key %d, under another key %d, quarantined %d, conflicted %d in %s (%d rows/s)\n",
		sum.RunID, sum.Pass, p.Rotated, p.Skipped, p.OtherKey, p.Quarantined, p.Conflicted,
		sum.Duration.Round(time.Millisecond), int(rate))
	if registryNote != "" {
		a.warnRegistry(registryNote, checked) // again, by the summary, where an operator looks
	}
	if runErr != nil {
		return runErr
	}
	return a.recountOld(ctx, db, checked, kmsclient.NewKidResolver(kc.API()).ARN)
}

// recountOld is the proof behind exit 0: after the pass, every row of the
// table is read again and its envelope parsed, and not one may be under
// OLD. The live API still writing under OLD puts rows behind the cursor
// that the pass cannot see; they are counted here, and a rerun takes them.
func (a *app) recountOld(ctx context.Context, db tokentable.Querier, checked *batch.Checked, keyOf census.KeyOf) error {
	start := time.Now()
	n, err := census.RowsUnder(ctx, db, checked.Table, checked.Old.ARN, census.Recount{KeyOf: keyOf, Retry: batch.IsTransient})
	if err != nil {
		return tempErr(fmt.Errorf("recount the rows under the old key after the pass: %w", err))
	}
	a.log.InfoContext(ctx, "recount after the pass", "rows_under_old", n, "seconds", time.Since(start).Round(time.Millisecond).Seconds())
	if n > 0 {
		return tempErr(fmt.Errorf("the pass is done but %d rows under the old key were found by a full recount: "+
			"the live API wrote them behind the cursor; rerun (and make sure the API writes under NEW)", n))
	}
	return nil
}

// registryWarning is the warning run gives when the key registry does not
// record the rotation it is doing.
const registryWarning = "reencrypt run: the key registry does not show this rotation (OLD rotating, NEW active); was `reencrypt keys begin` skipped?"

func (a *app) warnRegistry(note string, checked *batch.Checked) {
	a.log.Warn(registryWarning, "registry", note, "old_key_arn", checked.Old.ARN, "new_key_arn", checked.New.ARN)
}

// registryDisagrees says how the key registry differs from this rotation
// (OLD rotating, NEW active, as `keys begin` leaves it), "" when it agrees.
func (a *app) registryDisagrees(ctx context.Context, db batch.DB, oldARN, newARN string) string {
	api, err := a.kms(ctx) // DescribeKey only for key_ids that are not ARNs
	if err != nil {
		return fmt.Sprintf("not checked: %v", err)
	}
	reg := registry.New(db, a.cfg.TableSchema).WithGuard(registry.Guard{KMS: api})
	keys, exists, err := reg.List(ctx)
	switch {
	case err != nil:
		return fmt.Sprintf("%s cannot be read (%v); `reencrypt keys list` as the operator shows it", reg.Qualified(), err)
	case !exists:
		return reg.Qualified() + " does not exist"
	}
	status := func(arn string) string {
		for _, k := range keys {
			if k.ARN == arn {
				return k.Status
			}
		}
		return ""
	}
	o, n := status(oldARN), status(newARN)
	if o == registry.StatusRotating && n == registry.StatusActive {
		return ""
	}
	says := func(s string) string {
		if s == "" {
			return "not listed"
		}
		return s
	}
	return fmt.Sprintf("in %s OLD is %s, NEW is %s", reg.Qualified(), says(o), says(n))
}
