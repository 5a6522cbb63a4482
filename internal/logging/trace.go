package logging

import (
	"context"
	"log/slog"

	"go.opentelemetry.io/otel/trace"
)

// traceIDs is a handler that adds the trace_id of the span in a record's
// context, so a line logged while handling a traced call leads to its trace
// and the trace back to the line. Lines without a span are left as they are.
type traceIDs struct{ slog.Handler }

// Handle adds trace_id when ctx holds a valid span context.
func (h traceIDs) Handle(ctx context.Context, r slog.Record) error {
	if sc := trace.SpanContextFromContext(ctx); sc.IsValid() {
		r = r.Clone()
		r.AddAttrs(slog.String("trace_id", sc.TraceID().String()))
	}
	return h.Handler.Handle(ctx, r)
}

// WithAttrs keeps the trace ids on the derived handler.
func (h traceIDs) WithAttrs(attrs []slog.Attr) slog.Handler {
	return traceIDs{h.Handler.WithAttrs(attrs)}
}

// WithGroup keeps the trace ids on the derived handler.
func (h traceIDs) WithGroup(name string) slog.Handler {
	return traceIDs{h.Handler.WithGroup(name)}
}
