package gateway

import "github.com/prometheus/client_golang/prometheus"

// Metrics are the gateway's own Prometheus metrics.
type Metrics struct {
	outcomes     *prometheus.CounterVec
	naks         prometheus.Counter
	deadLettered prometheus.Counter
	ignored      prometheus.Counter
	paused       prometheus.Gauge
	batchSeconds prometheus.Histogram
	resumed      prometheus.Counter
	handedBack   prometheus.Counter
	inProgress   prometheus.Counter
	// batchMessages shows how full batches are: batches far below
	// --batch-size at full rate pay the per-batch costs (five calls, the
	// transactions and their commits) on few messages.
	batchMessages prometheus.Histogram
}

// NewMetrics registers the gateway's metrics on reg.
func NewMetrics(reg prometheus.Registerer) *Metrics {
	m := &Metrics{
		outcomes: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "telemesh_gateway_outcomes_total", Help: "Messages by terminal outcome status.",
		}, []string{"status"}),
		naks: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "telemesh_gateway_naks_total", Help: "Messages NAKed for redelivery after a transient failure.",
		}),
		deadLettered: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "telemesh_gateway_dead_lettered_total", Help: "Messages recorded as dead letters.",
		}),
		ignored: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "telemesh_gateway_ignored_total", Help: "Messages on internal or own subjects, ignored.",
		}),
		paused: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "telemesh_gateway_paused", Help: "1 while the global pipeline switch is off.",
		}),
		batchSeconds: prometheus.NewHistogram(prometheus.HistogramOpts{
			Name: "telemesh_gateway_batch_seconds", Help: "Time from pull to acknowledgement of a batch.",
			Buckets: prometheus.ExponentialBuckets(0.001, 2, 14),
		}),
		resumed: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "telemesh_gateway_resumed_total", Help: "Parked messages sent down the chain again.",
		}),
		handedBack: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "telemesh_gateway_handed_back_total", Help: "Messages pulled but not started, NAKed for immediate redelivery when the gateway stopped.",
		}),
		inProgress: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "telemesh_gateway_in_progress_total", Help: "Progress signals sent for batches in flight, or waiting for a free worker, longer than a third of the ack wait.",
		}),
		batchMessages: prometheus.NewHistogram(prometheus.HistogramOpts{
			Name: "telemesh_gateway_batch_messages", Help: "Messages per batch gathered from the pull.",
			Buckets: prometheus.ExponentialBuckets(1, 2, 14),
		}),
	}
	reg.MustRegister(m.outcomes, m.naks, m.deadLettered, m.ignored, m.paused, m.batchSeconds, m.resumed, m.handedBack, m.inProgress, m.batchMessages)
	return m
}
