package ops

import (
	"context"
	"os"
	"strconv"
	"testing"
	"time"

	"github.com/google/uuid"

	"github.com/telemesh/telemesh/internal/testdb"
)

// BenchmarkTraceLargeTables traces messages picked at random from tables of
// millions of rows: TELEMESH_BENCH_TRACE_MESSAGES messages (default
// 1,000,000), each with five stage rows and a telemetry row spread over ten
// days of partitions. It reports the slowest trace of the run besides the
// mean, since an operator waits for the slow one.
func BenchmarkTraceLargeTables(b *testing.B) {
	n := 1_000_000
	if v := os.Getenv("TELEMESH_BENCH_TRACE_MESSAGES"); v != "" {
		var err error
		if n, err = strconv.Atoi(v); err != nil || n < 1 {
			b.Fatalf("TELEMESH_BENCH_TRACE_MESSAGES=%q: want a positive count", v)
		}
	}
	db := testdb.New(b)
	ctx := context.Background()
	exec := func(sql string, args ...any) {
		b.Helper()
		if _, err := db.Pool.Exec(ctx, sql, args...); err != nil {
			b.Fatalf("%s: %v", sql, err)
		}
	}
	org := uuid.New()
	exec(`insert into organizations (id, slug, name) values ($1, 'bench', 'bench')`, org)
	start := time.Now()
	// Daily partitions for the ten days the rows span, as retention keeps
	// them; rows land in them rather than in the DEFAULT partitions.
	for _, table := range []string{"device_telemetry_logs", "ingestion_stage_logs"} {
		exec(`select telemesh_ensure_partitions($1::regclass, current_date - 11, current_date + 1)`, table)
	}
	// Message ids are time-ordered (UUIDv7: milliseconds since the epoch,
	// then random bits), as the gateway makes them when a message arrives.
	exec(`create temporary table bench_ids as
		select (lpad(to_hex((extract(epoch from at) * 1000)::bigint), 12, '0') || '7'
			|| substr(md5(i::text), 1, 3) || '8' || substr(md5(i::text), 4, 15))::uuid as id, i, at
		from (select i, now() - (i % 864000) * interval '1 second' as at from generate_series(1, $1::int) as i) s`, n)
	exec(`insert into ingestion_messages (id, organization_id, device_id, source_subject, source_message_id, dedupe_key,
			raw_payload, status, received_at, processed_at)
		select id, $1, $1, 'devices.d' || (i % 500) || '.telemetry', 'm-' || i, 'id:devices.d' || (i % 500) || '.telemetry:m-' || i,
			'{"t": 1}', 'completed', at, at from bench_ids`, org)
	exec(`insert into device_telemetry_logs (id, recorded_at, received_at, organization_id, device_id, topic,
			ingestion_message_id, validation_status, processing_state, mutated_values, transformed_values, processed_at)
		select id, at, at, $1, $1, 'telemetry', id, 'valid', 'processed', '{"t": 1}', '{"t": 1, "f": 33.8}', at from bench_ids`, org)
	exec(`insert into ingestion_stage_logs (message_id, dedupe_key, stage, status, duration_us, instance, created_at)
		select b.id, 'id:devices.d' || (b.i % 500) || '.telemetry:m-' || b.i, s.stage, 'completed', 100, 'bench-0',
			b.at + s.n * interval '1 millisecond'
		from bench_ids b, (values (1, 'ingress'), (2, 'validate'), (3, 'derive'), (4, 'persist'), (5, 'publish')) as s(n, stage)`)
	// The stages keep the stage rows' message_id index summarized as they
	// write; a fill of a million messages at once is summarized here.
	exec(`select telemesh_summarize_stage_logs()`)
	exec(`analyze ingestion_messages, device_telemetry_logs, ingestion_stage_logs`)
	b.Logf("filled %d messages, %d stage rows, %d telemetry rows in %s", n, 5*n, n, time.Since(start).Round(time.Second))

	rows, err := db.Pool.Query(ctx, `select id::text from bench_ids order by random() limit 200`)
	if err != nil {
		b.Fatal(err)
	}
	var refs []string
	for rows.Next() {
		var id string
		if err := rows.Scan(&id); err != nil {
			b.Fatal(err)
		}
		refs = append(refs, id, "") // the dedupe key is filled in below
	}
	if err := rows.Err(); err != nil {
		b.Fatal(err)
	}
	// Half the lookups by message id, half by dedupe key.
	for i := 1; i < len(refs); i += 2 {
		if err := db.Pool.QueryRow(ctx, `select dedupe_key from ingestion_messages where id = $1`, refs[i-1]).Scan(&refs[i]); err != nil {
			b.Fatal(err)
		}
	}

	var slowest time.Duration
	// b.Loop runs this function once, so the tables are filled once; the
	// timer starts at the first call.
	for i := 0; b.Loop(); i++ {
		t0 := time.Now()
		tr, err := TraceMessage(ctx, db.Pool, refs[i%len(refs)])
		if err != nil {
			b.Fatal(err)
		}
		if len(tr.StageLogs) != 5 || tr.Telemetry == nil {
			b.Fatalf("trace of %s: %d stage rows, telemetry %v; want 5 and a row", refs[i%len(refs)], len(tr.StageLogs), tr.Telemetry != nil)
		}
		slowest = max(slowest, time.Since(t0))
	}
	b.ReportMetric(float64(slowest.Microseconds())/1000, "max-ms")
}
