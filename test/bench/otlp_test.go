package bench_test

import (
	"context"
	"fmt"
	"net"
	"os"
	"strings"
	"sync/atomic"
	"testing"

	collectortracev1 "go.opentelemetry.io/proto/otlp/collector/trace/v1"
	"google.golang.org/grpc"

	"github.com/telemesh/telemesh/internal/tracing"
)

// traceSink is the OTLP/gRPC receiver of a traced run: it takes every
// export the stages send, as a collector would, counts the spans and keeps
// nothing, so the stages pay the real cost of exporting (the SDK's batcher,
// protobuf, gRPC) and the harness little.
type traceSink struct {
	collectortracev1.UnimplementedTraceServiceServer
	addr  string
	spans atomic.Int64
}

// startTraceSink serves a sink on loopback until the test ends.
func startTraceSink(tb testing.TB) *traceSink {
	tb.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		tb.Fatalf("listen for the trace sink: %v", err)
	}
	s := &traceSink{addr: ln.Addr().String()}
	srv := grpc.NewServer()
	collectortracev1.RegisterTraceServiceServer(srv, s)
	go func() { _ = srv.Serve(ln) }()
	tb.Cleanup(srv.Stop)
	return s
}

// Export counts the spans of one export.
func (s *traceSink) Export(_ context.Context, req *collectortracev1.ExportTraceServiceRequest) (*collectortracev1.ExportTraceServiceResponse, error) {
	var n int64
	for _, rs := range req.GetResourceSpans() {
		for _, ss := range rs.GetScopeSpans() {
			n += int64(len(ss.GetSpans()))
		}
	}
	s.spans.Add(n)
	return &collectortracev1.ExportTraceServiceResponse{}, nil
}

// tracedEnv is the environment of a traced run's stages: the sink as the
// OTLP endpoint, and the caller's OTEL_TRACES_SAMPLER and
// OTEL_TRACES_SAMPLER_ARG if set (else the default sampler and ratio), so
// `make bench` can measure another ratio. Every other OTEL_* setting of
// the caller is left out, as [startProc] leaves out all of them.
func (s *traceSink) tracedEnv() []string {
	env := []string{"OTEL_EXPORTER_OTLP_ENDPOINT=http://" + s.addr}
	return append(env, samplerEnv()...)
}

// samplerEnv is the caller's OTEL_TRACES_SAMPLER and
// OTEL_TRACES_SAMPLER_ARG, as KEY=value.
func samplerEnv() []string {
	var env []string
	for _, k := range []string{"OTEL_TRACES_SAMPLER", "OTEL_TRACES_SAMPLER_ARG"} {
		if v, ok := os.LookupEnv(k); ok {
			env = append(env, k+"="+v)
		}
	}
	return env
}

// tracingSetting reads the tracing a traced run has, as the stages will:
// the sampler and its ratio. An unusable OTEL_TRACES_SAMPLER(_ARG) of the
// caller stops the harness before it starts anything.
func tracingSetting(tb testing.TB) string {
	tb.Helper()
	vars := map[string]string{"OTEL_EXPORTER_OTLP_ENDPOINT": "http://127.0.0.1:4317"}
	for _, kv := range samplerEnv() {
		k, v, _ := strings.Cut(kv, "=")
		vars[k] = v
	}
	cfg, err := tracing.ConfigFromEnv(func(k string) (string, bool) { v, ok := vars[k]; return v, ok })
	if err != nil {
		tb.Fatalf("the traced runs' sampler: %v", err)
	}
	return describeSampler(cfg)
}

// describeSampler names a sampler and, for the ratio samplers, its ratio.
func describeSampler(cfg tracing.Config) string {
	if strings.HasSuffix(cfg.Sampler, "traceidratio") {
		return fmt.Sprintf("%s at %s %%", cfg.Sampler, strings.TrimSuffix(strings.TrimRight(fmt.Sprintf("%.4f", 100*cfg.Ratio), "0"), "."))
	}
	return cfg.Sampler
}

// TestTracedRunsExport runs a few hundred messages through a traced mesh of
// each shape, everything sampled (OTEL_TRACES_SAMPLER_ARG=1, as a caller
// may set it), and checks the sink received at least the six message spans
// of every message: both shapes honour the OTEL_* settings a traced run
// gives them.
func TestTracedRunsExport(t *testing.T) {
	if testing.Short() {
		t.Skip("runs the pipeline with nats-server; not part of the quick set")
	}
	t.Setenv("OTEL_TRACES_SAMPLER", "parentbased_traceidratio")
	t.Setenv("OTEL_TRACES_SAMPLER_ARG", "1")
	const n = 200
	for _, shape := range []string{inProcess, production} {
		t.Run(shape, func(t *testing.T) {
			var r *throughput
			t.Run("run", func(t *testing.T) {
				rig := setup(t, nil)
				rig.startTraced(shape, tracedMode)
				r = rig.runBacklog(n)
			})
			// The mesh has stopped by now, and flushed its spans.
			if r == nil {
				t.Fatal("the traced run did not finish")
			}
			if got := r.sink.spans.Load(); got < 6*n {
				t.Errorf("the sink received %d spans for %d messages, want at least %d (one per stage of each)", got, n, 6*n)
			}
		})
	}
}
