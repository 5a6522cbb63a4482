package bench_test

import (
	"context"
	"math"
	"slices"
	"testing"
	"time"

	"github.com/google/uuid"
	"github.com/jackc/pgx/v5"

	"github.com/telemesh/telemesh/internal/testdb"
)

// The Postgres-only ceiling means something only while it writes what the
// pipeline writes. This runs a few hundred messages through the pipeline
// in each stage-log mode and the same messages through the ceiling's
// COPY, and compares, table by table, the rows per message, which columns
// hold values and the average row width.
func TestCeilingWritesWhatThePipelineWrites(t *testing.T) {
	if testing.Short() {
		t.Skip("runs the pipeline with nats-server; not part of the quick set")
	}
	const n = 300
	for _, mode := range modes {
		t.Run("mode="+mode, func(t *testing.T) {
			r := setup(t, nil)
			before := tableCounts(t, r.conn)
			r.start(inProcess, mode)
			r.runBacklog(n)
			if d := sameRows(grown(before, tableCounts(t, r.conn), n), rowsPerMessage(mode)); d != "" {
				t.Fatalf("the ceiling's rows (rowShapes in ceiling_test.go) differ from the pipeline's: %s", d)
			}

			c := testdb.New(t)
			fl := seedFleet(t, c.Pool)
			msgs := make([]writtenMessage, n)
			for i := range msgs {
				msgs[i] = writtenMessage{id: uuid.Must(uuid.NewV7()), m: fl.message("c", i), seq: int64(i + 1), received: time.Now()}
			}
			if err := copyMessages(t.Context(), c.Pool, msgs, mode); err != nil {
				t.Fatalf("the ceiling's COPY: %v", err)
			}
			conn, err := pgx.Connect(t.Context(), c.URL)
			if err != nil {
				t.Fatal(err)
			}
			defer conn.Close(context.Background())
			for _, shape := range rowShapes {
				pipe, ceil := profile(t, r.conn, shape.table), profile(t, conn, shape.table)
				if !slices.Equal(pipe.filled, ceil.filled) {
					t.Errorf("%s: the pipeline fills columns %v, the ceiling %v", shape.table, pipe.filled, ceil.filled)
				}
				if pipe.rows > 0 && math.Abs(ceil.avgSize-pipe.avgSize) > 0.25*pipe.avgSize {
					t.Errorf("%s: the pipeline's rows are %.0f bytes wide on average, the ceiling's %.0f", shape.table, pipe.avgSize, ceil.avgSize)
				}
			}
		})
	}
}
