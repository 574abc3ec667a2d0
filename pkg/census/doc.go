// Package census reads a token table without changing it and says which KMS
// key each row is under, by parsing the envelope's kid: no KMS call, no
// write, no lock. plan, status, verify and the key registry use it to count
// rows under OLD, under NEW, under other keys and unreadable, the registry
// uses it to refuse retiring or deleting a key that still protects a row,
// and run recounts the rows under OLD with it before exiting 0. It reads
// with tokentable's keyset reader (tokentable.Walk), which never reads a
// NULL id; NullIDs counts those rows for plan.
//
// Invariants:
//
//   - Read-only: every statement is a plain SELECT; nothing is created, not
//     even a temporary table, so a dry run leaves the database as it was.
//   - Bounded: rows are streamed in keyset pages (id > cursor ORDER BY id
//     LIMIT n), one page in memory at a time, no transaction held across
//     pages. Scan is the exception, for the key-deletion guard: one
//     statement per table, streamed, so the table is read in one snapshot
//     inside the guard's locked transaction. Per-key counters are capped (MaxKeys); the distinct wrapped keys
//     of the focus key are counted exactly up to ExactDistinctLimit and
//     estimated with a HyperLogLog sketch (about 1 % error, 16 KiB) above it.
//   - Same words as the engine: unreadable rows are classed with
//     tokentable.ParseToken, so the counts line up with the quarantine.
//   - No secrets: only kids (key ARNs) and row ids ever leave this package;
//     wrapped keys are hashed in memory and never reported.
//
// Counts are taken page by page while the live API may write, so on a busy
// table they are exact for each page, not for one instant.
package census
