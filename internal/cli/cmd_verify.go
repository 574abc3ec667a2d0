package cli

import (
	"context"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"slices"
	"sync"
	"time"

	"github.com/spf13/pflag"
	"golang.org/x/sync/errgroup"

	"github.com/reencrypt/reencrypt/pkg/census"
	"github.com/reencrypt/reencrypt/pkg/checkpoint"
	"github.com/reencrypt/reencrypt/pkg/envelope"
	"github.com/reencrypt/reencrypt/pkg/kmsclient"
	"github.com/reencrypt/reencrypt/pkg/tokentable"
)

// maxSample bounds --sample: the sample's ids are held in memory.
const maxSample = 1_000_000

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

// Failure classes of verify, beside the engine's classes (tokentable.Class: malformed,
// truncated, unknown_version, unknown_alg, null_token) for unreadable rows.
const (
	failUnderOld     = "under_old"                         // the row is still under OLD
	failAuth         = string(tokentable.ClassAuthFailed)  // under NEW, but does not open with its own AAD (moved, altered, other namespace)
	failKMSRejected  = string(tokentable.ClassKMSRejected) // KMS refused to unwrap the row's data key under NEW
	failNoAudit      = "no_audit"                          // under NEW, with no token_reencrypted audit row naming OLD → NEW
	failDuplicate    = "duplicate_audit"                   // more than one audit row for the row in one run and pass
	failAuditMissing = "audit_missing"                     // the runs count more rotated rows than there are audit rows
)

type verifyReport struct {
	OK        bool   `json:"ok"`
	Table     string `json:"table"`
	OldKeyARN string `json:"old_key_arn"`
	NewKeyARN string `json:"new_key_arn"`
	Sample    int    `json:"sample"` // 0: every row under NEW was opened
	Rows      struct {
		Total      int64 `json:"total"`
		UnderNew   int64 `json:"under_new"`
		UnderOld   int64 `json:"under_old"`
		OtherKeys  int64 `json:"under_other_keys"`
		Unreadable int64 `json:"unreadable"`
	} `json:"rows"`
	Opened         int64            `json:"opened"`        // rows under NEW decrypted and authenticated
	DataKeys       int64            `json:"data_keys"`     // wrapped data keys unwrapped (data-key cache hits included)
	AuditChecked   int64            `json:"audit_checked"` // rows under NEW whose audit row was looked up
	Audit          auditCheck       `json:"audit"`         // the bookkeeping against the audit table
	Checks         []verifyCheck    `json:"checks"`        // one line per property
	FailuresByCls  map[string]int64 `json:"failures_by_class"`
	FailuresTotal  int64            `json:"failures_total"`
	Failures       []verifyFailure  `json:"failures"` // the first --max-failures
	ElapsedSeconds float64          `json:"seconds"`
}

type verifyCheck struct {
	OK     bool   `json:"ok"`
	Check  string `json:"check"`
	Detail string `json:"detail"`
}

type verifyFailure struct {
	RowID         string `json:"row_id,omitempty"`
	Class         string `json:"class"`
	QuarantinedAs string `json:"quarantined_as,omitempty"`
	Detail        string `json:"detail,omitempty"`
}

type auditCheck struct {
	Checked    bool     `json:"checked"`
	RunIDs     []string `json:"run_ids"`
	Rotated    int64    `json:"rotated_by_runs"` // sum of the runs' rows_rotated, every pass
	AuditRows  int64    `json:"audit_rows"`      // token_reencrypted rows naming those runs
	Duplicates int64    `json:"duplicates"`
	Note       string   `json:"note,omitempty"`
}

type verifier struct {
	a        *app
	db       checkpoint.DB
	t        *tokentable.Table
	kc       *kmsclient.Client
	old, new kmsclient.Key
	opt      verifyOptions
	workers  int
	audit    string // rows of $1 (ids) under NEW lacking an OLD → NEW audit row

	mu  sync.Mutex
	rep verifyReport

	sample []string // reservoir of ids under NEW (--sample)
	seen   int64    // rows under NEW offered to the reservoir
}

