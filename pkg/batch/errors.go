package batch

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"syscall"

	"github.com/jackc/pgx/v5/pgconn"

	"github.com/reencrypt/reencrypt/pkg/checkpoint"
	"github.com/reencrypt/reencrypt/pkg/kmsclient"
	"github.com/reencrypt/reencrypt/pkg/tokentable"
)

// ErrConfig marks a configuration the engine refuses before its first write:
// retrying will not help, a human must fix it. It is tokentable.ErrConfig,
// so that the table's own refusals (Inspect) match it too.
var ErrConfig = tokentable.ErrConfig

// ErrInterrupted means the run stopped on a signal with work left; rerun it.
var ErrInterrupted = errors.New("run interrupted")

// ErrTransient marks failures worth retrying later: database or KMS out of
// reach, throttling past the retries.
var ErrTransient = errors.New("transient failure")

type configError struct{ msg string }

func (e *configError) Error() string        { return e.msg }
func (e *configError) Is(target error) bool { return target == ErrConfig }

// ConfigErrorf is an ErrConfig with a message saying what to fix.
func ConfigErrorf(format string, args ...any) error {
	return &configError{msg: fmt.Sprintf(format, args...)}
}

func configErrorf(format string, args ...any) error { return ConfigErrorf(format, args...) }

type transientError struct{ err error }

func (e *transientError) Error() string        { return e.err.Error() }
func (e *transientError) Unwrap() error        { return e.err }
func (e *transientError) Is(target error) bool { return target == ErrTransient }

// Transient marks err as worth a retry by rerunning (ErrTransient), for a
// caller that knows better than IsTransient: a failure of the environment
// it met where no database or KMS error says so.
func Transient(err error) error {
	if err == nil || errors.Is(err, ErrTransient) {
		return err
	}
	return &transientError{err}
}

func transient(err error) error { return Transient(err) }

// Field is one of the engine's settings, as a FieldError names it. The
// command maps each to what a user sets (a variable, a flag): the engine
// knows no variable names. It is tokentable.Field, so that the table's own
// refusals (Inspect) name theirs the same way.
type Field = tokentable.Field

// The fields Preflight and Config.Validate name.
const (
	FieldDatabase           = tokentable.FieldDatabase
	FieldOldKey       Field = "old key"
	FieldNewKey       Field = "new key"
	FieldNamespace    Field = "namespace"
	FieldMode         Field = "mode"
	FieldBatchSize    Field = "batch size"
	FieldWorkers      Field = "workers"
	FieldRangeWorkers Field = "range workers"
	FieldRanges       Field = "ranges"
	FieldLeaseTTL     Field = "lease ttl"
	FieldPageTimeout  Field = "page timeout"
	FieldLockTimeout  Field = "lock timeout"
	FieldStopGrace    Field = "stop grace"
)

// Fields lists every Field, Inspect's (tokentable.Fields) included, for a
// command that maps them all.
func Fields() []Field {
	return append(tokentable.Fields(), FieldOldKey, FieldNewKey, FieldNamespace, FieldMode,
		FieldBatchSize, FieldWorkers, FieldRangeWorkers, FieldRanges, FieldLeaseTTL)
}

// FieldError is a failure that settings explain (tokentable.FieldError):
// Fields says which settings to look at; Err is the failure, and its class
// (ErrConfig, ErrTransient, kmsclient.ErrKeyUnusable) is the FieldError's.
type FieldError = tokentable.FieldError

// fieldError is err explained by fields (nil for nil).
func fieldError(err error, fields ...Field) error {
	if err == nil {
		return nil
	}
	return &FieldError{Fields: fields, Err: err}
}

// PartialError is a run that finished its pass but left rows behind:
// quarantined rows (a human must look) or rows the live API kept changing
// (a rerun takes them).
type PartialError struct {
	RunID       string
	Quarantined int64
	Conflicted  int64
}

func (e *PartialError) Error() string {
	return fmt.Sprintf("run %s finished with %d quarantined and %d conflicted rows left under the old key",
		e.RunID, e.Quarantined, e.Conflicted)
}

