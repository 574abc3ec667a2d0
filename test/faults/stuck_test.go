package faults

import (
	"context"
	"errors"
	"fmt"
	"net/url"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
)

// Scenario 5b: a pod frozen (SIGSTOP, a paused VM) inside a page
// transaction, after its compare-and-swap and checkpoint and before its
// COMMIT, holds the range row and the page's token rows locked. The page
// transaction's idle_in_transaction_session_timeout (LEASE_TTL/2) ends it:
// a live API UPDATE of one of those rows finishes within that bound, a
// second process takes the range over once the lease expires, and the
// frozen pod, woken, is refused by the fence; no row is lost or rotated
// twice.
func TestFrozenInsidePage(t *testing.T) {
	t.Parallel()
	n := pick(1500, 10_000)
	scen := fmt.Sprintf("5b pod frozen between fence and COMMIT (%d rows)", n)
	// 10 s, so the 5 s idle-in-transaction bound leaves a loaded machine
	// time to see the frozen page's locks before Postgres ends its
	// transaction (with 6 s, a soak run once looked after the 3 s bound and
	// found nothing locked).
	const leaseTTL = 10 * time.Second
	bound := leaseTTL / 2 // idle_in_transaction_session_timeout of a page transaction
	w := newWorld(t, worldOpts{})
	w.Seed(n, w.Old, 1)
	direct := w.dbURL
	u, err := url.Parse(w.URL)
	if err != nil {
		t.Fatal(err)
	}
	px, err := StartPGProxy(u.Host)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = px.Close() })
	u.Host = px.Addr()
	w.dbURL = u.String()
	extra := []string{"KMS_RATE_LIMIT=" + pick("400", "2000"), "LEASE_TTL=" + leaseTTL.String(), "METRICS_ADDR=127.0.0.1:0"}

	a := w.start("frozen-A", extra...)
	waitFor(t, "A commits a page", time.Minute, func() bool { return w.pages() >= 1 || a.exited() })
	// Freeze A when it sends the checkpoint's UPDATE of its next page: the
	// proxy holds the statement until A is stopped, then lets it run, so A
	// sleeps with the page's transaction open and its rows locked.
	frozen := make(chan time.Time, 1)
	px.OnStatement("rows_rotated = rows_rotated +", func() {
		a.kill(syscall.SIGSTOP)
		frozen <- time.Now()
	})
	var frozenAt time.Time
	select {
	case frozenAt = <-frozen:
	case <-a.done:
		t.Fatalf("A ended before it could be frozen: %s", a.status())
	case <-time.After(time.Minute):
		t.Fatal("A never reached a page's checkpoint")
	}
	t.Cleanup(func() { a.kill(syscall.SIGCONT) })
	ctx := context.Background()
	var idle int
	waitFor(t, "A's session idle in transaction", 10*time.Second, func() bool {
		_ = w.DB.QueryRow(ctx, `SELECT count(*) FROM pg_stat_activity WHERE application_name = 'reencrypt'
			AND datname = current_database() AND state = 'idle in transaction'`).Scan(&idle)
		return idle > 0 || time.Since(frozenAt) > bound
	})
	locked := lockedRows(t, w)
	t.Logf("locks read %s after the freeze", time.Since(frozenAt).Round(time.Millisecond))
	// The frozen page's rows, and those of A's other range worker if it was
	// inside its own page transaction when the signal came.
	figure(t, scen, "token rows A holds locked while frozen", "1..200 (a page of 100 per range worker, RANGE_WORKERS=2)",
		fmt.Sprintf("%d (sessions idle in transaction: %d)", len(locked), idle), len(locked) >= 1 && len(locked) <= 200)
	if len(locked) == 0 {
		t.Logf("A's sessions when nothing was locked: %s", sessionStates(t, w))
		t.FailNow()
	}

	// The live API writes one of those rows (the same token: a no-op write).
	start := time.Now()
	uctx, cancel := context.WithTimeout(ctx, 4*bound+5*time.Second)
	_, err = w.DB.Exec(uctx, `UPDATE payment_methods SET encrypted_token = encrypted_token WHERE id = $1`, locked[0])
	cancel()
	took := time.Since(start)
	sinceFreeze := time.Since(frozenAt)
	figure(t, scen, "live API UPDATE of a locked row", fmt.Sprintf("done within %s of the freeze (+1s)", bound),
		fmt.Sprintf("%s after %s (%s after the freeze)", errOr(err, "done"), took.Round(time.Millisecond), sinceFreeze.Round(time.Millisecond)),
		err == nil && sinceFreeze <= bound+time.Second)

	// Another process takes the frozen pod's range over once its lease
	// expires, and finishes the pass while A is still frozen.
	w.dbURL = direct
	b := w.start("taker-B", extra...)
	select {
	case <-b.done:
	case <-time.After(pick(90*time.Second, 5*time.Minute)):
	}
	figure(t, scen, "B, started while A is frozen", "exit 0 (A's range taken over)", b.statusNow(),
		b.exited() && b.signal == 0 && b.code == exitOK)
	a.kill(syscall.SIGCONT)
	a.wait(t, 3*time.Minute)
	b.wait(t, 3*time.Minute)
	figure(t, scen, "A woken after the takeover", "refused by the fence (log \"lease lost\"), exit 0 or 75",
		fmt.Sprintf("%s, %d \"lease lost\"", a.status(), a.count("lease lost")),
		a.signal == 0 && (a.code == exitOK || a.code == exitRetry) && a.count("lease lost") >= 1)
	if a.code != exitOK || !b.exited() || b.code != exitOK {
		w.runToEnd("after-freeze", 3, 3*time.Minute)
	}
	_, dup := w.auditCounts(w.DB, "token_reencrypted")
	figEq(t, scen, "rows rotated twice (audit rows per row > 1)", 0, dup)
	w.checkDone(scen, int64(n))
}

// lockedRows lists the token rows another transaction holds locked (those
// a SKIP LOCKED read cannot lock), in a transaction rolled back at once.
func lockedRows(t *testing.T, w *world) []string {
	t.Helper()
	ctx := context.Background()
	var ids []string
	err := pgx.BeginFunc(ctx, w.DB, func(tx pgx.Tx) error {
		if err := tx.QueryRow(ctx, `
			SELECT coalesce(array_agg(id::text ORDER BY id), '{}') FROM payment_methods
			WHERE id NOT IN (SELECT id FROM payment_methods FOR UPDATE SKIP LOCKED)`).Scan(&ids); err != nil {
			return err
		}
		return errRollback
	})
	if err != nil && !errors.Is(err, errRollback) {
		t.Fatal(err)
	}
	return ids
}

var errRollback = errors.New("rollback")

// sessionStates lists the engine's sessions (state, wait, query), to tell
// why a frozen pod holds no locks.
func sessionStates(t *testing.T, w *world) string {
	t.Helper()
	var states []string
	if err := w.DB.QueryRow(context.Background(), `
		SELECT coalesce(array_agg(format('%s/%s/%s', state, coalesce(wait_event, '-'), left(regexp_replace(query, '\s+', ' ', 'g'), 60))), '{}')
		FROM pg_stat_activity WHERE application_name = 'reencrypt' AND datname = current_database()`).Scan(&states); err != nil {
		return err.Error()
	}
	return strings.Join(states, "; ")
}

func errOr(err error, ok string) string {
	if err != nil {
		return err.Error()
	}
	return ok
}
