package tracing

import (
	"context"
	"errors"
	"fmt"
	"log/slog"

	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/exporters/otlp/otlptrace/otlptracegrpc"
	"go.opentelemetry.io/otel/propagation"
	"go.opentelemetry.io/otel/sdk/resource"
	sdktrace "go.opentelemetry.io/otel/sdk/trace"
	"go.opentelemetry.io/otel/trace"
	"go.opentelemetry.io/otel/trace/noop"

	"github.com/telemesh/telemesh/internal/buildinfo"
)

// Propagator is the W3C trace context, the one format telemesh reads and
// writes: in NATS headers, gRPC metadata and the envelope.
var Propagator propagation.TextMapPropagator = propagation.TraceContext{}

// instrumentation names telemesh's own spans.
const instrumentation = "github.com/telemesh/telemesh"

// Provider is a stage's tracer provider: the SDK exporting over OTLP when
// tracing is on, a no-op otherwise.
type Provider struct {
	tp  trace.TracerProvider
	sdk *sdktrace.TracerProvider
}

// Off returns a provider that records nothing.
func Off() *Provider { return &Provider{tp: noop.NewTracerProvider()} }

// New returns the provider cfg asks for; with no endpoint, [Off]. service is
// the service name unless cfg names one; build adds the version and commit.
func New(ctx context.Context, cfg Config, service string, build buildinfo.Info, logger *slog.Logger) (*Provider, error) {
	if !cfg.Enabled() {
		return Off(), nil
	}
	exp, err := otlptracegrpc.New(ctx, otlptracegrpc.WithEndpointURL(cfg.Endpoint))
	if err != nil {
		return nil, fmt.Errorf("OTLP exporter %s: %w", cfg.Endpoint, err)
	}
	if cfg.ServiceName != "" {
		service = cfg.ServiceName
	}
	attrs := []attribute.KeyValue{
		attribute.String("service.name", service),
		attribute.String("service.version", build.Version),
		attribute.String("vcs.ref.head.revision", build.Commit),
	}
	for k, v := range cfg.Attributes {
		if k != "service.name" {
			attrs = append(attrs, attribute.String(k, v))
		}
	}
	res, err := resource.New(ctx, resource.WithAttributes(attrs...))
	if err != nil {
		return nil, fmt.Errorf("trace resource: %w", err)
	}
	sdk := sdktrace.NewTracerProvider(
		sdktrace.WithResource(res),
		sdktrace.WithSampler(keepFailedSampler{sampler(cfg)}),
		// Registered first so it is shut down (and hands over what it
		// holds) before the batcher shuts the shared exporter down.
		sdktrace.WithSpanProcessor(newKeepFailed(ctx, exp, logger)),
		sdktrace.WithBatcher(exp),
	)
	return &Provider{tp: sdk, sdk: sdk}, nil
}

// Enabled reports whether spans are recorded and exported.
func (p *Provider) Enabled() bool { return p != nil && p.sdk != nil }

// TracerProvider returns the provider for instrumentation such as the gRPC
// stats handlers.
func (p *Provider) TracerProvider() trace.TracerProvider {
	if p == nil {
		return noop.NewTracerProvider()
	}
	return p.tp
}

// Tracer returns telemesh's tracer.
func (p *Provider) Tracer() trace.Tracer { return p.TracerProvider().Tracer(instrumentation) }

// Shutdown exports what is pending and stops exporting.
func (p *Provider) Shutdown(ctx context.Context) error {
	if !p.Enabled() {
		return nil
	}
	if err := p.sdk.Shutdown(ctx); err != nil && !errors.Is(err, context.Canceled) {
		return fmt.Errorf("tracing shutdown: %w", err)
	}
	return nil
}

// sampler is the head sampler cfg names.
func sampler(cfg Config) sdktrace.Sampler {
	switch cfg.Sampler {
	case "always_on":
		return sdktrace.AlwaysSample()
	case "always_off":
		return sdktrace.NeverSample()
	case "traceidratio":
		return sdktrace.TraceIDRatioBased(cfg.Ratio)
	case "parentbased_always_on":
		return sdktrace.ParentBased(sdktrace.AlwaysSample())
	case "parentbased_always_off":
		return sdktrace.ParentBased(sdktrace.NeverSample())
	}
	return sdktrace.ParentBased(sdktrace.TraceIDRatioBased(cfg.Ratio))
}

// keepFailedSampler records every span the head sampler drops instead of
// discarding it: not sampled, so not exported by the batcher, but kept
// until its message's outcome is known, so [keepFailed] can export the
// spans of a message that failed.
type keepFailedSampler struct{ sdktrace.Sampler }

// ShouldSample turns a drop into record-only.
func (s keepFailedSampler) ShouldSample(p sdktrace.SamplingParameters) sdktrace.SamplingResult {
	r := s.Sampler.ShouldSample(p)
	if r.Decision == sdktrace.Drop {
		r.Decision = sdktrace.RecordOnly
	}
	return r
}

// Description names the sampler.
func (s keepFailedSampler) Description() string {
	return "KeepFailed{" + s.Sampler.Description() + "}"
}
