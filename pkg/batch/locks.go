package batch

import (
	"context"
	"fmt"
	"time"

	"github.com/jackc/pgx/v5"
)

// pageTxSettings bounds what a page transaction can hold, even when its
// process is frozen (SIGSTOP, a paused VM) between the fence and COMMIT:
//   - idle_in_transaction_session_timeout, LeaseTTL/2: the server ends a
//     transaction whose client stopped talking, releasing the range row and
//     the page's token rows before the lease expires, so the live API's
//     writes go on and another process can take the range over;
//   - lock_timeout: a page waits at most LockTimeout for a row lock (the
//     live API's own transaction), then rolls back and is retried;
//   - statement_timeout, PageTimeout: no statement outlives its page.
//
// They are set per transaction (SET LOCAL), not per session: the run's
// other transactions (joining a run while a sibling plans it, a state
// schema migration) may legitimately wait or idle longer.
func pageTxSettings(c Config) string {
	return fmt.Sprintf("SET LOCAL idle_in_transaction_session_timeout = %d; SET LOCAL lock_timeout = %d; SET LOCAL statement_timeout = %d",
		ms(c.LeaseTTL/2), ms(c.LockTimeout), ms(c.PageTimeout))
}

func ms(d time.Duration) int64 { return max(d.Milliseconds(), 1) }

type txBeginner interface {
	BeginTx(ctx context.Context, opts pgx.TxOptions) (pgx.Tx, error)
}

// beginPage opens a page transaction with pageTxSettings, in the same
// round trip as its BEGIN when the pool allows it.
func (e *Engine) beginPage(ctx context.Context) (pgx.Tx, error) {
	set := pageTxSettings(e.cfg)
	if b, ok := e.db.(txBeginner); ok {
		return b.BeginTx(ctx, pgx.TxOptions{BeginQuery: "BEGIN; " + set})
	}
	tx, err := e.db.Begin(ctx)
	if err != nil {
		return nil, err
	}
	if _, err := tx.Exec(ctx, set); err != nil {
		_ = tx.Rollback(context.WithoutCancel(ctx))
		return nil, err
	}
	return tx, nil
}
