package pg_test

import (
	"strings"
	"testing"

	"github.com/telemesh/telemesh/internal/pg"
	"github.com/telemesh/telemesh/internal/testdb"
)

// TestLookupIsPlannedForTheTableItReads: a statement prepared while its
// table is empty is planned again at each execution, so once the table
// holds many rows a lookup of a batch of keys uses the index, not the
// sequential scan a generic plan made on the empty table keeps.
func TestLookupIsPlannedForTheTableItReads(t *testing.T) {
	db := testdb.New(t)
	pool, err := pg.Open(t.Context(), db.URL, pg.Options{MaxConns: 1})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(pool.Close)
	ctx := t.Context()
	// The duplicate check of a batch: on the empty table of a fresh
	// database a generic plan for it is a sequential scan.
	const lookup = `select dedupe_key, id, status from ingestion_messages where dedupe_key = any($1) and status not in ('parked', 'queued')`
	// More executions than the five after which Postgres may settle on a
	// generic plan.
	for range 10 {
		rows, err := pool.Query(ctx, lookup, []string{"a", "b", "c"})
		if err != nil {
			t.Fatal(err)
		}
		rows.Close()
	}
	_, err = pool.Exec(ctx, `insert into ingestion_messages (source_subject, dedupe_key, status, received_at, stream_sequence)
		select 's', 'k' || g, 'completed', now(), g from generate_series(1, 50000) g`)
	if err != nil {
		t.Fatal(err)
	}
	rows, err := pool.Query(ctx, lookup, []string{"k1", "k2", "k3"})
	if err != nil {
		t.Fatal(err)
	}
	rows.Close()
	// The pool has one connection: the statement pgx prepared is on it.
	var generic, custom int64
	err = pool.QueryRow(ctx, `select generic_plans, custom_plans from pg_prepared_statements where statement = $1`, lookup).Scan(&generic, &custom)
	if err != nil {
		t.Fatalf("the lookup's prepared statement: %v", err)
	}
	if generic != 0 {
		t.Errorf("the lookup ran %d times on a generic plan (%d custom): a plan made on the empty table is kept as it grows", generic, custom)
	}
	var mode string
	if err := pool.QueryRow(ctx, `show plan_cache_mode`).Scan(&mode); err != nil {
		t.Fatal(err)
	}
	if mode != "force_custom_plan" {
		t.Errorf("plan_cache_mode %q, want force_custom_plan", mode)
	}
}

// TestPlanCacheModeFromTheURLIsKept: an operator's own plan_cache_mode in
// the URL wins.
func TestPlanCacheModeFromTheURLIsKept(t *testing.T) {
	db := testdb.NewEmpty(t)
	pool, err := pg.Open(t.Context(), db.URL+sep(db.URL)+"plan_cache_mode=auto", pg.Options{MaxConns: 1})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(pool.Close)
	var mode string
	if err := pool.QueryRow(t.Context(), `show plan_cache_mode`).Scan(&mode); err != nil {
		t.Fatal(err)
	}
	if mode != "auto" {
		t.Errorf("plan_cache_mode %q, want the URL's auto", mode)
	}
}

func sep(url string) string {
	return map[bool]string{true: "&", false: "?"}[strings.Contains(url, "?")]
}