// cmdVerify proves a finished rotation, reading every row once in keyset
// pages. It writes nothing. Each row under NEW is opened for real: its data
// key unwrapped by KMS under NEW (one Decrypt per distinct wrapped key,
// cached) and its token authenticated by AES-GCM with the row's own AAD;
// with --sample N only N such rows, drawn uniformly from the whole table,
// while rows under OLD and unreadable rows are still all counted.
func cmdVerify(ctx context.Context, a *app, o verifyOptions) error {
	if o.sample < 0 || o.sample > maxSample {
		return configError("--sample %d: want 0 (every row) to %d", o.sample, maxSample)
	}
	if o.maxFailures < 0 {
		return configError("--max-failures %d: want >= 0", o.maxFailures)
	}
	start := time.Now()
	t, err := a.inspectTable(ctx)
	if err != nil {
		return err
	}
	v := &verifier{a: a, db: a.pool, t: t, opt: o, workers: a.cfg.KMSConcurrency}
	if v.workers == 0 {
		v.workers = 16
	}
	if v.old, err = a.resolveKey(ctx, "OLD_KEY_ID", a.cfg.OldKeyID); err != nil {
		return err
	}
	if v.new, err = a.resolveKey(ctx, "NEW_KEY_ID", a.cfg.NewKeyID); err != nil {
		return err
	}
	if v.old.ARN == v.new.ARN {
		return configError("OLD_KEY_ID and NEW_KEY_ID are the same key %s: nothing to verify", v.old.ARN)
	}
	if v.kc, err = a.client(ctx); err != nil {
		return err
	}
	v.audit = fmt.Sprintf(`
		SELECT v.id FROM unnest($1::text[]) AS v(id)
		WHERE NOT EXISTS (
			SELECT 1 FROM %s a WHERE a.%s = v.id::%s AND a.action = '%s'
			  AND a.details->>'%s' = $2 AND a.details->>'%s' = $3)
		ORDER BY 1`,
		t.QuotedAudit(), t.QuotedAuditID(), t.IDType,
		tokentable.ActionReencrypted, tokentable.DetailOldKeyARN, tokentable.DetailNewKeyARN)
	r := &v.rep
	r.Table, r.OldKeyARN, r.NewKeyARN, r.Sample = t.Qualified(), v.old.ARN, v.new.ARN, o.sample
	r.FailuresByCls = map[string]int64{}
	r.Failures = []verifyFailure{}
	a.log.InfoContext(ctx, "verify starting", "table", t.Qualified(), "old_key_arn", v.old.ARN, "new_key_arn", v.new.ARN, "sample", o.sample)

	lastLog := time.Now()
	err = tokentable.Walk(ctx, v.db, t, tokentable.WalkOptions{PageSize: tokentable.DefaultPageSize}, func(page []tokentable.Row) error {
		if err := v.page(ctx, page, o.sample == 0); err != nil {
			return err
		}
		if time.Since(lastLog) >= progressEvery {
			lastLog = time.Now()
			a.log.InfoContext(ctx, "verify: reading", "rows", r.Rows.Total, "opened", r.Opened, "failures", r.FailuresTotal)
		}
		return nil
	})
	if err == nil && o.sample > 0 {
		err = v.openSample(ctx)
	}
	if err != nil {
		if errors.Is(err, kmsclient.ErrKeyUnusable) {
			return fmt.Errorf("verify: %w", err)
		}
		return tempErr(fmt.Errorf("verify: %w", err))
	}
	if err := v.checkAuditCounts(ctx); err != nil {
		return tempErr(fmt.Errorf("verify: audit: %w", err))
	}
	if err := v.annotateQuarantine(ctx); err != nil {
		return tempErr(fmt.Errorf("verify: %w", err))
	}
	r.ElapsedSeconds = round2(time.Since(start).Seconds())
	v.summarise()
	a.log.InfoContext(ctx, "verify finished", "ok", r.OK, "rows", r.Rows.Total, "under_new", r.Rows.UnderNew, "under_old", r.Rows.UnderOld,
		"opened", r.Opened, "failures", r.FailuresTotal, "failures_by_class", r.FailuresByCls)
	if o.json {
		if err := writeJSON(a.stdout, r); err != nil {
			return err
		}
	} else {
		r.print(a.stdout)
	}
	if !r.OK {
		return fmt.Errorf("%w: %s rows or checks failed (%s)", errVerifyFailed, num(r.FailuresTotal), classes(r.FailuresByCls))
	}
	return nil
}

