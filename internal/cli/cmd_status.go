package cli

import (
	"context"
	"fmt"
	"io"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/spf13/pflag"

	"github.com/reencrypt/reencrypt/pkg/census"
	"github.com/reencrypt/reencrypt/pkg/checkpoint"
	"github.com/reencrypt/reencrypt/pkg/tokentable"
)

func init() {
	registerCommand(command{path: []string{"status"}, summary: "progress of every run on the table: ranges, rows done, quarantine, rate, ETA, rows still under OLD",
		vars: vars(varsDB, varsTable), setup: func(fs *pflag.FlagSet) runFunc {
			o := statusOptions{}
			fs.BoolVar(&o.json, "json", false, "print the status as JSON")
			fs.BoolVar(&o.noScan, "no-scan", false, "do not read the table to count rows still under OLD (for huge tables)")
			fs.StringVar(&o.run, "run", "", "show only this run id")
			fs.BoolVar(&o.allRanges, "all-ranges", false, "list every range, also the finished ones with nothing left")
			fs.IntVar(&o.quarantine, "quarantine", 20, "quarantined rows to list per run (ids and error classes)")
			return func(ctx context.Context, a *app, _ []string) error { return cmdStatus(ctx, a, o) }
		}})
}

type statusOptions struct {
	json, noScan, allRanges bool
	run                     string
	quarantine              int
}

// statusReport is what `status` prints; its JSON field names are the --json
// contract.
type statusReport struct {
	Table       string    `json:"table"`
	StateSchema string    `json:"state_schema"`
	Now         time.Time `json:"now"` // the database's clock
	Scanned     bool      `json:"scanned"`
	// Rows counts the table's rows by key, when scanned.
	Rows *census.Census `json:"rows,omitempty"`
	Runs []runStatus    `json:"runs"`
	Note string         `json:"note,omitempty"`
	// Pace is the operator's controls and what holds each live pod back.
	Pace *paceStatus `json:"pace,omitempty"`
}

// The report of one run is checkpoint's arithmetic; this command prints it.
type (
	runStatus = checkpoint.RunStatus
	rowCounts = checkpoint.RowCounts
)

type paceStatus struct {
	Controls checkpoint.Controls      `json:"controls"`
	Pods     []checkpoint.PacerReport `json:"pods"`
}

// cmdStatus reports every run recorded for the configured table. It needs
// only DATABASE_URL (no KMS: the runs record their key ARNs) and writes
// nothing: on a database that never saw a run it says so instead of creating
// the bookkeeping schema.
func cmdStatus(ctx context.Context, a *app, o statusOptions) error {
	t, err := a.inspectTable(ctx)
	if err != nil {
		return err
	}
	db := a.pool
	store := checkpoint.New(db, a.cfg.StateSchema)
	rep := statusReport{Table: t.Qualified(), StateSchema: a.cfg.StateSchema, Scanned: !o.noScan, Runs: []runStatus{}}
	exists, err := store.Exists(ctx)
	if err != nil {
		return tempErr(err)
	}
	var runs []checkpoint.RunInfo
	if exists {
		if runs, err = store.Runs(ctx, t.Qualified()); err != nil {
			return tempErr(err)
		}
		c, pods, ok, err := store.Pace(ctx, t.Qualified())
		if err != nil {
			return tempErr(err)
		}
		if ok {
			rep.Pace = &paceStatus{Controls: c, Pods: pods}
		}
	}
	if o.run != "" {
		var keep []checkpoint.RunInfo
		for _, r := range runs {
			if r.ID == o.run {
				keep = append(keep, r)
			}
		}
		if len(keep) == 0 {
			return configError("no run %s for %s in schema %s", o.run, t.Qualified(), a.cfg.StateSchema)
		}
		runs = keep
	}
	ranges := make([][]checkpoint.RangeInfo, len(runs))
	for i, r := range runs {
		rs, now, err := store.Ranges(ctx, r.ID, r.Pass)
		if err != nil {
			return tempErr(err)
		}
		ranges[i], rep.Now = rs, now
	}
	if rep.Now.IsZero() {
		if err := db.QueryRow(ctx, `SELECT now()`).Scan(&rep.Now); err != nil {
			return tempErr(err)
		}
	}
	var underOld [][]int64 // per run, per range
	if !o.noScan {
		c, per, err := scanUnderOld(ctx, a, t, runs, ranges)
		if err != nil {
			return err
		}
		rep.Rows, underOld = &c, per
	}
	for i, r := range runs {
		rs := checkpoint.BuildRunStatus(t.IDType, r, ranges[i], rep.Now)
		if underOld != nil {
			rs.AddUnderOld(underOld[i])
		}
		total, err := store.RunTotals(ctx, r.ID)
		if err != nil {
			return tempErr(err)
		}
		rs.RunTotal = checkpoint.RowCountsOf(total)
		q, err := store.QuarantineSummary(ctx, r.ID, r.Pass, o.quarantine)
		if err != nil {
			return tempErr(err)
		}
		rs.Quarantine.Total, rs.Quarantine.Current, rs.Quarantine.ByClass = q.Total, q.Current, q.ByClass
		rs.Quarantine.Rows = []checkpoint.QuarantineEntry{}
		for _, qr := range q.Rows {
			rs.Quarantine.Rows = append(rs.Quarantine.Rows, checkpoint.QuarantineEntry{RowID: qr.RowID, Class: qr.Class, LastSeen: qr.LastSeen})
		}
		rs.Hint = hintFor(&rs)
		rep.Runs = append(rep.Runs, rs)
	}
	switch {
	case !exists:
		rep.Note = fmt.Sprintf("no run recorded yet: schema %q has no bookkeeping tables (the first `reencrypt run` creates them)", a.cfg.StateSchema)
	case len(runs) == 0:
		rep.Note = fmt.Sprintf("no run recorded for %s in schema %q", t.Qualified(), a.cfg.StateSchema)
	}
	if o.json {
		return writeJSON(a.stdout, rep)
	}
	rep.print(a.stdout, o.allRanges)
	return nil
}

