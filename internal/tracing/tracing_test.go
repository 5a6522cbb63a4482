package tracing

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"testing"
	"time"

	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/codes"
	"go.opentelemetry.io/otel/propagation"
	"go.opentelemetry.io/otel/sdk/resource"
	sdktrace "go.opentelemetry.io/otel/sdk/trace"
	"go.opentelemetry.io/otel/sdk/trace/tracetest"
	"go.opentelemetry.io/otel/trace"
	"google.golang.org/protobuf/proto"

	telemetryv1 "github.com/telemesh/telemesh/gen/telemesh/telemetry/v1"
	"github.com/telemesh/telemesh/internal/buildinfo"
	"github.com/telemesh/telemesh/internal/envelope"
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

// TestKeepFailedExportsOnlyFailedTraces checks the tail rule where the
// head sampler samples nothing: a message that succeeds leaves no span; one
// that fails has the span of every stage it crossed written after the
// fact, each with the ids its envelope carried on (so they read as one
// trace, each the child of the one before, under the device's span), the
// stage's times, its attributes and the failure as its status.
func TestKeepFailedExportsOnlyFailedTraces(t *testing.T) {
	for _, cfg := range []Config{
		{Sampler: "parentbased_traceidratio", Ratio: 0},
		{Sampler: "always_off"},
	} {
		t.Run(cfg.Sampler, func(t *testing.T) {
			exp := keptExporter{tracetest.NewInMemoryExporter()}
			// Two processes: the gateway, and a deriver doing two steps.
			gateway, deriver := newSDK(cfg, resource.Empty(), exp), newSDK(cfg, resource.Empty(), exp)
			const deviceTrace, deviceSpan = "5af7183fc1d7d9e1a2b3c4d5e6f70819", "1111111111111111"
			envs := []*telemetryv1.Envelope{
				{MessageId: "m-ok", DedupeKey: "id:devices.meter-01.telemetry:ok", DeviceExternalId: "meter-01", Topic: "telemetry", SourceSubject: "devices.meter-01.telemetry"},
				{MessageId: "m-bad", DedupeKey: "id:devices.meter-01.telemetry:bad", DeviceExternalId: "meter-01", Topic: "telemetry", SourceSubject: "devices.meter-01.telemetry",
					Traceparent: "00-" + deviceTrace + "-" + deviceSpan + "-00"},
				{MessageId: "m-lost", DedupeKey: "id:devices.meter-01.telemetry:lost", DeviceExternalId: "meter-01", Topic: "telemetry"},
			}
			began := time.Now()
			ingress := gateway.Messages(envelope.StageIngress).Start(t.Context(), envs)
			sent := make([]string, len(envs))
			wire := make([]*telemetryv1.Envelope, len(envs))
			for i, e := range envs {
				sent[i] = e.GetTraceparent()
				if TraceID(sent[i]) == "" || strings.HasSuffix(sent[i], "-01") {
					t.Fatalf("message %d carries traceparent %q, want an unsampled one", i, sent[i])
				}
				wire[i] = proto.CloneOf(e)
			}
			if TraceID(sent[1]) != deviceTrace {
				t.Fatalf("the device's message carries %q, want its trace %s continued", sent[1], deviceTrace)
			}
			mutate := deriver.Messages(envelope.StageMutate).Start(t.Context(), wire)
			derive := deriver.Messages(envelope.StageDerive).Children(mutate, wire)
			derive.SetStage(1, "unresolved", "missing_input")
			ok := &telemetryv1.Outcome{Status: telemetryv1.MessageStatus_MESSAGE_STATUS_COMPLETED}
			bad := &telemetryv1.Outcome{Status: telemetryv1.MessageStatus_MESSAGE_STATUS_FAILED_TERMINAL, Reason: "it broke"}
			outcomes := []*telemetryv1.Outcome{ok, bad, ok}
			derive.EndAll(outcomes, nil)
			mutate.EndAll(outcomes, nil)
			ingress.End(0, ok)
			ingress.End(1, bad)
			// The deriver saw it through, but the gateway could not
			// acknowledge it: only the ingress span failed.
			ingress.Fail(2, "redelivered in 1s: no ack")
			ended := time.Now()
			if err := errors.Join(gateway.Shutdown(t.Context()), deriver.Shutdown(t.Context())); err != nil {
				t.Fatal(err)
			}

			byTrace := map[string][]tracetest.SpanStub{}
			for _, s := range exp.GetSpans() {
				byTrace[s.SpanContext.TraceID().String()] = append(byTrace[s.SpanContext.TraceID().String()], s)
			}
			if got := byTrace[TraceID(sent[0])]; len(got) != 0 {
				t.Errorf("%d spans of the message that succeeded, want none", len(got))
			}
			if got := byTrace[TraceID(sent[2])]; len(got) != 1 || got[0].Name != "ingress" || got[0].Status.Description != "redelivered in 1s: no ack" {
				t.Errorf("spans of the message the gateway failed: %+v, want its ingress span with the reason", got)
			}
			spans := map[string]tracetest.SpanStub{}
			for _, s := range byTrace[deviceTrace] {
				spans[s.Name] = s
			}
			if len(spans) != 3 || len(byTrace[deviceTrace]) != 3 {
				t.Fatalf("the failed message's trace has %d spans %v, want ingress, mutate, derive", len(byTrace[deviceTrace]), byTrace[deviceTrace])
			}
			// Each span has the id the next stage was told, and the one
			// before as its parent.
			parent := deviceSpan
			for _, c := range []struct{ name, carried string }{
				{"ingress", sent[1]}, {"mutate", ""}, {"derive", wire[1].GetTraceparent()},
			} {
				s := spans[c.name]
				if got := s.Parent.SpanID().String(); got != parent {
					t.Errorf("%s span's parent = %s, want %s", c.name, got, parent)
				}
				if c.carried != "" && s.SpanContext.SpanID().String() != c.carried[36:52] {
					t.Errorf("%s span's id = %s, but the message carried %s", c.name, s.SpanContext.SpanID(), c.carried)
				}
				parent = s.SpanContext.SpanID().String()
				if s.Status.Code != codes.Error || s.Status.Description != "it broke" {
					t.Errorf("%s span status = %v %q, want an error saying it broke", c.name, s.Status.Code, s.Status.Description)
				}
				if s.StartTime.Before(began) || s.EndTime.Before(s.StartTime) || s.EndTime.After(ended) {
					t.Errorf("%s span ran from %v to %v, want within the stage's %v to %v", c.name, s.StartTime, s.EndTime, began, ended)
				}
				attrs := map[attribute.Key]string{}
				for _, kv := range s.Attributes {
					attrs[kv.Key] = kv.Value.Emit()
				}
				if attrs[AttrMessageID] != "m-bad" || attrs[AttrDevice] != "meter-01" || attrs[AttrOutcome] != "failed_terminal" || attrs[AttrReason] != "it broke" {
					t.Errorf("%s span attributes %v, want the message's and its outcome", c.name, attrs)
				}
			}
			if d := spans["derive"]; attrOf(d, AttrStageStatus) != "unresolved" || attrOf(d, AttrReasonCode) != "missing_input" {
				t.Errorf("derive span: stage status %q, reason code %q; want what SetStage said", attrOf(d, AttrStageStatus), attrOf(d, AttrReasonCode))
			}
			if got := spans["ingress"].SpanKind; got != trace.SpanKindConsumer {
				t.Errorf("ingress span kind %v, want consumer", got)
			}
		})
	}
}

