// Package deploy holds the production manifests of reencrypt — the Kubernetes
// Indexed Job (job.yaml) and the least-privilege IAM policies
// (iam-policy-*.json) — and the tests that decode them strictly against the
// real Kubernetes API types and check the properties the engine relies on:
// exit codes mapped by the podFailurePolicy, one shard per completion index,
// restricted pod security, and KMS permissions scoped to the keys, the
// actions and the encryption context of each mode.
//
// The package has no code of its own; it exists so that `go test ./...`
// keeps the manifests honest.
package deploy
