package batch

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"testing"

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
			e := &Engine{cfg: Config{}.withDefaults()}
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
	e := &Engine{cfg: Config{PageRetries: 4}.withDefaults()}
	calls := 0
	err := e.retry(context.Background(), "claim", slog.New(slog.DiscardHandler), func() error {
		calls++
		return &pgconn.PgError{Code: "08006"}
	})
	if calls != 4 || !errors.Is(err, ErrTransient) {
		t.Fatalf("%d calls, err %v: want 4 calls and a transient error", calls, err)
	}
}
