package app

import (
	"bytes"
	"context"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/google/uuid"
	"github.com/jackc/pgx/v5"

	"github.com/telemesh/telemesh/internal/testdb"
)

// benchMessages is how many messages one run publishes
// (TELEMESH_BENCH_MESSAGES, default 200,000).
func benchMessages(b *testing.B) int {
	if v := os.Getenv("TELEMESH_BENCH_MESSAGES"); v != "" {
		n, err := strconv.Atoi(v)
		if err != nil || n < 1 {
			b.Fatalf("TELEMESH_BENCH_MESSAGES=%q is not a positive number", v)
		}
		return n
	}
	return 200_000
}

// BenchmarkPipeline publishes N messages from several devices into the
// stream, runs the whole mesh in this process, and reports end-to-end
// throughput, latency and CPU per message for stage-log modes all and
// failures, then the Postgres-only ceiling for the same rows. Run it with
// `make bench` (-benchtime=1x: one run of N messages per mode).
func BenchmarkPipeline(b *testing.B) {
	n := benchMessages(b)
	var ceiling float64
	b.Run("postgres-ceiling", func(b *testing.B) {
		ceiling = copyCeiling(b, n)
		b.ReportMetric(ceiling, "msg/s")
	})
	for _, mode := range []string{"all", "failures"} {
		b.Run("mode="+mode, func(b *testing.B) {
			rate := runPipeline(b, n, mode)
			if ceiling > 0 {
				b.ReportMetric(rate/ceiling*100, "%-of-ceiling")
			}
		})
	}
}

func runPipeline(b *testing.B, n int, mode string) float64 {
	f := newBenchFixture(b, mode)
	// Forty devices over two organizations, as a small fleet would be.
	devices := []string{"meter-01", "globex-01"}
	for i := range 38 {
		d := fmt.Sprintf("bench-%02d", i)
		if _, err := f.db.Pool.Exec(context.Background(), `insert into devices (organization_id, device_type_id, external_id)
			select organization_id, device_type_id, $1 from devices where external_id = 'meter-01'`, d); err != nil {
			b.Fatal(err)
		}
		devices = append(devices, d)
	}
	f.waitDeviceKnown(devices[len(devices)-1])
	b.ResetTimer()
	cpu0, pg0 := processCPU(os.Getpid()), postgresCPU()
	start := time.Now()
	go func() {
		for i := range n {
			d := devices[i%len(devices)]
			body := fmt.Sprintf(`{"message_id": "b-%d", "temp_c": %d, "humidity": %d, "status": "ok"}`, i, i%100, i%90)
			if _, err := f.js.PublishAsync("devices."+d+".telemetry", []byte(body)); err != nil {
				b.Errorf("publish: %v", err)
				return
			}
			if i%5000 == 0 {
				<-f.js.PublishAsyncComplete()
			}
		}
		<-f.js.PublishAsyncComplete()
	}()
	deadline := time.Now().Add(time.Duration(n/500+120) * time.Second)
	for {
		done := f.count(`select count(*) from device_telemetry_logs where processing_state = 'processed'`)
		if done >= n {
			break
		}
		if time.Now().After(deadline) {
			var states string
			_ = f.db.Pool.QueryRow(context.Background(), `select string_agg(s, ', ') from (
				select processing_state || '=' || count(*) || coalesce(' (' || max(failure_reason) || ')', '') s from device_telemetry_logs group by processing_state
				union all select 'message ' || status || '=' || count(*) from ingestion_messages group by status) x`).Scan(&states)
			b.Fatalf("only %d of %d processed before the deadline: %s", done, n, states)
		}
		time.Sleep(time.Second)
	}
	elapsed := time.Since(start)
	cpu, pg := processCPU(os.Getpid())-cpu0, postgresCPU()-pg0
	b.StopTimer()

	var p50p, p99p, p50d, p99d float64
	if err := f.db.Pool.QueryRow(context.Background(), `select
			percentile_cont(0.5) within group (order by extract(epoch from t.created_at - m.received_at)),
			percentile_cont(0.99) within group (order by extract(epoch from t.created_at - m.received_at)),
			percentile_cont(0.5) within group (order by extract(epoch from t.processed_at - m.received_at)),
			percentile_cont(0.99) within group (order by extract(epoch from t.processed_at - m.received_at))
		from device_telemetry_logs t join ingestion_messages m on m.id = t.ingestion_message_id`).Scan(&p50p, &p99p, &p50d, &p99d); err != nil {
		b.Fatal(err)
	}
	rate := float64(n) / elapsed.Seconds()
	b.ReportMetric(rate, "msg/s")
	b.ReportMetric(p50p*1000, "p50-persisted-ms")
	b.ReportMetric(p99p*1000, "p99-persisted-ms")
	b.ReportMetric(p50d*1000, "p50-processed-ms")
	b.ReportMetric(p99d*1000, "p99-processed-ms")
	b.ReportMetric(float64(cpu.Microseconds())/float64(n), "telemesh-cpu-us/msg")
	b.ReportMetric(float64(pg.Microseconds())/float64(n), "postgres-cpu-us/msg")
	b.ReportMetric(0, "ns/op")
	return rate
}

