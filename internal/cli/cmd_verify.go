package cli

import (
	"context"
	"errors"
	"fmt"
	"io"
	"time"

	"github.com/spf13/pflag"

	"github.com/reencrypt/reencrypt/pkg/kmsclient"
	"github.com/reencrypt/reencrypt/pkg/verify"
)

func init() {
	registerCommand(command{path: []string{"verify"}, summary: "prove the rotation: rows under NEW open with their own AAD, none is left under OLD, audit rows are there; exit 65 with a list otherwise",
		vars: vars(varsDB, varsTable, varsKMS, varsDataKeys), setup: func(fs *pflag.FlagSet) runFunc {
			o := verifyOptions{}
			fs.BoolVar(&o.json, "json", false, "print the result as JSON")
			fs.IntVar(&o.sample, "sample", 0, "open only N rows under NEW, drawn uniformly from the whole table (0 = every row); rows under OLD are always all counted")
			fs.IntVar(&o.maxFailures, "max-failures", 100, "failed rows to list (all of them are counted)")
			fs.BoolVar(&o.skipAudit, "skip-audit", false, "do not require a token_reencrypted audit row for each row under NEW (once the live API writes under NEW itself, after the alias switch)")
			return func(ctx context.Context, a *app, _ []string) error { return cmdVerify(ctx, a, o) }
		}})
}

type verifyOptions struct {
	json, skipAudit     bool
	sample, maxFailures int
}

// The report and its failure classes are pkg/verify's; this command wires
// the flags, classifies the errors for the exit code and prints.
type verifyReport = verify.Report

const (
	failUnderOld     = verify.FailUnderOld
	failAuth         = verify.FailAuth
	failNoAudit      = verify.FailNoAudit
	failDuplicate    = verify.FailDuplicate
	failAuditMissing = verify.FailAuditMissing
)

// cmdVerify proves a finished rotation (verify.Run) and prints the report;
// exit 65 when a row or a check fails.
func cmdVerify(ctx context.Context, a *app, o verifyOptions) error {
	if o.sample < 0 || o.sample > verify.MaxSample {
		return configError("--sample %d: want 0 (every row) to %d", o.sample, verify.MaxSample)
	}
	if o.maxFailures < 0 {
		return configError("--max-failures %d: want >= 0", o.maxFailures)
	}
	start := time.Now()
	t, err := a.inspectTable(ctx)
	if err != nil {
		return err
	}
	old, err := a.resolveKey(ctx, "OLD_KEY_ID", a.cfg.OldKeyID)
	if err != nil {
		return err
	}
	nk, err := a.resolveKey(ctx, "NEW_KEY_ID", a.cfg.NewKeyID)
	if err != nil {
		return err
	}
	if old.ARN == nk.ARN {
		return configError("OLD_KEY_ID and NEW_KEY_ID are the same key %s: nothing to verify", old.ARN)
	}
	kc, err := a.client(ctx)
	if err != nil {
		return err
	}
	a.log.InfoContext(ctx, "verify starting", "table", t.Qualified(), "old_key_arn", old.ARN, "new_key_arn", nk.ARN, "sample", o.sample)
	r, err := verify.Run(ctx, a.pool, kc, verify.Options{Table: t, Old: old, New: nk, Namespace: a.cfg.Namespace,
		StateSchema: a.cfg.StateSchema, Sample: o.sample, MaxFailures: o.maxFailures, SkipAudit: o.skipAudit,
		Workers: a.cfg.KMSConcurrency, Log: a.log, ProgressEvery: progressEvery})
	if err != nil {
		if errors.Is(err, kmsclient.ErrKeyUnusable) {
			return fmt.Errorf("verify: %w", err)
		}
		return tempErr(fmt.Errorf("verify: %w", err))
	}
	r.ElapsedSeconds = round2(time.Since(start).Seconds())
	a.log.InfoContext(ctx, "verify finished", "ok", r.OK, "rows", r.Rows.Total, "under_new", r.Rows.UnderNew, "under_old", r.Rows.UnderOld,
		"opened", r.Opened, "failures", r.FailuresTotal, "failures_by_class", r.FailuresByCls)
	if o.json {
		if err := writeJSON(a.stdout, r); err != nil {
			return err
		}
	} else {
		printVerify(a.stdout, r)
	}
	if !r.OK {
		return fmt.Errorf("%w: %s rows or checks failed (%s)", errVerifyFailed, num(r.FailuresTotal), classes(r.FailuresByCls))
	}
	return nil
}

func printVerify(w io.Writer, r *verifyReport) {
	fmt.Fprintf(w, "reencrypt verify: %s\n  OLD %s\n  NEW %s\n\n", r.Table, r.OldKeyARN, r.NewKeyARN)
	fmt.Fprintf(w, "rows  %s: %s under NEW, %s under OLD, %s under other keys, %s unreadable\n\n",
		num(r.Rows.Total), num(r.Rows.UnderNew), num(r.Rows.UnderOld), num(r.Rows.OtherKeys), num(r.Rows.Unreadable))
	for _, c := range r.Checks {
		mark := "ok  "
		if !c.OK {
			mark = "FAIL"
		}
		fmt.Fprintf(w, "  %s  %s: %s\n", mark, c.Check, c.Detail)
	}
	if r.Audit.Note != "" && r.Audit.Checked {
		fmt.Fprintf(w, "  note  %s\n", r.Audit.Note)
	}
	if r.FailuresTotal > 0 {
		fmt.Fprintf(w, "\nfailures: %s (%s); the first %d:\n", num(r.FailuresTotal), classes(r.FailuresByCls), len(r.Failures))
		for _, f := range r.Failures {
			line := "  " + dash(f.RowID) + "  " + f.Class
			if f.QuarantinedAs != "" {
				line += " (quarantined: " + f.QuarantinedAs + ")"
			}
			if f.Detail != "" {
				line += ": " + f.Detail
			}
			fmt.Fprintln(w, line)
		}
		fmt.Fprintf(w, "\nVERIFY FAILED in %s (exit 65)\n", human(seconds(r.ElapsedSeconds)))
		return
	}
	fmt.Fprintf(w, "\nverified in %s\n", human(seconds(r.ElapsedSeconds)))
}
