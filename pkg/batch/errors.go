package batch

import (
	"errors"
	"fmt"
)

// ErrConfig marks a configuration the engine refuses before its first write:
// retrying will not help, a human must fix it.
var ErrConfig = errors.New("configuration refused")

// ErrInterrupted means the run stopped on a signal with work left; rerun it.
var ErrInterrupted = errors.New("run interrupted")

type configError struct{ msg string }

func (e *configError) Error() string        { return e.msg }
func (e *configError) Is(target error) bool { return target == ErrConfig }

func configErrorf(format string, args ...any) error {
	return &configError{msg: fmt.Sprintf(format, args...)}
}

// RowError is a row the engine left untouched because its token cannot be
// read: it is quarantined and the page goes on. Class is a short error class
// ("malformed", "auth_failed", ...); Err never holds token or key bytes.
type RowError struct {
	ID    string
	Class string
	Err   error
}

func (e *RowError) Error() string { return fmt.Sprintf("row %s: %s: %v", e.ID, e.Class, e.Err) }
func (e *RowError) Unwrap() error { return e.Err }

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
