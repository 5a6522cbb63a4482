package pg_test

import (
	"context"
	"errors"
	"fmt"
	"math"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/google/uuid"
	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/pgtype"

	"github.com/telemesh/telemesh/internal/pg"
	"github.com/telemesh/telemesh/internal/testdb"
)

// copyCase is a column type, values of it, how the encoder writes one and
// what pgx is given for it.
type copyCase struct {
	name string
	typ  string
	vals []any
	// write writes one value with the encoder.
	write func(c *pg.CopyRows, v any)
	// pgx returns what pgx.CopyFrom is given for v; nil means v itself.
	pgx func(v any) any
}

// nullIfZero is what pgx is given for a value the encoder's Null methods
// write as NULL when it is zero.
func nullIfZero[T comparable](v any) any {
	if v.(T) == *new(T) {
		return nil
	}
	return v
}

var (
	y2k       = time.Date(2000, 1, 1, 0, 0, 0, 0, time.UTC)
	someUUID  = [16]byte(uuid.MustParse("0190f3c4-8e1a-7c3b-9d2e-4f5a6b7c8d9e"))
	longText  = strings.Repeat("long text, longer than one CopyData message. ", 5000)
	berlin    = time.FixedZone("CEST", 2*3600)
	copyCases = []copyCase{
		{name: "uuid", typ: "uuid", vals: []any{[16]byte{}, someUUID, [16]byte(uuid.New())},
			write: func(c *pg.CopyRows, v any) { c.UUID(v.([16]byte)) }},
		{name: "null uuid", typ: "uuid", vals: []any{[16]byte{}, someUUID},
			write: func(c *pg.CopyRows, v any) { c.NullUUID(v.([16]byte)) },
			pgx:   func(v any) any { u := v.([16]byte); return pgtype.UUID{Bytes: u, Valid: u != [16]byte{}} }},
		{name: "text", typ: "text", vals: []any{"", "a", "unicode: héllo ✓ 日本語 🚀", "back\\slash\ttab\nnewline\r", `quotes "' and \N`, longText},
			write: func(c *pg.CopyRows, v any) { c.Text(v.(string)) }},
		{name: "null text", typ: "text", vals: []any{"", "x", " "},
			write: func(c *pg.CopyRows, v any) { c.NullText(v.(string)) }, pgx: nullIfZero[string]},
		{name: "varchar", typ: "varchar(20)", vals: []any{"", "kurz", "ünïcødé"},
			write: func(c *pg.CopyRows, v any) { c.Text(v.(string)) }},
		{name: "bigint", typ: "bigint", vals: []any{int64(0), int64(-1), int64(1) << 40, int64(math.MinInt64), int64(math.MaxInt64)},
			write: func(c *pg.CopyRows, v any) { c.Int64(v.(int64)) }},
		{name: "integer", typ: "integer", vals: []any{int32(0), int32(-7), int32(math.MinInt32), int32(math.MaxInt32)},
			write: func(c *pg.CopyRows, v any) { c.Int32(v.(int32)) }},
		{name: "smallint", typ: "smallint", vals: []any{int16(0), int16(-300), int16(math.MinInt16), int16(math.MaxInt16)},
			write: func(c *pg.CopyRows, v any) { c.Int16(v.(int16)) }},
		{name: "boolean", typ: "boolean", vals: []any{true, false},
			write: func(c *pg.CopyRows, v any) { c.Bool(v.(bool)) }},
		{name: "bytea", typ: "bytea", vals: []any{[]byte(nil), []byte{}, []byte{0, 1, 0xfe, 0xff}, []byte(`\x00 and \\`), []byte(longText)},
			write: func(c *pg.CopyRows, v any) { c.Bytea(v.([]byte)) }},
		{name: "jsonb", typ: "jsonb", vals: []any{`{}`, `[]`, `{"b": 2, "a": [1, "x", null, true]}`, `["x", {"y": 1.50}]`, `"a string"`,
			`12.5`, `null`, `  {"spaced" : "out" }  `, `{"u": "héllo ✓ \u00e9 \ud83d\ude80", "esc": "back\\slash\ttab\n"}`, `{"long": "` + longText + `"}`},
			write: func(c *pg.CopyRows, v any) { c.JSONB(v.(string)) }},
		{name: "null jsonb", typ: "jsonb", vals: []any{"", `{"a": 1}`, `[]`},
			write: func(c *pg.CopyRows, v any) { c.NullJSONB(v.(string)) }, pgx: nullIfZero[string]},
		{name: "jsonb bytes", typ: "jsonb", vals: []any{[]byte(nil), []byte(`{"a": [1, 2]}`), []byte(`"s"`)},
			write: func(c *pg.CopyRows, v any) { c.JSONBBytes(v.([]byte)) }},
		{name: "timestamptz", typ: "timestamptz", vals: []any{
			y2k, y2k.Add(time.Microsecond), y2k.Add(-time.Microsecond),
			time.Date(1999, 12, 31, 23, 59, 59, 999_999_000, time.UTC),
			time.Date(1970, 1, 1, 0, 0, 0, 0, time.UTC),
			time.Date(1969, 12, 31, 23, 59, 59, 500_000_000, time.UTC),
			time.Date(1900, 2, 28, 12, 30, 45, 123_456_000, time.UTC),
			time.Date(2026, 12, 6, 15, 37, 6, 123_456_789, time.UTC),
			time.Date(2026, 7, 1, 9, 0, 0, 1_999, berlin),
			time.Date(9999, 12, 31, 23, 59, 59, 999_999_000, time.UTC),
			time.Date(-4000, 1, 1, 0, 0, 0, 0, time.UTC),
			time.Time{},
		}, write: func(c *pg.CopyRows, v any) { c.Timestamptz(v.(time.Time)) }},
		{name: "null", typ: "text", vals: []any{nil},
			write: func(c *pg.CopyRows, _ any) { c.Null() }},
	}
)

