// Package registry keeps the token_encryption_keys table, the record of which
// KMS key protects the tokens, that the rotation runbook used to edit by
// hand. It lives in the token table's schema (TABLE_SCHEMA), is created on
// first write if absent, and has the runbook's columns:
//
//	key_id                 text PRIMARY KEY   the key's ARN (never an alias)
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
// A table made by hand before the tool must have the first six of those
// (key_id, key_version, status, algorithm, provider, retired_at); the other
// four are added to it on the first write, as nullable columns.
//
// Invariants:
//
//   - Keys are recorded by ARN, with the alias beside it, so moving an alias
//     (the runbook's switch step) cannot confuse the record.
//   - Begin moves OLD to rotating and NEW to active in one transaction, under
//     a lock that serialises concurrent writers of the registry (readers such
//     as the live API are not blocked). At most one key is active.
//   - A key is never marked retired, and its deletion is never scheduled,
//     while any row of the token table is still under it: both count the
//     rows by parsing every envelope's kid (package census) just before they
//     write, and refuse with ErrInUse. Deletion is also refused unless the
//     key is retired.
package registry
