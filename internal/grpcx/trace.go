package grpcx

import (
	"strings"

	"go.opentelemetry.io/contrib/instrumentation/google.golang.org/grpc/otelgrpc"
	metricnoop "go.opentelemetry.io/otel/metric/noop"
	"go.opentelemetry.io/otel/trace"
	"google.golang.org/grpc/stats"

	"github.com/telemesh/telemesh/internal/tracing"
)

// otelOptions are the stats handlers' options: the W3C trace context in the
// call metadata, spans only (the Prometheus interceptors count calls), and
// no span for health checks and reflection, which probes and client-side
// health checking make all the time.
func otelOptions(tp trace.TracerProvider) []otelgrpc.Option {
	return []otelgrpc.Option{
		otelgrpc.WithTracerProvider(tp),
		otelgrpc.WithPropagators(tracing.Propagator),
		otelgrpc.WithMeterProvider(metricnoop.NewMeterProvider()),
		otelgrpc.WithFilter(func(info *stats.RPCTagInfo) bool {
			return !strings.HasPrefix(info.FullMethodName, "/grpc.health.v1.") && !strings.HasPrefix(info.FullMethodName, "/grpc.reflection.")
		}),
	}
}

// serverStatsHandler returns the tracing stats handler of a server, nil
// when tracing is off so an untraced server pays nothing for it.
func serverStatsHandler(tp trace.TracerProvider) stats.Handler {
	if tp == nil {
		return nil
	}
	return otelgrpc.NewServerHandler(otelOptions(tp)...)
}

// clientStatsHandler is [serverStatsHandler] for a client connection.
func clientStatsHandler(tp trace.TracerProvider) stats.Handler {
	if tp == nil {
		return nil
	}
	return otelgrpc.NewClientHandler(otelOptions(tp)...)
}
