package metrics_test

import (
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil/promlint"

	"github.com/reencrypt/reencrypt/pkg/metrics"
)

// TestNamesFollowConventions lints every collector with promlint (units in
// names, _total on counters, help text) after each one has a sample.
func TestNamesFollowConventions(t *testing.T) {
	reg := prometheus.NewRegistry()
	m := metrics.New(reg)
	m.ObserveKMS("Decrypt", "ok", 3*time.Millisecond)
	m.PageDuration.Observe(0.2)
	m.PageFailures.Inc()
	m.RowsRemaining.Set(10)
	m.Ranges.WithLabelValues("done").Set(1)
	m.LastSuccess.SetToCurrentTime()
	m.FencedCommits.Inc()
	m.KMSBudget.Set(500)
	m.ReplicaLag.Set(0.2)
	mfs, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	if len(mfs) != 12 {
		t.Errorf("gathered %d families, want 12", len(mfs))
	}
	problems, err := promlint.NewWithMetricFamilies(mfs).Lint()
	if err != nil {
		t.Fatal(err)
	}
	for _, p := range problems {
		t.Errorf("%s: %s", p.Metric, p.Text)
	}
	for _, mf := range mfs {
		if !strings.HasPrefix(mf.GetName(), "reencrypt_") {
			t.Errorf("%s lacks the reencrypt_ prefix", mf.GetName())
		}
	}
}

// TestLabelsAreFixed: the outcome label is pre-set to its five values, and
// no collector has a label that could carry a row id, a key or a token.
func TestLabelsAreFixed(t *testing.T) {
	reg := prometheus.NewRegistry()
	metrics.New(reg)
	mfs, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	// "reason" takes the fixed values of metrics.HeldReasons.
	allowed := map[string]bool{"outcome": true, "operation": true, "result": true, "state": true, "reason": true}
	for _, mf := range mfs {
		for _, m := range mf.GetMetric() {
			for _, l := range m.GetLabel() {
				if !allowed[l.GetName()] {
					t.Errorf("%s has label %q", mf.GetName(), l.GetName())
				}
			}
		}
		if mf.GetName() == "reencrypt_rows_total" && len(mf.GetMetric()) != 5 {
			t.Errorf("reencrypt_rows_total has %d series before any row, want the 5 outcomes", len(mf.GetMetric()))
		}
		if mf.GetName() == "reencrypt_held" && len(mf.GetMetric()) != len(metrics.HeldReasons) {
			t.Errorf("reencrypt_held has %d series, want one per reason (%d)", len(mf.GetMetric()), len(metrics.HeldReasons))
		}
	}
}
