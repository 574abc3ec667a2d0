package cli

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"syscall"
	"testing"

	"github.com/aws/smithy-go"
	"github.com/jackc/pgx/v5/pgconn"

	"github.com/reencrypt/reencrypt/pkg/batch"
	"github.com/reencrypt/reencrypt/pkg/checkpoint"
	"github.com/reencrypt/reencrypt/pkg/kmsclient"
	"github.com/reencrypt/reencrypt/pkg/registry"
)

// TestExitCodeMapping: the exit status (docs/design.md, "Exit codes") of
// every class of error a command can end with, from synthetic database and
// KMS errors as the engine meets them: bare, wrapped with context, and
// after the engine's retries gave up (marked transient). A Job's
// podFailurePolicy matches these numbers.
func TestExitCodeMapping(t *testing.T) {
	t.Parallel()
	pg := func(code string) error {
		return fmt.Errorf("range 3 after cursor \"0f\": page: swap tokens: %w",
			&pgconn.PgError{Severity: "ERROR", Code: code, Message: "synthetic"})
	}
	kmsErr := func(code string) error {
		return fmt.Errorf("resolve kid: %w", &kmsclient.Error{Op: "Decrypt", KeyARN: "arn:aws:kms:eu-west-1:1:key/k",
			Code: code, Err: &smithy.GenericAPIError{Code: code, Message: "synthetic"}})
	}
	for _, tc := range []struct {
		name string
		err  error
		want int
	}{
		{"nil", nil, exitOK},

		// Postgres: what a retry or a rerun gets past (75).
		{"serialization failure 40001", pg("40001"), exitRetry},
		{"deadlock 40P01", pg("40P01"), exitRetry},
		{"statement cancelled 57014", pg("57014"), exitRetry},
		{"admin shutdown 57P01", pg("57P01"), exitRetry},
		{"cannot connect now 57P03", pg("57P03"), exitRetry},
		{"connection failure 08006", pg("08006"), exitRetry},
		{"connection refused 08001", pg("08001"), exitRetry},
		{"too many connections 53300", pg("53300"), exitRetry},
		{"disk full 53100", pg("53100"), exitRetry},
		{"io error 58030", pg("58030"), exitRetry},
		{"lock timeout 55P03", pg("55P03"), exitRetry},
		{"idle in transaction timeout 25P03", pg("25P03"), exitRetry},
		// Postgres: refusals a human fixes (78).
		{"insufficient privilege 42501", pg("42501"), exitConfig},
		{"wrong password 28P01", pg("28P01"), exitConfig},
		{"no pg_hba entry 28000", pg("28000"), exitConfig},
		{"no such database 3D000", pg("3D000"), exitConfig},
		// Postgres: nothing a retry fixes, not a known refusal: a bug (1).
		{"unique violation 23505", pg("23505"), exitInternal},
		{"check violation 23514", pg("23514"), exitInternal},
		{"undefined column 42703", pg("42703"), exitInternal},
		{"syntax error 42601", pg("42601"), exitInternal},
		{"invalid text 22P02", pg("22P02"), exitInternal},
		{"division by zero 22012", pg("22012"), exitInternal},
		{"read only transaction 25006", pg("25006"), exitInternal},
		{"empty SQLSTATE", &pgconn.PgError{}, exitInternal},

		// KMS: the key is unusable (77).
		{"DisabledException", kmsErr("DisabledException"), exitKeyUnusable},
		{"AccessDeniedException", kmsErr("AccessDeniedException"), exitKeyUnusable},
		{"KMSInvalidStateException", kmsErr("KMSInvalidStateException"), exitKeyUnusable},
		{"NotFoundException", kmsErr("NotFoundException"), exitKeyUnusable},
		{"InvalidKeyUsageException", kmsErr("InvalidKeyUsageException"), exitKeyUnusable},
		{"UnrecognizedClientException", kmsErr("UnrecognizedClientException"), exitKeyUnusable},
		// KMS: unavailable for now (75).
		{"ThrottlingException", kmsErr("ThrottlingException"), exitRetry},
		{"KMSInternalException", kmsErr("KMSInternalException"), exitRetry},
		{"DependencyTimeoutException", kmsErr("DependencyTimeoutException"), exitRetry},
		{"KeyUnavailableException", kmsErr("KeyUnavailableException"), exitRetry},
		{"KMS transport error", fmt.Errorf("decrypt: %w", &kmsclient.Error{Op: "Decrypt",
			Err: &net.OpError{Op: "dial", Net: "tcp", Err: syscall.ECONNREFUSED}}), exitRetry},
		// KMS: a row's property that escaped the quarantine, or an answer
		// not understood: a bug (1).
		{"InvalidCiphertextException", kmsErr("InvalidCiphertextException"), exitInternal},
		{"IncorrectKeyException", kmsErr("IncorrectKeyException"), exitInternal},
		{"ValidationException", kmsErr("ValidationException"), exitInternal},
		{"malformed KMS answer", &kmsclient.Error{Op: "GenerateDataKey", Err: errors.New("answer has a 3-byte key")}, exitInternal},

		// The network and the clock.
		{"unexpected EOF", fmt.Errorf("commit: %w", io.ErrUnexpectedEOF), exitRetry},
		{"connection reset", fmt.Errorf("read page: %w", syscall.ECONNRESET), exitRetry},
		{"page deadline", fmt.Errorf("page: %w", context.DeadlineExceeded), exitRetry},
		{"connection closed", pgconn.ErrConnClosed, exitRetry},

		// The engine's and the command's own classes.
		{"configuration", batch.ConfigErrorf("no table"), exitConfig},
		{"marked transient", batch.Transient(errors.New("read the totals of the finished pass")), exitRetry},
		{"marked transient, wrapping a refusal", batch.Transient(pg("28P01")), exitConfig},
		{"interrupted", batch.ErrInterrupted, exitRetry},
		{"cancelled", context.Canceled, exitRetry},
		{"fenced", fmt.Errorf("range 2: %w", checkpoint.ErrFenced), exitRetry},
		{"schema too new", checkpoint.ErrSchemaTooNew, exitConfig},
		{"quarantined rows", &batch.PartialError{RunID: "r", Quarantined: 2, Conflicted: 1}, exitQuarantined},
		{"conflicted rows only", &batch.PartialError{RunID: "r", Conflicted: 1}, exitRetry},
		{"verify failed", errVerifyFailed, exitQuarantined},
		{"key in use", fmt.Errorf("retire: %w", registry.ErrInUse), exitConfig},
		{"registry refused", fmt.Errorf("activate: %w", registry.ErrRefused), exitConfig},
		{"usage", usageErrorf("unknown flag %q", "--batchsize"), exitUsage},
		{"unknown error", errors.New("cursor did not advance past \"17\""), exitInternal},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			if got := exitCode(tc.err); got != tc.want {
				t.Errorf("exitCode(%v) = %d, want %d", tc.err, got, tc.want)
			}
		})
	}
}