// scanUnderOld reads every row once, counting rows by key and, for each run,
// rows under its OLD key in each range of its current pass.
func scanUnderOld(ctx context.Context, a *app, t *tokentable.Table, runs []checkpoint.RunInfo,
	ranges [][]checkpoint.RangeInfo) (census.Census, [][]int64, error) {
	var tracked []string
	byOld := map[string][]int{} // old key ARN → runs
	uppers := make([][]*string, len(runs))
	per := make([][]int64, len(runs))
	for i, r := range runs {
		tracked = append(tracked, r.OldARN, r.NewARN)
		byOld[r.OldARN] = append(byOld[r.OldARN], i)
		per[i] = make([]int64, len(ranges[i])+1) // +1: ids beyond a closed last range
		for _, rg := range ranges[i] {
			uppers[i] = append(uppers[i], rg.Upper)
		}
	}
	counter := census.NewCounter("", tracked...)
	start, lastLog := time.Now(), time.Now()
	err := tokentable.Walk(ctx, a.pool, t, tokentable.WalkOptions{PageSize: tokentable.DefaultPageSize}, func(page []tokentable.Row) error {
		kids := counter.Add(page)
		for j, kid := range kids {
			for _, i := range byOld[kid] {
				per[i][census.Locate(t.IDType, uppers[i], page[j].ID)]++
			}
		}
		if time.Since(lastLog) >= progressEvery {
			lastLog = time.Now()
			a.log.InfoContext(ctx, "status: counting rows by key", "rows", counter.Census().Rows, "seconds", int(time.Since(start).Seconds()))
		}
		return nil
	})
	if err != nil {
		return census.Census{}, nil, tempErr(fmt.Errorf("count rows by key: %w", err))
	}
	return counter.Census(), per, nil
}

// hintFor says what to do next, in the words of the runbook.
func hintFor(rs *runStatus) string {
	switch {
	case rs.State == "running":
		return ""
	case rs.State == "stopped":
		return "no process is working on this pass: rerun `reencrypt run` (same configuration) to resume from the checkpoints"
	case rs.Quarantine.Current > 0:
		return "rows were quarantined: look at them (ids above), fix or accept them, then `reencrypt run` again for a new pass"
	case rs.UnderOld != nil && *rs.UnderOld > 0:
		return "rows are still under OLD (written by the live API behind the cursor?): `reencrypt run` again sweeps them in a new pass"
	case rs.UnderOld != nil:
		return "no row is under OLD: `reencrypt verify` next"
	}
	return ""
}

func (r *statusReport) print(w io.Writer, allRanges bool) {
	fmt.Fprintf(w, "reencrypt status: %s (bookkeeping in schema %s), %s\n", r.Table, r.StateSchema, r.Now.UTC().Format(time.RFC3339))
	if r.Rows != nil {
		c := r.Rows
		fmt.Fprintf(w, "\nrows now (every envelope's kid parsed): %s\n", num(c.Rows))
		role := map[string]string{}
		if len(r.Runs) > 0 { // the most recent run names OLD and NEW
			role[r.Runs[0].OldKeyARN], role[r.Runs[0].NewKeyARN] = "  ← OLD", "  ← NEW"
		}
		for _, k := range sortedKeys(c.ByKey) {
			fmt.Fprintf(w, "  %-14s %s%s\n", num(c.ByKey[k]), k, role[k])
		}
		if c.OtherKeysRows > 0 {
			fmt.Fprintf(w, "  %-14s (under more keys, not named)\n", num(c.OtherKeysRows))
		}
		if n := c.UnreadableRows(); n > 0 {
			fmt.Fprintf(w, "  %-14s NULL or unreadable (%s)\n", num(n), classes(c.Unreadable))
		}
	} else {
		fmt.Fprintf(w, "\nrows under OLD not counted (--no-scan)\n")
	}
	if r.Note != "" {
		fmt.Fprintf(w, "\n%s\n", r.Note)
	}
	if p := r.Pace; p != nil && (p.Controls.UpdatedBy != "" || len(p.Pods) > 0) {
		fmt.Fprintf(w, "\npace: %s", describeControls(p.Controls))
		if p.Controls.UpdatedBy != "" {
			fmt.Fprintf(w, " (set by %s at %s)", p.Controls.UpdatedBy, shortTime(p.Controls.UpdatedAt))
		}
		fmt.Fprintln(w)
		printPods(w, p.Pods)
	}
	for i := range r.Runs {
		printRun(w, &r.Runs[i], allRanges)
	}
}

