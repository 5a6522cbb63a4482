package tracing

import (
	"context"
	"errors"
	"testing"

	"go.opentelemetry.io/otel/codes"
	"go.opentelemetry.io/otel/propagation"
	sdktrace "go.opentelemetry.io/otel/sdk/trace"
	"go.opentelemetry.io/otel/sdk/trace/tracetest"
	"go.opentelemetry.io/otel/trace"

	telemetryv1 "github.com/telemesh/telemesh/gen/telemesh/telemetry/v1"
	"github.com/telemesh/telemesh/internal/buildinfo"
	"github.com/telemesh/telemesh/internal/logging"
)

func env(vars map[string]string) func(string) (string, bool) {
	return func(k string) (string, bool) { v, ok := vars[k]; return v, ok }
}

func TestConfigFromEnv(t *testing.T) {
	tests := []struct {
		name    string
		vars    map[string]string
		want    Config
		wantErr bool
	}{
		{name: "no endpoint is off", vars: map[string]string{}, want: Config{Sampler: "parentbased_traceidratio", Ratio: DefaultRatio}},
		{name: "endpoint on at one percent", vars: map[string]string{"OTEL_EXPORTER_OTLP_ENDPOINT": "http://collector:4317"},
			want: Config{Endpoint: "http://collector:4317", Sampler: "parentbased_traceidratio", Ratio: 0.01}},
		{name: "traces endpoint wins", vars: map[string]string{"OTEL_EXPORTER_OTLP_ENDPOINT": "http://a:4317", "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT": "https://b:4317"},
			want: Config{Endpoint: "https://b:4317", Sampler: "parentbased_traceidratio", Ratio: 0.01}},
		{name: "sampler and ratio", vars: map[string]string{"OTEL_EXPORTER_OTLP_ENDPOINT": "http://a:4317", "OTEL_TRACES_SAMPLER": "traceidratio", "OTEL_TRACES_SAMPLER_ARG": "0.25",
			"OTEL_SERVICE_NAME": "edge", "OTEL_RESOURCE_ATTRIBUTES": "deployment.environment=prod,team=iot%20ops"},
			want: Config{Endpoint: "http://a:4317", Sampler: "traceidratio", Ratio: 0.25, ServiceName: "edge", Attributes: map[string]string{"deployment.environment": "prod", "team": "iot ops"}}},
		{name: "disabled", vars: map[string]string{"OTEL_EXPORTER_OTLP_ENDPOINT": "http://a:4317", "OTEL_SDK_DISABLED": "true"}, want: Config{Sampler: "parentbased_traceidratio", Ratio: 0.01}},
		{name: "exporter none", vars: map[string]string{"OTEL_EXPORTER_OTLP_ENDPOINT": "http://a:4317", "OTEL_TRACES_EXPORTER": "none"}, want: Config{Sampler: "parentbased_traceidratio", Ratio: 0.01}},
		{name: "http protocol refused", vars: map[string]string{"OTEL_EXPORTER_OTLP_ENDPOINT": "http://a:4318", "OTEL_EXPORTER_OTLP_PROTOCOL": "http/protobuf"}, wantErr: true},
		{name: "endpoint without scheme", vars: map[string]string{"OTEL_EXPORTER_OTLP_ENDPOINT": "collector:4317"}, wantErr: true},
		{name: "unknown sampler", vars: map[string]string{"OTEL_TRACES_SAMPLER": "jaeger_remote"}, wantErr: true},
		{name: "ratio out of range", vars: map[string]string{"OTEL_TRACES_SAMPLER_ARG": "2"}, wantErr: true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := ConfigFromEnv(env(tt.vars))
			if tt.wantErr {
				if !errors.Is(err, ErrConfig) {
					t.Fatalf("err = %v, want ErrConfig", err)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if got.Endpoint != tt.want.Endpoint || got.Sampler != tt.want.Sampler || got.Ratio != tt.want.Ratio || got.ServiceName != tt.want.ServiceName || len(got.Attributes) != len(tt.want.Attributes) {
				t.Fatalf("got %+v, want %+v", got, tt.want)
			}
			for k, v := range tt.want.Attributes {
				if got.Attributes[k] != v {
					t.Errorf("attribute %s = %q, want %q", k, got.Attributes[k], v)
				}
			}
		})
	}
}

func TestRedacted(t *testing.T) {
	if got := Redacted("https://user:secret@collector:4317"); got != "https://collector:4317" {
		t.Errorf("Redacted = %q", got)
	}
}

func TestTraceID(t *testing.T) {
	for in, want := range map[string]string{
		"00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01": "4bf92f3577b34da6a3ce929d0e0e4736",
		"00-00000000000000000000000000000000-00f067aa0ba902b7-01": "",
		"00-4bf92f3577b34da6a3ce929d0e0e473x-00f067aa0ba902b7-01": "",
		"garbage": "",
		"":        "",
	} {
		if got := TraceID(in); got != want {
			t.Errorf("TraceID(%q) = %q, want %q", in, got, want)
		}
	}
}

// TestKeepFailedExportsOnlyFailedTraces checks the tail rule at ratio 0: a
// trace whose spans all succeed is let go when its local root ends; one with
// a failed span is exported whole, its successful spans included.
func TestKeepFailedExportsOnlyFailedTraces(t *testing.T) {
	exp := keptExporter{tracetest.NewInMemoryExporter()}
	tp := sdktrace.NewTracerProvider(
		sdktrace.WithSampler(keepFailedSampler{sdktrace.ParentBased(sdktrace.TraceIDRatioBased(0))}),
		sdktrace.WithSpanProcessor(newKeepFailed(t.Context(), exp, logging.Discard())),
		sdktrace.WithBatcher(exp),
	)
	tr := tp.Tracer("test")
	run := func(fail bool) trace.TraceID {
		ctx, root := tr.Start(context.Background(), "root")
		_, child := tr.Start(ctx, "child")
		if fail {
			child.SetStatus(codes.Error, "it broke")
		}
		child.End()
		root.End()
		return root.SpanContext().TraceID()
	}
	ok := run(false)
	failed := run(true)
	if err := tp.Shutdown(context.Background()); err != nil {
		t.Fatal(err)
	}
	byTrace := map[trace.TraceID]int{}
	for _, s := range exp.GetSpans() {
		byTrace[s.SpanContext.TraceID()]++
	}
	if byTrace[ok] != 0 || byTrace[failed] != 2 {
		t.Errorf("exported %d spans of the good trace (want 0) and %d of the failed one (want 2)", byTrace[ok], byTrace[failed])
	}
}

// keptExporter keeps its spans past Shutdown, for reading them after.
type keptExporter struct{ *tracetest.InMemoryExporter }

func (keptExporter) Shutdown(context.Context) error { return nil }

// TestOffWithoutEndpoint checks tracing without an endpoint is a no-op: no
// SDK, no message spans, envelopes left as they came.
func TestOffWithoutEndpoint(t *testing.T) {
	p, err := New(context.Background(), Config{Sampler: "parentbased_traceidratio", Ratio: 1}, "telemesh-test", buildinfo.Info{}, logging.Discard())
	if err != nil {
		t.Fatal(err)
	}
	if p.Enabled() || p.Messages("validate") != nil {
		t.Fatalf("provider without endpoint: enabled %v, messages %v", p.Enabled(), p.Messages("validate"))
	}
	e := &telemetryv1.Envelope{Traceparent: "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"}
	spans := p.Messages("validate").Start(context.Background(), []*telemetryv1.Envelope{e})
	spans.EndAll(nil, nil)
	if spans != nil || e.GetTraceparent() != "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01" {
		t.Errorf("spans %v, traceparent %q: want none and the traceparent untouched", spans, e.GetTraceparent())
	}
}

// BenchmarkMessageSpans measures what tracing costs a stage per message at
// the default ratio: starting and ending the span of each message of a
// batch of 100, the traceparent parsed and written, nothing failing. The
// exporter discards what it gets.
func BenchmarkMessageSpans(b *testing.B) {
	tp := sdktrace.NewTracerProvider(
		sdktrace.WithSampler(keepFailedSampler{sampler(Config{Sampler: "parentbased_traceidratio", Ratio: DefaultRatio})}),
		sdktrace.WithSpanProcessor(newKeepFailed(b.Context(), keptExporter{tracetest.NewInMemoryExporter()}, logging.Discard())),
	)
	defer func() { _ = tp.Shutdown(context.Background()) }()
	p := &Provider{tp: tp, sdk: tp}
	m := p.Messages("validate")
	envs := make([]*telemetryv1.Envelope, 100)
	outcomes := make([]*telemetryv1.Outcome, len(envs))
	for i := range envs {
		envs[i] = &telemetryv1.Envelope{MessageId: "01a24a75-4792-7de7-acea-8b26c3def804", DedupeKey: "id:devices.meter-01.telemetry:x",
			DeviceExternalId: "meter-01", Topic: "telemetry", SourceSubject: "devices.meter-01.telemetry",
			Traceparent: "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-00"}
		outcomes[i] = &telemetryv1.Outcome{Status: telemetryv1.MessageStatus_MESSAGE_STATUS_COMPLETED}
	}
	b.ReportAllocs()
	b.ResetTimer()
	for b.Loop() {
		m.Start(context.Background(), envs).EndAll(outcomes, nil)
	}
	b.ReportMetric(float64(b.Elapsed().Nanoseconds())/float64(b.N*len(envs)), "ns/msg")
}

// TestTraceparentRoundTrip checks the hand-written reader and writer agree
// with the W3C propagator.
func TestTraceparentRoundTrip(t *testing.T) {
	for _, tp := range []string{
		"00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
		"00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-00",
	} {
		sc := trace.SpanContextFromContext(Extract(tp))
		want := trace.SpanContextFromContext(Propagator.Extract(context.Background(), propagation.MapCarrier{"traceparent": tp}))
		if !sc.Equal(want) || Format(sc) != tp {
			t.Errorf("%s: read %v (propagator %v), written %q", tp, sc, want, Format(sc))
		}
	}
	for _, bad := range []string{"", "00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01", "ff-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
		"00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-extra", "00_4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"} {
		if sc := trace.SpanContextFromContext(Extract(bad)); sc.IsValid() {
			t.Errorf("%q read as %v, want nothing", bad, sc)
		}
	}
}
