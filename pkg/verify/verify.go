package verify

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"math/rand/v2"
	"slices"
	"sync"
	"time"

	"golang.org/x/sync/errgroup"

	"github.com/reencrypt/reencrypt/internal/textfmt"
	"github.com/reencrypt/reencrypt/pkg/census"
	"github.com/reencrypt/reencrypt/pkg/checkpoint"
	"github.com/reencrypt/reencrypt/pkg/envelope"
	"github.com/reencrypt/reencrypt/pkg/kmsclient"
	"github.com/reencrypt/reencrypt/pkg/tokentable"
)

// MaxSample bounds Options.Sample: the sample's ids are held in memory.
const MaxSample = 1_000_000

// DefaultWorkers is the KMS calls in flight when Options.Workers is 0.
const DefaultWorkers = 16

// sampleChunk is how many sampled ids are read back per statement.
const sampleChunk = 1000

// Failure classes of verify, beside the engine's classes (tokentable.Class: malformed,
// truncated, unknown_version, unknown_alg, null_token) for unreadable rows.
const (
	FailUnderOld     = "under_old"                         // the row is still under OLD
	FailAuth         = string(tokentable.ClassAuthFailed)  // under NEW, but does not open with its own AAD (moved, altered, other namespace)
	FailKMSRejected  = string(tokentable.ClassKMSRejected) // KMS refused to unwrap the row's data key under NEW
	FailNoAudit      = "no_audit"                          // under NEW, with no token_reencrypted audit row naming OLD → NEW
	FailDuplicate    = "duplicate_audit"                   // more than one audit row for the row in one run and pass
	FailAuditMissing = "audit_missing"                     // the runs count more rotated rows than there are audit rows
)

// Report is what verify found; its JSON field names are the --json
// contract of `reencrypt verify`.
type Report struct {
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
	Audit          AuditCheck       `json:"audit"`         // the bookkeeping against the audit table
	Checks         []Check          `json:"checks"`        // one line per property
	FailuresByCls  map[string]int64 `json:"failures_by_class"`
	FailuresTotal  int64            `json:"failures_total"`
	Failures       []Failure        `json:"failures"` // the first Options.MaxFailures
	ElapsedSeconds float64          `json:"seconds"`  // set by the caller, who knows when it started
}

// Check is one property verified.
type Check struct {
	OK     bool   `json:"ok"`
	Check  string `json:"check"`
	Detail string `json:"detail"`
}

// Failure is one failed row (RowID "" for a failure of the whole table).
type Failure struct {
	RowID         string `json:"row_id,omitempty"`
	Class         string `json:"class"`
	QuarantinedAs string `json:"quarantined_as,omitempty"`
	Detail        string `json:"detail,omitempty"`
}

// AuditCheck is the runs' bookkeeping compared with the audit table.
type AuditCheck struct {
	Checked    bool     `json:"checked"`
	RunIDs     []string `json:"run_ids"`
	Rotated    int64    `json:"rotated_by_runs"` // sum of the runs' rows_rotated, every pass
	AuditRows  int64    `json:"audit_rows"`      // token_reencrypted rows naming those runs
	Duplicates int64    `json:"duplicates"`
	Note       string   `json:"note,omitempty"`
}

// Options say what to verify and how.
type Options struct {
	Table       *tokentable.Table
	Old, New    kmsclient.Key // resolved; their ARNs differ
	Namespace   string        // the tokens' AAD namespace
	StateSchema string        // the runs' bookkeeping schema
	Sample      int           // open only this many rows under NEW (0: every row); at most MaxSample
	MaxFailures int           // failed rows to list (all are counted)
	SkipAudit   bool          // do not look up each row's audit row
	Workers     int           // KMS calls in flight (0: DefaultWorkers)

	Log           *slog.Logger
	ProgressEvery time.Duration // between "verify: reading" log lines
}

type verifier struct {
	db    checkpoint.DB
	kc    *kmsclient.Client
	opt   Options
	audit string // rows of $1 (ids) under NEW lacking an OLD → NEW audit row

	mu  sync.Mutex
	rep Report

	sample []string // reservoir of ids under NEW (Options.Sample)
	seen   int64    // rows under NEW offered to the reservoir
}

