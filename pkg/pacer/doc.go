// Package pacer decides how fast the engine may go, so that a rotation
// shares the database and the KMS quota with the live payment API instead
// of taking all of both. The engine asks it before every page
// (BeforePage) and tells it how long every commit took (AfterPage).
//
// What holds pages back, each visible in `reencrypt status`, in the
// reencrypt_held{reason} metric and in a log line when it starts and ends:
//
//   - paused: an operator ran `reencrypt pause`. Controls are read from the
//     state schema before every page, so every pod stops within one page and
//     keeps its leases (renewed) until `reencrypt resume`.
//   - replica_lag: a streaming replica (pg_stat_replication.replay_lag on the
//     primary, or now() − pg_last_xact_replay_timestamp() on each of
//     REPLICA_URLS) is behind by more than MAX_REPLICA_LAG. Pages wait until
//     every replica is back under half of it.
//   - database_busy: the commit latency of the last few pages (a fast
//     running average, weight 0.3) is over twice its baseline (a slow one,
//     about 20 pages) and at least 10 ms over it: the next page waits the
//     excess, at most 2 s. A busier database gets proportionally fewer
//     pages, a single slow commit barely counts, and an idle database is
//     not slowed at all. While busy, the baseline follows ten times slower,
//     so a database that stays busy keeps being seen as busy.
//   - rows_rate: MAX_ROWS_PER_SECOND, or the operator's `throttle
//     --rows-rate`, for the whole Job, split evenly across the live pods.
//   - kms_throttling / kms_rate: the adaptive KMS budget (kmsclient.Budget)
//     is below its ceiling because KMS throttled, or an operator capped it
//     with `throttle --kms-rate` (split across the live pods).
//
// Pods share their pace through the state schema: every second each one
// records a heartbeat (its KMS rate, its last slow-down for throttling, its
// state) and reads the others'. The live pods split the Job-wide rates, and
// when one pod slows down for throttling the others follow, so N pods
// converge on a shared quota together.
//
// A pacer never holds a transaction or a row lock while it waits.
package pacer
