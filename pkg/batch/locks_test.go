package batch_test

import (
	"context"
	"math/rand/v2"
	"sort"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/reencrypt/reencrypt/internal/fixture"
	"github.com/reencrypt/reencrypt/internal/testbed"
	"github.com/reencrypt/reencrypt/pkg/batch"
	"github.com/reencrypt/reencrypt/pkg/metrics"
	"github.com/reencrypt/reencrypt/pkg/tokentable"
)

// TestSwapLocksInIDOrder: the compare-and-swap locks a page's rows in id
// order, as a multi-row API transaction that also locks in id order does,
// so the two cannot deadlock. A session holds the page's highest id; the
// swap, blocked on it, must already hold every other row of the page (a
// SKIP LOCKED read finds none of them free). Locking in any other order
// (the input's, the join's or the heap's) leaves rows after the blocked
// one free.
func TestSwapLocksInIDOrder(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	e := fixture.New(t, "uuid")
	ids := e.Seed(400, e.Old, 1)
	sort.Strings(ids) // uuid order is the order of their text
	highest := ids[299]
	// The page's rows, given in another order than their ids' (the engine
	// gives them sorted; the lock order must not depend on it, nor on the
	// plan the join gets).
	page := append([]string(nil), ids[100:300]...)
	rand.Shuffle(len(page), func(i, j int) { page[i], page[j] = page[j], page[i] })
	olds := make([][]byte, len(page))
	for i, id := range page {
		olds[i] = e.Token(id)
	}
	tbl, err := tokentable.Inspect(ctx, e.DB, e.Spec())
	if err != nil {
		t.Fatal(err)
	}

	holder, err := e.DB.Begin(ctx)
	if err != nil {
		t.Fatal(err)
	}
	defer func() { _ = holder.Rollback(ctx) }()
	if _, err := holder.Exec(ctx, `SELECT 1 FROM payment_methods WHERE id = $1 FOR UPDATE`, highest); err != nil {
		t.Fatal(err)
	}
	swapper, err := e.DB.Begin(ctx)
	if err != nil {
		t.Fatal(err)
	}
	defer func() { _ = swapper.Rollback(ctx) }()
	var pid int
	if err := swapper.QueryRow(ctx, `SELECT pg_backend_pid()`).Scan(&pid); err != nil {
		t.Fatal(err)
	}
	done := make(chan error, 1)
	go func() {
		_, err := swapper.Exec(ctx, batch.SwapSQL(tbl), page, olds, olds, []byte(`{}`))
		done <- err
	}()
	if !testbed.Poll(30*time.Second, func() bool {
		var waiting bool
		if err := e.DB.QueryRow(ctx, `SELECT coalesce((SELECT wait_event_type = 'Lock' FROM pg_stat_activity WHERE pid = $1), false)`,
			pid).Scan(&waiting); err != nil {
			t.Fatal(err)
		}
		if waiting {
			return true
		}
		select {
		case err := <-done:
			t.Fatalf("the swap finished (%v) although a row of its page is locked", err)
		default:
		}
		return false
	}) {
		t.Fatal("the swap never waited for the locked row")
	}
	var free []string
	err = pgx.BeginFunc(ctx, e.DB, func(tx pgx.Tx) error {
		return tx.QueryRow(ctx, `SELECT coalesce(array_agg(id::text ORDER BY id), '{}') FROM (
			SELECT id FROM payment_methods WHERE id = ANY($1::uuid[]) FOR UPDATE SKIP LOCKED) s`, page).Scan(&free)
	})
	if err != nil {
		t.Fatal(err)
	}
	if len(free) > 0 {
		t.Errorf("blocked on the page's highest id, the swap had not locked %d of the %d lower rows (first: %s): it does not lock in id order",
			len(free), len(page)-1, free[0])
	}
	_ = holder.Rollback(ctx)
	if err := <-done; err != nil {
		t.Fatalf("swap: %v", err)
	}
}

// TestLockTimeoutRetriesPage: the live API holds a row of a page locked
// longer than LockTimeout. The page's transaction gives up on the lock
// (55P03) instead of waiting with its own locks held, is counted as a
// failed page and retried, and the run ends with every row rotated once
// after the API lets go.
func TestLockTimeoutRetriesPage(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	e := fixture.New(t, "uuid")
	ids := e.Seed(300, e.Old, 1)
	api, err := e.DB.Begin(ctx)
	if err != nil {
		t.Fatal(err)
	}
	defer func() { _ = api.Rollback(ctx) }()
	if _, err := api.Exec(ctx, `SELECT 1 FROM payment_methods WHERE id = $1 FOR UPDATE`, ids[150]); err != nil {
		t.Fatal(err)
	}
	m := metrics.New(nil)
	db := newPool(t, e, 6)
	done := make(chan error, 1)
	go func() {
		_, err := rotate(t, e, runOpts{batch: 100, ranges: 1, lockTimeout: 200 * time.Millisecond, metrics: m, db: db})
		done <- err
	}()
	if !testbed.Poll(30*time.Second, func() bool { return counter(t, m.PageFailures) >= 1 }) {
		t.Fatal("no page gave up on the locked row within 30s: the page waits for the lock with its own locks held")
	}
	_ = api.Rollback(ctx)
	if err := <-done; err != nil {
		t.Fatalf("run: %v", err)
	}
	if got := e.KeyCounts(); got[e.New.ARN] != len(ids) {
		t.Errorf("rows by key: %v, want all %d under NEW", got, len(ids))
	}
	if total, dup := e.AuditCounts("token_reencrypted"); total != int64(len(ids)) || dup != 0 {
		t.Errorf("audit rows %d (%d duplicated), want %d once each", total, dup, len(ids))
	}
}