// Run proves a finished rotation, reading every row once in keyset pages.
// It writes nothing. Each row under NEW is opened for real: its data key
// unwrapped by KMS under NEW (one Decrypt per distinct wrapped key, cached)
// and its token authenticated by AES-GCM with the row's own AAD; with a
// sample only that many such rows, drawn uniformly from the whole table,
// while rows under OLD and unreadable rows are still all counted.
//
// Rows that fail are the Report's (OK false), not an error; an error means
// the check could not be finished (database or KMS).
func Run(ctx context.Context, db checkpoint.DB, kc *kmsclient.Client, o Options) (*Report, error) {
	if o.Workers == 0 {
		o.Workers = DefaultWorkers
	}
	if o.Log == nil {
		o.Log = slog.New(slog.DiscardHandler)
	}
	t := o.Table
	v := newVerifier(db, kc, o)
	r := &v.rep
	lastLog := time.Now()
	err := tokentable.Walk(ctx, v.db, t, tokentable.WalkOptions{PageSize: tokentable.DefaultPageSize}, func(page []tokentable.Row) error {
		if err := v.page(ctx, page, o.Sample == 0); err != nil {
			return err
		}
		if time.Since(lastLog) >= o.ProgressEvery {
			lastLog = time.Now()
			o.Log.InfoContext(ctx, "verify: reading", "rows", r.Rows.Total, "opened", r.Opened, "failures", r.FailuresTotal)
		}
		return nil
	})
	if err == nil && o.Sample > 0 {
		err = v.openSample(ctx)
	}
	if err != nil {
		return nil, err
	}
	if err := v.checkAuditCounts(ctx); err != nil {
		return nil, fmt.Errorf("audit: %w", err)
	}
	if err := v.annotateQuarantine(ctx); err != nil {
		return nil, err
	}
	v.summarise()
	return r, nil
}

func newVerifier(db checkpoint.DB, kc *kmsclient.Client, o Options) *verifier {
	t := o.Table
	v := &verifier{db: db, kc: kc, opt: o}
	v.audit = fmt.Sprintf(`
		SELECT v.id FROM unnest($1::text[]) AS v(id)
		WHERE NOT EXISTS (
			SELECT 1 FROM %s a WHERE a.%s = v.id::%s AND a.action = '%s'
			  AND a.details->>'%s' = $2 AND a.details->>'%s' = $3)
		ORDER BY 1`,
		t.QuotedAudit(), t.QuotedAuditID(), t.IDType,
		tokentable.ActionReencrypted, tokentable.DetailOldKeyARN, tokentable.DetailNewKeyARN)
	r := &v.rep
	r.Table, r.OldKeyARN, r.NewKeyARN, r.Sample = t.Qualified(), o.Old.ARN, o.New.ARN, o.Sample
	r.FailuresByCls = map[string]int64{}
	r.Failures = []Failure{}
	return v
}

