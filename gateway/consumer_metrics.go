package gateway

import (
	"context"
	"time"

	"github.com/nats-io/nats.go/jetstream"
	"github.com/prometheus/client_golang/prometheus"
)

// consumerCollector exports the state of the gateway's durable consumer,
// read from JetStream when scraped: the backlog and what is being
// redelivered, which no counter of one replica sees whole.
type consumerCollector struct {
	g                                       *Server
	pending, ackPending, redelivered, waits *prometheus.Desc
}

// ConsumerCollector returns the collector of the gateway's consumer; it
// reports nothing until [Server.Setup] has made the consumer.
func (g *Server) ConsumerCollector() prometheus.Collector {
	d := func(name, help string) *prometheus.Desc {
		return prometheus.NewDesc("telemesh_gateway_consumer_"+name, help, nil, nil)
	}
	return &consumerCollector{
		g:           g,
		pending:     d("pending", "Messages in the stream not yet delivered to the gateway's consumer: the backlog."),
		ackPending:  d("ack_pending", "Messages delivered and not yet acknowledged."),
		redelivered: d("redelivered", "Messages delivered more than once and not yet acknowledged."),
		waits:       d("waiting_pulls", "Pull requests waiting for messages (each gateway replica keeps some)."),
	}
}

// Describe sends the descriptions of the metrics.
func (c *consumerCollector) Describe(ch chan<- *prometheus.Desc) {
	ch <- c.pending
	ch <- c.ackPending
	ch <- c.redelivered
	ch <- c.waits
}

// Collect asks JetStream for the consumer's state; a scrape while NATS is
// away reports nothing rather than stale numbers.
func (c *consumerCollector) Collect(ch chan<- prometheus.Metric) {
	cons, _ := c.g.scraped.Load().(jetstream.Consumer)
	if cons == nil {
		return
	}
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
	defer cancel()
	info, err := cons.Info(ctx)
	if err != nil {
		return
	}
	ch <- prometheus.MustNewConstMetric(c.pending, prometheus.GaugeValue, float64(info.NumPending))
	ch <- prometheus.MustNewConstMetric(c.ackPending, prometheus.GaugeValue, float64(info.NumAckPending))
	ch <- prometheus.MustNewConstMetric(c.redelivered, prometheus.GaugeValue, float64(info.NumRedelivered))
	ch <- prometheus.MustNewConstMetric(c.waits, prometheus.GaugeValue, float64(info.NumWaiting))
}
