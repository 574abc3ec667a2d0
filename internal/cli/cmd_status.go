package cli

import (
	"context"
	"fmt"
	"io"
	"math/big"
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

type paceStatus struct {
	Controls checkpoint.Controls      `json:"controls"`
	Pods     []checkpoint.PacerReport `json:"pods"`
}

type rowCounts struct {
	Read        int64 `json:"read"`
	Rotated     int64 `json:"rotated"`
	Skipped     int64 `json:"skipped"`
	OtherKey    int64 `json:"other_key"`
	Quarantined int64 `json:"quarantined"`
	Conflicted  int64 `json:"conflicted"`
}

func countsOf(c checkpoint.Counts) rowCounts {
	return rowCounts{Read: c.Rows(), Rotated: c.Rotated, Skipped: c.Skipped, OtherKey: c.OtherKey,
		Quarantined: c.Quarantined, Conflicted: c.Conflicted}
}

type runStatus struct {
	RunID          string     `json:"run_id"`
	OldKeyARN      string     `json:"old_key_arn"`
	NewKeyARN      string     `json:"new_key_arn"`
	Mode           string     `json:"mode"`
	Namespace      string     `json:"namespace"`
	Pass           int        `json:"pass"`
	State          string     `json:"state"` // running | stopped | done
	PassStartedAt  *time.Time `json:"pass_started_at"`
	PassFinishedAt *time.Time `json:"pass_finished_at,omitempty"`
	ElapsedSeconds float64    `json:"elapsed_seconds"`

	Ranges struct {
		Total      int `json:"total"`
		Done       int `json:"done"`
		Running    int `json:"running"`
		Stale      int `json:"stale"` // running, but the lease expired: its owner is gone
		Pending    int `json:"pending"`
		Paused     int `json:"paused"` // pending, part done (released on shutdown)
		LiveLeases int `json:"live_leases"`
	} `json:"ranges"`
	Rows rowCounts `json:"rows"` // this pass
	// RunTotal is the run's rows over all its passes: after a rerun, the
	// pass alone shows mostly rows skipped (already under NEW).
	RunTotal rowCounts `json:"run_total"`
	// RowsPerSecond is rows read in the pass per second of the pass.
	RowsPerSecond float64 `json:"rows_per_second"`
	// KeyspaceDone is the share of the keyspace behind the ranges' cursors.
	KeyspaceDone float64  `json:"keyspace_done"`
	ETASeconds   *float64 `json:"eta_seconds,omitempty"` // only while running
	// UnderOld counts rows still under OLD now (nil with --no-scan);
	// UnderOldBehind those in ranges the pass already finished, which only
	// a rerun (the next pass) takes.
	UnderOld       *int64 `json:"under_old,omitempty"`
	UnderOldBehind *int64 `json:"under_old_in_finished_ranges,omitempty"`

	Quarantine struct {
		Total   int64             `json:"total"`   // ever, in any pass of the run
		Current int64             `json:"current"` // seen again in this pass
		ByClass map[string]int64  `json:"by_class"`
		Rows    []quarantineEntry `json:"rows"`
	} `json:"quarantine"`
	Hint string `json:"hint,omitempty"`

	RangeDetail []rangeStatus `json:"range_detail"`
}

type quarantineEntry struct {
	RowID    string    `json:"row_id"`
	Class    string    `json:"error_class"`
	LastSeen time.Time `json:"last_seen"`
}

type rangeStatus struct {
	Range          int        `json:"range"`
	State          string     `json:"state"` // pending | paused | running | stale | done
	Owner          string     `json:"owner,omitempty"`
	Lower          *string    `json:"lower,omitempty"`
	Upper          *string    `json:"upper,omitempty"`
	Cursor         *string    `json:"cursor,omitempty"`
	LeaseExpiresAt *time.Time `json:"lease_expires_at,omitempty"`
	Claims         int        `json:"claims"`
	Pages          int64      `json:"pages"`
	Rows           rowCounts  `json:"rows"`
	UnderOld       *int64     `json:"under_old,omitempty"`
	Done           *float64   `json:"done,omitempty"` // share of the range behind the cursor
	RowsPerSecond  float64    `json:"rows_per_second"`
	ETASeconds     *float64   `json:"eta_seconds,omitempty"`
	StartedAt      *time.Time `json:"started_at,omitempty"`
	FinishedAt     *time.Time `json:"finished_at,omitempty"`
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
		rs := buildRunStatus(t.IDType, r, ranges[i], rep.Now)
		if underOld != nil {
			addUnderOld(&rs, underOld[i])
		}
		total, err := store.RunTotals(ctx, r.ID)
		if err != nil {
			return tempErr(err)
		}
		rs.RunTotal = countsOf(total)
		q, err := store.QuarantineSummary(ctx, r.ID, r.Pass, o.quarantine)
		if err != nil {
			return tempErr(err)
		}
		rs.Quarantine.Total, rs.Quarantine.Current, rs.Quarantine.ByClass = q.Total, q.Current, q.ByClass
		rs.Quarantine.Rows = []quarantineEntry{}
		for _, qr := range q.Rows {
			rs.Quarantine.Rows = append(rs.Quarantine.Rows, quarantineEntry{RowID: qr.RowID, Class: qr.Class, LastSeen: qr.LastSeen})
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

func buildRunStatus(idType string, r checkpoint.RunInfo, ranges []checkpoint.RangeInfo, now time.Time) runStatus {
	rs := runStatus{RunID: r.ID, OldKeyARN: r.OldARN, NewKeyARN: r.NewARN, Mode: r.Mode, Namespace: r.Namespace,
		Pass: r.Pass, PassStartedAt: r.PassStartedAt, PassFinishedAt: r.PassFinishedAt, RangeDetail: []rangeStatus{}}
	var total checkpoint.Counts
	var doneShare float64
	for _, rg := range ranges {
		d := rangeStatus{Range: rg.Range, Owner: rg.Owner, Lower: rg.Lower, Upper: rg.Upper, Cursor: rg.Cursor,
			Claims: rg.Claims, Pages: rg.Pages, Rows: countsOf(rg.Counts), StartedAt: rg.StartedAt, FinishedAt: rg.FinishedAt}
		total = total.Add(rg.Counts)
		rs.Ranges.Total++
		switch {
		case rg.State == "done":
			d.State = "done"
			rs.Ranges.Done++
		case rg.State == "running" && rg.LeaseLive:
			d.State = "running"
			d.LeaseExpiresAt = rg.LeaseExpiresAt
			rs.Ranges.Running++
			rs.Ranges.LiveLeases++
		case rg.State == "running":
			d.State = "stale"
			d.LeaseExpiresAt = rg.LeaseExpiresAt
			rs.Ranges.Stale++
		case rg.Cursor != nil:
			d.State = "paused" // released on shutdown, part done
			rs.Ranges.Pending++
			rs.Ranges.Paused++
		default:
			d.State = "pending"
			rs.Ranges.Pending++
		}
		share := rangeShare(idType, rg)
		if share != nil {
			d.Done = share
			doneShare += *share
		} else if rg.Cursor != nil {
			doneShare += 0.5 // an open-ended integer range: progress unknown
		}
		if rg.StartedAt != nil {
			end := now
			if rg.UpdatedAt != nil && d.State != "running" {
				end = *rg.UpdatedAt
			}
			if secs := end.Sub(*rg.StartedAt).Seconds(); secs > 0 {
				d.RowsPerSecond = round2(float64(rg.Counts.Rows()) / secs)
			}
			if d.State == "running" && share != nil && *share > 0 {
				eta := round2(now.Sub(*rg.StartedAt).Seconds() * (1 - *share) / *share)
				d.ETASeconds = &eta
			}
		}
		rs.RangeDetail = append(rs.RangeDetail, d)
	}
	rs.Rows = countsOf(total)
	if rs.Ranges.Total > 0 {
		rs.KeyspaceDone = round2(doneShare / float64(rs.Ranges.Total))
	}
	switch {
	case r.PassFinishedAt != nil:
		rs.State = "done"
	case rs.Ranges.LiveLeases > 0:
		rs.State = "running"
	default:
		rs.State = "stopped" // no process holds a lease: rerun `reencrypt run` to resume
	}
	if r.PassStartedAt != nil {
		end := now
		if r.PassFinishedAt != nil {
			end = *r.PassFinishedAt
		}
		elapsed := end.Sub(*r.PassStartedAt).Seconds()
		rs.ElapsedSeconds = round2(elapsed)
		if elapsed > 0 {
			rs.RowsPerSecond = round2(float64(total.Rows()) / elapsed)
		}
		if rs.State == "running" && rs.KeyspaceDone > 0 {
			eta := round2(elapsed * (1 - rs.KeyspaceDone) / rs.KeyspaceDone)
			rs.ETASeconds = &eta
		}
	}
	return rs
}

func addUnderOld(rs *runStatus, per []int64) {
	var all, behind int64
	for i := range rs.RangeDetail {
		n := per[i]
		rs.RangeDetail[i].UnderOld = &n
		all += n
		if rs.RangeDetail[i].State == "done" {
			behind += n
		}
	}
	all += per[len(per)-1]
	rs.UnderOld, rs.UnderOldBehind = &all, &behind
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

// rangeShare is the share of a range's keyspace behind its cursor, from the
// ids' values: uuids over 128 bits, integers between the bounds. nil when it
// cannot be known (an open integer bound).
func rangeShare(idType string, rg checkpoint.RangeInfo) *float64 {
	one, zero := 1.0, 0.0
	switch {
	case rg.State == "done":
		return &one
	case rg.Cursor == nil:
		return &zero
	}
	var lo, hi, cur *big.Int
	if idType == "uuid" {
		lo, hi = big.NewInt(0), new(big.Int).Sub(new(big.Int).Lsh(big.NewInt(1), 128), big.NewInt(1))
		if rg.Lower != nil {
			lo = uuidInt(*rg.Lower)
		}
		if rg.Upper != nil {
			hi = uuidInt(*rg.Upper)
		}
		cur = uuidInt(*rg.Cursor)
	} else {
		if rg.Lower == nil || rg.Upper == nil {
			return nil
		}
		lo, hi, cur = decInt(*rg.Lower), decInt(*rg.Upper), decInt(*rg.Cursor)
	}
	if lo == nil || hi == nil || cur == nil {
		return nil
	}
	span := new(big.Int).Sub(hi, lo)
	if span.Sign() <= 0 {
		return nil
	}
	f, _ := new(big.Rat).SetFrac(new(big.Int).Sub(cur, lo), span).Float64()
	f = round2(min(max(f, 0), 1))
	return &f
}

func uuidInt(s string) *big.Int {
	v, ok := new(big.Int).SetString(strings.ReplaceAll(s, "-", ""), 16)
	if !ok {
		return nil
	}
	return v
}

func decInt(s string) *big.Int {
	v, ok := new(big.Int).SetString(s, 10)
	if !ok {
		return nil
	}
	return v
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
		r.Runs[i].print(w, allRanges)
	}
}

func (rs *runStatus) print(w io.Writer, allRanges bool) {
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
