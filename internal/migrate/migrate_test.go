package migrate_test

import (
	"context"
	"errors"
	"strings"
	"testing"
	"time"

	"github.com/google/uuid"
	"github.com/jackc/pgx/v5/pgconn"

	"github.com/telemesh/telemesh/internal/logging"
	"github.com/telemesh/telemesh/internal/migrate"
	"github.com/telemesh/telemesh/internal/testdb"
)

func TestUpDownUp(t *testing.T) {
	db := testdb.NewEmpty(t)
	ctx := t.Context()
	tables := func() int {
		var n int
		if err := db.Pool.QueryRow(ctx, `select count(*) from pg_class c join pg_namespace n on n.oid = c.relnamespace
			where n.nspname = 'public' and c.relkind in ('r', 'p') and c.relname <> 'goose_db_version'`).Scan(&n); err != nil {
			t.Fatal(err)
		}
		return n
	}
	res, err := migrate.Up(ctx, db.URL, logging.Discard())
	if err != nil || len(res) == 0 {
		t.Fatalf("up: %d applied, %v", len(res), err)
	}
	if n := tables(); n < 9 {
		t.Fatalf("after up: %d tables", n)
	}
	st, err := migrate.Status(ctx, db.URL)
	if err != nil {
		t.Fatal(err)
	}
	for _, s := range st {
		if !s.Applied {
			t.Errorf("migration %d %s not applied after up", s.Version, s.Name)
		}
	}
	if _, err := migrate.Down(ctx, db.URL, 0, logging.Discard()); err != nil {
		t.Fatalf("down: %v", err)
	}
	if n := tables(); n != 0 {
		t.Fatalf("after down to 0: %d tables remain", n)
	}
	var funcs int
	_ = db.Pool.QueryRow(ctx, `select count(*) from pg_proc p join pg_namespace n on n.oid = p.pronamespace where n.nspname = 'public' and p.proname like 'telemesh_%'`).Scan(&funcs)
	if funcs != 0 {
		t.Errorf("after down to 0: %d functions remain", funcs)
	}
	if _, err := migrate.Up(ctx, db.URL, nil); err != nil {
		t.Fatalf("up again: %v", err)
	}
}

func TestSchema(t *testing.T) {
	db := testdb.New(t)
	ctx := t.Context()
	exec := func(sql string, args ...any) error {
		_, err := db.Pool.Exec(ctx, sql, args...)
		return err
	}
	t.Run("partitions exist from yesterday to a week ahead", func(t *testing.T) {
		for _, parent := range []string{"device_telemetry_logs", "ingestion_stage_logs"} {
			for _, d := range []time.Time{time.Now().AddDate(0, 0, -1), time.Now(), time.Now().AddDate(0, 0, 7)} {
				name := parent + "_p" + d.Format("20060102")
				var ok bool
				if err := db.Pool.QueryRow(ctx, `select to_regclass($1) is not null`, name).Scan(&ok); err != nil || !ok {
					t.Errorf("partition %s missing (%v)", name, err)
				}
			}
		}
	})
	t.Run("an old row lands in the default partition", func(t *testing.T) {
		err := exec(`insert into device_telemetry_logs (id, recorded_at, received_at, device_id, topic, ingestion_message_id, validation_status, processing_state)
			values ($1, now() - interval '5 years', now(), $2, 'telemetry', $1, 'valid', 'pending')`, uuid.New(), uuid.New())
		if err != nil {
			t.Fatal(err)
		}
		var n int
		_ = db.Pool.QueryRow(ctx, `select count(*) from device_telemetry_logs_default`).Scan(&n)
		if n != 1 {
			t.Fatalf("default partition holds %d rows, want 1", n)
		}
	})
	t.Run("dropping old partitions", func(t *testing.T) {
		var made, dropped int
		if err := db.Pool.QueryRow(ctx, `select telemesh_ensure_partitions('ingestion_stage_logs', current_date - 30, current_date - 20)`).Scan(&made); err != nil || made != 11 {
			t.Fatalf("made %d, %v", made, err)
		}
		if err := db.Pool.QueryRow(ctx, `select telemesh_drop_partitions_before('ingestion_stage_logs', current_date - 7)`).Scan(&dropped); err != nil || dropped != 11 {
			t.Fatalf("dropped %d, %v", dropped, err)
		}
	})
	message := func(key, status string) error {
		return exec(`insert into ingestion_messages (id, source_subject, dedupe_key, status, received_at) values ($1, 's', $2, $3, now())`, uuid.New(), key, status)
	}
	tests := []struct {
		name     string
		err      error
		wantCode string
	}{
		{"a message", message("k1", "completed"), ""},
		{"the dedupe key is unique", message("k1", "completed"), "23505"},
		{"an unknown status is refused", message("k2", "done"), "23514"},
		{"an unknown stage-log status is refused", exec(`insert into ingestion_stage_logs (id, message_id, stage, status, duration_us, instance) values ($1, $1, 'persist', 'ok', 1, 'x')`, uuid.New()), "23514"},
		{"an unknown stage is refused", exec(`insert into ingestion_stage_logs (id, message_id, stage, status, duration_us, instance) values ($1, $1, 'store', 'completed', 1, 'x')`, uuid.New()), "23514"},
		{"one global switch row", exec(`insert into pipeline_switches (organization_id) values (null)`), "23505"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var pgErr *pgconn.PgError
			switch {
			case tt.wantCode == "" && tt.err != nil:
				t.Fatalf("err = %v", tt.err)
			case tt.wantCode != "" && (!errors.As(tt.err, &pgErr) || pgErr.Code != tt.wantCode):
				t.Fatalf("err = %v, want SQLSTATE %s", tt.err, tt.wantCode)
			}
		})
	}
	t.Run("definition changes notify", func(t *testing.T) {
		conn, err := db.Pool.Acquire(ctx)
		if err != nil {
			t.Fatal(err)
		}
		defer conn.Release()
		if _, err := conn.Exec(ctx, "listen telemesh_definitions"); err != nil {
			t.Fatal(err)
		}
		if err := exec(`insert into organizations (slug, name) values ('acme', 'Acme')`); err != nil {
			t.Fatal(err)
		}
		wctx, cancel := context.WithTimeout(ctx, 5*time.Second)
		defer cancel()
		n, err := conn.Conn().WaitForNotification(wctx)
		if err != nil || !strings.Contains(n.Payload, "organizations") {
			t.Fatalf("notification = %v, %v", n, err)
		}
	})
}
