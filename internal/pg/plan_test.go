package pg_test

import (
	"errors"
	"testing"

	"github.com/jackc/pgx/v5"

	"github.com/telemesh/telemesh/internal/pg"
	"github.com/telemesh/telemesh/internal/testdb"
)

// TestLookupIsPlannedForTheTableItReads: a batch's duplicate check, run
// many times while its table is empty, is still planned for the table as
// it is once the table holds many rows when it runs with
// [pg.PlanEachTime]. Without it, the statement pgx prepared settles on a
// generic plan made on the empty table, which the test sees too, so it
// can tell the two apart.
func TestLookupIsPlannedForTheTableItReads(t *testing.T) {
	const lookup = `select dedupe_key, id, status from ingestion_messages where dedupe_key = any($1) and status not in ('parked', 'queued')`
	tests := []struct {
		name        string
		mode        []any
		wantGeneric bool
	}{
		{"prepared once", nil, true},
		{"planned each time", []any{pg.PlanEachTime}, false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			db := testdb.New(t)
			pool, err := pg.Open(t.Context(), db.URL, pg.Options{MaxConns: 1})
			if err != nil {
				t.Fatal(err)
			}
			t.Cleanup(pool.Close)
			ctx := t.Context()
			run := func(keys ...string) {
				t.Helper()
				rows, err := pool.Query(ctx, lookup, append(tt.mode, keys)...)
				if err != nil {
					t.Fatal(err)
				}
				rows.Close()
			}
			// More executions than the five after which Postgres may
			// settle on a generic plan.
			for range 10 {
				run("a", "b", "c")
			}
			_, err = pool.Exec(ctx, `insert into ingestion_messages (source_subject, dedupe_key, status, received_at, stream_sequence)
				select 's', 'k' || g, 'completed', now(), g from generate_series(1, 50000) g`)
			if err != nil {
				t.Fatal(err)
			}
			run("k1", "k2", "k3")
			// The pool has one connection: a statement pgx prepared is on it.
			var generic int64
			err = pool.QueryRow(ctx, `select generic_plans from pg_prepared_statements where statement = $1`, lookup).Scan(&generic)
			switch {
			case errors.Is(err, pgx.ErrNoRows):
				generic = 0
			case err != nil:
				t.Fatal(err)
			}
			if got := generic > 0; got != tt.wantGeneric {
				t.Errorf("ran %d times on a generic plan made on the empty table, want generic plans: %v", generic, tt.wantGeneric)
			}
		})
	}
}
