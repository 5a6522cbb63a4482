package migrate_test

import (
	"bytes"
	"context"
	"errors"
	"io/fs"
	"log/slog"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/google/uuid"
	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/telemesh/telemesh/internal/migrate"
	"github.com/telemesh/telemesh/internal/testdb"
	"github.com/telemesh/telemesh/migrations"
)

// embedded lists the migration files in version order.
func embedded(t *testing.T) []string {
	t.Helper()
	names, err := fs.Glob(migrations.FS, "*.sql")
	if err != nil || len(names) == 0 {
		t.Fatalf("embedded migrations: %v, %v", names, err)
	}
	return names
}

// fileVersion is the version a migration file's name begins with. The
// numbers need not be contiguous: migrations written side by side are
// numbered apart.
func fileVersion(t *testing.T, name string) int64 {
	t.Helper()
	digits, _, ok := strings.Cut(name, "_")
	v, err := strconv.ParseInt(digits, 10, 64)
	if !ok || err != nil {
		t.Fatalf("migration %s does not begin with its version", name)
	}
	return v
}

// leftovers lists what the migrations could leave in the public schema:
// relations other than goose's version table, functions, and types.
func leftovers(t *testing.T, pool *pgxpool.Pool) []string {
	t.Helper()
	rows, err := pool.Query(t.Context(), `
		select 'relation ' || c.relname from pg_class c
		where c.relnamespace = 'public'::regnamespace and c.relname not like 'goose_db_version%'
		union all
		select 'function ' || p.proname from pg_proc p where p.pronamespace = 'public'::regnamespace
		union all
		select 'type ' || t.typname from pg_type t
		where t.typnamespace = 'public'::regnamespace and t.typname not like '%goose_db_version%'
		order by 1`)
	if err != nil {
		t.Fatal(err)
	}
	names, err := pgx.CollectRows(rows, pgx.RowTo[string])
	if err != nil {
		t.Fatal(err)
	}
	return names
}

func TestUpDownUp(t *testing.T) {
	t.Parallel()
	db := testdb.NewEmpty(t)
	ctx := t.Context()
	files := embedded(t)

	var logs bytes.Buffer
	res, err := migrate.Up(ctx, db.URL, slog.New(slog.NewTextHandler(&logs, nil)))
	if err != nil {
		t.Fatalf("up: %v", err)
	}
	if len(res) != len(files) {
		t.Fatalf("up applied %d migrations, want %d", len(res), len(files))
	}
	for i, r := range res {
		if r.Name != files[i] || r.Direction != "up" || r.Version != fileVersion(t, files[i]) {
			t.Errorf("result %d = %+v, want up %s version %d", i, r, files[i], fileVersion(t, files[i]))
		}
		if !strings.Contains(logs.String(), "name="+r.Name) {
			t.Errorf("no log line for %s:\n%s", r.Name, logs.String())
		}
	}
	if len(leftovers(t, db.Pool)) == 0 {
		t.Fatal("nothing in the schema after up")
	}

	res, err = migrate.Up(ctx, db.URL, nil)
	if err != nil || len(res) != 0 {
		t.Fatalf("second up: %d applied, %v; want 0, nil", len(res), err)
	}

	res, err = migrate.Down(ctx, db.URL, 0, nil)
	if err != nil {
		t.Fatalf("down to 0: %v", err)
	}
	if len(res) != len(files) || res[0].Version != fileVersion(t, files[len(files)-1]) || res[0].Direction != "down" {
		t.Fatalf("down to 0 = %+v, want %d migrations, newest first", res, len(files))
	}
	if left := leftovers(t, db.Pool); len(left) != 0 {
		t.Fatalf("after down to 0, left behind: %v", left)
	}

	if res, err := migrate.Up(ctx, db.URL, nil); err != nil || len(res) != len(files) {
		t.Fatalf("up again: %d applied, %v", len(res), err)
	}
}