func attrOf(s tracetest.SpanStub, key attribute.Key) string {
	for _, kv := range s.Attributes {
		if kv.Key == key {
			return kv.Value.Emit()
		}
	}
	return ""
}

// TestSampledMessagesAreRecorded checks a message the head sampler keeps
// has its span recorded from the start and exported whatever its outcome,
// with the sampled flag in the traceparent it carries on, while one it
// leaves out records nothing.
func TestSampledMessagesAreRecorded(t *testing.T) {
	exp := keptExporter{tracetest.NewInMemoryExporter()}
	p := newSDK(Config{Sampler: "parentbased_traceidratio", Ratio: 0}, resource.Empty(), exp)
	envs := []*telemetryv1.Envelope{
		{MessageId: "sampled", Traceparent: "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"},
		{MessageId: "unsampled", Traceparent: "00-5af7183fc1d7d9e1a2b3c4d5e6f70819-00f067aa0ba902b7-00"},
	}
	spans := p.Messages(envelope.StageValidate).Start(t.Context(), envs)
	if len(spans.live) != 1 || !spans.live[0].IsRecording() || spans.msgs[0].live != 1 || spans.msgs[1].live != 0 {
		t.Fatalf("recording %v, the sampled message's %d, the unsampled one's %d; want only the sampled one", spans.live, spans.msgs[0].live, spans.msgs[1].live)
	}
	if !strings.HasSuffix(envs[0].GetTraceparent(), "-01") || !strings.HasSuffix(envs[1].GetTraceparent(), "-00") {
		t.Errorf("traceparents carried on %q and %q, want the sampled flags kept", envs[0].GetTraceparent(), envs[1].GetTraceparent())
	}
	ok := &telemetryv1.Outcome{Status: telemetryv1.MessageStatus_MESSAGE_STATUS_COMPLETED}
	spans.EndAll([]*telemetryv1.Outcome{ok, ok}, nil)
	if err := p.Shutdown(t.Context()); err != nil {
		t.Fatal(err)
	}
	got := exp.GetSpans()
	if len(got) != 1 || got[0].SpanContext.TraceID().String() != "4bf92f3577b34da6a3ce929d0e0e4736" || got[0].Parent.SpanID().String() != "00f067aa0ba902b7" ||
		got[0].SpanContext.SpanID().String() != envs[0].GetTraceparent()[36:52] {
		t.Errorf("exported %v, want the sampled message's span alone, with the id it carried on", got)
	}
}

