package tracing

import (
	"context"
	"strings"

	"github.com/jackc/pgx/v5"
	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/codes"
	"go.opentelemetry.io/otel/trace"
)

// maxStatementBytes bounds the SQL text a span keeps: the statement is
// enough to find it in the code; its arguments, which may hold payloads,
// are never recorded.
const maxStatementBytes = 2048

// SQLTracer makes a client span of each query and COPY a stage runs on
// behalf of a sampled call, as the child of the call's span. Work with no
// span in its context (a background loop) makes none, so the trace of a
// batch holds its SQL and nothing else; nor does work under a span the
// head sampler left out, which would leave its children out too, so a
// statement of an unsampled call costs one look at its context.
type SQLTracer struct {
	tracer trace.Tracer
}

var (
	_ pgx.QueryTracer    = (*SQLTracer)(nil)
	_ pgx.CopyFromTracer = (*SQLTracer)(nil)
)

// SQLTracer returns the pgx tracer of p, or nil when tracing is off, so
// that a pool built without it pays nothing.
func (p *Provider) SQLTracer() *SQLTracer {
	if !p.Enabled() {
		return nil
	}
	return &SQLTracer{tracer: p.Tracer()}
}

// NewSQLTracer returns a tracer making spans with tp's tracer.
func NewSQLTracer(tp trace.TracerProvider) *SQLTracer {
	return &SQLTracer{tracer: tp.Tracer(instrumentation)}
}

// traced reports whether a statement run under ctx gets a span.
func traced(ctx context.Context) bool { return trace.SpanContextFromContext(ctx).IsSampled() }

func (t *SQLTracer) start(ctx context.Context, name string, attrs ...attribute.KeyValue) context.Context {
	attrs = append(attrs, attribute.String("db.system", "postgresql"))
	ctx, _ = t.tracer.Start(ctx, name, trace.WithSpanKind(trace.SpanKindClient), trace.WithAttributes(attrs...))
	return ctx
}

func (t *SQLTracer) end(ctx context.Context, rows int64, err error) {
	span := trace.SpanFromContext(ctx)
	if !span.IsRecording() {
		return
	}
	span.SetAttributes(attribute.Int64("db.rows_affected", rows))
	if err != nil {
		span.RecordError(err)
		span.SetStatus(codes.Error, err.Error())
	}
	span.End()
}

// TraceQueryStart starts the span of one statement.
func (t *SQLTracer) TraceQueryStart(ctx context.Context, _ *pgx.Conn, data pgx.TraceQueryStartData) context.Context {
	if !traced(ctx) {
		return ctx
	}
	op := operation(data.SQL)
	return t.start(ctx, "sql "+op,
		attribute.String("db.operation.name", op),
		attribute.String("db.query.text", statement(data.SQL)))
}

// TraceQueryEnd ends it with the rows it touched or its error.
func (t *SQLTracer) TraceQueryEnd(ctx context.Context, _ *pgx.Conn, data pgx.TraceQueryEndData) {
	t.end(ctx, data.CommandTag.RowsAffected(), data.Err)
}

// TraceCopyFromStart starts the span of one COPY.
func (t *SQLTracer) TraceCopyFromStart(ctx context.Context, _ *pgx.Conn, data pgx.TraceCopyFromStartData) context.Context {
	if !traced(ctx) {
		return ctx
	}
	return t.start(ctx, "sql copy "+data.TableName.Sanitize(),
		attribute.String("db.operation.name", "copy"),
		attribute.String("db.collection.name", data.TableName.Sanitize()))
}

// TraceCopyFromEnd ends it with the rows it wrote or its error.
func (t *SQLTracer) TraceCopyFromEnd(ctx context.Context, _ *pgx.Conn, data pgx.TraceCopyFromEndData) {
	t.end(ctx, data.CommandTag.RowsAffected(), data.Err)
}

// operation is the statement's first word, lower case: select, insert,
// update, with...
func operation(sql string) string {
	sql = strings.TrimSpace(sql)
	for strings.HasPrefix(sql, "--") {
		_, rest, _ := strings.Cut(sql, "\n")
		sql = strings.TrimSpace(rest)
	}
	word, _, _ := strings.Cut(sql, " ")
	word, _, _ = strings.Cut(word, "\n")
	word, _, _ = strings.Cut(word, "\t")
	return strings.ToLower(word)
}

// statement is the SQL text with its runs of blanks made one space and cut
// to maxStatementBytes.
func statement(sql string) string {
	s := strings.Join(strings.Fields(sql), " ")
	if len(s) > maxStatementBytes {
		// A cut inside a character leaves bytes that are not text.
		s = strings.ToValidUTF8(s[:maxStatementBytes], "")
	}
	return s
}