// TestPublicMayNotCreate: after the migrations PUBLIC may not create in
// the schema, even where the server let it (Postgres before 15; granted by
// hand here).
func TestPublicMayNotCreate(t *testing.T) {
	t.Parallel()
	db := testdb.NewEmpty(t)
	ctx := t.Context()
	if _, err := db.Pool.Exec(ctx, `grant create on schema public to public`); err != nil {
		t.Fatal(err)
	}
	if _, err := migrate.Up(ctx, db.URL, nil); err != nil {
		t.Fatalf("up: %v", err)
	}
	var may bool
	if err := db.Pool.QueryRow(ctx, `select has_schema_privilege('public', 'public', 'CREATE')`).Scan(&may); err != nil {
		t.Fatal(err)
	}
	if may {
		t.Error("PUBLIC may still create in the schema")
	}
}

func TestStatus(t *testing.T) {
	t.Parallel()
	db := testdb.NewEmpty(t)
	ctx := t.Context()
	files := embedded(t)

	check := func(t *testing.T, appliedUpTo int64) {
		t.Helper()
		st, err := migrate.Status(ctx, db.URL)
		if err != nil {
			t.Fatal(err)
		}
		if len(st) != len(files) {
			t.Fatalf("status lists %d migrations, want %d", len(st), len(files))
		}
		for i, s := range st {
			want := s.Version <= appliedUpTo
			if s.Name != files[i] || s.Version != fileVersion(t, files[i]) || s.Applied != want || s.AppliedAt.IsZero() == want {
				t.Errorf("status[%d] = %+v, want %s applied=%v", i, s, files[i], want)
			}
		}
	}
	t.Run("fresh", func(t *testing.T) { check(t, 0) })
	if _, err := migrate.Up(ctx, db.URL, nil); err != nil {
		t.Fatal(err)
	}
	t.Run("after up", func(t *testing.T) { check(t, fileVersion(t, files[len(files)-1])) })
	if _, err := migrate.Down(ctx, db.URL, 2, nil); err != nil {
		t.Fatal(err)
	}
	t.Run("after down to 2", func(t *testing.T) { check(t, 2) })
}

func TestConcurrentUp(t *testing.T) {
	t.Parallel()
	db := testdb.NewEmpty(t)
	var wg sync.WaitGroup
	applied := make([]int, 3)
	errs := make([]error, 3)
	for i := range applied {
		wg.Go(func() {
			res, err := migrate.Up(t.Context(), db.URL, nil)
			applied[i], errs[i] = len(res), err
		})
	}
	wg.Wait()
	total := 0
	for i := range applied {
		if errs[i] != nil {
			t.Errorf("up %d: %v", i, errs[i])
		}
		total += applied[i]
	}
	if want := len(embedded(t)); total != want {
		t.Fatalf("three concurrent ups applied %v migrations in all, want %d once", applied, want)
	}
}

func TestErrors(t *testing.T) {
	t.Parallel()
	// Generous: each case fails at once; a busy machine only slows it.
	ctx, cancel := context.WithTimeout(t.Context(), 2*time.Minute)
	defer cancel()
	tests := []struct {
		name string
		run  func() error
		want string
	}{
		{"malformed url", func() error {
			_, err := migrate.Up(ctx, "postgres://app:hunter2@db:notaport/x", nil)
			return err
		}, "migrate"},
		{"nobody listening", func() error {
			_, err := migrate.Status(ctx, "postgres://app:hunter2@127.0.0.1:1/x?sslmode=disable")
			return err
		}, "connect to postgres://app@127.0.0.1:1/x"},
		{"negative target", func() error {
			_, err := migrate.Down(ctx, "postgres://app:hunter2@127.0.0.1:1/x", -1, nil)
			return err
		}, "negative"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			err := tt.run()
			if err == nil || !strings.Contains(err.Error(), tt.want) {
				t.Fatalf("err = %v, want one containing %q", err, tt.want)
			}
			if strings.Contains(err.Error(), "hunter2") {
				t.Fatalf("error shows the password: %v", err)
			}
		})
	}
}

