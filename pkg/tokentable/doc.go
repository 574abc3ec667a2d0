// Package tokentable is the token table as every other package sees it: its
// configured names (Spec), checked against the database once (Inspect) into
// a Table whose identifiers are quoted for SQL.
//
// It sits below the rotation engine (package batch) and the read-only
// packages (census, registry, the verify command), so that reading the
// table never depends on the code that writes it, in the way pgconn sits
// below pgx.
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
//   - Nothing here writes: every statement is a SELECT.
package tokentable
