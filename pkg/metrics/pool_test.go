package metrics_test

import (
	"context"
	"errors"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil/promlint"

	"github.com/reencrypt/reencrypt/internal/testbed"
	"github.com/reencrypt/reencrypt/pkg/metrics"
)

func TestMain(m *testing.M) { testbed.Main(m) }

// TestPoolCollector scrapes the pool statistics of a real pool of two
// connections on the test Postgres: both acquired, then a third acquire
// that finds the pool empty and is canceled, then one released.
func TestPoolCollector(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	pc, err := pgxpool.ParseConfig(testbed.Database(t))
	if err != nil {
		t.Fatal(err)
	}
	pc.MaxConns = 2
	pool, err := pgxpool.NewWithConfig(ctx, pc)
	if err != nil {
		t.Fatal(err)
	}
	defer pool.Close()
	reg := prometheus.NewRegistry()
	metrics.New(reg)
	if err := metrics.RegisterPool(reg, pool); err != nil {
		t.Fatal(err)
	}

	c1, err := pool.Acquire(ctx)
	if err != nil {
		t.Fatal(err)
	}
	defer c1.Release()
	c2, err := pool.Acquire(ctx)
	if err != nil {
		t.Fatal(err)
	}
	got := scrapePool(t, reg)
	want := map[string]float64{"acquired_connections": 2, "idle_connections": 0, "total_connections": 2, "max_connections": 2,
		"constructing_connections": 0, "acquires_total": 2, "empty_acquires_total": 2, "canceled_acquires_total": 0}
	check(t, "two acquired", got, want)
	// Both acquires found no idle connection (each opened one): both are
	// empty acquires, and their time is the connection's set-up.
	if got["acquire_duration_seconds_total"] <= 0 {
		t.Errorf("two acquired: acquire_duration_seconds_total %v; want > 0", got["acquire_duration_seconds_total"])
	}

	// The pool is empty: a third acquire waits, and its context ends first.
	short, cancel := context.WithTimeout(ctx, 50*time.Millisecond)
	defer cancel()
	if c3, err := pool.Acquire(short); !errors.Is(err, context.DeadlineExceeded) {
		if err == nil {
			c3.Release()
		}
		t.Fatalf("acquire from a full pool: %v; want context.DeadlineExceeded", err)
	}
	c2.Release()
	after := scrapePool(t, reg)
	check(t, "after a canceled acquire and a release", after, map[string]float64{"acquired_connections": 1, "idle_connections": 1,
		"total_connections": 2, "max_connections": 2, "acquires_total": 2, "empty_acquires_total": 2,
		"canceled_acquires_total": 1})
	// (Only acquires that succeed count in acquires_total and empty_acquires_total.)

	mfs, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	problems, err := promlint.NewWithMetricFamilies(mfs).Lint()
	if err != nil {
		t.Fatal(err)
	}
	for _, p := range problems {
		t.Errorf("%s: %s", p.Metric, p.Text)
	}
}

// scrapePool gathers reg and returns the reencrypt_db_pool_* values by the
// rest of their names.
func scrapePool(t *testing.T, reg *prometheus.Registry) map[string]float64 {
	t.Helper()
	mfs, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	const prefix = "reencrypt_db_pool_"
	out := map[string]float64{}
	for _, mf := range mfs {
		name, ok := strings.CutPrefix(mf.GetName(), prefix)
		if !ok {
			continue
		}
		if len(mf.GetMetric()) != 1 {
			t.Fatalf("%s has %d series, want 1", mf.GetName(), len(mf.GetMetric()))
		}
		m := mf.GetMetric()[0]
		if len(m.GetLabel()) != 0 {
			t.Errorf("%s has labels %v, want none", mf.GetName(), m.GetLabel())
		}
		switch {
		case m.GetGauge() != nil:
			out[name] = m.GetGauge().GetValue()
		case m.GetCounter() != nil:
			out[name] = m.GetCounter().GetValue()
		}
	}
	if len(out) != 9 {
		t.Errorf("scraped %d pool metrics %v, want 9", len(out), out)
	}
	return out
}

func check(t *testing.T, when string, got, want map[string]float64) {
	t.Helper()
	for name, w := range want {
		if g, ok := got[name]; !ok || g != w {
			t.Errorf("%s: reencrypt_db_pool_%s = %v (present %v), want %v", when, name, g, ok, w)
		}
	}
}
