// Package deploy holds the production manifests of reencrypt — the Kubernetes
// Indexed Job (job.yaml, and the same objects as a kustomize base with a
// PodMonitor, a NetworkPolicy and an example overlay under kustomize/), the
// least-privilege IAM policies (iam-policy-*.json), and the Grafana dashboard
// and Prometheus alerts (monitoring/) — and the tests that keep them honest:
// they decode the manifests, and the kustomizations as the kustomize library
// renders them, strictly against the real Kubernetes API types and check the
// properties the engine relies on (exit codes mapped by the podFailurePolicy,
// one shard per completion index, restricted pod security, egress only to
// Postgres, KMS and DNS, KMS permissions scoped to the keys, the actions and
// the encryption context of each mode), and they parse every PromQL query of
// the dashboard and the alerts and check each metric against the /metrics of
// a real run.
//
// The package has no code of its own; it exists so that `go test ./...`
// keeps the manifests honest.
package deploy
