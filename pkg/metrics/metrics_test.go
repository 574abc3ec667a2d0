package metrics_test

import (
	"maps"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil/promlint"

	"github.com/reencrypt/reencrypt/internal/buildinfo"
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
	if len(mfs) != 13 {
		t.Errorf("gathered %d families, want 13", len(mfs))
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
	// "reason" takes the fixed values of metrics.HeldReasons; the build's
	// labels have one value per process.
	allowed := map[string]bool{"outcome": true, "operation": true, "result": true, "state": true, "reason": true,
		"version": true, "revision": true, "goversion": true}
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

// TestBuildInfo: reencrypt_build_info is on every registry New is given, one
// series of value 1 labelled with this binary's build.
func TestBuildInfo(t *testing.T) {
	reg := prometheus.NewRegistry()
	metrics.New(reg)
	mfs, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	b := buildinfo.Get()
	want := map[string]string{"version": b.Version, "revision": b.Revision, "goversion": b.GoVersion}
	for _, mf := range mfs {
		if mf.GetName() != "reencrypt_build_info" {
			continue
		}
		if len(mf.GetMetric()) != 1 {
			t.Fatalf("reencrypt_build_info has %d series, want 1", len(mf.GetMetric()))
		}
		m := mf.GetMetric()[0]
		if v := m.GetGauge().GetValue(); v != 1 {
			t.Errorf("reencrypt_build_info = %v, want 1", v)
		}
		got := map[string]string{}
		for _, l := range m.GetLabel() {
			got[l.GetName()] = l.GetValue()
		}
		if !maps.Equal(got, want) {
			t.Errorf("reencrypt_build_info labels %v, want %v", got, want)
		}
		if got["goversion"] == "" || got["version"] == "" {
			t.Errorf("reencrypt_build_info labels %v: version and goversion must not be empty", got)
		}
		return
	}
	t.Fatal("reencrypt_build_info not on the registry")
}
