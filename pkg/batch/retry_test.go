package batch

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"math/rand/v2"
	"testing"
	"time"

	"github.com/jackc/pgx/v5/pgconn"

	"github.com/reencrypt/reencrypt/pkg/checkpoint"
	"github.com/reencrypt/reencrypt/pkg/kmsclient"
)

// TestRetryOnlyWhatIsRecognised: the engine's retry loop retries what
// IsTransient recognises and nothing else. An error no one recognises (a
// bug) fails at its first occurrence and is not marked transient, so the
// command exits 1, not 75 after six tries.
func TestRetryOnlyWhatIsRecognised(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		name      string
		err       error
		calls     int // tries made when fn fails once with err, then succeeds
		transient bool
	}{
		{"unknown error", errors.New("cursor did not advance past \"42\""), 1, false},
		{"unique violation", &pgconn.PgError{Code: "23505"}, 1, false},
		{"syntax error", &pgconn.PgError{Code: "42601"}, 1, false},
		{"missing privilege", &pgconn.PgError{Code: "42501"}, 1, false},
		{"fenced", fmt.Errorf("advance: %w", checkpoint.ErrFenced), 1, false},
		{"key disabled", &kmsclient.Error{Op: "Decrypt", Code: "DisabledException", Err: errors.New("disabled")}, 1, false},
		{"self-check", errSelfCheck, 1, false},
		{"serialization failure", &pgconn.PgError{Code: "40001"}, 2, true},
		{"lock timeout", &pgconn.PgError{Code: "55P03"}, 2, true},
		{"connection lost", fmt.Errorf("read page: %w", io.ErrUnexpectedEOF), 2, true},
		{"kms throttled", &kmsclient.Error{Op: "Decrypt", Code: "ThrottlingException", Err: errors.New("rate exceeded")}, 2, true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			e := &Engine{cfg: Config{}.withDefaults(), jitter: func(int64) int64 { return 0 }}
			calls := 0
			err := e.retry(context.Background(), "page", slog.New(slog.DiscardHandler), func() error {
				calls++
				if calls == 1 {
					return tc.err
				}
				return nil
			})
			if calls != tc.calls {
				t.Errorf("fn called %d times, want %d", calls, tc.calls)
			}
			if tc.calls == 1 && (err == nil || IsTransient(err) || errors.Is(err, ErrTransient)) {
				t.Errorf("retry returned %v (transient %v), want the error, not transient", err, IsTransient(err))
			}
			if IsTransient(tc.err) != tc.transient {
				t.Errorf("IsTransient(%v) = %v, want %v", tc.err, !tc.transient, tc.transient)
			}
		})
	}
}

// TestRetryGivesUpTransient: a transient failure that lasts is tried
// PageRetries times and returned marked transient (exit 75).
func TestRetryGivesUpTransient(t *testing.T) {
	t.Parallel()
	e := &Engine{cfg: Config{PageRetries: 4}.withDefaults(), jitter: func(int64) int64 { return 0 }}
	calls := 0
	err := e.retry(context.Background(), "claim", slog.New(slog.DiscardHandler), func() error {
		calls++
		return &pgconn.PgError{Code: "08006"}
	})
	if calls != 4 || !errors.Is(err, ErrTransient) {
		t.Fatalf("%d calls, err %v: want 4 calls and a transient error", calls, err)
	}
}

// TestRetryDrainsKilledPool: when every pooled connection was killed (a
// failover), a call meets each of them in turn; it retries them all at once,
// without backing off or spending a try, up to the largest pool a run opens
// (PoolConns(MaxRangeWorkers)). Before, it stopped at 16: past RANGE_WORKERS
// 12 the rest of a killed pool cost backoffs and could fail the call.
func TestRetryDrainsKilledPool(t *testing.T) {
	t.Parallel()
	for _, rangeWorkers := range []int{DefaultRangeWorkers, MaxRangeWorkers} {
		t.Run(fmt.Sprint(rangeWorkers), func(t *testing.T) {
			t.Parallel()
			backoffs := 0
			e := &Engine{cfg: Config{RangeWorkers: rangeWorkers}.withDefaults(),
				jitter: func(int64) int64 { backoffs++; return 0 }}
			dead := int(PoolConns(rangeWorkers))
			calls := 0
			err := e.retry(context.Background(), "page", slog.New(slog.DiscardHandler), func() error {
				calls++
				if calls <= dead {
					return &pgconn.PgError{Code: "57P01", Message: "terminating connection due to administrator command"}
				}
				return nil
			})
			if err != nil || calls != dead+1 || backoffs != 0 {
				t.Errorf("pool of %d killed connections: err %v after %d calls and %d backoffs, want nil after %d calls and none",
					dead, err, calls, backoffs, dead+1)
			}
		})
	}
}

// TestRetryDelayJitter: the backoff is jittered — two processes (two
// seeded sources) wait different times after the same failure — and every
// delay stays below its ceiling, which doubles from retryBackoffBase up to
// retryBackoffCap.
func TestRetryDelayJitter(t *testing.T) {
	t.Parallel()
	a := rand.New(rand.NewPCG(1, 2))
	b := rand.New(rand.NewPCG(3, 4))
	ceiling := retryBackoffBase
	differ := 0
	for attempt := 1; attempt <= 12; attempt++ {
		for range 50 {
			da, db := retryDelay(attempt, a.Int64N), retryDelay(attempt, b.Int64N)
			for _, d := range []time.Duration{da, db} {
				if d < 0 || d >= ceiling {
					t.Fatalf("attempt %d: delay %s, want within [0, %s)", attempt, d, ceiling)
				}
			}
			if da != db {
				differ++
			}
		}
		ceiling = min(ceiling*2, retryBackoffCap)
	}
	if differ < 500 {
		t.Errorf("%d of 600 delays differ between two sources: want them (nearly) all apart, not in lockstep", differ)
	}
	// The ceiling is reached and held: attempt 6 onwards may wait up to the cap.
	if got := retryDelay(30, func(n int64) int64 { return n - 1 }); got != retryBackoffCap-1 {
		t.Errorf("longest delay at attempt 30 = %s, want %s", got, retryBackoffCap-1)
	}
	if got := retryDelay(1, func(n int64) int64 { return n - 1 }); got != retryBackoffBase-1 {
		t.Errorf("longest delay at attempt 1 = %s, want %s", got, retryBackoffBase-1)
	}
}
