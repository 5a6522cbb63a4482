package bench_test

import (
	"cmp"
	"context"
	"fmt"
	"slices"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/google/uuid"
	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/telemesh/telemesh/internal/testdb"
)

// The rows the pipeline writes for one of the harness's messages, in their
// final state, table by table: the one place the Postgres-only ceiling and
// the prefill take them from. When the schema or what the pipeline writes
// changes, change them here; TestCeilingWritesWhatThePipelineWrites fails
// until they match again (the same tables, rows per message and columns,
// and about the same width).

// writtenMessage is one message as the ceiling writes it.
type writtenMessage struct {
	id       uuid.UUID
	m        message
	seq      int64
	received time.Time
}

// tableShape is the rows of one table for one message.
type tableShape struct {
	table   string
	columns []string
	// rows appends the table's rows for w in stage-log mode mode.
	rows func(dst [][]any, w *writtenMessage, mode string) [][]any
}

// stagesLogged are the stages that write a row for a message that passes
// through the whole pipeline.
var stagesLogged = []string{"ingress", "validate", "mutate", "derive", "persist", "publish"}

var rowShapes = []tableShape{
	{
		table: "ingestion_messages",
		columns: []string{"id", "organization_id", "device_id", "source_subject", "source_message_id", "dedupe_key",
			"stream_sequence", "delivery_attempts", "raw_payload", "content_type", "status", "received_at", "processed_at"},
		rows: func(dst [][]any, w *writtenMessage, _ string) [][]any {
			return append(dst, []any{w.id, w.m.device.org, w.m.device.id, w.m.device.subject, w.m.id, dedupeKey(w),
				w.seq, int32(1), w.m.body, "application/json", "completed", w.received, w.received.Add(20 * time.Millisecond)})
		},
	},
	{
		table: "device_telemetry_logs",
		columns: []string{"id", "recorded_at", "received_at", "organization_id", "device_id", "topic", "ingestion_message_id",
			"raw_payload", "mutated_values", "transformed_values", "validation_status", "processing_state", "publish_attempts",
			"processed_at"},
		rows: func(dst [][]any, w *writtenMessage, _ string) [][]any {
			mutated := fmt.Sprintf(`{"status": "ok", "temp_c": %d, "humidity": %d}`, w.m.temp+2, w.m.humidity)
			tempF := float64(w.m.temp+2)*1.8 + 32
			transformed := fmt.Sprintf(`{"status": "ok", "temp_c": %d, "temp_f": %g, "humidity": %d, "feels_like": %g}`,
				w.m.temp+2, tempF, w.m.humidity, tempF+float64(w.m.humidity)*0.1)
			return append(dst, []any{w.id, w.received, w.received, w.m.device.org, w.m.device.id, "telemetry", w.id,
				string(w.m.body), mutated, transformed, "valid", "processed", int32(1), w.received.Add(20 * time.Millisecond)})
		},
	},
	{
		table: "ingestion_stage_logs",
		columns: []string{"message_id", "stage", "status", "duration_us", "attempt", "instance",
			"change_set", "created_at"},
		rows: func(dst [][]any, w *writtenMessage, mode string) [][]any {
			if mode != "all" {
				return dst // every stage completed: nothing to log in the other modes
			}
			for i, s := range stagesLogged {
				// The deriver's rows say what it changed.
				var changed any
				switch s {
				case "mutate":
					changed = fmt.Sprintf(`{"temp_c": [%d, %d]}`, w.m.temp, w.m.temp+2)
				case "derive":
					tempF := float64(w.m.temp+2)*1.8 + 32
					changed = fmt.Sprintf(`{"temp_f": %g, "feels_like": %g}`, tempF, tempF+float64(w.m.humidity)*0.1)
				}
				// A completed row is found by its message id: it keeps no
				// dedupe key.
				dst = append(dst, []any{w.id, s, "completed", int64(40), int32(1),
					"bench-" + stageProcess[s], changed, w.received.Add(time.Duration(i) * 5 * time.Millisecond)})
			}
			return dst
		},
	},
}

