package metrics

import (
	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/prometheus/client_golang/prometheus"
)

// PoolStater is what the pool collector reads: *pgxpool.Pool fits.
type PoolStater interface {
	Stat() *pgxpool.Stat
}

// PoolCollector exports a pgxpool's statistics (pgxpool.Stat) at each
// scrape: the connections acquired, idle, total and the most allowed, and
// the pool's lifetime acquire counters. A pool exhausted by the range
// workers shows as empty acquires growing and acquire time climbing.
type PoolCollector struct {
	pool PoolStater

	acquired, idle, constructing, total, max   *prometheus.Desc
	acquires, acquireSeconds, empty, cancelled *prometheus.Desc
}

// NewPoolCollector returns a collector of pool's statistics. Register it on
// the process's registry once the pool is open (RegisterPool does both).
func NewPoolCollector(pool PoolStater) *PoolCollector {
	d := func(name, help string) *prometheus.Desc {
		return prometheus.NewDesc("reencrypt_db_pool_"+name, help, nil, nil)
	}
	return &PoolCollector{
		pool:           pool,
		acquired:       d("acquired_connections", "Connections of the database pool in use now."),
		idle:           d("idle_connections", "Idle connections of the database pool now."),
		constructing:   d("constructing_connections", "Connections of the database pool being opened now."),
		total:          d("total_connections", "Connections of the database pool now: acquired, idle and being opened."),
		max:            d("max_connections", "Most connections the database pool may open (MaxConns)."),
		acquires:       d("acquires_total", "Connections acquired from the database pool."),
		acquireSeconds: d("acquire_duration_seconds_total", "Time spent acquiring connections from the database pool, waits for a free connection included."),
		empty:          d("empty_acquires_total", "Acquires that found no idle connection and waited for one to be freed or opened."),
		cancelled:      d("canceled_acquires_total", "Acquires given up because their context ended first."),
	}
}

// RegisterPool registers a collector of pool's statistics on reg.
func RegisterPool(reg prometheus.Registerer, pool PoolStater) error {
	return reg.Register(NewPoolCollector(pool))
}

// Describe implements prometheus.Collector.
func (c *PoolCollector) Describe(ch chan<- *prometheus.Desc) {
	for _, d := range []*prometheus.Desc{c.acquired, c.idle, c.constructing, c.total, c.max,
		c.acquires, c.acquireSeconds, c.empty, c.cancelled} {
		ch <- d
	}
}

// Collect implements prometheus.Collector.
func (c *PoolCollector) Collect(ch chan<- prometheus.Metric) {
	s := c.pool.Stat()
	gauge := func(d *prometheus.Desc, v float64) {
		ch <- prometheus.MustNewConstMetric(d, prometheus.GaugeValue, v)
	}
	counter := func(d *prometheus.Desc, v float64) {
		ch <- prometheus.MustNewConstMetric(d, prometheus.CounterValue, v)
	}
	gauge(c.acquired, float64(s.AcquiredConns()))
	gauge(c.idle, float64(s.IdleConns()))
	gauge(c.constructing, float64(s.ConstructingConns()))
	gauge(c.total, float64(s.TotalConns()))
	gauge(c.max, float64(s.MaxConns()))
	counter(c.acquires, float64(s.AcquireCount()))
	counter(c.acquireSeconds, s.AcquireDuration().Seconds())
	counter(c.empty, float64(s.EmptyAcquireCount()))
	counter(c.cancelled, float64(s.CanceledAcquireCount()))
}
