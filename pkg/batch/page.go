package batch

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"sync/atomic"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
	"golang.org/x/sync/errgroup"

	"github.com/reencrypt/reencrypt/pkg/checkpoint"
	"github.com/reencrypt/reencrypt/pkg/envelope"
	"github.com/reencrypt/reencrypt/pkg/kmsclient"
	"github.com/reencrypt/reencrypt/pkg/metrics"
	"github.com/reencrypt/reencrypt/pkg/tokentable"
)

// errSelfCheck means a freshly sealed token did not open to the plaintext it
// came from: a bug, never written, and the run stops.
var errSelfCheck = errors.New("self-check failed: a re-encrypted token does not open to its plaintext")

// commitTimeout bounds a page transaction's COMMIT, which runs on a context
// the page's end does not cancel (see commit): long enough for a loaded
// primary to flush the WAL, short enough that a dead connection does not
// hold the range worker past a few lease renewals.
const commitTimeout = 10 * time.Second

type outcome uint8

const (
	outSkip outcome = iota + 1 // already under NEW
	outOtherKey
	outQuarantine
	outRotate
	outConflict // still under OLD after the last conflict retry: not swapped
)

type result struct {
	outcome  outcome
	newToken []byte
	class    tokentable.Class // quarantine class
}

// page reads the next page of the range, rotates it and commits it. It
// returns true when the range is finished.
func (e *Engine) page(ctx context.Context, l *checkpoint.Lease, log *slog.Logger) (bool, error) {
	ctx, cancel := context.WithTimeout(ctx, e.cfg.PageTimeout)
	defer cancel()
	start := time.Now()

	from := l.Cursor
	if from == nil {
		from = l.Bounds.Lower
	}
	rows, err := e.readPage(ctx, from, l.Bounds.Upper)
	if err != nil {
		return false, err
	}
	// A short page means the range is finished; so does a page that ends on
	// the range's upper bound (ranges cut at row positions end on a row).
	w := &pageWork{rows: rows, done: len(rows) < e.cfg.BatchSize}
	defer w.destroy()
	readTook := time.Since(start)
	if len(rows) > 0 {
		w.last = &rows[len(rows)-1].ID
		if from != nil && *w.last == *from {
			return false, fmt.Errorf("cursor did not advance past %q", *from)
		}
		if u := l.Bounds.Upper; u != nil && *u == *w.last {
			w.done = true
		}
	}

	total, took, err := e.rotateAndCommit(ctx, l, w, log)
	if err != nil {
		return false, err
	}
	if w.last != nil {
		l.Cursor = w.last
	}

	pageTook := time.Since(start)
	if e.cfg.Pacer != nil {
		e.cfg.Pacer.AfterPage(took.commit)
	}
	e.metrics.PageDuration.Observe(pageTook.Seconds())
	log.DebugContext(ctx, "page committed", "rows", len(rows), "rotated", total.Rotated, "seconds", pageTook.Seconds(),
		"read_seconds", readTook.Seconds(), "rotate_seconds", took.rotate.Seconds(), "commit_seconds", took.commit.Seconds())
	e.metrics.LastSuccess.SetToCurrentTime()
	e.metrics.Rows.WithLabelValues(metrics.OutcomeRotated).Add(float64(total.Rotated))
	e.metrics.Rows.WithLabelValues(metrics.OutcomeSkipped).Add(float64(total.Skipped))
	e.metrics.Rows.WithLabelValues(metrics.OutcomeOtherKey).Add(float64(total.OtherKey))
	e.metrics.Rows.WithLabelValues(metrics.OutcomeQuarantined).Add(float64(total.Quarantined))
	e.mu.Lock()
	e.total = e.total.Add(total)
	e.pages++
	e.mu.Unlock()
	return w.done, nil
}

// pageWork is one page in flight: the rows being worked (the page's, then
// those re-read after a conflict) and rotate's results for them, in the
// same order; the page's last id and whether it finishes the range; and,
// in rekey mode, the page's data key under NEW (one per page, made when a
// row first needs it).
type pageWork struct {
	rows    []tokentable.Row
	results []result
	last    *string
	done    bool
	sealer  *envelope.Sealer
}