// stageRank is each logged stage's place in stagesLogged.
var stageRank = func() map[string]int {
	m := make(map[string]int, len(stagesLogged))
	for i, s := range stagesLogged {
		m[s] = i
	}
	return m
}()

// stageProcess is the stage process that logs each stage.
var stageProcess = map[string]string{
	"ingress": "gateway", "validate": "validator", "mutate": "deriver", "derive": "deriver",
	"persist": "persister", "publish": "publisher",
}

func dedupeKey(w *writtenMessage) string { return "id:" + w.m.device.subject + ":" + w.m.id }

// copyMessages writes the rows of msgs in one transaction, one COPY per
// table, as the persister writes a batch.
func copyMessages(ctx context.Context, pool *pgxpool.Pool, msgs []writtenMessage, mode string) error {
	return pgx.BeginFunc(ctx, pool, func(tx pgx.Tx) error {
		var rows [][]any
		for _, shape := range rowShapes {
			rows = rows[:0]
			for i := range msgs {
				rows = shape.rows(rows, &msgs[i], mode)
			}
			if len(rows) == 0 {
				continue
			}
			if shape.table == "ingestion_stage_logs" {
				// Each stage copies its own rows, so the pipeline fills a
				// page with one stage's rows, of about one width, and a
				// full page has less room left than such a row needs.
				// Interleaved, rows of different widths would leave room
				// on most pages for the narrower ones: a later run would
				// fill those pages one row at a time, writing each whole
				// to the WAL after the prefill's checkpoint, which the
				// pipeline's own pages do not cause.
				slices.SortStableFunc(rows, func(a, b []any) int {
					return cmp.Compare(stageRank[a[1].(string)], stageRank[b[1].(string)])
				})
			}
			if _, err := tx.CopyFrom(ctx, pgx.Identifier{shape.table}, shape.columns, pgx.CopyFromRows(rows)); err != nil {
				return fmt.Errorf("copy into %s: %w", shape.table, err)
			}
		}
		// Every stage adds its batch's count to the minute's, in every
		// stage-log mode.
		n := int64(len(msgs))
		counts := make([]int64, len(stagesLogged))
		for i := range counts {
			counts[i] = n
		}
		_, err := tx.Exec(ctx, `insert into ingestion_stage_counts (minute, stage, status, slot, rows, durations)
			select date_trunc('minute', now()), stage, 'completed', (pg_backend_pid() % 16)::smallint, n, array[0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, n]
			from unnest($1::text[], $2::bigint[]) as u(stage, n)
			on conflict (minute, stage, status, reason_code, slot) do update set
				rows = ingestion_stage_counts.rows + excluded.rows,
				durations = telemesh_add_counts(ingestion_stage_counts.durations, excluded.durations)`, stagesLogged, counts)
		if err != nil {
			return fmt.Errorf("count the stage rows: %w", err)
		}
		return nil
	})
}

// ceilingBatch is the batch size of the ceiling, the pipeline's.
const ceilingBatch = 1000

// ceiling is what the Postgres-only ceiling measured.
type ceiling struct {
	messages int
	elapsed  time.Duration
	postgres time.Duration
	local    bool
	wal      int64
	// rows is the rows per message it writes, by table.
	rows map[string]int
}

func (c *ceiling) rate() float64 { return float64(c.messages) / c.elapsed.Seconds() }

