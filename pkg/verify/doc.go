// Package verify proves a finished rotation and writes nothing. It reads
// every row of the token table once in keyset pages (tokentable.Walk) and
// checks what the engine promises:
//
//   - every row under NEW opens: its wrapped data key is unwrapped by KMS
//     under NEW (one Decrypt per distinct wrapped key, through the data-key
//     cache) and its token authenticated by AES-GCM with the row's own AAD
//     (envelope.Open, classed with tokentable.OpenClass like the engine's
//     quarantine);
//   - no row is left under OLD, none is NULL or unreadable
//     (tokentable.ParseToken, the engine's own classes);
//   - each row under NEW has its token_reencrypted audit row naming OLD →
//     NEW, and the runs' counters match the audit table one for one (the
//     audit contract of tokentable/audit.go).
//
// With a sample, only that many rows under NEW, drawn uniformly from the
// whole table, are opened; rows under OLD and unreadable rows are still
// all counted.
//
// No secrets: plaintexts and data keys are cleared as soon as a row is
// checked; only row ids, classes and key ARNs reach the report. The
// command (internal/cli) wires the flags, classifies the errors for the
// exit code and prints the Report.
package verify
