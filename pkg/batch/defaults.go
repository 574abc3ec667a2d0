package batch

import "time"

// The engine's defaults and bounds, each written once: Config.withDefaults
// and Config.Validate use them, and package config fills and checks the
// variables that set them (BATCH_SIZE, RANGE_WORKERS, LEASE_TTL, ...) from
// them too.
const (
	DefaultBatchSize = 1000 // rows per page and per transaction
	MinBatchSize     = 1
	MaxBatchSize     = 100_000

	DefaultWorkers = 16 // KMS calls in flight per page
	MaxWorkers     = 1024

	// Three, not two: while one range's page reads, commits or waits for
	// its slowest KMS answers, the other two keep KMS busy (bench, 50,000
	// legacy rows: rekey +6 %, 0.90 of the KMS ceiling instead of 0.80).
	DefaultRangeWorkers = 3
	MaxRangeWorkers     = 64

	DefaultRanges = 64 // most ranges a pass is cut into; see planRanges
	MaxRanges     = 100_000

	// A dead pod's range is taken over within DefaultLeaseTTL; the lease is
	// renewed every third of it, so two renewals may fail before it lapses.
	DefaultLeaseTTL = 30 * time.Second
	MinLeaseTTL     = time.Second // renewals every LeaseTTL/3 must stay practical

	DefaultPageTimeout = 2 * time.Minute  // one page, KMS calls and commit included
	DefaultLockTimeout = 5 * time.Second  // a page waits this long for a row the live API holds; see pageTxSettings
	DefaultStopGrace   = 10 * time.Second // finish the page in flight on shutdown, within a pod's default 30 s grace period

	// The shortest PageTimeout, LockTimeout and StopGrace an engine accepts
	// (Config.Validate; package config says so first, by variable name).
	// Package config also wants StopGrace under LEASE_TTL: the lease has to
	// outlive the page that finishes on shutdown.
	MinPageTimeout = time.Second
	MinLockTimeout = 10 * time.Millisecond
	MinStopGrace   = time.Second

	DefaultPageRetries     = 6
	DefaultConflictRetries = 3

	DefaultMode      = Rekey
	DefaultTable     = "payment_methods" // the runbook's token table
	DefaultNamespace = DefaultTable      // envelope AAD namespace: by convention the table's name
)

// PoolSpareConns is how many database connections a run has beside one
// per range worker (PoolConns). A range worker uses one connection at a
// time: its page's read, then (after the KMS work, which holds none) its
// page transaction; its claims and status reads come between pages. Beside
// the pages run the range workers' lease renewals (one short UPDATE each
// every LeaseTTL/3), the command's progress reporter and pacer (status
// reads, the pacer's controls and replica lag on the primary), and the
// run's events: four spares let those go on while every range worker holds
// its connection, so that a renewal does not queue behind page
// transactions. A task that finds the pool full waits for a connection, it
// does not fail; the pool grows with RangeWorkers alone (invariant 6).
const PoolSpareConns = 4

// PoolConns is the connection pool size for a run with rangeWorkers range
// workers: one each, plus PoolSpareConns.
func PoolConns(rangeWorkers int) int32 { return int32(rangeWorkers + PoolSpareConns) }

// ExactMaxRows is the largest table, by the planner's estimate
// (pg_class.reltuples), that is read in full where a figure is better
// exact: planRanges cuts its ranges at row positions (two index scans of
// the key column, so every range holds whole pages), and the command's
// progress total is a count(*). Above it the estimate is used: ranges are
// cut at quantiles of a sample of the ids, and the total is the estimate.
// One threshold, so that "a small table" means one thing; 10 million rows
// is where the exact cut's two index scans stop being small beside a run
// (a few seconds against hours), and a count(*) of that many rows is
// bounded by the progress reporter's timeout anyway.
const ExactMaxRows = 10_000_000
