// Package metrics defines reencrypt's Prometheus metrics. Collectors are
// registered on the Registerer the caller passes in (never the global one),
// and no label ever carries a row id, a token or a key: only outcomes,
// operation names and result classes, so cardinality stays fixed.
package metrics

import (
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/reencrypt/reencrypt/internal/buildinfo"
)

// Metrics are the collectors the engine and the KMS client update.
type Metrics struct {
	Rows          *prometheus.CounterVec   // reencrypt_rows_total{outcome}
	KMSRequests   *prometheus.CounterVec   // reencrypt_kms_requests_total{operation,result}
	KMSLatency    *prometheus.HistogramVec // reencrypt_kms_request_duration_seconds{operation}
	PageDuration  prometheus.Histogram     // reencrypt_page_duration_seconds
	PageFailures  prometheus.Counter       // reencrypt_page_failures_total
	RowsRemaining prometheus.Gauge         // reencrypt_rows_remaining
	Ranges        *prometheus.GaugeVec     // reencrypt_ranges{state}
	LastSuccess   prometheus.Gauge         // reencrypt_last_success_timestamp_seconds
	FencedCommits prometheus.Counter       // reencrypt_fenced_commits_total
	Held          *prometheus.GaugeVec     // reencrypt_held{reason}: 1 while the pacer holds pages back for reason
	KMSBudget     prometheus.Gauge         // reencrypt_kms_budget_per_second
	ReplicaLag    prometheus.Gauge         // reencrypt_replica_lag_seconds
	BuildInfo     *prometheus.GaugeVec     // reencrypt_build_info{version,revision,goversion}: 1, one series
}

// Row outcomes, the values of the "outcome" label.
const (
	OutcomeRotated     = "rotated"
	OutcomeSkipped     = "skipped"
	OutcomeOtherKey    = "other_key"
	OutcomeQuarantined = "quarantined"
	OutcomeConflict    = "conflict"
)

// New creates the collectors and registers them on reg.
func New(reg prometheus.Registerer) *Metrics {
	m := &Metrics{
		Rows: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "reencrypt_rows_total",
			Help: "Rows handled, by outcome: rotated, skipped (already under the new key), other_key, quarantined, conflict (changed by the live API meanwhile; retried).",
		}, []string{"outcome"}),
		KMSRequests: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "reencrypt_kms_requests_total",
			Help: "KMS HTTP attempts, retries included, by operation and result (ok, throttled, or the AWS error code).",
		}, []string{"operation", "result"}),
		KMSLatency: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Name:    "reencrypt_kms_request_duration_seconds",
			Help:    "Duration of one KMS HTTP attempt, by operation.",
			Buckets: prometheus.ExponentialBuckets(0.0005, 2, 16),
		}, []string{"operation"}),
		PageDuration: prometheus.NewHistogram(prometheus.HistogramOpts{
			Name:    "reencrypt_page_duration_seconds",
			Help:    "Time to read, rotate and commit one page.",
			Buckets: prometheus.ExponentialBuckets(0.005, 2, 14),
		}),
		PageFailures: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "reencrypt_page_failures_total",
			Help: "Pages rolled back on a transient error and retried.",
		}),
		RowsRemaining: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "reencrypt_rows_remaining",
			Help: "Estimated rows still to read in the current pass (planner estimate minus rows read).",
		}),
		Ranges: prometheus.NewGaugeVec(prometheus.GaugeOpts{
			Name: "reencrypt_ranges",
			Help: "Ranges of the current pass by state (pending, running, done).",
		}, []string{"state"}),
		LastSuccess: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "reencrypt_last_success_timestamp_seconds",
			Help: "Unix time of the last committed page.",
		}),
		FencedCommits: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "reencrypt_fenced_commits_total",
			Help: "Page commits refused because another process took over the range's lease.",
		}),
		Held: prometheus.NewGaugeVec(prometheus.GaugeOpts{
			Name: "reencrypt_held",
			Help: "1 while pages are held back or slowed for the reason (paused, replica_lag, database_busy, rows_rate, kms_throttling, kms_rate).",
		}, []string{"reason"}),
		KMSBudget: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "reencrypt_kms_budget_per_second",
			Help: "KMS requests per second this process may send now (adaptive; 0 when unlimited).",
		}),
		ReplicaLag: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "reencrypt_replica_lag_seconds",
			Help: "Largest replay lag of the watched replicas at the last check.",
		}),
		// The usual *_build_info pattern: join on it to tell a dashboard's
		// series apart by build, e.g. during a rolling update.
		BuildInfo: prometheus.NewGaugeVec(prometheus.GaugeOpts{
			Name: "reencrypt_build_info",
			Help: "Always 1; the labels say which build is running (see `reencrypt version`).",
		}, []string{"version", "revision", "goversion"}),
	}
	if reg != nil {
		reg.MustRegister(m.Rows, m.KMSRequests, m.KMSLatency, m.PageDuration, m.PageFailures,
			m.RowsRemaining, m.Ranges, m.LastSuccess, m.FencedCommits, m.Held, m.KMSBudget, m.ReplicaLag, m.BuildInfo)
	}
	b := buildinfo.Get()
	m.BuildInfo.WithLabelValues(b.Version, b.Revision, b.GoVersion).Set(1)
	for _, r := range HeldReasons {
		m.Held.WithLabelValues(r)
	}
	for _, o := range []string{OutcomeRotated, OutcomeSkipped, OutcomeOtherKey, OutcomeQuarantined, OutcomeConflict} {
		m.Rows.WithLabelValues(o)
	}
	return m
}

// Reasons the pacer holds pages back or slows them down.
const (
	HeldPaused        = "paused"         // an operator paused the Job
	HeldReplicaLag    = "replica_lag"    // a replica is behind by more than MAX_REPLICA_LAG
	HeldDatabaseBusy  = "database_busy"  // commits take well over their baseline
	HeldRowsRate      = "rows_rate"      // MAX_ROWS_PER_SECOND or the operator's rows cap
	HeldKMSThrottling = "kms_throttling" // KMS throttled: the adaptive budget is below its ceiling
	HeldKMSRate       = "kms_rate"       // the operator's KMS cap
)

// HeldReasons lists every reason, for dashboards and tests.
var HeldReasons = []string{HeldPaused, HeldReplicaLag, HeldDatabaseBusy, HeldRowsRate, HeldKMSThrottling, HeldKMSRate}

// ObserveKMS records one KMS attempt; it fits kmsclient.Observer.
func (m *Metrics) ObserveKMS(operation, result string, took time.Duration) {
	m.KMSRequests.WithLabelValues(operation, result).Inc()
	m.KMSLatency.WithLabelValues(operation).Observe(took.Seconds())
}