// TestHeadSampledAgreesWithSampler checks the decision a stage takes for
// each message is the SDK sampler's, for every sampler and a spread of
// ratios, parents and trace ids.
func TestHeadSampledAgreesWithSampler(t *testing.T) {
	tid := newTraceID()
	parents := map[string]trace.SpanContext{"none": {}}
	for _, remote := range []bool{false, true} {
		for _, flags := range []trace.TraceFlags{0, trace.FlagsSampled} {
			parents[fmt.Sprintf("remote=%v flags=%v", remote, flags)] = trace.NewSpanContext(trace.SpanContextConfig{
				TraceID: tid, SpanID: newSpanID(), TraceFlags: flags, Remote: remote})
		}
	}
	for _, name := range samplers {
		for _, ratio := range []float64{0, 0.01, 0.5, 1} {
			cfg := Config{Sampler: name, Ratio: ratio}
			sdk, ours := sampler(cfg), headSampled(cfg)
			for pname, parent := range parents {
				for range 200 {
					id := newTraceID()
					if parent.IsValid() {
						id = parent.TraceID()
					}
					ctx := trace.ContextWithSpanContext(context.Background(), parent)
					want := sdk.ShouldSample(sdktrace.SamplingParameters{ParentContext: ctx, TraceID: id}).Decision == sdktrace.RecordAndSample
					if got := ours(parent, id); got != want {
						t.Fatalf("%s at %v, parent %s, trace %s: sampled %v, the SDK says %v", name, ratio, pname, id, got, want)
					}
					if parent.IsValid() {
						parent = trace.NewSpanContext(trace.SpanContextConfig{TraceID: newTraceID(), SpanID: parent.SpanID(), TraceFlags: parent.TraceFlags(), Remote: parent.IsRemote()})
					}
				}
			}
		}
	}
}

// keptExporter keeps its spans past Shutdown, for reading them after.
type keptExporter struct{ *tracetest.InMemoryExporter }

func (keptExporter) Shutdown(context.Context) error { return nil }

// TestOffWithoutEndpoint checks tracing without an endpoint is a no-op: no
// SDK, no message spans, envelopes left as they came.
func TestOffWithoutEndpoint(t *testing.T) {
	p, err := New(context.Background(), Config{Sampler: "parentbased_traceidratio", Ratio: 1}, "telemesh-test", buildinfo.Info{})
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
// the default ratio: opening and ending the span of each message of a
// batch of 1000, the traceparent read and written, nothing failing (with
// -failed=1 %: one in a hundred failing, its span written after the fact).
// The exporter discards what it gets.
func BenchmarkMessageSpans(b *testing.B) {
	for _, failing := range []int{0, 100} {
		b.Run(fmt.Sprintf("failing-1-in-%d", failing), func(b *testing.B) {
			p := newSDK(Config{Sampler: "parentbased_traceidratio", Ratio: DefaultRatio}, resource.Empty(), discard{})
			defer func() { _ = p.Shutdown(context.Background()) }()
			m := p.Messages("validate")
			envs := make([]*telemetryv1.Envelope, 1000)
			outcomes := make([]*telemetryv1.Outcome, len(envs))
			parents := make([]string, len(envs))
			for i := range envs {
				// A new trace for each message, as the gateway starts them,
				// so 1 % of them are sampled.
				parents[i] = format(newTraceID(), newSpanID(), 0)
				if i%100 == 0 {
					parents[i] = format(newTraceID(), newSpanID(), trace.FlagsSampled)
				}
				envs[i] = &telemetryv1.Envelope{MessageId: "01a24a75-4792-7de7-acea-8b26c3def804", DedupeKey: "id:devices.meter-01.telemetry:x",
					DeviceExternalId: "meter-01", Topic: "telemetry", SourceSubject: "devices.meter-01.telemetry"}
				outcomes[i] = &telemetryv1.Outcome{Status: telemetryv1.MessageStatus_MESSAGE_STATUS_COMPLETED}
				if failing > 0 && i%failing == failing/2 {
					outcomes[i] = &telemetryv1.Outcome{Status: telemetryv1.MessageStatus_MESSAGE_STATUS_FAILED_VALIDATION, Reason: "temp_c is required"}
				}
			}
			b.ReportAllocs()
			b.ResetTimer()
			for b.Loop() {
				for i, e := range envs {
					e.Traceparent = parents[i]
				}
				m.Start(context.Background(), envs).EndAll(outcomes, nil)
			}
			b.ReportMetric(float64(b.Elapsed().Nanoseconds())/float64(b.N*len(envs)), "ns/msg")
		})
	}
}

// discard is an exporter that drops what it gets.
type discard struct{}

func (discard) ExportSpans(context.Context, []sdktrace.ReadOnlySpan) error { return nil }
func (discard) Shutdown(context.Context) error                             { return nil }

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