// copyCeiling writes the rows the pipeline writes for n messages in
// stage-log mode mode into a fresh database, with COPY in batches of 1000
// and no pipeline, on one connection, and measures it as a run of the
// pipeline is measured: how Postgres alone would do.
func copyCeiling(tb testing.TB, n int, mode string) *ceiling {
	tb.Helper()
	db := testdb.New(tb)
	fl := seedFleet(tb, db.Pool)
	pg := newPGCPU(tb, db.URL)
	ctx := context.Background()
	c := &ceiling{messages: n, rows: rowsPerMessage(mode)}
	lsn := walLSN(tb, pg.conn)
	pg.restart(tb)
	start := time.Now()
	msgs := make([]writtenMessage, 0, ceilingBatch)
	for done := 0; done < n; done += ceilingBatch {
		msgs = msgs[:0]
		now := time.Now()
		for i := done; i < min(done+ceilingBatch, n); i++ {
			msgs = append(msgs, writtenMessage{id: uuid.Must(uuid.NewV7()), m: fl.message("c", i), seq: int64(i + 1), received: now})
		}
		if err := copyMessages(ctx, db.Pool, msgs, mode); err != nil {
			tb.Fatalf("ceiling: %v", err)
		}
		if err := pg.sample(); err != nil {
			tb.Fatalf("Postgres CPU: %v", err)
		}
	}
	c.elapsed = time.Since(start)
	c.postgres, c.local = pg.used(tb)
	c.wal = walSince(tb, pg.conn, lsn)
	return c
}

// rowsPerMessage is how many rows each table gets per message in mode.
func rowsPerMessage(mode string) map[string]int {
	fl := &fleet{devices: []device{{id: uuid.New(), org: uuid.New(), external: "x", subject: "devices.x.telemetry"}}}
	w := writtenMessage{id: uuid.New(), m: fl.message("x", 0), received: time.Now()}
	out := map[string]int{}
	for _, shape := range rowShapes {
		out[shape.table] = len(shape.rows(nil, &w, mode))
	}
	return out
}

// prefillWriters is how many connections the prefill writes on: two, so
// Postgres's work on one batch overlaps the harness's encoding of the next.
const prefillWriters = 2

// prefill writes the rows of n messages of mode all, received over the day
// before now, so the tables hold what a day of traffic leaves behind, then
// vacuums and analyzes them and checkpoints, so the run after starts from
// settled tables.
func prefill(tb testing.TB, pool *pgxpool.Pool, fl *fleet, n int) {
	tb.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	const batch = 10_000
	start, day := time.Now(), 24*time.Hour
	batches := make(chan int)
	go func() {
		defer close(batches)
		for from := 0; from < n; from += batch {
			select {
			case batches <- from:
			case <-ctx.Done():
				return
			}
		}
	}()
	var (
		written atomic.Int64
		wg      sync.WaitGroup
		errs    = make(chan error, prefillWriters)
	)
	for range prefillWriters {
		wg.Add(1)
		go func() {
			defer wg.Done()
			msgs := make([]writtenMessage, 0, batch)
			for from := range batches {
				msgs = msgs[:0]
				for i := from; i < min(from+batch, n); i++ {
					at := start.Add(-day + time.Duration(float64(day)*float64(i)/float64(n)))
					msgs = append(msgs, writtenMessage{id: uuid.Must(uuid.NewV7()), m: fl.message("f", i), seq: int64(i + 1), received: at})
				}
				if err := copyMessages(ctx, pool, msgs, "all"); err != nil {
					errs <- err
					cancel()
					return
				}
				// About every tenth of the way, say how far it is.
				if w := written.Add(int64(len(msgs))); w*10/int64(n) != (w-int64(len(msgs)))*10/int64(n) && w < int64(n) {
					tb.Logf("prefill: %d of %d messages written in %s", w, n, time.Since(start).Round(time.Second))
				}
			}
		}()
	}
	wg.Wait()
	close(errs)
	if err := <-errs; err != nil {
		tb.Fatalf("prefill: %v", err)
	}
	for _, shape := range rowShapes {
		if _, err := pool.Exec(ctx, "vacuum (analyze) "+pgx.Identifier{shape.table}.Sanitize()); err != nil {
			tb.Fatalf("prefill: vacuum %s: %v", shape.table, err)
		}
	}
	if _, err := pool.Exec(ctx, "checkpoint"); err != nil {
		tb.Fatalf("prefill: checkpoint: %v", err)
	}
	tb.Logf("prefill: %d messages written, vacuumed and checkpointed in %s", n, time.Since(start).Round(time.Second))
}