func (v *verifier) fail(id, class, detail string) {
	v.mu.Lock()
	defer v.mu.Unlock()
	v.rep.FailuresTotal++
	v.rep.FailuresByCls[class]++
	if len(v.rep.Failures) < v.opt.maxFailures {
		v.rep.Failures = append(v.rep.Failures, verifyFailure{RowID: id, Class: class, Detail: detail})
	}
}

// page classifies one page of the walk; open says whether rows under NEW
// are opened now (no sample) or offered to the sample.
func (v *verifier) page(ctx context.Context, page []tokentable.Row, open bool) error {
	var under []tokentable.Row
	var envs []*envelope.Envelope
	rows := &v.rep.Rows
	for _, row := range page {
		rows.Total++
		env, class := tokentable.ParseToken(row.Token)
		switch {
		case env == nil:
			rows.Unreadable++
			v.fail(row.ID, string(class), "")
		case env.KID == v.old.ARN:
			rows.UnderOld++
			v.fail(row.ID, failUnderOld, "")
		case env.KID == v.new.ARN:
			rows.UnderNew++
			if open {
				under, envs = append(under, row), append(envs, env)
			} else {
				v.offer(row.ID)
			}
		default:
			rows.OtherKeys++
		}
	}
	if len(under) == 0 {
		return nil
	}
	if err := v.open(ctx, under, envs); err != nil {
		return err
	}
	return v.checkAudit(ctx, under)
}

// offer keeps a uniform sample of the ids under NEW (reservoir sampling):
// every row of the whole keyspace has the same chance, in fixed memory.
func (v *verifier) offer(id string) {
	v.seen++
	if len(v.sample) < v.opt.sample {
		v.sample = append(v.sample, id)
		return
	}
	if j := rand.Int64N(v.seen); j < int64(v.opt.sample) {
		v.sample[j] = id
	}
}

// openSample reads the sampled rows again, in id order, and checks them as
// a full verify would. A row deleted meanwhile is skipped; one that changed
// is checked as it is now.
func (v *verifier) openSample(ctx context.Context) error {
	slices.SortFunc(v.sample, func(x, y string) int { return census.CompareIDs(v.t.IDType, x, y) })
	for chunk := range slices.Chunk(v.sample, 1000) {
		rows, err := tokentable.ReadIDs(ctx, v.db, v.t, chunk)
		if err != nil {
			return fmt.Errorf("read %d rows of %s: %w", len(chunk), v.t.Qualified(), err)
		}
		var under []tokentable.Row
		var envs []*envelope.Envelope
		for _, row := range rows {
			env, class := tokentable.ParseToken(row.Token)
			switch {
			case env == nil:
				v.fail(row.ID, string(class), "changed since it was read under NEW")
			case env.KID == v.new.ARN:
				under, envs = append(under, row), append(envs, env)
			case env.KID == v.old.ARN:
				v.fail(row.ID, failUnderOld, "changed back to OLD since it was read under NEW")
			}
		}
		if len(under) == 0 {
			continue
		}
		if err := v.open(ctx, under, envs); err != nil {
			return err
		}
		if err := v.checkAudit(ctx, under); err != nil {
			return err
		}
	}
	return nil
}