func TestSchema(t *testing.T) {
	t.Parallel()
	db := testdb.New(t)
	ctx := t.Context()
	exec := func(sql string, args ...any) error {
		_, err := db.Pool.Exec(ctx, sql, args...)
		return err
	}
	count := func(t *testing.T, sql string, args ...any) int {
		t.Helper()
		var n int
		if err := db.Pool.QueryRow(ctx, sql, args...).Scan(&n); err != nil {
			t.Fatal(err)
		}
		return n
	}
	today := time.Now().UTC()

	t.Run("partitions exist from yesterday to a week ahead", func(t *testing.T) {
		for _, parent := range []string{"device_telemetry_logs", "ingestion_stage_logs"} {
			for d := -1; d <= 7; d++ {
				name := parent + "_p" + today.AddDate(0, 0, d).Format("20060102")
				if count(t, `select count(*) from pg_inherits where inhrelid = to_regclass($1) and inhparent = $2::regclass`, name, parent) != 1 {
					t.Errorf("partition %s missing", name)
				}
			}
			if count(t, `select count(*) from pg_inherits where inhrelid = to_regclass($1)`, parent+"_default") != 1 {
				t.Errorf("%s has no default partition", parent)
			}
		}
	})

	telemetry := func(recordedAt time.Time) error {
		return exec(`insert into device_telemetry_logs (id, recorded_at, received_at, device_id, topic, ingestion_message_id, validation_status, processing_state)
			values ($1, $2, now(), $3, 'telemetry', $1, 'valid', 'pending')`, uuid.Must(uuid.NewV7()), recordedAt, uuid.New())
	}
	t.Run("today's row lands in today's partition", func(t *testing.T) {
		if err := telemetry(today); err != nil {
			t.Fatal(err)
		}
		if n := count(t, `select count(*) from device_telemetry_logs_p`+today.Format("20060102")); n != 1 {
			t.Fatalf("today's partition holds %d rows, want 1", n)
		}
	})
	t.Run("a row from 5 years ago lands in the default partition", func(t *testing.T) {
		if err := telemetry(today.AddDate(-5, 0, 0)); err != nil {
			t.Fatal(err)
		}
		if n := count(t, `select count(*) from device_telemetry_logs_default`); n != 1 {
			t.Fatalf("default partition holds %d rows, want 1", n)
		}
	})
	t.Run("a new partition takes its rows out of the default one", func(t *testing.T) {
		day := today.AddDate(0, 0, 30)
		if err := telemetry(day); err != nil {
			t.Fatal(err)
		}
		if n := count(t, `select telemesh_ensure_partitions('device_telemetry_logs', $1::date, $1::date)`, day.Format(time.DateOnly)); n != 1 {
			t.Fatalf("created %d partitions, want 1", n)
		}
		if n := count(t, `select count(*) from device_telemetry_logs_p`+day.Format("20060102")); n != 1 {
			t.Fatalf("new partition holds %d rows, want 1", n)
		}
		if n := count(t, `select count(*) from device_telemetry_logs_default`); n != 1 {
			t.Fatalf("default partition holds %d rows, want only the 5-year-old one", n)
		}
		if n := count(t, `select telemesh_ensure_partitions('device_telemetry_logs', $1::date, $1::date)`, day.Format(time.DateOnly)); n != 0 {
			t.Fatalf("second call created %d partitions, want 0", n)
		}
	})
	t.Run("old partitions are dropped, the default one is not", func(t *testing.T) {
		from, to := today.AddDate(0, 0, -30).Format(time.DateOnly), today.AddDate(0, 0, -20).Format(time.DateOnly)
		if n := count(t, `select telemesh_ensure_partitions('ingestion_stage_logs', $1::date, $2::date)`, from, to); n != 11 {
			t.Fatalf("created %d partitions, want 11", n)
		}
		// Yesterday's partition holds [yesterday, today), so it is wholly
		// before today but not before yesterday.
		if n := count(t, `select telemesh_drop_partitions_before('ingestion_stage_logs', $1::date)`, today.AddDate(0, 0, -1).Format(time.DateOnly)); n != 11 {
			t.Fatalf("dropped %d partitions, want 11", n)
		}
		if n := count(t, `select count(*) from pg_inherits where inhparent = 'ingestion_stage_logs'::regclass`); n != 10 {
			t.Fatalf("%d partitions left, want 9 daily and the default", n)
		}
	})

	message := func(key, status string) error {
		return exec(`insert into ingestion_messages (id, source_subject, dedupe_key, status, received_at) values ($1, 's', $2, $3, now())`,
			uuid.Must(uuid.NewV7()), key, status)
	}
	stageLog := func(stage, status string) error {
		return exec(`insert into ingestion_stage_logs (message_id, stage, status, duration_us, instance) values ($1, $2, $3, 1, 'test')`,
			uuid.New(), stage, status)
	}
	var org, otherOrg, deviceType uuid.UUID
	if err := db.Pool.QueryRow(ctx, `insert into organizations (slug, name) values ('acme', 'Acme') returning id`).Scan(&org); err != nil {
		t.Fatal(err)
	}
	if err := db.Pool.QueryRow(ctx, `insert into organizations (slug, name) values ('globex', 'Globex') returning id`).Scan(&otherOrg); err != nil {
		t.Fatal(err)
	}
	if err := db.Pool.QueryRow(ctx, `insert into device_types (organization_id, name) values ($1, 'thermostat') returning id`, org).Scan(&deviceType); err != nil {
		t.Fatal(err)
	}
	device := func(orgID uuid.UUID, externalID string) error {
		return exec(`insert into devices (organization_id, device_type_id, external_id) values ($1, $2, $3)`, orgID, deviceType, externalID)
	}
	topic := uuid.New()
	if err := exec(`insert into device_type_topics (id, device_type_id, suffix) values ($1, $2, 'telemetry')`, topic, deviceType); err != nil {
		t.Fatal(err)
	}
	parameter := func(key, dataType, rules string) error {
		return exec(`insert into parameter_definitions (device_type_topic_id, key, json_path, data_type, validation_rules) values ($1, $2, '$.v', $3, $4)`,
			topic, key, dataType, rules)
	}

	// Each case runs in order; a case may depend on the rows before it.
	cases := []struct {
		name     string
		run      func() error
		wantCode string // SQLSTATE, or "" for success
	}{
		{"a message", func() error { return message("k1", "completed") }, ""},
		{"the dedupe key is unique", func() error { return message("k1", "queued") }, "23505"},
		{"an unknown message status is refused", func() error { return message("k2", "done") }, "23514"},
		{"a parked message", func() error { return message("k3", "parked") }, ""},
		{"an unknown halted stage is refused", func() error {
			return exec(`insert into ingestion_messages (source_subject, dedupe_key, status, halted_stage, received_at) values ('s', 'k4', 'failed_terminal', 'store', now())`)
		}, "23514"},
		{"an unknown processing state is refused", func() error {
			return exec(`insert into device_telemetry_logs (recorded_at, received_at, device_id, topic, ingestion_message_id, validation_status, processing_state)
				values (now(), now(), $1, 't', $1, 'valid', 'done')`, uuid.New())
		}, "23514"},
		{"every stage-log status", func() error {
			for _, s := range []string{"completed", "halted", "failed", "retrying", "skipped", "duplicate", "unresolved", "parked", "dry_run"} {
				if err := stageLog("persist", s); err != nil {
					return err
				}
			}
			return nil
		}, ""},
		{"an unknown stage-log status is refused", func() error { return stageLog("persist", "ok") }, "23514"},
		{"an unknown stage is refused", func() error { return stageLog("store", "completed") }, "23514"},
		{"one global switch row", func() error { return exec(`insert into pipeline_switches (organization_id) values (null)`) }, "23505"},
		{"one switch row per organization", func() error {
			if err := exec(`insert into pipeline_switches (organization_id, pipeline_enabled) values ($1, false)`, org); err != nil {
				return err
			}
			return exec(`insert into pipeline_switches (organization_id) values ($1)`, org)
		}, "23505"},
		{"a switch upsert", func() error {
			return exec(`insert into pipeline_switches (organization_id, pipeline_enabled) values (null, false)
				on conflict (organization_id) do update set pipeline_enabled = excluded.pipeline_enabled`)
		}, ""},
		{"a device", func() error { return device(org, "meter-01") }, ""},
		{"an external id names one live device", func() error { return device(org, "meter-01") }, "23505"},
		{"a soft-deleted device frees its external id", func() error {
			if err := exec(`update devices set deleted_at = now() where external_id = 'meter-01'`); err != nil {
				return err
			}
			return device(org, "meter-01")
		}, ""},
		{"a device of another organization's type is refused", func() error { return device(otherOrg, "meter-02") }, "23503"},
		{"an external id that is not one subject token is refused", func() error { return device(org, "a.b") }, "23514"},
		{"an organization slug must be lower case", func() error { return exec(`insert into organizations (slug, name) values ('Acme', 'x')`) }, "23514"},
		{"a parameter", func() error { return parameter("temp_c", "decimal", `{"min": -50, "max": 150}`) }, ""},
		{"an unknown data type is refused", func() error { return parameter("p2", "float", `{}`) }, "23514"},
		{"validation rules must be an object", func() error { return parameter("p3", "string", `[]`) }, "23514"},
		{"a parameter key is unique per topic", func() error { return parameter("temp_c", "integer", `{}`) }, "23505"},
		{"a derived parameter", func() error {
			return exec(`insert into derived_parameter_definitions (device_type_topic_id, key, data_type, expression, dependencies)
				values ($1, 'temp_f', 'decimal', '{"+": [{"*": [{"var": "temp_c"}, 1.8]}, 32]}', '{temp_c}')`, topic)
		}, ""},
	}
	for _, tc := range cases {
		err := tc.run()
		var pgErr *pgconn.PgError
		switch {
		case tc.wantCode == "" && err != nil:
			t.Errorf("%s: %v", tc.name, err)
		case tc.wantCode != "" && (!errors.As(err, &pgErr) || pgErr.Code != tc.wantCode):
			t.Errorf("%s: err = %v, want SQLSTATE %s", tc.name, err, tc.wantCode)
		}
	}

	t.Run("updated_at follows changes", func(t *testing.T) {
		var before, after time.Time
		if err := db.Pool.QueryRow(ctx, `select updated_at from organizations where id = $1`, org).Scan(&before); err != nil {
			t.Fatal(err)
		}
		if err := db.Pool.QueryRow(ctx, `update organizations set name = 'Acme Inc' where id = $1 returning updated_at`, org).Scan(&after); err != nil {
			t.Fatal(err)
		}
		if !after.After(before) {
			t.Fatalf("updated_at %v, was %v", after, before)
		}
	})

	listen := func(t *testing.T, channel string, change func() error) string {
		t.Helper()
		conn, err := db.Pool.Acquire(ctx)
		if err != nil {
			t.Fatal(err)
		}
		defer conn.Release()
		if _, err := conn.Exec(ctx, "listen "+channel); err != nil {
			t.Fatal(err)
		}
		defer func() { _, _ = conn.Exec(context.WithoutCancel(ctx), "unlisten *") }()
		if err := change(); err != nil {
			t.Fatal(err)
		}
		// Generous: the notification comes with the commit, and a busy
		// machine only delays it.
		wctx, cancel := context.WithTimeout(ctx, time.Minute)
		defer cancel()
		n, err := conn.Conn().WaitForNotification(wctx)
		if err != nil {
			t.Fatalf("no notification on %s: %v", channel, err)
		}
		return n.Payload
	}
	t.Run("definition changes notify", func(t *testing.T) {
		for _, tc := range []struct {
			table, sql string
		}{
			{"devices", `update devices set is_active = false where external_id = 'meter-01' and deleted_at is null`},
			{"parameter_definitions", `update parameter_definitions set required = true where key = 'temp_c'`},
			{"derived_parameter_definitions", `delete from derived_parameter_definitions where key = 'temp_f'`},
			{"device_type_topics", `insert into device_type_topics (device_type_id, suffix) values ('` + deviceType.String() + `', 'status')`},
			{"organizations", `insert into organizations (slug, name) values ('initech', 'Initech')`},
		} {
			payload := listen(t, "telemesh_definitions", func() error { return exec(tc.sql) })
			if !strings.Contains(payload, `"table" : "`+tc.table+`"`) {
				t.Errorf("%s: payload %s", tc.table, payload)
			}
		}
	})
	t.Run("switch changes notify", func(t *testing.T) {
		payload := listen(t, "telemesh_switches", func() error {
			return exec(`update pipeline_switches set pipeline_enabled = true, updated_by = 'test' where organization_id is null`)
		})
		if !strings.Contains(payload, `"organization_id" : null`) || !strings.Contains(payload, `"pipeline_enabled" : true`) {
			t.Fatalf("payload %s", payload)
		}
	})
}
