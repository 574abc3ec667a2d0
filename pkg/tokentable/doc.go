// Package tokentable is the token table as every other package sees it:
// its configured names (Spec) checked against the database once (Inspect)
// into a Table; the one keyset reader over it (ReadPage, ReadIDs, Walk);
// the classes a row whose token cannot be rotated is reported under
// (Class); and the audit contract, the audit rows the engine writes and
// verify reads back (ActionReencrypted, AuditDetails).
//
// It sits below the rotation engine (package batch) and the read-only side
// (census, registry, the verify command), so that reading the table never
// depends on the code that writes it, the way pgconn sits below pgx; the
// reader is to the engine's page writer what ghostferry's cursor.go is to
// its batch_writer.go. It imports no other package of this module but
// envelope.
//
// Invariants:
//
//   - Only Inspect builds a Table, and only for a table the engine can page:
//     an id column of type uuid, bigint or integer with a valid unique
//     index, a bytea token column, and an audit table with the columns the
//     engine writes. Anything else is refused with ErrConfig before any
//     write; an id column that allows NULL is refused last, with a complete
//     Table (NullableIDError), so that plan can still count it.
//   - Identifiers from the configuration reach SQL only quoted
//     (pgx.Identifier.Sanitize); values travel as parameters.
//   - Read-only and lock-free: every statement is a plain SELECT.
//   - Keyset pages: id > lower AND id <= upper ORDER BY id LIMIT n, one
//     statement per bound combination (a plain index range for the
//     planner), ordered by the column itself, never by its text (integer
//     ids in text order would make the cursor skip rows). A NULL id is never
//     read. Walk stops at a short page and fails when its cursor does not
//     advance.
//   - One set of words: the engine quarantines, and census, plan, status and
//     verify count, unreadable rows under the same Class (ParseToken,
//     ParseClass, OpenClass); a Class never carries key or token bytes.
//   - One audit contract: the action names, actor and detail keys are
//     written (batch) and read (verify) through the constants here.
package tokentable
