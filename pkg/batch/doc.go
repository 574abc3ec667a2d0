// Package batch is the rotation engine: it moves every token of a table from
// the KMS key OLD to the key NEW, online, exactly once, and resumably.
//
// A process joins the run's current pass (package checkpoint), claims ranges
// of the keyspace under a fenced lease and walks each range in keyset pages
// (id > cursor AND id <= upper ORDER BY id LIMIT n), reading without locks.
// The table, its pages and the audit rows' shape are package tokentable's;
// this package is the writer on top of them.
// A bounded worker pool does the KMS and AES work for a page with no
// transaction open; then one transaction fences the lease, swaps the tokens
// with a compare-and-swap on the ciphertext that was read, writes one audit
// row per rotated token, records quarantined rows, and advances the range's
// checkpoint.
//
// Invariants (docs/architecture.md), and where each is kept:
//
//  1. Nothing lost: a new token is written only after it has been opened
//     again with the new data key and compared with the plaintext it came from
//     (rekey), or it keeps the old nonce and ciphertext (rewrap).
//  2. Exactly once: swap, audit and checkpoint share one transaction.
//  3. Resumable: pages start at the committed cursor; rows under NEW are
//     skipped by kid.
//  4. Online: no transaction is open during KMS calls; the swap compares the
//     old ciphertext, and rows that changed are re-read and retried.
//  5. Fenced: checkpoint.Fence is the first statement of every page commit.
//  6. Bounded: one page per range worker, a fixed worker pool, a fixed
//     number of range workers, a bounded data-key cache and a KMS budget. A
//     page transaction holds its locks for a bounded time even if its
//     process freezes (pageTxSettings), and locks its rows in id order.
//  7. Bad rows do not wedge the run: a token that cannot be parsed or
//     opened is no error of the page but one of its results (outQuarantine
//     with the row's error class, a tokentable.Class), recorded in the page's
//     transaction with its row id and class only, counted, and the cursor
//     moves past it. Only errors of the environment abort a page.
//  8. No secrets leak: data keys are zeroed after use and redact themselves;
//     errors carry row ids and classes only.
//
// A nil error from Run is half of the proof behind exit 0:
// tokentable.Inspect refuses an id column that allows NULL (the cursor never
// reads a NULL id), Run fails transiently when it cannot read the finished
// pass's totals, and after the last conflict retry only rows still under OLD
// count as conflicted. The other half is the command's full recount of the
// rows under OLD (package census), independent of the engine's own counts.
//
// Ranges are cut at row positions up to ExactMaxRows, and above it at
// quantiles of a page sample of the real ids (plan.go).
package batch
