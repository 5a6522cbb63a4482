package tracing

import (
	"context"
	"testing"

	"github.com/prometheus/client_golang/prometheus"
	dto "github.com/prometheus/client_model/go"
	"go.opentelemetry.io/otel/trace"
)

// A latency observed under a sampled span carries its trace id as the
// exemplar; one under an unsampled span or none carries nothing.
func TestObserveWithExemplar(t *testing.T) {
	tid, _ := trace.TraceIDFromHex("4bf92f3577b34da6a3ce929d0e0e4736")
	sid, _ := trace.SpanIDFromHex("00f067aa0ba902b7")
	sampled := trace.ContextWithSpanContext(context.Background(),
		trace.NewSpanContext(trace.SpanContextConfig{TraceID: tid, SpanID: sid, TraceFlags: trace.FlagsSampled}))
	unsampled := trace.ContextWithSpanContext(context.Background(),
		trace.NewSpanContext(trace.SpanContextConfig{TraceID: tid, SpanID: sid}))
	for _, tt := range []struct {
		name string
		ctx  context.Context
		want string
	}{
		{"sampled", sampled, tid.String()},
		{"unsampled", unsampled, ""},
		{"no span", context.Background(), ""},
	} {
		t.Run(tt.name, func(t *testing.T) {
			h := prometheus.NewHistogram(prometheus.HistogramOpts{Name: "h", Buckets: []float64{1}})
			Observe(tt.ctx, h, 0.5)
			var m dto.Metric
			if err := h.Write(&m); err != nil {
				t.Fatal(err)
			}
			if m.GetHistogram().GetSampleCount() != 1 {
				t.Fatalf("%d observations, want 1", m.GetHistogram().GetSampleCount())
			}
			got := ""
			if ex := m.GetHistogram().GetBucket()[0].GetExemplar(); ex != nil {
				for _, l := range ex.GetLabel() {
					if l.GetName() == "trace_id" {
						got = l.GetValue()
					}
				}
			}
			if got != tt.want {
				t.Errorf("exemplar trace_id %q, want %q", got, tt.want)
			}
		})
	}
}