// open unwraps each distinct wrapped key of the rows once (KMS Decrypt under
// NEW, through the data-key cache) and authenticates every row's token with
// its own AAD. Plaintexts and data keys are cleared at once.
func (v *verifier) open(ctx context.Context, rows []tokentable.Row, envs []*envelope.Envelope) error {
	groups := map[string][]int{}
	var order []string
	for i, e := range envs {
		k := string(e.WDEK)
		if _, ok := groups[k]; !ok {
			order = append(order, k)
		}
		groups[k] = append(groups[k], i)
	}
	g, gctx := errgroup.WithContext(ctx)
	g.SetLimit(v.workers)
	for _, k := range order {
		idx := groups[k]
		g.Go(func() error {
			dek, err := v.kc.DecryptRows(gctx, v.new.ARN, []byte(k), len(idx))
			if errors.Is(err, kmsclient.ErrBadCiphertext) {
				for _, i := range idx {
					v.fail(rows[i].ID, failKMSRejected, "")
				}
				return nil
			}
			if err != nil {
				return err
			}
			defer dek.Zero()
			var ok int64
			for _, i := range idx {
				plain, err := envelope.Open(envs[i], dek, v.a.cfg.Namespace, rows[i].ID)
				clear(plain)
				if err != nil {
					v.fail(rows[i].ID, string(tokentable.OpenClass(err)), "")
					continue
				}
				ok++
			}
			v.mu.Lock()
			v.rep.Opened += ok
			v.rep.DataKeys++
			v.mu.Unlock()
			return nil
		})
	}
	return g.Wait()
}

// checkAudit looks up the OLD → NEW audit row of each row under NEW.
func (v *verifier) checkAudit(ctx context.Context, rows []tokentable.Row) error {
	if v.opt.skipAudit {
		return nil
	}
	ids := make([]string, len(rows))
	for i, r := range rows {
		ids[i] = r.ID
	}
	res, err := v.db.Query(ctx, v.audit, ids, v.old.ARN, v.new.ARN)
	if err != nil {
		return fmt.Errorf("look up audit rows: %w", err)
	}
	defer res.Close()
	for res.Next() {
		var id string
		if err := res.Scan(&id); err != nil {
			return err
		}
		v.fail(id, failNoAudit, "")
	}
	if err := res.Err(); err != nil {
		return fmt.Errorf("look up audit rows: %w", err)
	}
	v.rep.AuditChecked += int64(len(ids))
	return nil
}

// checkAuditCounts compares the runs' bookkeeping with the audit table: the
// engine commits a row's swap, its audit row and the counter in one
// transaction, so there must be exactly one audit row per rotated row.
func (v *verifier) checkAuditCounts(ctx context.Context) error {
	ac := &v.rep.Audit
	ac.RunIDs = []string{}
	store := checkpoint.New(v.db, v.a.cfg.StateSchema)
	exists, err := store.Exists(ctx)
	if err != nil {
		return err
	}
	if !exists {
		ac.Note = "no bookkeeping schema: no run recorded, audit counts not compared"
		return nil
	}
	runs, err := store.Runs(ctx, v.t.Qualified())
	if err != nil {
		return err
	}
	for _, r := range runs {
		if r.OldARN == v.old.ARN && r.NewARN == v.new.ARN {
			ac.RunIDs = append(ac.RunIDs, r.ID)
		}
	}
	if len(ac.RunIDs) == 0 {
		ac.Note = "no run recorded for these keys: audit counts not compared"
		return nil
	}
	ac.Checked = true
	if ac.Rotated, err = store.RotatedTotal(ctx, ac.RunIDs); err != nil {
		return err
	}
	audit, aid := v.t.QuotedAudit(), v.t.QuotedAuditID()
	if err := v.db.QueryRow(ctx, fmt.Sprintf(`
		SELECT count(*) FROM %s WHERE action = '%s' AND details->>'%s' = ANY($1)`,
		audit, tokentable.ActionReencrypted, tokentable.DetailRunID),
		ac.RunIDs).Scan(&ac.AuditRows); err != nil {
		return err
	}
	switch {
	case ac.AuditRows < ac.Rotated:
		v.fail("", failAuditMissing, fmt.Sprintf("the runs rotated %s rows but wrote %s audit rows", num(ac.Rotated), num(ac.AuditRows)))
	case ac.AuditRows > ac.Rotated:
		ac.Note = "more audit rows than rows counted as rotated: the bookkeeping was reset, or a rollback rotated rows twice"
	}
	rows, err := v.db.Query(ctx, fmt.Sprintf(`
		SELECT %[2]s::text FROM %[1]s WHERE action = '%[3]s' AND details->>'%[4]s' = ANY($1)
		GROUP BY %[2]s, details->>'%[4]s', details->>'%[5]s' HAVING count(*) > 1 ORDER BY 1`,
		audit, aid, tokentable.ActionReencrypted, tokentable.DetailRunID, tokentable.DetailPass), ac.RunIDs)
	if err != nil {
		return err
	}
	defer rows.Close()
	for rows.Next() {
		var id string
		if err := rows.Scan(&id); err != nil {
			return err
		}
		ac.Duplicates++
		v.fail(id, failDuplicate, "")
	}
	return rows.Err()
}

