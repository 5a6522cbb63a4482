package stagelog

import (
	"context"
	"syscall"
	"testing"
	"time"

	"github.com/google/uuid"
	"github.com/jackc/pgx/v5"

	"github.com/telemesh/telemesh/internal/testdb"
)

// benchRows returns a batch of n stage rows shaped as the pipeline's: six
// stages per message, most completed, every tenth message halted at
// validate with its input and errors.
func benchRows(tb testing.TB, n int) *Batch {
	tb.Helper()
	w, err := New(ModeAll, 1, "bench-0")
	if err != nil {
		tb.Fatal(err)
	}
	b := w.Batch()
	stages := []string{"ingress", "validate", "mutate", "derive", "persist", "publish"}
	for i := 0; b.Len() < n; i++ {
		id, key := uuid.Must(uuid.NewV7()), "id:devices.meter-01.telemetry:"+uuid.NewString()
		for _, stage := range stages {
			e := Entry{MessageID: id, DedupeKey: key, Stage: stage, Status: StatusCompleted, Duration: 150 * time.Microsecond, Attempt: 1}
			if stage == "derive" {
				e.ChangeSet = map[string]any{"power_w": 1234.5}
			}
			if i%10 == 0 && stage == "validate" {
				e.Status, e.Code = StatusHalted, "max"
				e.Input = map[string]any{"subject": "devices.meter-01.telemetry", "payload": `{"temp_c": 412.5}`}
				e.Errors = map[string]any{"reason": "temp_c above its maximum", "parameter": "temp_c"}
			}
			b.Add(&e)
			if b.Len() == n {
				break
			}
		}
	}
	return b
}

// copyWithPgx copies the batch's rows with pgx's generic COPY, as the
// writer did before it encoded them itself: the benchmark's baseline.
func copyWithPgx(ctx context.Context, tx pgx.Tx, b *Batch) error {
	vals := make([]any, len(columns))
	i := 0
	src := pgx.CopyFromFunc(func() ([]any, error) {
		if i == len(b.rows) {
			return nil, nil
		}
		r := &b.rows[i]
		i++
		vals[0], vals[1], vals[2], vals[3] = r.messageID, nullable(r.dedupeKey), r.stage, r.status
		vals[4], vals[5], vals[6] = r.durationUS, int32(r.attempt), r.instance
		vals[7], vals[8], vals[9], vals[10] = nullable(r.input), nullable(r.output), nullable(r.changeSet), nullable(r.errs)
		vals[11], vals[12] = r.at, nullable(r.code)
		return vals, nil
	})
	_, err := tx.CopyFrom(ctx, pgx.Identifier{"ingestion_stage_logs"}, columns, src)
	return err
}

// nullable is the NULL of an empty string, for pgx.
func nullable(s string) any {
	if s == "" {
		return nil
	}
	return s
}

// BenchmarkCopyStageRows copies 1000 stage rows into Postgres per op, each
// time in a transaction rolled back after, with pgx's generic COPY and with
// the writer's own encoding. Beside the wall time it reports the CPU time
// this process spent per op (cpu-ns/op): the server's share is not in it,
// which is what the encoding changes.
func BenchmarkCopyStageRows(b *testing.B) {
	db := testdb.New(b)
	batch := benchRows(b, 1000)
	for _, bb := range []struct {
		name string
		copy func(context.Context, pgx.Tx, *Batch) error
	}{
		{"pgx", copyWithPgx},
		{"binary", func(ctx context.Context, tx pgx.Tx, b *Batch) error { return b.copyRows(ctx, tx) }},
	} {
		b.Run(bb.name, func(b *testing.B) {
			ctx := b.Context()
			b.ReportAllocs()
			cpu := cpuTime(b)
			for b.Loop() {
				tx, err := db.Pool.Begin(ctx)
				if err != nil {
					b.Fatal(err)
				}
				if err := bb.copy(ctx, tx, batch); err != nil {
					b.Fatal(err)
				}
				if err := tx.Rollback(ctx); err != nil {
					b.Fatal(err)
				}
			}
			b.ReportMetric(float64((cpuTime(b)-cpu).Nanoseconds())/float64(b.N), "cpu-ns/op")
		})
	}
}

// cpuTime returns the user and system CPU time this process has used.
func cpuTime(tb testing.TB) time.Duration {
	tb.Helper()
	var ru syscall.Rusage
	if err := syscall.Getrusage(syscall.RUSAGE_SELF, &ru); err != nil {
		tb.Fatal(err)
	}
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}