// IsTransient is the one retry predicate: the engine retries a page, a
// claim or a status read only when it holds, and the command exits 75
// (retry) only when it holds. It is opt-in, like pgconn.SafeToRetry: an
// error it does not recognise is a bug to look at, not retried.
//
// Never transient, whatever wraps them: a refusal (Refused, ErrConfig), an
// unusable key (kmsclient.ErrKeyUnusable), a lost lease (checkpoint.ErrFenced:
// the range belongs to another process now) and a failed self-check.
// Transient: an error marked so (Transient) or an interruption; an error of
// the database connection itself — a connection class (08), an operator
// intervention such as pg_terminate_backend or a shutdown, or a statement
// cancelled by statement_timeout (57), insufficient resources (53), a
// serialization failure or deadlock (40), a system error (58), a lock or
// idle-in-transaction timeout (55P03, 25P03); KMS unavailable
// (kmsclient.ErrUnavailable: throttling, 5xx); a deadline that ran out; and
// errors of the network.
func IsTransient(err error) bool {
	switch {
	case err == nil, Refused(err) != nil,
		errors.Is(err, ErrConfig),
		errors.Is(err, kmsclient.ErrKeyUnusable),
		errors.Is(err, checkpoint.ErrFenced),
		errors.Is(err, errSelfCheck):
		return false
	case errors.Is(err, ErrTransient), errors.Is(err, ErrInterrupted):
		return true
	}
	var pgErr *pgconn.PgError
	if errors.As(err, &pgErr) {
		if len(pgErr.Code) != 5 {
			return false
		}
		switch pgErr.Code[:2] {
		case "08", "57", "53", "40", "58":
			return true
		}
		// A lock wait past lock_timeout, a transaction ended by
		// idle_in_transaction_session_timeout (a frozen process).
		return pgErr.Code == "55P03" || pgErr.Code == "25P03"
	}
	if errors.Is(err, kmsclient.ErrUnavailable) {
		return true
	}
	var connectErr *pgconn.ConnectError
	var netErr net.Error
	return errors.As(err, &connectErr) || errors.As(err, &netErr) || errors.Is(err, context.DeadlineExceeded) ||
		errors.Is(err, pgconn.ErrConnClosed) || pgconn.Timeout(err) || pgconn.SafeToRetry(err) ||
		errors.Is(err, io.EOF) || errors.Is(err, io.ErrUnexpectedEOF) ||
		errors.Is(err, syscall.ECONNRESET) || errors.Is(err, syscall.ECONNREFUSED) || errors.Is(err, syscall.EPIPE)
}

// RefusedError is the database refusing the connection or a statement for
// a reason no retry can fix: a wrong password (SQLSTATE 28P01), an unknown
// role or no pg_hba.conf entry (28000), a missing database (3D000), a
// missing privilege (42501). It is a configuration error (exit 78).
type RefusedError struct {
	Code   string // SQLSTATE
	Advice string // what to fix
	Err    error
}

func (e *RefusedError) Error() string        { return e.Advice + ": " + e.Err.Error() }
func (e *RefusedError) Unwrap() error        { return e.Err }
func (e *RefusedError) Is(target error) bool { return target == ErrConfig }

// refusals are the SQLSTATEs of RefusedError and what each asks to fix.
var refusals = map[string]string{
	"28P01": "the database refused the password (SQLSTATE 28P01): fix the password in DATABASE_URL",
	"28000": "the database refused the login (SQLSTATE 28000): check that the role in DATABASE_URL exists " +
		"and that pg_hba.conf admits it from this host",
	"3D000": "the database named in DATABASE_URL does not exist (SQLSTATE 3D000): fix the database name",
	"42501": "the database role lacks a privilege (SQLSTATE 42501): grant it (docs/privileges.md lists them)",
}

// Refused returns err as a *RefusedError when the database refused it for
// a reason no retry can fix, and nil otherwise.
func Refused(err error) *RefusedError {
	var r *RefusedError
	if errors.As(err, &r) {
		return r
	}
	var pgErr *pgconn.PgError
	if !errors.As(err, &pgErr) {
		return nil
	}
	advice, ok := refusals[pgErr.Code]
	if !ok {
		return nil
	}
	return &RefusedError{Code: pgErr.Code, Advice: advice, Err: err}
}
