package pg

import (
	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/prometheus/client_golang/prometheus"
)

// PoolCollector exports a pgx pool's statistics, read when scraped.
type PoolCollector struct {
	pool                                       *pgxpool.Pool
	total, idle, acquired, max                 *prometheus.Desc
	acquires, emptyAcquires, acquireSeconds    *prometheus.Desc
	canceledAcquires, newConns, destroyedConns *prometheus.Desc
}

// NewPoolCollector returns the collector of pool. Waiting for a
// connection (empty acquires, acquire seconds) says the pool is too small
// for the stage's concurrency.
func NewPoolCollector(pool *pgxpool.Pool) *PoolCollector {
	d := func(name, help string) *prometheus.Desc {
		return prometheus.NewDesc("telemesh_pgxpool_"+name, help, nil, nil)
	}
	return &PoolCollector{
		pool:             pool,
		total:            d("connections", "Connections open in the pool."),
		idle:             d("idle_connections", "Connections open and idle."),
		acquired:         d("acquired_connections", "Connections in use."),
		max:              d("max_connections", "The pool's connection limit."),
		acquires:         d("acquires_total", "Connections taken from the pool."),
		emptyAcquires:    d("empty_acquires_total", "Acquires that had to wait for a connection."),
		acquireSeconds:   d("acquire_seconds_total", "Time spent acquiring connections."),
		canceledAcquires: d("canceled_acquires_total", "Acquires given up by their context."),
		newConns:         d("new_connections_total", "Connections opened."),
		destroyedConns:   d("destroyed_connections_total", "Connections closed for their age, idleness or a failed health check."),
	}
}

// Describe sends the descriptions of the metrics.
func (c *PoolCollector) Describe(ch chan<- *prometheus.Desc) {
	for _, d := range []*prometheus.Desc{c.total, c.idle, c.acquired, c.max, c.acquires, c.emptyAcquires,
		c.acquireSeconds, c.canceledAcquires, c.newConns, c.destroyedConns} {
		ch <- d
	}
}

// Collect reads the pool's statistics.
func (c *PoolCollector) Collect(ch chan<- prometheus.Metric) {
	s := c.pool.Stat()
	gauge := func(d *prometheus.Desc, v float64) { ch <- prometheus.MustNewConstMetric(d, prometheus.GaugeValue, v) }
	counter := func(d *prometheus.Desc, v float64) {
		ch <- prometheus.MustNewConstMetric(d, prometheus.CounterValue, v)
	}
	gauge(c.total, float64(s.TotalConns()))
	gauge(c.idle, float64(s.IdleConns()))
	gauge(c.acquired, float64(s.AcquiredConns()))
	gauge(c.max, float64(s.MaxConns()))
	counter(c.acquires, float64(s.AcquireCount()))
	counter(c.emptyAcquires, float64(s.EmptyAcquireCount()))
	counter(c.acquireSeconds, s.AcquireDuration().Seconds())
	counter(c.canceledAcquires, float64(s.CanceledAcquireCount()))
	counter(c.newConns, float64(s.NewConnsCount()))
	counter(c.destroyedConns, float64(s.MaxLifetimeDestroyCount()+s.MaxIdleDestroyCount()))
}