// newBenchFixture is the test fixture for a benchmark.
func newBenchFixture(b *testing.B, mode string) *fixture {
	b.Helper()
	return newFixture(b, func(o *Options) {
		o.Process.StageLogMode = mode
		o.Process.ShutdownGrace = 30 * time.Second
		o.Gateway.BatchSize = 1000
		o.Gateway.BatchAge = 5 * time.Millisecond
		o.Gateway.Concurrency = 4
		o.Gateway.MaxAckPending = 50000
	})
}

// copyCeiling writes the rows the pipeline writes for n messages (one
// message row, one telemetry row and six stage rows each) with COPY in
// batches of 1000 and no pipeline, and returns messages per second.
func copyCeiling(b *testing.B, n int) float64 {
	db := testdb.New(b)
	ctx := context.Background()
	org, dev := uuid.New(), uuid.New()
	if _, err := db.Pool.Exec(ctx, `insert into organizations (id, slug, name) values ($1, 'bench', 'Bench')`, org); err != nil {
		b.Fatal(err)
	}
	start := time.Now()
	const batch = 1000
	stages := []string{"ingress", "validate", "mutate", "derive", "persist", "publish"}
	for done := 0; done < n; done += batch {
		k := min(batch, n-done)
		msgs, rows, logs := make([][]any, k), make([][]any, k), make([][]any, 0, 6*k)
		now := time.Now()
		for i := range k {
			id := uuid.Must(uuid.NewV7())
			payload := fmt.Sprintf(`{"message_id": "c-%d", "temp_c": %d}`, done+i, i%100)
			msgs[i] = []any{id, org, dev, "devices.meter-01.telemetry", fmt.Sprintf("c-%d", done+i), fmt.Sprintf("id:c-%d", done+i), []byte(payload), "completed", now, now}
			rows[i] = []any{id, now, now, org, dev, "telemetry", id, payload, `{"temp_c": 12}`, `{"temp_c": 12, "temp_f": 53.6}`, "valid", "processed", now}
			for _, s := range stages {
				logs = append(logs, []any{uuid.Must(uuid.NewV7()), id, fmt.Sprintf("id:c-%d", done+i), s, "completed", int64(10), int32(1), "bench", now})
			}
		}
		err := pgx.BeginFunc(ctx, db.Pool, func(tx pgx.Tx) error {
			if _, err := tx.CopyFrom(ctx, pgx.Identifier{"ingestion_messages"}, []string{"id", "organization_id", "device_id", "source_subject", "source_message_id", "dedupe_key", "raw_payload", "status", "received_at", "processed_at"}, pgx.CopyFromRows(msgs)); err != nil {
				return err
			}
			if _, err := tx.CopyFrom(ctx, pgx.Identifier{"device_telemetry_logs"}, []string{"id", "recorded_at", "received_at", "organization_id", "device_id", "topic", "ingestion_message_id", "raw_payload", "mutated_values", "transformed_values", "validation_status", "processing_state", "processed_at"}, pgx.CopyFromRows(rows)); err != nil {
				return err
			}
			_, err := tx.CopyFrom(ctx, pgx.Identifier{"ingestion_stage_logs"}, []string{"id", "message_id", "dedupe_key", "stage", "status", "duration_us", "attempt", "instance", "created_at"}, pgx.CopyFromRows(logs))
			return err
		})
		if err != nil {
			b.Fatalf("copy: %v", err)
		}
	}
	return float64(n) / time.Since(start).Seconds()
}

// processCPU returns the user and system CPU a process has used so far.
func processCPU(pid int) time.Duration {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return 0
	}
	// Fields after the command name, which is in parentheses and may hold
	// spaces.
	i := bytes.LastIndexByte(b, ')')
	if i < 0 {
		return 0
	}
	fields := strings.Fields(string(b[i+1:]))
	if len(fields) < 13 {
		return 0
	}
	utime, _ := strconv.ParseInt(fields[11], 10, 64)
	stime, _ := strconv.ParseInt(fields[12], 10, 64)
	const ticks = 100 // USER_HZ on Linux
	return time.Duration(utime+stime) * time.Second / ticks
}

// postgresCPU sums the CPU of every postgres process on this machine.
func postgresCPU() time.Duration {
	dirs, _ := filepath.Glob("/proc/[0-9]*")
	var total time.Duration
	for _, d := range dirs {
		comm, err := os.ReadFile(filepath.Join(d, "comm"))
		if err != nil || !strings.HasPrefix(strings.TrimSpace(string(comm)), "postgres") {
			continue
		}
		pid, _ := strconv.Atoi(filepath.Base(d))
		total += processCPU(pid)
	}
	return total
}