// annotateQuarantine names the quarantine class beside listed rows still
// under OLD, so the list says why the run left them.
func (v *verifier) annotateQuarantine(ctx context.Context) error {
	var ids []string
	for _, f := range v.rep.Failures {
		if f.Class == failUnderOld {
			ids = append(ids, f.RowID)
		}
	}
	if len(ids) == 0 || len(v.rep.Audit.RunIDs) == 0 {
		return nil
	}
	store := checkpoint.New(v.db, v.a.cfg.StateSchema)
	cls, err := store.QuarantineClasses(ctx, v.rep.Audit.RunIDs, ids)
	if err != nil {
		return err
	}
	for i := range v.rep.Failures {
		if c, ok := cls[v.rep.Failures[i].RowID]; ok && v.rep.Failures[i].Class == failUnderOld {
			v.rep.Failures[i].QuarantinedAs = c
		}
	}
	return nil
}

// summarise turns the counts into the list of properties checked.
func (v *verifier) summarise() {
	r := &v.rep
	f := r.FailuresByCls
	openFails := f[failAuth] + f[failKMSRejected]
	opened := fmt.Sprintf("%s rows opened, %s wrapped data keys unwrapped", num(r.Opened), num(r.DataKeys))
	if r.Sample > 0 {
		opened = fmt.Sprintf("a uniform sample of %s of the %s rows: ", num(min(int64(r.Sample), r.Rows.UnderNew)), num(r.Rows.UnderNew)) + opened
	}
	if openFails > 0 {
		opened = fmt.Sprintf("%s rows do not open (%s); ", num(openFails), classes(pick(f, failAuth, failKMSRejected))) + opened
	}
	add := func(ok bool, check, detail string) {
		r.Checks = append(r.Checks, verifyCheck{OK: ok, Check: check, Detail: detail})
	}
	add(openFails == 0, "every row under NEW opens with its own AAD", opened)
	add(r.Rows.UnderOld == 0, "no row is left under OLD", fmt.Sprintf("%s rows under OLD", num(r.Rows.UnderOld)))
	add(r.Rows.Unreadable == 0, "no row is NULL or unreadable", fmt.Sprintf("%s unreadable rows", num(r.Rows.Unreadable)))
	switch {
	case v.opt.skipAudit:
		add(true, "audit row of each row under NEW", "skipped (--skip-audit)")
	default:
		add(f[failNoAudit] == 0, "every row under NEW has its token_reencrypted audit row (OLD → NEW)",
			fmt.Sprintf("%s rows looked up, %s without one", num(r.AuditChecked), num(f[failNoAudit])))
	}
	ac := r.Audit
	if ac.Checked {
		add(f[failAuditMissing] == 0 && ac.Duplicates == 0, "one audit row per row the runs rotated",
			fmt.Sprintf("%s rotated, %s audit rows, %s duplicated", num(ac.Rotated), num(ac.AuditRows), num(ac.Duplicates)))
	} else {
		add(true, "one audit row per row the runs rotated", ac.Note)
	}
	r.OK = r.FailuresTotal == 0
}

func pick(m map[string]int64, keys ...string) map[string]int64 {
	out := map[string]int64{}
	for _, k := range keys {
		if m[k] > 0 {
			out[k] = m[k]
		}
	}
	return out
}

func (r *verifyReport) print(w io.Writer) {
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
