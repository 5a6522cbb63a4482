package publisher

import (
	"context"
	"fmt"
	"time"

	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/prometheus/client_golang/prometheus"
)

// WithMetrics registers the publisher's metrics on reg: the publish outbox
// (its size and the age of its oldest entry, read from Postgres when
// scraped) and the rows the retry loop published or failed again.
func (srv *Server) WithMetrics(reg prometheus.Registerer) (*Server, error) {
	srv.retried = prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "telemesh_publisher_retried_rows_total",
		Help: "Rows the publish retry loop sent again, by result (published, failed).",
	}, []string{"result"})
	for _, r := range []string{"published", "failed"} {
		srv.retried.WithLabelValues(r)
	}
	if err := reg.Register(srv.retried); err != nil {
		return nil, fmt.Errorf("register publisher metrics: %w", err)
	}
	if err := reg.Register(newOutboxCollector(srv.pool)); err != nil {
		return nil, fmt.Errorf("register outbox metrics: %w", err)
	}
	return srv, nil
}

// outboxCollector reads the publish outbox when scraped. Its size is the
// batches whose rows are not confirmed published; an oldest entry that
// keeps ageing says publishing is stuck (telemesh doctor: publishing).
type outboxCollector struct {
	pool        *pgxpool.Pool
	entries     *prometheus.Desc
	oldest      *prometheus.Desc
	overdue     *prometheus.Desc
	scrapeError *prometheus.Desc
}

func newOutboxCollector(pool *pgxpool.Pool) *outboxCollector {
	return &outboxCollector{
		pool:        pool,
		entries:     prometheus.NewDesc("telemesh_publish_outbox_entries", "Entries of the publish outbox: batches whose rows are not confirmed published.", nil, nil),
		oldest:      prometheus.NewDesc("telemesh_publish_outbox_oldest_seconds", "Age of the oldest publish outbox entry; 0 when it is empty.", nil, nil),
		overdue:     prometheus.NewDesc("telemesh_publish_outbox_overdue_entries", "Outbox entries past their due time, waiting for the retry loop.", nil, nil),
		scrapeError: prometheus.NewDesc("telemesh_publish_outbox_scrape_error", "1 when the outbox could not be read for this scrape.", nil, nil),
	}
}

// Describe sends the descriptions of the metrics.
func (c *outboxCollector) Describe(ch chan<- *prometheus.Desc) {
	ch <- c.entries
	ch <- c.oldest
	ch <- c.overdue
	ch <- c.scrapeError
}

// Collect reads the outbox in one statement, bounded so a slow database
// cannot hold the scrape.
func (c *outboxCollector) Collect(ch chan<- prometheus.Metric) {
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
	defer cancel()
	var entries, overdue int64
	var oldest float64
	err := c.pool.QueryRow(ctx, `select count(*), count(*) filter (where due_at < now()),
		coalesce(extract(epoch from now() - min(created_at)), 0)::float8 from publish_outbox`).Scan(&entries, &overdue, &oldest)
	failed := 0.0
	if err != nil {
		failed = 1
	} else {
		ch <- prometheus.MustNewConstMetric(c.entries, prometheus.GaugeValue, float64(entries))
		ch <- prometheus.MustNewConstMetric(c.overdue, prometheus.GaugeValue, float64(overdue))
		ch <- prometheus.MustNewConstMetric(c.oldest, prometheus.GaugeValue, oldest)
	}
	ch <- prometheus.MustNewConstMetric(c.scrapeError, prometheus.GaugeValue, failed)
}