// destroy clears the page's data key.
func (w *pageWork) destroy() {
	if w.sealer != nil {
		w.sealer.Destroy()
		w.sealer = nil
	}
}

// plan is what the page's transaction writes for the current results;
// final marks the last conflict retry (see pagePlan).
func (w *pageWork) plan(final bool) pagePlan {
	p := partition(w.rows, w.results)
	p.cursor, p.done, p.final = w.last, w.done, final
	return p
}

// pageTimes is where a page's time went, for its debug line and the pacer.
type pageTimes struct {
	rotate, commit time.Duration
}

// rotateAndCommit rotates and commits the page's rows, then deals with the
// rows the live API changed between the read and the write (the conflict
// loop): it reads them again and retries, up to ConflictRetries times,
// before the cursor moves past them. It returns what the page did.
func (e *Engine) rotateAndCommit(ctx context.Context, l *checkpoint.Lease, w *pageWork, log *slog.Logger) (checkpoint.Counts, pageTimes, error) {
	var total checkpoint.Counts
	var took pageTimes
	for attempt := 0; ; attempt++ {
		t0 := time.Now()
		if err := e.rotate(ctx, w); err != nil {
			return total, took, err
		}
		took.rotate += time.Since(t0)
		hook(ctx, e.cfg.Hooks.AfterRotate)
		t0 = time.Now()
		counts, conflicts, err := e.commit(ctx, l, w.plan(false))
		if err != nil {
			return total, took, err
		}
		took.commit += time.Since(t0)
		total = total.Add(counts)
		if len(conflicts) == 0 {
			return total, took, nil
		}
		// Rows the live API changed between our read and our write: read
		// them again and retry before the cursor moves past them.
		e.metrics.Rows.WithLabelValues(metrics.OutcomeConflict).Add(float64(len(conflicts)))
		w.rows, err = e.readIDs(ctx, conflicts)
		if err != nil {
			return total, took, err
		}
		if len(w.rows) == 0 { // deleted meanwhile: nothing left to do but move on
			return total, took, e.advanceOnly(ctx, l, w.last, w.done)
		}
		if attempt >= e.cfg.ConflictRetries {
			// No more swaps. Rows the API moved off OLD are counted as what
			// they are now; only those still under OLD are left conflicted.
			if w.results, err = e.settle(ctx, w.rows); err != nil {
				return total, took, err
			}
			counts, left, err := e.commit(ctx, l, w.plan(true))
			if err != nil {
				return total, took, err
			}
			total = total.Add(counts)
			if len(left) > 0 {
				log.WarnContext(ctx, "rows kept changing under the live API; left for the next pass", "rows", len(left))
			}
			return total, took, nil
		}
	}
}

// settle classifies rows re-read after the last conflict retry without
// rotating them: those still under OLD become conflicts (the next pass takes
// them), the others are counted as rotate would count them.
func (e *Engine) settle(ctx context.Context, rows []tokentable.Row) ([]result, error) {
	res := make([]result, len(rows))
	for i, r := range rows {
		env, class := tokentable.ParseToken(r.Token)
		if env == nil {
			res[i] = result{outcome: outQuarantine, class: class}
			continue
		}
		kid, err := e.keyOf(ctx, env.KID)
		switch {
		case err != nil:
			return nil, err
		case kid == e.cfg.New.ARN:
			res[i] = result{outcome: outSkip}
		case kid == e.cfg.Old.ARN:
			res[i] = result{outcome: outConflict}
		default:
			res[i] = result{outcome: outOtherKey}
		}
	}
	return res, nil
}

func (e *Engine) readPage(ctx context.Context, lower, upper *string) ([]tokentable.Row, error) {
	rows, err := tokentable.ReadPage(ctx, e.db, e.cfg.Table, tokentable.Bounds{Lower: lower, Upper: upper}, e.cfg.BatchSize)
	if err != nil {
		return nil, fmt.Errorf("read page: %w", err)
	}
	return rows, nil
}

