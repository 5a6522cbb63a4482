package tracing

import (
	"context"

	"github.com/prometheus/client_golang/prometheus"
	"go.opentelemetry.io/otel/trace"
)

// Exemplar returns the labels of a latency observation's exemplar: the
// trace id of the sampled span in ctx, so a slow bucket on a dashboard
// leads to a trace that was exported; nil when there is none.
func Exemplar(ctx context.Context) prometheus.Labels {
	sc := trace.SpanContextFromContext(ctx)
	if !sc.IsValid() || !sc.IsSampled() {
		return nil
	}
	return prometheus.Labels{"trace_id": sc.TraceID().String()}
}

// Observe records v on h, with ctx's trace id as its exemplar when ctx
// holds a sampled span.
func Observe(ctx context.Context, h prometheus.Observer, v float64) {
	if ex := Exemplar(ctx); ex != nil {
		if eo, ok := h.(prometheus.ExemplarObserver); ok {
			eo.ObserveWithExemplar(v, ex)
			return
		}
	}
	h.Observe(v)
}
