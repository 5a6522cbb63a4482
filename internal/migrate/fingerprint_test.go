package migrate_test

import (
	"context"
	"io/fs"
	"slices"
	"testing"

	"github.com/jackc/pgx/v5"

	"github.com/telemesh/telemesh/internal/migrate"
	"github.com/telemesh/telemesh/internal/testdb"
	"github.com/telemesh/telemesh/migrations"
)

// TestEachDownUndoesItsUp migrates up one version at a time, recording the
// schema before each, then rolls back one at a time and checks that every
// Down leaves exactly the schema that was there before its Up.
func TestEachDownUndoesItsUp(t *testing.T) {
	t.Parallel()
	db := testdb.NewEmpty(t)
	ctx := t.Context()
	files, err := fs.Glob(migrations.FS, "*.sql")
	if err != nil {
		t.Fatal(err)
	}

	before := map[int64][]string{}
	for range files {
		fp := schema(ctx, t, db.URL)
		v, err := migrate.Step(ctx, db.URL, true)
		if err != nil {
			t.Fatalf("up one: %v", err)
		}
		before[v] = fp
	}
	for range files {
		v, err := migrate.Step(ctx, db.URL, false)
		if err != nil {
			t.Fatalf("down one: %v", err)
		}
		if got, want := schema(ctx, t, db.URL), before[v]; !slices.Equal(got, want) {
			t.Errorf("down %d does not undo up %d:\nonly after: %v\nonly before: %v", v, v, diff(got, want), diff(want, got))
		}
	}
}

// schema describes everything the migrations can create in the public
// schema, goose's own table aside, and the privileges they can grant or
// take on it and on what it holds.
func schema(ctx context.Context, t *testing.T, url string) []string {
	t.Helper()
	conn, err := pgx.Connect(ctx, url)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close(context.Background())
	rows, err := conn.Query(ctx, `
		select 'relation ' || c.relname || ' ' || c.relkind::text || coalesce(' ' || obj_description(c.oid, 'pg_class'), '')
		from pg_class c where c.relnamespace = 'public'::regnamespace and c.relname not like 'goose_db_version%'
		union all
		select 'column ' || c.relname || '.' || a.attname || ' ' || format_type(a.atttypid, a.atttypmod)
			|| case when a.attnotnull then ' not null' else '' end || coalesce(' default ' || pg_get_expr(d.adbin, d.adrelid), '')
		from pg_attribute a join pg_class c on c.oid = a.attrelid
		left join pg_attrdef d on d.adrelid = a.attrelid and d.adnum = a.attnum
		where c.relnamespace = 'public'::regnamespace and c.relname not like 'goose_db_version%' and a.attnum > 0 and not a.attisdropped
		union all
		select 'constraint ' || conrelid::regclass::text || ' ' || conname || ' ' || pg_get_constraintdef(oid)
		from pg_constraint where connamespace = 'public'::regnamespace and conrelid::regclass::text not like 'goose_db_version%'
		union all
		select 'index ' || pg_get_indexdef(indexrelid) from pg_index i join pg_class c on c.oid = i.indrelid
		where c.relnamespace = 'public'::regnamespace and c.relname not like 'goose_db_version%'
		union all
		select 'function ' || p.oid::regprocedure::text || ' ' || md5(p.prosrc) from pg_proc p where p.pronamespace = 'public'::regnamespace
		union all
		select 'trigger ' || tgrelid::regclass::text || ' ' || tgname from pg_trigger where not tgisinternal
		union all
		select 'type ' || typname from pg_type where typnamespace = 'public'::regnamespace and typname not like '%goose_db_version%'
		union all
		select 'schema privileges ' || coalesce(array_to_string(nspacl, ' '), 'default') from pg_namespace where nspname = 'public'
		union all
		select 'privileges ' || c.relname || ' ' || array_to_string(c.relacl, ' ')
		from pg_class c where c.relnamespace = 'public'::regnamespace and c.relname not like 'goose_db_version%' and c.relacl is not null
		union all
		select 'privileges ' || p.oid::regprocedure::text || ' ' || array_to_string(p.proacl, ' ')
		from pg_proc p where p.pronamespace = 'public'::regnamespace and p.proacl is not null
		order by 1`)
	if err != nil {
		t.Fatal(err)
	}
	out, err := pgx.CollectRows(rows, pgx.RowTo[string])
	if err != nil {
		t.Fatal(err)
	}
	return out
}

func diff(a, b []string) []string {
	var out []string
	for _, s := range a {
		if !slices.Contains(b, s) {
			out = append(out, s)
		}
	}
	return out
}
