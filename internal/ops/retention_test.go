package ops

import (
	"context"
	"slices"
	"testing"
	"time"

	"github.com/google/uuid"

	"github.com/telemesh/telemesh/internal/testdb"
)

func TestParseAge(t *testing.T) {
	for _, tc := range []struct {
		in   string
		want time.Duration
		ok   bool
	}{
		{"90d", 90 * 24 * time.Hour, true},
		{"36h", 36 * time.Hour, true},
		{"0d", 0, false},
		{"-1d", 0, false},
		{"xd", 0, false},
		{"soon", 0, false},
	} {
		got, err := ParseAge(tc.in)
		if (err == nil) != tc.ok || got != tc.want {
			t.Errorf("ParseAge(%q) = %v, %v", tc.in, got, err)
		}
	}
}

func TestRetain(t *testing.T) {
	db := testdb.New(t)
	f := fixture{t, db.Pool}
	ctx := context.Background()
	now := time.Now().UTC()
	day := func(d time.Time) string { return d.Format("20060102") }
	old := now.AddDate(0, 0, -100)
	f.exec(`select telemesh_ensure_partitions('device_telemetry_logs', $1::date, $1::date)`, old)
	f.exec(`select telemesh_ensure_partitions('ingestion_stage_logs', $1::date, $1::date)`, now.AddDate(0, 0, -10))

	dev := uuid.New()
	f.telemetry(uuid.New(), uuid.Nil, dev, "processed", old)                    // in an old partition
	f.telemetry(uuid.New(), uuid.Nil, dev, "processed", now.AddDate(-3, 0, 0))  // in the default partition, old
	f.telemetry(uuid.New(), uuid.Nil, dev, "processed", now.AddDate(0, 0, 400)) // in the default partition, a clock ahead
	f.telemetry(uuid.New(), uuid.Nil, dev, "processed", now)
	f.stageLog(uuid.New(), "", "ingress", "completed", now.AddDate(0, 0, -10))
	f.stageLog(uuid.New(), "", "ingress", "completed", now.AddDate(-1, 0, 0))
	f.stageLog(uuid.New(), "", "ingress", "completed", now)
	for i := 0; i < 3; i++ {
		f.message(msg{status: "completed", received: now.AddDate(0, 0, -15)})
	}
	f.message(msg{status: "completed", received: now})

	policy := Retention{Telemetry: 90 * 24 * time.Hour, Messages: 14 * 24 * time.Hour, StageLogs: 7 * 24 * time.Hour, Now: now}
	count := func(table string) (n int) {
		t.Helper()
		if err := db.Pool.QueryRow(ctx, `select count(*) from `+table).Scan(&n); err != nil {
			t.Fatal(err)
		}
		return n
	}
	check := func(name string, res RetentionResult, tel, stage []string, telDefault, stageDefault, msgs int64) {
		t.Helper()
		if len(res.Tables) != 2 {
			t.Fatalf("%s: %+v", name, res)
		}
		for i, w := range []struct {
			parts []string
			def   int64
		}{{tel, telDefault}, {stage, stageDefault}} {
			got := res.Tables[i]
			if !slices.Equal(got.DroppedPartitions, w.parts) || got.DefaultRowsDeleted != w.def {
				t.Errorf("%s: %s dropped %v and %d default rows, want %v and %d", name, got.Table, got.DroppedPartitions,
					got.DefaultRowsDeleted, w.parts, w.def)
			}
		}
		if res.MessagesDeleted != msgs {
			t.Errorf("%s: %d messages deleted, want %d", name, res.MessagesDeleted, msgs)
		}
	}

	dry := policy
	dry.DryRun = true
	res, err := Retain(ctx, db.Pool, dry)
	if err != nil {
		t.Fatal(err)
	}
	wantTel := []string{"device_telemetry_logs_p" + day(old)}
	wantStage := []string{"ingestion_stage_logs_p" + day(now.AddDate(0, 0, -10))}
	check("dry run", res, wantTel, wantStage, 1, 1, 3)
	if count("device_telemetry_logs") != 4 || count("ingestion_stage_logs") != 3 || count("ingestion_messages") != 4 {
		t.Fatal("the dry run deleted rows")
	}

	res, err = Retain(ctx, db.Pool, policy)
	if err != nil {
		t.Fatal(err)
	}
	check("run", res, wantTel, wantStage, 1, 1, 3)
	if n := count("device_telemetry_logs"); n != 2 {
		t.Errorf("%d telemetry rows left, want 2", n)
	}
	if n := count("ingestion_stage_logs"); n != 1 {
		t.Errorf("%d stage logs left, want 1", n)
	}
	if n := count("ingestion_messages"); n != 1 {
		t.Errorf("%d messages left, want 1", n)
	}
	var ahead int
	if err := db.Pool.QueryRow(ctx, `select count(*) from pg_class where relname = $1 or relname = $2`,
		"device_telemetry_logs_p"+day(now.AddDate(0, 0, 7)), "ingestion_stage_logs_p"+day(now.AddDate(0, 0, 7))).Scan(&ahead); err != nil || ahead != 2 {
		t.Errorf("partitions 7 days ahead: %d, %v", ahead, err)
	}

	// Again, as cron would: nothing left to do.
	res, err = Retain(ctx, db.Pool, policy)
	if err != nil {
		t.Fatal(err)
	}
	check("again", res, []string{}, []string{}, 0, 0, 0)
}

func TestRetainDeletesMessagesInBatches(t *testing.T) {
	db := testdb.New(t)
	ctx := context.Background()
	if _, err := db.Pool.Exec(ctx, `insert into ingestion_messages (source_subject, dedupe_key, status, received_at)
		select 'devices.d1.telemetry', 'seq:s@1:' || i, 'completed', now() - interval '20 days'
		from generate_series(1, $1) i`, MessageDeleteBatch+5); err != nil {
		t.Fatal(err)
	}
	res, err := Retain(ctx, db.Pool, Retention{Telemetry: 90 * 24 * time.Hour, Messages: 14 * 24 * time.Hour, StageLogs: 7 * 24 * time.Hour})
	if err != nil {
		t.Fatal(err)
	}
	if res.MessagesDeleted != MessageDeleteBatch+5 {
		t.Errorf("deleted %d, want %d", res.MessagesDeleted, MessageDeleteBatch+5)
	}
}
