// Package registry keeps the token_encryption_keys table, the record of which
// KMS key protects the tokens, that the rotation runbook used to edit by
// hand, and guards the two irreversible steps: retiring a key and scheduling
// its deletion. The table lives in the token table's schema (TABLE_SCHEMA).
// When absent it is created on the first write with these columns:
//
//	key_id                 text PRIMARY KEY   the key's ARN
//	key_version            integer            1, 2, 3, ... in the order keys were recorded
//	status                 text               active | rotating | retired
//	algorithm              text               AES-256-GCM (the envelope's data-key cipher)
//	provider               text               aws-kms
//	alias                  text               the alias the key was named by when recorded
//	created_at             timestamptz        when recorded
//	retired_at             timestamptz        when retired
//	deletion_scheduled_at  timestamptz        when ScheduleKeyDeletion was called
//	deletion_date          timestamptz        when KMS will delete the key
//
// A table that exists (the runbook's) is used as it is and never altered. It
// must have key_id, key_version, status, algorithm, provider and retired_at;
// the other columns are written only when present. Its rows may differ from
// the tool's own:
//
//   - key_version is read as text and may be an integer or text ('v1').
//     The next version continues the pattern of the version with the highest
//     trailing number: its prefix, and that number plus one (1 → 2,
//     'v1' → 'v2', 'key-7' → 'key-8'); versions without a trailing number
//     are ignored; with none to continue it is 1, or 'v1' in a text column.
//     It is written with the column's own type (text cast to it).
//   - key_id may be an alias or a key id. Rows are resolved to the key ARN
//     they name today (DescribeKey) when read. Begin marks the row naming
//     the key instead of adding a duplicate, and sets that row's key_id to
//     the ARN: the runbook's switch step moves the alias to NEW, after which
//     the alias would name the wrong key. Two rows naming one key are
//     refused, not guessed between.
//   - algorithm and provider of new rows follow the value every existing
//     row has (the runbook writes 'aws_kms'), else the constants above.
//
// The key-deletion guard (Retire, ScheduleDeletion; see Count) counts the
// rows under a key in the configured table and in every table recorded for
// the key in the state schema's key_tables (written by `run` and `keys
// begin` for OLD and NEW). A row is under the key when its envelope's kid
// is the key's ARN, or a key id, alias or alias ARN that DescribeKey
// resolves to it (cached per reference); a kid KMS answers NotFound for is
// reported, not counted; any other resolution error fails the check. A row
// quarantined by a run whose OLD was the key, still in its table, counts as
// under the key unless its token names a kid that resolves to another key:
// OLD is its only hope. A recorded table that no longer exists, and
// quarantined rows of a table no record describes, refuse too (they cannot
// be proved empty). Refusals are ErrInUse (exit 78) naming every table.
//
// Invariants:
//
//   - Begin moves OLD to rotating and NEW to active in one transaction, under
//     a lock that serialises concurrent writers of the registry (readers such
//     as the live API are not blocked). At most one key is active.
//   - Count and status change are one transaction that first takes the
//     key's advisory lock exclusively (checkpoint.KeyLockID) and locks the
//     registry row FOR UPDATE. The engine's page transactions take the lock
//     of the key they write under shared, right after their fence: no page
//     writing under the key (a rollback run) commits between the count and
//     the status change. Each table is read in one statement (one snapshot)
//     after the lock is held.
//   - ScheduleDeletion counts inside that transaction immediately before the
//     KMS call, and again after it. Rows that appeared meanwhile (from a
//     writer that takes no lock: the live API) make it cancel the deletion
//     (CancelKeyDeletion, then EnableKey if the key was enabled) and roll the
//     registry back; if the cancel fails, the error says to cancel by hand.
//     Deletion is also refused unless the key is retired.
//
// What the guard cannot see: token tables no run and no `keys begin` ever
// named (another service's table under the same key), copies of tokens
// outside Postgres (backups, caches, exports), and writers that take no lock
// and write after the last count (the live API after the deletion is
// scheduled: the key is then pending deletion and KMS refuses to encrypt).
package registry