// TestCopyRowsWritesWhatPgxWrites copies each case's values with the
// encoder and with pgx.CopyFrom into two tables of the same column and
// checks they hold the same rows.
func TestCopyRowsWritesWhatPgxWrites(t *testing.T) {
	db := testdb.New(t)
	for k, tt := range copyCases {
		t.Run(tt.name, func(t *testing.T) {
			ctx := t.Context()
			// pgx keeps the column types of a COPY's table by its name, on
			// the connection: each case's tables have names of their own.
			ours, theirs := fmt.Sprintf("ours_%d", k), fmt.Sprintf("theirs_%d", k)
			tx, err := db.Pool.Begin(ctx)
			if err != nil {
				t.Fatal(err)
			}
			defer func() { _ = tx.Rollback(context.WithoutCancel(ctx)) }()
			for _, table := range []string{ours, theirs} {
				if _, err := tx.Exec(ctx, fmt.Sprintf("create temporary table %s (n integer, v %s) on commit drop", table, tt.typ)); err != nil {
					t.Fatal(err)
				}
			}
			cols := []string{"n", "v"}
			c := pg.NewCopyRows(pgx.Identifier{ours}, cols)
			rows := make([][]any, len(tt.vals))
			for i, v := range tt.vals {
				c.Row()
				c.Int32(int32(i))
				tt.write(c, v)
				if tt.pgx != nil {
					v = tt.pgx(v)
				}
				rows[i] = []any{int32(i), v}
			}
			n, err := c.Send(ctx, tx)
			if err != nil {
				t.Fatalf("Send: %v", err)
			}
			if n != int64(len(tt.vals)) {
				t.Errorf("Send wrote %d rows, want %d", n, len(tt.vals))
			}
			if _, err := tx.CopyFrom(ctx, pgx.Identifier{theirs}, cols, pgx.CopyFromRows(rows)); err != nil {
				t.Fatalf("pgx.CopyFrom: %v", err)
			}
			got, want := rowsOf(t, tx, ours), rowsOf(t, tx, theirs)
			if len(got) != len(tt.vals) {
				t.Fatalf("%d rows copied, want %d", len(got), len(tt.vals))
			}
			for i := range got {
				if got[i] != want[i] {
					t.Errorf("value %d: the encoder wrote %.200s, pgx %.200s", i, got[i], want[i])
				}
			}
		})
	}
}

