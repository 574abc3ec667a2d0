// Package checkpoint keeps the engine's own bookkeeping in Postgres, in a
// schema of its own (default "reencrypt"). Postgres is the only coordinator
// between processes: no other service is needed.
//
// The schema is versioned: migrations/NNN_name.sql, embedded and applied in
// order by tern (github.com/jackc/tern/v2), with the version in the schema's
// own schema_version table. A Job of a newer release upgrades a schema left
// by an older one in place, runs and all; release 1's unversioned schema is
// adopted as version 1. An older binary refuses a newer schema
// (ErrSchemaTooNew, exit 78). DDL runs only when something is missing, so a
// role without CREATE privileges runs against a schema an admin migrated.
//
// A run is one rotation (table, OLD key ARN, NEW key ARN, mode) and has a
// stable id derived from those, so rerunning the same command joins it. A run
// goes through passes; a pass cuts the keyspace into ranges once, and every
// process claims ranges with FOR UPDATE SKIP LOCKED and a lease. A process
// started after a pass finished starts the next pass: that is how a rerun
// sweeps the table again and catches rows the live API wrote under OLD.
//
// Invariants this package keeps:
//
//   - Fenced: every lease carries a token drawn from a sequence when it is
//     claimed. Fence locks the range row and checks the token inside the
//     page's transaction, so a process whose lease was taken over (a paused or
//     zombie pod) cannot commit for that range.
//   - Exactly once: Advance moves the cursor and counters in the caller's
//     transaction, the same one that rewrites the tokens and writes the audit
//     rows, so all of them commit or none does.
//   - The cursor only moves forward within a lease.
//
// A run also records the builds of reencrypt that worked on it (Store.SetBuild):
// first_build, of the process that created it, and last_build, of the latest
// process to join it, in any pass; each process's process_started event holds
// its own, with its owner, for the whole history. Which build rotated which
// rows is part of the audit trail.
//
// key_tables records every token table a run (or `keys begin`) has seen for
// a key, before its first write; the key-deletion guard (package registry)
// counts in all of them. KeyLockID is the advisory lock id of a key: page
// transactions take it shared for the key they write under, the guard
// exclusive for the key it retires or deletes.
package checkpoint