func (e *Engine) readIDs(ctx context.Context, ids []string) ([]tokentable.Row, error) {
	rows, err := tokentable.ReadIDs(ctx, e.db, e.cfg.Table, ids)
	if err != nil {
		return nil, fmt.Errorf("re-read %d changed rows: %w", len(ids), err)
	}
	return rows, nil
}

// rotate classifies w.rows and computes new tokens for those under OLD, into
// w.results; in rekey mode it makes the page's data key (w.sealer) when a
// row first needs it. It holds no transaction. Row problems become quarantine results; an error
// means the page must be rolled back (and is retried when transient).
func (e *Engine) rotate(ctx context.Context, w *pageWork) error {
	rows := w.rows
	res := make([]result, len(rows))
	w.results = res
	envs := make([]*envelope.Envelope, len(rows)) // rows under OLD only
	for i, r := range rows {
		env, class := tokentable.ParseToken(r.Token)
		if env == nil {
			res[i] = result{outcome: outQuarantine, class: class}
			continue
		}
		kid, err := e.keyOf(ctx, env.KID)
		if err != nil {
			return err
		}
		switch kid {
		case e.cfg.New.ARN:
			res[i] = result{outcome: outSkip}
		case e.cfg.Old.ARN:
			envs[i] = env
		default:
			res[i] = result{outcome: outOtherKey}
		}
	}
	groups := envelope.GroupByWDEK(envs)
	if len(groups) == 0 {
		return nil
	}
	if e.cfg.Mode == Rekey && w.sealer == nil {
		s, err := e.newSealer(ctx)
		if err != nil {
			return err
		}
		w.sealer = s
	}

	// Workers long-lived goroutines take the data keys in turn. (One
	// goroutine per data key would start up to BatchSize goroutines a page,
	// each growing its stack through the SDK's deep call chain: ~10% of the
	// engine's CPU on legacy data, one data key per row.)
	g, gctx := errgroup.WithContext(ctx)
	var next atomic.Int64
	for range min(e.cfg.Workers, len(groups)) {
		g.Go(func() error {
			for {
				n := int(next.Add(1)) - 1
				if n >= len(groups) {
					return nil
				}
				if err := gctx.Err(); err != nil {
					return err // a sibling failed (its error is the one Wait returns), or ctx ended
				}
				kg := groups[n]
				var err error
				if e.cfg.Mode == Rewrap {
					err = e.rewrapGroup(gctx, w, envs, kg)
				} else {
					err = e.rekeyGroup(gctx, w, envs, kg)
				}
				if err != nil {
					return err
				}
			}
		})
	}
	return g.Wait()
}

// keyOf is the ARN of the key a kid names: the kid itself when it is a key
// ARN (what this tool writes), else what KMS says a key id or alias names
// ("" for none this identity can see).
func (e *Engine) keyOf(ctx context.Context, kid string) (string, error) {
	if kid == e.cfg.Old.ARN || kid == e.cfg.New.ARN || kmsclient.IsKeyARN(kid) {
		return kid, nil
	}
	arn, err := e.kids.ARN(ctx, kid)
	if err != nil {
		return "", fmt.Errorf("resolve kid %q: %w", kid, err)
	}
	return arn, nil
}

func (e *Engine) newSealer(ctx context.Context) (*envelope.Sealer, error) {
	dek, wdek, err := e.kms.GenerateDataKey(ctx, e.cfg.New.ARN)
	if err != nil {
		return nil, err
	}
	defer dek.Zero()
	return envelope.NewSealer(dek, e.cfg.New.ARN, wdek, 0)
}

// keyGroup is the rows of a page (indexes into pageWork.rows) that share
// one wrapped data key under OLD.
type keyGroup = envelope.WDEKGroup

