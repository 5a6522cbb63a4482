package publisher

import (
	"strings"
	"testing"
	"time"

	"github.com/google/uuid"
	"github.com/jackc/pgx/v5"

	"github.com/telemesh/telemesh/internal/testdb"
)

// TestMarkingABatchProcessedKeepsEveryRowOnItsPage: the persister copies a
// batch's telemetry rows pending and the publisher marks them all
// processed in one statement. The partitions keep room on each page for a
// second, slightly wider copy of every row, so each new version stays on
// its page: a HOT update, which writes no index entry again. A row that
// moved to another page found no room, and costs a full row and two index
// entries of WAL.
func TestMarkingABatchProcessedKeepsEveryRowOnItsPage(t *testing.T) {
	for _, tc := range []struct {
		name string
		// valueBytes is the length of the text value each row's values
		// carry, in its raw payload and twice more.
		valueBytes int
	}{
		{"rows of 300 bytes", 7},
		{"rows of 400 bytes", 40},
		{"rows of 1 kB", 230},
		{"rows of 1.8 kB", 500},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			db := testdb.New(t)
			ctx := t.Context()
			const n = 400
			recorded := time.Now().UTC()
			value := `{"t": 21.5, "note": "` + strings.Repeat("x", tc.valueBytes) + `"}`
			org, device := uuid.New(), uuid.New()
			rows := make([]Row, n)
			copyRows := make([][]any, n)
			for i := range rows {
				rows[i] = Row{ID: uuid.Must(uuid.NewV7()), RecordedAt: recorded.Add(time.Duration(i) * time.Millisecond)}
				copyRows[i] = []any{rows[i].ID, rows[i].RecordedAt, recorded, org, device, "telemetry", rows[i].ID,
					value, value, value, "valid", "pending"}
			}
			if _, err := db.Pool.CopyFrom(ctx, pgx.Identifier{"device_telemetry_logs"},
				[]string{"id", "recorded_at", "received_at", "organization_id", "device_id", "topic", "ingestion_message_id",
					"raw_payload", "mutated_values", "transformed_values", "validation_status", "processing_state"},
				pgx.CopyFromRows(copyRows)); err != nil {
				t.Fatalf("copy the rows: %v", err)
			}
			var width int
			if err := db.Pool.QueryRow(ctx, `select min(pg_column_size(t.*)) from device_telemetry_logs t`).Scan(&width); err != nil {
				t.Fatal(err)
			}
			before := pages(t, db)
			if err := Mark(ctx, db.Pool, rows, nil); err != nil {
				t.Fatalf("mark: %v", err)
			}
			after := pages(t, db)
			var processed, moved int
			for id, page := range after {
				if page.state == "processed" {
					processed++
				}
				if page.block != before[id].block {
					moved++
				}
			}
			if processed != n {
				t.Fatalf("%d of %d rows processed", processed, n)
			}
			if moved > 0 {
				t.Errorf("rows of %d bytes, %d pages: %d of %d rows moved to another page when marked processed",
					width, len(blocks(before)), moved, n)
			}
			t.Logf("rows of %d bytes on %d pages", width, len(blocks(before)))
		})
	}
}

// place is where a telemetry row is and what state it is in.
type place struct {
	block int
	state string
}

func pages(t *testing.T, db *testdb.DB) map[uuid.UUID]place {
	t.Helper()
	rows, err := db.Pool.Query(t.Context(), `select id, (ctid::text::point)[0]::int, processing_state from device_telemetry_logs`)
	if err != nil {
		t.Fatal(err)
	}
	out := map[uuid.UUID]place{}
	for rows.Next() {
		var id uuid.UUID
		var p place
		if err := rows.Scan(&id, &p.block, &p.state); err != nil {
			t.Fatal(err)
		}
		out[id] = p
	}
	if err := rows.Err(); err != nil {
		t.Fatal(err)
	}
	return out
}

func blocks(m map[uuid.UUID]place) map[int]bool {
	out := map[int]bool{}
	for _, p := range m {
		out[p.block] = true
	}
	return out
}