// rowsOf returns the rows of table as JSON, in the order of n.
func rowsOf(t *testing.T, tx pgx.Tx, table string) []string {
	t.Helper()
	rows, err := tx.Query(t.Context(), "select row_to_json(t)::text from "+table+" t order by n")
	if err != nil {
		t.Fatal(err)
	}
	out, err := pgx.CollectRows(rows, pgx.RowTo[string])
	if err != nil {
		t.Fatal(err)
	}
	return out
}

// TestCopyRowsQuotesNamesAndKeepsErrors copies into a table and columns
// whose names need quoting, and checks Postgres's refusal of a row reaches
// the caller as the *pgconn.PgError it is, leaving the connection usable.
func TestCopyRowsQuotesNamesAndKeepsErrors(t *testing.T) {
	db := testdb.New(t)
	ctx := t.Context()
	tx, err := db.Pool.Begin(ctx)
	if err != nil {
		t.Fatal(err)
	}
	defer func() { _ = tx.Rollback(context.WithoutCancel(ctx)) }()
	if _, err := tx.Exec(ctx, `create table "Odd ""table""" ("select" text primary key, "Mixed Case" bigint)`); err != nil {
		t.Fatal(err)
	}
	cols := []string{"select", "Mixed Case"}
	c := pg.NewCopyRows(pgx.Identifier{"Odd \"table\""}, cols)
	for i, k := range []string{"a", "b"} {
		c.Row()
		c.Text(k)
		c.Int64(int64(i))
	}
	if n, err := c.Send(ctx, tx); err != nil || n != 2 {
		t.Fatalf("Send = %d, %v; want 2 rows", n, err)
	}

	if _, err := tx.Exec(ctx, "savepoint s"); err != nil {
		t.Fatal(err)
	}
	c.Row()
	c.Text("a")
	c.Null()
	_, err = c.Send(ctx, tx)
	var pgErr *pgconn.PgError
	if !errors.As(err, &pgErr) || pgErr.Code != "23505" {
		t.Fatalf("Send of a duplicate key: %v, want a unique violation", err)
	}
	if _, err := tx.Exec(ctx, "rollback to savepoint s"); err != nil {
		t.Fatalf("the connection after a refused COPY: %v", err)
	}
	var n int
	if err := tx.QueryRow(ctx, `select count(*) from "Odd ""table"""`).Scan(&n); err != nil || n != 2 {
		t.Fatalf("%d rows (%v), want 2", n, err)
	}
}

