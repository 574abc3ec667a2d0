// Package kmsclient is the project's only door to AWS KMS.
//
// It owns four decisions that every caller would otherwise get subtly wrong:
//
//   - The KMS interface is the exact subset of *kms.Client the project calls, so
//     tests can put a fault-injecting fake behind it and the real client is
//     checked at compile time.
//   - Retries are configured deliberately. The SDK's default retryer shares a
//     500-token retry quota per client; a batch job with dozens of concurrent
//     callers facing throttling drains it in a second and then fails calls with
//     "retry quota exceeded". New disables that client-side quota, raises the
//     attempt count, and leaves pacing to the request budget instead.
//   - A request budget (a token bucket) is applied to every HTTP attempt,
//     retries included, so the process never sends KMS more than its share of
//     the cluster-wide rate.
//   - Every call on a wrapped data key carries the encryption context
//     {"namespace": ns}, and Decrypt pins KeyId to the key we expect.
//   - The calls made per row (Decrypt, GenerateDataKey, ReEncrypt) skip the
//     SDK's per-call middleware stack, which cost more CPU than everything
//     else the engine does for a legacy row: directKMS signs and sends them
//     itself with the SDK's signer, credentials, endpoint, HTTP client and
//     retryer, and returns the SDK's error types (KMS_DIRECT=false: no).
//
// The data-key cache (Cache) holds a plaintext key only when it can pay off:
// a key several rows of a page share, or one whose wrapped key comes back;
// a key one row needs is used and zeroed (legacy data, one data key per row,
// leaves nothing in memory). A sweeper zeroes keys as they expire.
//
// Plaintext data keys leave this package only as DataKey values, which redact
// themselves when printed and must be cleared by their owner with Clear.
// Errors name key ARNs and operations, never key material.
package kmsclient
