// Package faults is reencrypt's fault suite: it drives the real binary (built
// once by TestMain) against a throwaway Postgres and local-kms, injects the
// faults of issue 6 — kill -9 storms and crash points, database connection
// kills, restarts and a cut around COMMIT, KMS throttling, latency, 5xx,
// resets and hangs through internal/kmsfault, key state changes mid-run, a
// paused pod that wakes after its lease was taken, SIGTERM, bad tokens,
// hostile identifiers, secret scanning, nonce uniqueness and the audit trail —
// and checks the architecture's invariants after each.
//
// Every scenario logs the figures it is judged on as one line each:
//
//	FIGURE scenario="…" figure="…" expected="…" result="…" ok=true
//
// (see Figure). `go test ./test/faults/` runs the short version of every
// scenario; SOAK=1 runs the long ones, and `make soak` prints the figures as
// a table with cmd/soaktable. docs/faults.md describes each scenario.
//
// Besides the tests, the package holds PGProxy, a TCP proxy in front of
// Postgres that cuts the connection around a COMMIT.
package faults