// TestCopyRowsRefusesWhatItCannotEncode checks a row of the wrong width
// and a time beyond 64-bit microseconds fail Send before anything is sent,
// and that nothing is sent for no rows.
func TestCopyRowsRefusesWhatItCannotEncode(t *testing.T) {
	db := testdb.New(t)
	ctx := t.Context()
	tx, err := db.Pool.Begin(ctx)
	if err != nil {
		t.Fatal(err)
	}
	defer func() { _ = tx.Rollback(context.WithoutCancel(ctx)) }()
	// Sent, the rows would fail on a missing table.
	cols := []string{"a", "b"}
	c := pg.NewCopyRows(pgx.Identifier{"no_such_table"}, cols)
	if n, err := c.Send(ctx, tx); n != 0 || err != nil {
		t.Fatalf("Send of no rows = %d, %v; want nothing sent", n, err)
	}
	tests := []struct {
		name  string
		write func(c *pg.CopyRows)
		want  error
	}{
		{"too few values", func(c *pg.CopyRows) { c.Row(); c.Int64(1) }, nil},
		{"too many values", func(c *pg.CopyRows) {
			c.Row()
			c.Int64(1)
			c.Int64(2)
			c.Int64(3)
			c.Row()
			c.Int64(1)
			c.Int64(2)
		}, nil},
		{"a value before the first row", func(c *pg.CopyRows) { c.Int64(1); c.Int64(2) }, nil},
		{"a time in year 300000", func(c *pg.CopyRows) {
			c.Row()
			c.Int64(1)
			c.Timestamptz(time.Date(300_000, 1, 1, 0, 0, 0, 0, time.UTC))
		}, pg.ErrCopyValue},
		{"a time in year -300000", func(c *pg.CopyRows) {
			c.Row()
			c.Int64(1)
			c.Timestamptz(time.Date(-300_000, 1, 1, 0, 0, 0, 0, time.UTC))
		}, pg.ErrCopyValue},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			tt.write(c)
			_, err := c.Send(ctx, tx)
			if err == nil || (tt.want != nil && !errors.Is(err, tt.want)) {
				t.Fatalf("Send: %v, want an error (%v)", err, tt.want)
			}
			var pgErr *pgconn.PgError
			if errors.As(err, &pgErr) {
				t.Fatalf("Send sent the rows: %v", err)
			}
		})
	}
}

// TestCopyRowsTraces checks Send calls the connection's COPY tracer with
// what pgx.CopyFrom gives it.
func TestCopyRowsTraces(t *testing.T) {
	db := testdb.New(t)
	ctx := t.Context()
	var tr copyTracer
	pool, err := pg.Open(ctx, db.URL, pg.Options{Tracer: &tr})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(pool.Close)
	tx, err := pool.Begin(ctx)
	if err != nil {
		t.Fatal(err)
	}
	defer func() { _ = tx.Rollback(context.WithoutCancel(ctx)) }()
	if _, err := tx.Exec(ctx, `create temporary table ours (v text); create temporary table theirs (v text)`); err != nil {
		t.Fatal(err)
	}
	cols := []string{"v"}
	c := pg.NewCopyRows(pgx.Identifier{"ours"}, cols)
	for range 3 {
		c.Row()
		c.Text("x")
	}
	if _, err := c.Send(ctx, tx); err != nil {
		t.Fatal(err)
	}
	if _, err := tx.CopyFrom(ctx, pgx.Identifier{"theirs"}, cols, pgx.CopyFromRows([][]any{{"x"}, {"x"}, {"x"}})); err != nil {
		t.Fatal(err)
	}
	want := []string{`start "ours" [v]`, "end 3 <nil>", `start "theirs" [v]`, "end 3 <nil>"}
	if !slices.Equal(tr.calls, want) {
		t.Errorf("tracer calls %q, want %q", tr.calls, want)
	}
}

// copyTracer records the COPY tracer calls.
type copyTracer struct{ calls []string }

func (*copyTracer) TraceQueryStart(ctx context.Context, _ *pgx.Conn, _ pgx.TraceQueryStartData) context.Context {
	return ctx
}

func (*copyTracer) TraceQueryEnd(context.Context, *pgx.Conn, pgx.TraceQueryEndData) {}

func (tr *copyTracer) TraceCopyFromStart(ctx context.Context, _ *pgx.Conn, data pgx.TraceCopyFromStartData) context.Context {
	tr.calls = append(tr.calls, fmt.Sprintf("start %s %v", data.TableName.Sanitize(), data.ColumnNames))
	return ctx
}

func (tr *copyTracer) TraceCopyFromEnd(_ context.Context, _ *pgx.Conn, data pgx.TraceCopyFromEndData) {
	tr.calls = append(tr.calls, fmt.Sprintf("end %d %v", data.CommandTag.RowsAffected(), data.Err))
}
