package batch

// ErrorClass is the short class the engine quarantines a row under for an
// envelope parse or open error ("malformed", "truncated", "unknown_version",
// "unknown_alg", "auth_failed", "unreadable"). plan, status and verify report
// rows with the same words, so an operator can match them with the
// quarantine table.
func ErrorClass(err error) string { return openClass(err) }

// NullTokenClass is the class of a row whose token column is NULL.
const NullTokenClass = "null_token"