func (v *verifier) fail(id, class, detail string) {
	v.mu.Lock()
	defer v.mu.Unlock()
	v.rep.FailuresTotal++
	v.rep.FailuresByCls[class]++
	if len(v.rep.Failures) < v.opt.MaxFailures {
		v.rep.Failures = append(v.rep.Failures, Failure{RowID: id, Class: class, Detail: detail})
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
		case env.KID == v.opt.Old.ARN:
			rows.UnderOld++
			v.fail(row.ID, FailUnderOld, "")
		case env.KID == v.opt.New.ARN:
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
	if len(v.sample) < v.opt.Sample {
		v.sample = append(v.sample, id)
		return
	}
	if j := rand.Int64N(v.seen); j < int64(v.opt.Sample) {
		v.sample[j] = id
	}
}

// openSample reads the sampled rows again, in id order, and checks them as
// a full verify would. A row deleted meanwhile is skipped; one that changed
// is checked as it is now.
func (v *verifier) openSample(ctx context.Context) error {
	t := v.opt.Table
	slices.SortFunc(v.sample, func(x, y string) int { return census.CompareIDs(t.IDType, x, y) })
	for chunk := range slices.Chunk(v.sample, sampleChunk) {
		rows, err := tokentable.ReadIDs(ctx, v.db, t, chunk)
		if err != nil {
			return fmt.Errorf("read %d rows of %s: %w", len(chunk), t.Qualified(), err)
		}
		var under []tokentable.Row
		var envs []*envelope.Envelope
		for _, row := range rows {
			env, class := tokentable.ParseToken(row.Token)
			switch {
			case env == nil:
				v.fail(row.ID, string(class), "changed since it was read under NEW")
			case env.KID == v.opt.New.ARN:
				under, envs = append(under, row), append(envs, env)
			case env.KID == v.opt.Old.ARN:
				v.fail(row.ID, FailUnderOld, "changed back to OLD since it was read under NEW")
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
	g, gctx := errgroup.WithContext(ctx)
	g.SetLimit(v.opt.Workers)
	for _, kg := range envelope.GroupByWDEK(envs) {
		idx := kg.Rows
		g.Go(func() error {
			dek, err := v.kc.DecryptRows(gctx, v.opt.New.ARN, kg.WDEK, len(idx))
			if errors.Is(err, kmsclient.ErrBadCiphertext) {
				for _, i := range idx {
					v.fail(rows[i].ID, FailKMSRejected, "")
				}
				return nil
			}
			if err != nil {
				return err
			}
			defer dek.Zero()
			opener, err := envelope.NewOpener(dek)
			if err != nil {
				return err
			}
			var ok int64
			for _, i := range idx {
				plain, err := opener.Open(envs[i], v.opt.Namespace, rows[i].ID)
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
	if v.opt.SkipAudit {
		return nil
	}
	ids := make([]string, len(rows))
	for i, r := range rows {
		ids[i] = r.ID
	}
	res, err := v.db.Query(ctx, v.audit, ids, v.opt.Old.ARN, v.opt.New.ARN)
	if err != nil {
		return fmt.Errorf("look up audit rows: %w", err)
	}
	defer res.Close()
	for res.Next() {
		var id string
		if err := res.Scan(&id); err != nil {
			return err
		}
		v.fail(id, FailNoAudit, "")
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
	t := v.opt.Table
	ac := &v.rep.Audit
	ac.RunIDs = []string{}
	store := checkpoint.New(v.db, v.opt.StateSchema)
	exists, err := store.Exists(ctx)
	if err != nil {
		return err
	}
	if !exists {
		ac.Note = "no bookkeeping schema: no run recorded, audit counts not compared"
		return nil
	}
	runs, err := store.Runs(ctx, t.Qualified())
	if err != nil {
		return err
	}
	for _, r := range runs {
		if r.OldARN == v.opt.Old.ARN && r.NewARN == v.opt.New.ARN {
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
	audit, aid := t.QuotedAudit(), t.QuotedAuditID()
	if err := v.db.QueryRow(ctx, fmt.Sprintf(`
		SELECT count(*) FROM %s WHERE action = '%s' AND details->>'%s' = ANY($1)`,
		audit, tokentable.ActionReencrypted, tokentable.DetailRunID),
		ac.RunIDs).Scan(&ac.AuditRows); err != nil {
		return err
	}
	switch {
	case ac.AuditRows < ac.Rotated:
		v.fail("", FailAuditMissing, fmt.Sprintf("the runs rotated %s rows but wrote %s audit rows", num(ac.Rotated), num(ac.AuditRows)))
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
		v.fail(id, FailDuplicate, "")
	}
	return rows.Err()
}

// annotateQuarantine names the quarantine class beside listed rows still
// under OLD, so the list says why the run left them.
func (v *verifier) annotateQuarantine(ctx context.Context) error {
	var ids []string
	for _, f := range v.rep.Failures {
		if f.Class == FailUnderOld {
			ids = append(ids, f.RowID)
		}
	}
	if len(ids) == 0 || len(v.rep.Audit.RunIDs) == 0 {
		return nil
	}
	store := checkpoint.New(v.db, v.opt.StateSchema)
	cls, err := store.QuarantineClasses(ctx, v.rep.Audit.RunIDs, ids)
	if err != nil {
		return err
	}
	for i := range v.rep.Failures {
		if c, ok := cls[v.rep.Failures[i].RowID]; ok && v.rep.Failures[i].Class == FailUnderOld {
			v.rep.Failures[i].QuarantinedAs = c
		}
	}
	return nil
}

// summarise turns the counts into the list of properties checked.
func (v *verifier) summarise() {
	r := &v.rep
	f := r.FailuresByCls
	openFails := f[FailAuth] + f[FailKMSRejected]
	opened := fmt.Sprintf("%s rows opened, %s wrapped data keys unwrapped", num(r.Opened), num(r.DataKeys))
	if r.Sample > 0 {
		opened = fmt.Sprintf("a uniform sample of %s of the %s rows: ", num(min(int64(r.Sample), r.Rows.UnderNew)), num(r.Rows.UnderNew)) + opened
	}
	if openFails > 0 {
		opened = fmt.Sprintf("%s rows do not open (%s); ", num(openFails), textfmt.Classes(pick(f, FailAuth, FailKMSRejected))) + opened
	}
	add := func(ok bool, check, detail string) {
		r.Checks = append(r.Checks, Check{OK: ok, Check: check, Detail: detail})
	}
	add(openFails == 0, "every row under NEW opens with its own AAD", opened)
	add(r.Rows.UnderOld == 0, "no row is left under OLD", fmt.Sprintf("%s rows under OLD", num(r.Rows.UnderOld)))
	add(r.Rows.Unreadable == 0, "no row is NULL or unreadable", fmt.Sprintf("%s unreadable rows", num(r.Rows.Unreadable)))
	switch {
	case v.opt.SkipAudit:
		add(true, "audit row of each row under NEW", "skipped (--skip-audit)")
	default:
		add(f[FailNoAudit] == 0, "every row under NEW has its token_reencrypted audit row (OLD → NEW)",
			fmt.Sprintf("%s rows looked up, %s without one", num(r.AuditChecked), num(f[FailNoAudit])))
	}
	ac := r.Audit
	if ac.Checked {
		add(f[FailAuditMissing] == 0 && ac.Duplicates == 0, "one audit row per row the runs rotated",
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

func num(n int64) string { return textfmt.Num(n) }
