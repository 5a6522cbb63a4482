package tracing

import (
	"context"
	"strings"
	"testing"
	"unicode/utf8"

	"github.com/jackc/pgx/v5"
	"go.opentelemetry.io/otel/codes"
	sdktrace "go.opentelemetry.io/otel/sdk/trace"
	"go.opentelemetry.io/otel/sdk/trace/tracetest"
	"go.opentelemetry.io/otel/trace"

	"github.com/telemesh/telemesh/internal/pg"
	"github.com/telemesh/telemesh/internal/testdb"
)

// The SQL a traced call runs is in its trace: each statement and COPY a
// child span with the statement's text (never its arguments), the rows
// and the error; SQL run outside any trace, or under a span that is not
// sampled, makes no span.
func TestSQLSpans(t *testing.T) {
	rec := tracetest.NewSpanRecorder()
	tp := sdktrace.NewTracerProvider(sdktrace.WithSpanProcessor(rec))
	defer func() { _ = tp.Shutdown(context.Background()) }()
	db := testdb.New(t)
	ctx := t.Context()
	pool, err := pg.Open(ctx, db.URL, pg.Options{Tracer: NewSQLTracer(tp)})
	if err != nil {
		t.Fatal(err)
	}
	defer pool.Close()

	// Outside a trace: nothing.
	if _, err := pool.Exec(ctx, `select 1`); err != nil {
		t.Fatal(err)
	}
	if n := len(rec.Ended()); n != 0 {
		t.Fatalf("%d spans for SQL outside a trace, want 0", n)
	}
	// Under a span the head sampler left out: nothing either.
	unsampled := trace.ContextWithSpanContext(ctx, trace.NewSpanContext(trace.SpanContextConfig{TraceID: newTraceID(), SpanID: newSpanID()}))
	if _, err := pool.Exec(unsampled, `select 1`); err != nil {
		t.Fatal(err)
	}
	if n := len(rec.Ended()); n != 0 {
		t.Fatalf("%d spans for SQL under an unsampled span, want 0", n)
	}

	ctx, call := tp.Tracer("test").Start(ctx, "call")
	if _, err := pool.Exec(ctx, `create temporary table t (v text)`); err != nil {
		t.Fatal(err)
	}
	conn, err := pool.Acquire(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := conn.Exec(ctx, `create temporary table c (v text)`); err != nil {
		t.Fatal(err)
	}
	if _, err := conn.CopyFrom(ctx, pgx.Identifier{"c"}, []string{"v"}, pgx.CopyFromRows([][]any{{"a"}, {"b"}})); err != nil {
		t.Fatal(err)
	}
	if _, err := conn.Exec(ctx, "update c\n\tset v = $1 where v = 'a'", "secret-argument"); err != nil {
		t.Fatal(err)
	}
	if _, err := conn.Exec(ctx, `select * from no_such_table`); err == nil {
		t.Fatal("a query of a missing table succeeded")
	}
	conn.Release()
	call.End()

	parent := call.SpanContext().SpanID()
	byName := map[string]sdktrace.ReadOnlySpan{}
	for _, s := range rec.Ended() {
		if s.Name() == "call" {
			continue
		}
		if s.Parent().SpanID() != parent {
			t.Errorf("span %s has parent %s, want the call's %s", s.Name(), s.Parent().SpanID(), parent)
		}
		byName[s.Name()] = s
	}
	attr := func(s sdktrace.ReadOnlySpan, key string) string {
		for _, kv := range s.Attributes() {
			if string(kv.Key) == key {
				return kv.Value.Emit()
			}
		}
		return ""
	}
	cp, ok := byName[`sql copy "c"`]
	if !ok {
		t.Fatalf("no span of the COPY among %v", keys(byName))
	}
	if got := attr(cp, "db.rows_affected"); got != "2" {
		t.Errorf("COPY span rows %q, want 2", got)
	}
	up, ok := byName["sql update"]
	if !ok {
		t.Fatalf("no span of the update among %v", keys(byName))
	}
	if got := attr(up, "db.query.text"); got != "update c set v = $1 where v = 'a'" {
		t.Errorf("update span's statement %q", got)
	}
	if got := attr(up, "db.rows_affected"); got != "1" {
		t.Errorf("update span rows %q, want 1", got)
	}
	for _, s := range rec.Ended() {
		for _, kv := range s.Attributes() {
			if strings.Contains(kv.Value.Emit(), "secret-argument") {
				t.Errorf("span %s records an argument: %s=%s", s.Name(), kv.Key, kv.Value.Emit())
			}
		}
	}
	sel, ok := byName["sql select"]
	if !ok {
		t.Fatalf("no span of the failed select among %v", keys(byName))
	}
	if sel.Status().Code != codes.Error || !strings.Contains(sel.Status().Description, "no_such_table") {
		t.Errorf("failed select's status %+v, want an error naming the table", sel.Status())
	}
}

// A COPY the stages encode themselves (pg.CopyRows), which goes to pgconn
// past pgx's tracing, still has its span under the caller's.
func TestSQLSpanOfAnEncodedCopy(t *testing.T) {
	rec := tracetest.NewSpanRecorder()
	tp := sdktrace.NewTracerProvider(sdktrace.WithSpanProcessor(rec))
	defer func() { _ = tp.Shutdown(context.Background()) }()
	db := testdb.New(t)
	pool, err := pg.Open(t.Context(), db.URL, pg.Options{Tracer: NewSQLTracer(tp)})
	if err != nil {
		t.Fatal(err)
	}
	defer pool.Close()
	ctx, call := tp.Tracer("test").Start(t.Context(), "call")
	err = pgx.BeginFunc(ctx, pool, func(tx pgx.Tx) error {
		if _, err := tx.Exec(ctx, `create temporary table c (v text)`); err != nil {
			return err
		}
		c := pg.NewCopyRows(pgx.Identifier{"c"}, []string{"v"})
		for range 3 {
			c.Row()
			c.Text("x")
		}
		_, err := c.Send(ctx, tx)
		return err
	})
	if err != nil {
		t.Fatal(err)
	}
	call.End()
	for _, s := range rec.Ended() {
		if s.Name() != `sql copy "c"` {
			continue
		}
		if s.Parent().SpanID() != call.SpanContext().SpanID() {
			t.Errorf("COPY span's parent %s, want the call's %s", s.Parent().SpanID(), call.SpanContext().SpanID())
		}
		rows := ""
		for _, kv := range s.Attributes() {
			if kv.Key == "db.rows_affected" {
				rows = kv.Value.Emit()
			}
		}
		if rows != "3" {
			t.Errorf("COPY span rows %q, want 3", rows)
		}
		return
	}
	t.Fatalf("no span of the COPY among %d spans", len(rec.Ended()))
}

func TestStatementAndOperation(t *testing.T) {
	for _, tt := range []struct{ sql, op string }{
		{"select 1", "select"},
		{"\n\t-- why\n  INSERT into x values (1)", "insert"},
		{"with a as (select 1) select * from a", "with"},
		{"update\tt set v = 1", "update"},
	} {
		if got := operation(tt.sql); got != tt.op {
			t.Errorf("operation(%q) = %q, want %q", tt.sql, got, tt.op)
		}
	}
	long := "select '" + strings.Repeat("é", maxStatementBytes) + "'"
	if got := statement(long); len(got) > maxStatementBytes || !strings.HasPrefix(got, "select 'é") || !utf8Valid(got) {
		t.Errorf("statement of %d bytes: %d bytes, valid %v", len(long), len(got), utf8Valid(got))
	}
}

func keys(m map[string]sdktrace.ReadOnlySpan) []string {
	var out []string
	for k := range m {
		out = append(out, k)
	}
	return out
}

func utf8Valid(s string) bool { return utf8.ValidString(s) }
