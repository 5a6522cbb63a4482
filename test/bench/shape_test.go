package bench_test

import (
	"context"
	"fmt"
	"math"
	"slices"
	"strings"
	"testing"

	"github.com/jackc/pgx/v5"
)

// tableCounts returns the rows of every table of the database's schema
// (a partitioned table counts its partitions').
func tableCounts(tb testing.TB, conn *pgx.Conn) map[string]int {
	tb.Helper()
	ctx := context.Background()
	rows, err := conn.Query(ctx, `select c.relname from pg_class c join pg_namespace n on n.oid = c.relnamespace
		where n.nspname = current_schema() and c.relkind in ('r', 'p') and not c.relispartition order by 1`)
	if err != nil {
		tb.Fatalf("list tables: %v", err)
	}
	tables, err := pgx.CollectRows(rows, pgx.RowTo[string])
	if err != nil {
		tb.Fatalf("list tables: %v", err)
	}
	out := map[string]int{}
	for _, t := range tables {
		var n int
		if err := conn.QueryRow(ctx, "select count(*) from "+pgx.Identifier{t}.Sanitize()).Scan(&n); err != nil {
			tb.Fatalf("count %s: %v", t, err)
		}
		out[t] = n
	}
	return out
}

// grown returns, for each table that gained rows between before and after,
// the rows it gained per message of n.
func grown(before, after map[string]int, n int) map[string]float64 {
	out := map[string]float64{}
	for t, a := range after {
		if d := a - before[t]; d != 0 {
			out[t] = float64(d) / float64(n)
		}
	}
	return out
}

// sameRows returns what differs between the rows per message the pipeline
// wrote and those the ceiling writes, or "".
func sameRows(pipeline map[string]float64, ceiling map[string]int) string {
	// The per-minute counts grow by minute, not by message; the outbox is
	// empty once every message is processed.
	delete(pipeline, "ingestion_stage_counts")
	var diffs []string
	for t, c := range ceiling {
		if p := pipeline[t]; math.Abs(p-float64(c)) > 0.001 {
			diffs = append(diffs, fmt.Sprintf("%s: the pipeline wrote %.3g rows per message, the ceiling writes %d", t, p, c))
		}
	}
	for t, p := range pipeline {
		if _, ok := ceiling[t]; !ok {
			diffs = append(diffs, fmt.Sprintf("%s: the pipeline wrote %.3g rows per message, the ceiling writes none", t, p))
		}
	}
	slices.Sort(diffs)
	return strings.Join(diffs, "; ")
}

// tableProfile is what a table's rows look like: which columns hold a
// value in some row, and the average width of a row.
type tableProfile struct {
	rows    int
	filled  []string
	avgSize float64
}

// profile reads the profile of a table.
func profile(tb testing.TB, conn *pgx.Conn, table string) tableProfile {
	tb.Helper()
	ctx := context.Background()
	rows, err := conn.Query(ctx, `select column_name from information_schema.columns
		where table_schema = current_schema() and table_name = $1 order by ordinal_position`, table)
	if err != nil {
		tb.Fatalf("columns of %s: %v", table, err)
	}
	cols, err := pgx.CollectRows(rows, pgx.RowTo[string])
	if err != nil {
		tb.Fatalf("columns of %s: %v", table, err)
	}
	sel := []string{"count(*)", "coalesce(avg(pg_column_size(t.*)), 0)::float8"}
	for _, c := range cols {
		sel = append(sel, "count("+pgx.Identifier{c}.Sanitize()+")")
	}
	counts := make([]int, len(cols))
	var p tableProfile
	dest := []any{&p.rows, &p.avgSize}
	for i := range counts {
		dest = append(dest, &counts[i])
	}
	if err := conn.QueryRow(ctx, "select "+strings.Join(sel, ", ")+" from "+pgx.Identifier{table}.Sanitize()+" t").Scan(dest...); err != nil {
		tb.Fatalf("profile of %s: %v", table, err)
	}
	for i, c := range cols {
		if counts[i] > 0 {
			p.filled = append(p.filled, c)
		}
	}
	return p
}
