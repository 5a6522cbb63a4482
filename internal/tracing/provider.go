package tracing

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"math/rand/v2"

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
	// decided starts the spans whose sampling telemesh decides itself, the
	// message spans (see [Messages]): it samples every span it starts and
	// gives it the ids its context names, and it exports through the
	// batcher of sdk.
	decided *sdktrace.TracerProvider
	// sampled is the head sampler's decision, asked for every message.
	sampled func(parent trace.SpanContext, id trace.TraceID) bool
}

// Off returns a provider that records nothing.
func Off() *Provider { return &Provider{tp: noop.NewTracerProvider()} }

// New returns the provider cfg asks for; with no endpoint, [Off]. service is
// the service name unless cfg names one; build adds the version and commit.
func New(ctx context.Context, cfg Config, service string, build buildinfo.Info) (*Provider, error) {
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
	return newSDK(cfg, res, exp), nil
}

// newSDK returns the provider of cfg exporting to exp.
func newSDK(cfg Config, res *resource.Resource, exp sdktrace.SpanExporter) *Provider {
	// One batcher for both providers: the exporter's queue, batches and
	// shutdown are shared, and shutting either provider down flushes it.
	bsp := sdktrace.NewBatchSpanProcessor(exp)
	sdk := sdktrace.NewTracerProvider(
		sdktrace.WithResource(res),
		sdktrace.WithSampler(sampler(cfg)),
		sdktrace.WithSpanProcessor(bsp),
	)
	decided := sdktrace.NewTracerProvider(
		sdktrace.WithResource(res),
		sdktrace.WithSampler(sdktrace.AlwaysSample()),
		sdktrace.WithIDGenerator(contextIDs{}),
		sdktrace.WithSpanProcessor(bsp),
	)
	return &Provider{tp: sdk, sdk: sdk, decided: decided, sampled: headSampled(cfg)}
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
	// The batcher is shut down (and flushed) by the first; the second finds
	// it done.
	err := errors.Join(p.decided.Shutdown(ctx), p.sdk.Shutdown(ctx))
	if err != nil && !errors.Is(err, context.Canceled) {
		return fmt.Errorf("tracing shutdown: %w", err)
	}
	return nil
}

// headSampler is the head sampler cfg names, as the parts it is made of:
// the sampler of a span without a parent (a new trace) and whether a span
// with a parent follows its parent's decision instead.
func headSampler(cfg Config) (root sdktrace.Sampler, parentBased bool) {
	switch cfg.Sampler {
	case "always_on":
		return sdktrace.AlwaysSample(), false
	case "always_off":
		return sdktrace.NeverSample(), false
	case "traceidratio":
		return sdktrace.TraceIDRatioBased(cfg.Ratio), false
	case "parentbased_always_on":
		return sdktrace.AlwaysSample(), true
	case "parentbased_always_off":
		return sdktrace.NeverSample(), true
	}
	return sdktrace.TraceIDRatioBased(cfg.Ratio), true
}

// sampler is the head sampler cfg names, for the SDK.
func sampler(cfg Config) sdktrace.Sampler {
	root, parentBased := headSampler(cfg)
	if parentBased {
		return sdktrace.ParentBased(root)
	}
	return root
}

// headSampled returns the decision of the head sampler cfg names: whether a
// span whose parent is parent (not valid for a new trace) in trace id is
// sampled. It answers as [sampler] does (ParentBased follows the parent's
// sampled flag wherever the parent is), without the context, the span and
// the allocations the SDK needs to ask it: a stage asks for every message.
func headSampled(cfg Config) func(parent trace.SpanContext, id trace.TraceID) bool {
	root, parentBased := headSampler(cfg)
	return func(parent trace.SpanContext, id trace.TraceID) bool {
		if parentBased && parent.IsValid() {
			return parent.IsSampled()
		}
		return root.ShouldSample(sdktrace.SamplingParameters{ParentContext: context.Background(), TraceID: id}).Decision == sdktrace.RecordAndSample
	}
}

// idsKey is the context key of the ids a span of the decided provider
// takes.
type idsKey struct{}

type spanIDs struct {
	trace trace.TraceID
	span  trace.SpanID
}

// withIDs returns ctx naming the ids of the next span the decided provider
// starts.
func withIDs(ctx context.Context, tid trace.TraceID, sid trace.SpanID) context.Context {
	return context.WithValue(ctx, idsKey{}, spanIDs{tid, sid})
}

// contextIDs gives a span the ids its context names ([withIDs]), random
// ones where it names none: a message's span has its ids before it is
// started, since the message carries them on at once and its span may be
// written only after the fact.
type contextIDs struct{}

// NewIDs returns the trace and span id of a span without a parent.
func (contextIDs) NewIDs(ctx context.Context) (trace.TraceID, trace.SpanID) {
	if ids, ok := ctx.Value(idsKey{}).(spanIDs); ok {
		return ids.trace, ids.span
	}
	return newTraceID(), newSpanID()
}

// NewSpanID returns the span id of a span with a parent.
func (contextIDs) NewSpanID(ctx context.Context, _ trace.TraceID) trace.SpanID {
	if ids, ok := ctx.Value(idsKey{}).(spanIDs); ok {
		return ids.span
	}
	return newSpanID()
}

// newTraceID returns a random trace id.
func newTraceID() trace.TraceID {
	for {
		var id trace.TraceID
		binary.LittleEndian.PutUint64(id[:8], random())
		binary.LittleEndian.PutUint64(id[8:], random())
		if id.IsValid() {
			return id
		}
	}
}

// newSpanID returns a random span id.
func newSpanID() trace.SpanID {
	for {
		var id trace.SpanID
		binary.LittleEndian.PutUint64(id[:], random())
		if id.IsValid() {
			return id
		}
	}
}

// random returns 64 random bits of an id. Ids are made for every message
// at every stage: math/rand/v2's generator is ChaCha8 seeded from the
// system's entropy, one per thread, and takes no lock.
func random() uint64 {
	return rand.Uint64() //nolint:gosec // G404: ids must not collide, they are no secret; the generator is seeded from the system's entropy.
}