func printRun(w io.Writer, rs *runStatus, allRanges bool) {
	fmt.Fprintf(w, "\nrun %s  %s  pass %d  %s\n", rs.RunID, rs.Mode, rs.Pass, strings.ToUpper(rs.State))
	tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', 0)
	fmt.Fprintf(tw, "  keys\t%s → %s\n", rs.OldKeyARN, rs.NewKeyARN)
	since := map[string]string{"done": "finished after %s", "running": "running for %s", "stopped": "%s ago, no process on it now"}[rs.State]
	fmt.Fprintf(tw, "  pass\tstarted %s, "+since+"\n", shortTime(rs.PassStartedAt), human(seconds(rs.ElapsedSeconds)))
	g := rs.Ranges
	fmt.Fprintf(tw, "  ranges\t%d: %d done, %d running, %d stale (lease expired), %d pending (%d of them part done)\n",
		g.Total, g.Done, g.Running, g.Stale, g.Pending, g.Paused)
	c := rs.Rows
	fmt.Fprintf(tw, "  rows this pass\t%s read: %s rotated, %s skipped (already NEW), %s other key, %s quarantined, %s conflicted\n",
		num(c.Read), num(c.Rotated), num(c.Skipped), num(c.OtherKey), num(c.Quarantined), num(c.Conflicted))
	passes := "1 pass"
	if rs.Pass != 1 {
		passes = fmt.Sprintf("%d passes", rs.Pass)
	}
	t := rs.RunTotal
	fmt.Fprintf(tw, "  run total\t%s rotated over %s (%s rows read in all)\n", num(t.Rotated), passes, num(t.Read))
	eta := "-"
	if rs.ETASeconds != nil {
		eta = human(seconds(*rs.ETASeconds))
	}
	fmt.Fprintf(tw, "  progress\t%.0f%% of the keyspace, %s rows/s, ETA %s\n", rs.KeyspaceDone*100, trimFloat(rs.RowsPerSecond), eta)
	if rs.UnderOld != nil {
		fmt.Fprintf(tw, "  under OLD\t%s rows now (%s in finished ranges: the next pass takes them)\n", num(*rs.UnderOld), num(*rs.UnderOldBehind))
	}
	q := rs.Quarantine
	fmt.Fprintf(tw, "  quarantine\t%s rows this pass%s, %s ever\n", num(q.Current), paren(classes(q.ByClass)), num(q.Total))
	tw.Flush()
	for _, e := range q.Rows {
		fmt.Fprintf(w, "    %s  %s\n", e.RowID, e.Class)
	}
	if q.Current > int64(len(q.Rows)) && len(q.Rows) > 0 {
		fmt.Fprintf(w, "    ... %s more (--quarantine N lists more)\n", num(q.Current-int64(len(q.Rows))))
	}
	if rs.Hint != "" {
		fmt.Fprintf(w, "  next: %s\n", rs.Hint)
	}

	tw = tabwriter.NewWriter(w, 0, 0, 2, ' ', tabwriter.AlignRight)
	fmt.Fprintf(tw, "\n  RANGE\tSTATE\tDONE\tROTATED\tSKIPPED\tOTHER\tQUAR\tCONFL\tUNDER OLD\tROWS/S\tETA\tCLAIMS\t  OWNER\n")
	hidden := 0
	for _, d := range rs.RangeDetail {
		quiet := d.State == "done" && d.Rows.Quarantined == 0 && d.Rows.Conflicted == 0 && (d.UnderOld == nil || *d.UnderOld == 0)
		if quiet && !allRanges {
			hidden++
			continue
		}
		done, under, eta := "-", "-", "-"
		if d.Done != nil {
			done = fmt.Sprintf("%.0f%%", *d.Done*100)
		}
		if d.UnderOld != nil {
			under = num(*d.UnderOld)
		}
		if d.ETASeconds != nil {
			eta = human(seconds(*d.ETASeconds))
		}
		fmt.Fprintf(tw, "  %d\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%d\t  %s\n", d.Range, d.State, done,
			num(d.Rows.Rotated), num(d.Rows.Skipped), num(d.Rows.OtherKey), num(d.Rows.Quarantined), num(d.Rows.Conflicted),
			under, trimFloat(d.RowsPerSecond), eta, d.Claims, dash(d.Owner))
	}
	tw.Flush()
	if hidden > 0 {
		fmt.Fprintf(w, "  (%d finished ranges with nothing left are not listed; --all-ranges lists them)\n", hidden)
	}
}

func paren(s string) string {
	if s == "" {
		return ""
	}
	return " (" + s + ")"
}