// rekeyGroup unwraps one data key under OLD and re-seals every row that uses
// it under the page's data key, checking each result opens again. envs are
// the rows' parsed envelopes, by index into w.rows.
func (e *Engine) rekeyGroup(ctx context.Context, w *pageWork, envs []*envelope.Envelope, g keyGroup) error {
	rows, res, sealer, idx := w.rows, w.results, w.sealer, g.Rows
	dek, err := e.kms.DecryptRows(ctx, e.cfg.Old.ARN, g.WDEK, len(idx))
	if errors.Is(err, kmsclient.ErrBadCiphertext) {
		for _, i := range idx {
			res[i] = result{outcome: outQuarantine, class: tokentable.ClassKMSRejected}
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
	// The row's AAD, its plaintext and the check's are built in buffers
	// reused for every row of the group (envelope's rowkey calls): the new
	// token is the only allocation per row. The plaintexts are cleared after
	// each row.
	ns := e.cfg.Namespace
	var aad, plain, again []byte
	for _, i := range idx {
		id := rows[i].ID
		if aad, err = envelope.AppendAAD(aad[:0], ns, id); err != nil {
			res[i] = result{outcome: outQuarantine, class: tokentable.OpenClass(err)}
			continue
		}
		if plain, err = opener.OpenAppend(plain[:0], envs[i], aad); err != nil {
			res[i] = result{outcome: outQuarantine, class: tokentable.OpenClass(err)}
			continue
		}
		tok, err := sealer.SealToken(aad, plain)
		if err != nil {
			clear(plain)
			return fmt.Errorf("seal row %s: %w", id, err)
		}
		again, err = sealer.OpenToken(again[:0], tok, aad)
		ok := err == nil && bytes.Equal(again, plain)
		clear(plain)
		clear(again)
		if !ok {
			return fmt.Errorf("row %s: %w", id, errSelfCheck)
		}
		res[i] = result{outcome: outRotate, newToken: tok}
	}
	return nil
}

// rewrapGroup has KMS move one wrapped data key from OLD to NEW and gives
// every row that uses it the new kid and wdek; nonce and ciphertext stay.
func (e *Engine) rewrapGroup(ctx context.Context, w *pageWork, envs []*envelope.Envelope, g keyGroup) error {
	rows, res, idx := w.rows, w.results, g.Rows
	newWDEK, err := e.kms.ReEncrypt(ctx, g.WDEK, e.cfg.Old.ARN, e.cfg.New.ARN)
	if errors.Is(err, kmsclient.ErrBadCiphertext) {
		for _, i := range idx {
			res[i] = result{outcome: outQuarantine, class: tokentable.ClassKMSRejected}
		}
		return nil
	}
	if err != nil {
		return err
	}
	for _, i := range idx {
		fresh, err := envs[i].Rewrap(e.cfg.New.ARN, newWDEK)
		if err != nil {
			res[i] = result{outcome: outQuarantine, class: tokentable.ParseClass(err)}
			continue
		}
		b, err := fresh.Marshal()
		if err != nil {
			return fmt.Errorf("marshal row %s: %w", rows[i].ID, err)
		}
		res[i] = result{outcome: outRotate, newToken: b}
	}
	return nil
}

// swap is one rotated row: its token goes from old to new by compare-and-swap.
type swap struct {
	id       string
	old, new []byte
}

// pagePlan is what one page transaction writes.
type pagePlan struct {
	swaps  []swap                   // rotated rows
	bad    []checkpoint.Quarantined // rows to quarantine
	stale  []string                 // outConflict rows: still under OLD, not swapped
	counts checkpoint.Counts        // skipped, other-key and quarantined rows; commit adds the rest
	cursor *string                  // the page's last id
	done   bool                     // the page finishes the range
	// final is the last try: conflicts are counted and the cursor moves
	// past them; before it, the cursor stays until they are retried.
	final bool
}

// partition sorts rotate's (or settle's) results for rows into the page's
// swaps, bad rows (and outConflict rows) and counts; the caller sets where
// the cursor goes (pageWork.plan).
func partition(rows []tokentable.Row, res []result) pagePlan {
	var p pagePlan
	for i, r := range res {
		switch r.outcome {
		case outConflict:
			p.stale = append(p.stale, rows[i].ID)
		case outSkip:
			p.counts.Skipped++
		case outOtherKey:
			p.counts.OtherKey++
		case outQuarantine:
			p.bad = append(p.bad, checkpoint.Quarantined{RowID: rows[i].ID, Class: string(r.class)})
		case outRotate:
			p.swaps = append(p.swaps, swap{id: rows[i].ID, old: rows[i].Token, new: r.newToken})
		}
	}
	p.counts.Quarantined = int64(len(p.bad))
	return p
}

// commit writes one page in one transaction: fence, compare-and-swap of the
// rotated tokens with their audit rows, quarantine, checkpoint. It returns
// the ids whose swap found a different token (changed by the live API), and
// those of outConflict rows. The cursor moves to plan.cursor only when there
// are no such rows, or on the final try.
func (e *Engine) commit(ctx context.Context, l *checkpoint.Lease, plan pagePlan) (checkpoint.Counts, []string, error) {
	c := plan.counts
	bad := plan.bad
	tx, err := e.beginPage(ctx)
	if err != nil {
		return c, nil, fmt.Errorf("begin: %w", err)
	}
	defer func() { _ = tx.Rollback(context.WithoutCancel(ctx)) }()

	// The fence, NEW's key lock and the compare-and-swap go in one round
	// trip, in this order; the first error (ErrFenced included) aborts the
	// transaction and is returned by Close.
	hook(ctx, e.cfg.Hooks.BeforeUpdate)
	b := &pgx.Batch{}
	e.store.QueueFence(b, l)
	e.queueLockKey(b)
	var conflicts []string
	if len(plan.swaps) > 0 {
		useFastArrays(tx.Conn().TypeMap())
		e.queueSwap(b, plan.swaps, &c.Rotated)
	}
	if err := tx.SendBatch(ctx, b).Close(); err != nil {
		return c, nil, err
	}
	if int(c.Rotated) < len(plan.swaps) {
		var err error
		if conflicts, err = e.swapConflicts(ctx, tx, plan.swaps); err != nil {
			return c, nil, err
		}
	}
	if len(bad) > 0 {
		fresh, err := e.store.Quarantine(ctx, tx, e.run, bad)
		if err != nil {
			return c, nil, err
		}
		if len(fresh) > 0 {
			classes := make([]string, 0, len(fresh))
			byID := make(map[string]string, len(bad))
			for _, q := range bad {
				byID[q.RowID] = q.Class
			}
			for _, id := range fresh {
				classes = append(classes, byID[id])
			}
			if _, err := tx.Exec(ctx, e.sql.auditFailed, fresh, classes, e.details); err != nil {
				return c, nil, fmt.Errorf("audit quarantined rows: %w", err)
			}
		}
	}

	conflicts = append(conflicts, plan.stale...)
	cursor, finished := plan.cursor, plan.done
	if len(conflicts) > 0 && !plan.final {
		cursor, finished = nil, false // stay before the changed rows until they are retried
	} else {
		c.Conflicted = int64(len(conflicts))
	}
	if err := e.store.Advance(ctx, tx, l, checkpoint.Step{Cursor: cursor, Counts: c, Done: finished}, e.cfg.LeaseTTL); err != nil {
		return c, nil, err
	}
	hook(ctx, e.cfg.Hooks.BeforeCommit)
	// Fence holds the range row locked until this COMMIT, so no process can
	// have taken the range over: the commit is not abandoned when the page's
	// context ends meanwhile (the lease renewer ends it as soon as it finds
	// the range done, which this very commit does), since an abandoned
	// COMMIT may still be applied and the page would then go uncounted.
	cctx, ccancel := context.WithTimeout(context.WithoutCancel(ctx), commitTimeout)
	defer ccancel()
	if err := tx.Commit(cctx); err != nil {
		return c, nil, fmt.Errorf("commit: %w", err)
	}
	hook(ctx, e.cfg.Hooks.AfterCommit)
	for _, q := range bad {
		e.log.WarnContext(ctx, "row quarantined", "run_id", e.run.ID, "row_id", q.RowID, "error_class", q.Class)
	}
	return c, conflicts, nil
}

// queueSwap queues the compare-and-swap of each row's token, with an audit
// row for each swapped one; once the batch has run, *swapped is how many
// were swapped.
func (e *Engine) queueSwap(b *pgx.Batch, swaps []swap, swapped *int64) {
	ids := make(pageIDs, len(swaps))
	olds := make(pageTokens, len(swaps))
	news := make(pageTokens, len(swaps))
	for i, s := range swaps {
		ids[i], olds[i], news[i] = s.id, s.old, s.new
	}
	b.Queue(e.sql.swap, ids, olds, news, e.details).QueryRow(func(row pgx.Row) error {
		if err := row.Scan(swapped); err != nil {
			return fmt.Errorf("swap tokens: %w", err)
		}
		return nil
	})
}

// swapConflicts returns the ids of the rows the swap left alone, the live
// API having changed (or deleted) them since the page read them: read again
// inside the page's transaction, their token is not the one the page wrote.
func (e *Engine) swapConflicts(ctx context.Context, tx pgx.Tx, swaps []swap) ([]string, error) {
	ids := make([]string, len(swaps))
	for i, s := range swaps {
		ids[i] = s.id
	}
	now, err := tokentable.ReadIDs(ctx, tx, e.cfg.Table, ids)
	if err != nil {
		return nil, fmt.Errorf("read the rows the swap left: %w", err)
	}
	current := make(map[string][]byte, len(now))
	for _, r := range now {
		current[r.ID] = r.Token
	}
	var conflicts []string
	for _, s := range swaps {
		if tok, ok := current[s.id]; !ok || !bytes.Equal(tok, s.new) {
			conflicts = append(conflicts, s.id)
		}
	}
	return conflicts, nil
}

// advanceOnly moves the checkpoint when nothing else is left to write. Its
// COMMIT, like commit's, is not abandoned when the page context ends.
func (e *Engine) advanceOnly(ctx context.Context, l *checkpoint.Lease, last *string, done bool) error {
	tx, err := e.beginPage(ctx)
	if err != nil {
		return fmt.Errorf("begin: %w", err)
	}
	defer func() { _ = tx.Rollback(context.WithoutCancel(ctx)) }()
	if err := e.store.Fence(ctx, tx, l); err != nil {
		return err
	}
	if err := e.lockKey(ctx, tx); err != nil {
		return err
	}
	if err := e.store.Advance(ctx, tx, l, checkpoint.Step{Cursor: last, Counts: checkpoint.Counts{}, Done: done}, e.cfg.LeaseTTL); err != nil {
		return err
	}
	cctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), commitTimeout)
	defer cancel()
	if err := tx.Commit(cctx); err != nil {
		return fmt.Errorf("commit: %w", err)
	}
	return nil
}

// queueLockKey is lockKey as a statement of the page's batch.
func (e *Engine) queueLockKey(b *pgx.Batch) {
	b.Queue(lockKeySQL, checkpoint.KeyLockID(e.cfg.New.ARN)).Exec(func(pgconn.CommandTag) error { return nil })
}

const lockKeySQL = `SELECT pg_advisory_xact_lock_shared($1)`

// lockKey takes NEW's advisory lock shared for the page transaction: keys
// retire and schedule-deletion take it exclusive for the key they act on, so
// a page writing under that key (a rollback run) cannot commit between their
// count and their status change.
func (e *Engine) lockKey(ctx context.Context, tx pgx.Tx) error {
	if _, err := tx.Exec(ctx, lockKeySQL, checkpoint.KeyLockID(e.cfg.New.ARN)); err != nil {
		return fmt.Errorf("lock key %s: %w", e.cfg.New.ARN, err)
	}
	return nil
}
