package stagelog

import (
	"context"
	"encoding/json"
	"fmt"
	"log/slog"
	"testing"
	"time"

	"github.com/google/uuid"

	"github.com/telemesh/telemesh/internal/testdb"
	"github.com/telemesh/telemesh/internal/testutil"
)

// TestSummarizeLetsATraceReadOnlyTheRangesOfItsMessage writes stage rows as
// the stages do (time-ordered message ids, six rows each, a batch per
// COPY) and looks one message's rows up by id, as a trace does. Before the
// index's ranges are summarized the lookup reads every page; after
// Summarize only the few around the message's.
func TestSummarizeLetsATraceReadOnlyTheRangesOfItsMessage(t *testing.T) {
	db := testdb.New(t)
	ctx := t.Context()
	ids := writeMessages(t, db, 20_000)
	id := ids[len(ids)/3]
	before := lookupPages(t, db, id)
	n, err := Summarize(ctx, db.Pool)
	if err != nil {
		t.Fatal(err)
	}
	after := lookupPages(t, db, id)
	t.Logf("%d stage rows; the lookup read %d pages before %d ranges were summarized, %d after", len(ids)*6, before, n, after)
	if n == 0 {
		t.Errorf("Summarize summarized no range of %d rows", len(ids)*6)
	}
	if after > maxLookupPages {
		t.Errorf("the lookup read %d pages after the summary, want at most %d", after, maxLookupPages)
	}
	if again, err := Summarize(ctx, db.Pool); err != nil || again != 0 {
		t.Errorf("Summarize again with nothing new: %d ranges, %v; want 0", again, err)
	}
}

// TestSummarizeLoopSummarizesAndStopsWithItsContext: the loop summarizes on
// its tick, so a lookup soon reads only its ranges, and returns nil when
// its context ends.
func TestSummarizeLoopSummarizesAndStopsWithItsContext(t *testing.T) {
	db := testdb.New(t)
	ids := writeMessages(t, db, 5_000)
	ctx, cancel := context.WithCancel(t.Context())
	defer cancel()
	done := make(chan error, 1)
	go func() { done <- SummarizeLoop(ctx, db.Pool, 10*time.Millisecond, slog.New(slog.DiscardHandler)) }()
	testutil.Eventually(t, 30*time.Second, "the loop summarizes the new ranges", func() error {
		if pages := lookupPages(t, db, ids[len(ids)/2]); pages > maxLookupPages {
			return fmt.Errorf("a lookup reads %d pages, want at most %d", pages, maxLookupPages)
		}
		return nil
	})
	cancel()
	select {
	case err := <-done:
		if err != nil {
			t.Errorf("the loop returned %v, want nil", err)
		}
	case <-time.After(30 * time.Second):
		t.Fatal("the loop did not return within 30 s of its context ending")
	}
}

// maxLookupPages is what a lookup by message id may read once the ranges
// are summarized: three ranges of 16 heap pages (the message's, and
// neighbours whose batches were written at the same moment) and the
// index's own pages.
const maxLookupPages = 64

// writeMessages writes n messages' stage rows as the stages do:
// time-ordered message ids, six rows each, 500 messages per COPY.
func writeMessages(t *testing.T, db *testdb.DB, n int) []uuid.UUID {
	t.Helper()
	w, err := New(ModeAll, 1, "test-0")
	if err != nil {
		t.Fatal(err)
	}
	var ids []uuid.UUID
	for len(ids) < n {
		b := w.Batch()
		for range min(500, n-len(ids)) {
			id := uuid.Must(uuid.NewV7())
			ids = append(ids, id)
			for _, stage := range []string{"ingress", "validate", "mutate", "derive", "persist", "publish"} {
				b.Add(&Entry{MessageID: id, Stage: stage, Status: StatusCompleted, Duration: time.Millisecond})
			}
		}
		if err := b.Write(t.Context(), db.Pool); err != nil {
			t.Fatal(err)
		}
	}
	// Statistics, as autovacuum keeps them: without them the planner
	// knows nothing of how well ids follow the pages.
	if _, err := db.Pool.Exec(t.Context(), `analyze ingestion_stage_logs`); err != nil {
		t.Fatal(err)
	}
	return ids
}

// lookupPages looks up a message's stage rows by id, as a trace does, and
// returns how many pages (heap and index) the lookup read. It fails the
// test if the lookup does not find the six rows.
func lookupPages(t *testing.T, db *testdb.DB, id uuid.UUID) int {
	t.Helper()
	var plan []map[string]any
	if err := db.Pool.QueryRow(t.Context(), `explain (analyze, buffers, format json) select stage from ingestion_stage_logs where message_id = $1`, id).
		Scan(&plan); err != nil {
		t.Fatal(err)
	}
	root := plan[0]["Plan"].(map[string]any)
	if rows := root["Actual Rows"].(float64); rows != 6 {
		t.Fatalf("the lookup found %v rows, want 6:\n%s", rows, mustJSON(plan))
	}
	hit, _ := root["Shared Hit Blocks"].(float64)
	read, _ := root["Shared Read Blocks"].(float64)
	return int(hit + read)
}

func mustJSON(v any) string {
	b, _ := json.MarshalIndent(v, "", "  ")
	return string(b)
}

// TestSummarizeSkipsAPartitionVacuumHolds: a partition that (auto)vacuum is
// working on is skipped after a moment instead of waited for, so the
// stages' summaries never cancel autovacuum (which summarizes the ranges
// itself); the call still succeeds.
func TestSummarizeSkipsAPartitionVacuumHolds(t *testing.T) {
	db := testdb.New(t)
	ctx := t.Context()
	writeMessages(t, db, 3_000)
	var partition string
	if err := db.Pool.QueryRow(ctx, `select tableoid::regclass::text from ingestion_stage_logs limit 1`).Scan(&partition); err != nil {
		t.Fatal(err)
	}
	tx, err := db.Pool.Begin(ctx)
	if err != nil {
		t.Fatal(err)
	}
	defer func() { _ = tx.Rollback(context.WithoutCancel(ctx)) }()
	// The lock VACUUM takes.
	if _, err := tx.Exec(ctx, `lock table `+partition+` in share update exclusive mode`); err != nil {
		t.Fatal(err)
	}
	start := time.Now()
	n, err := Summarize(ctx, db.Pool)
	if err != nil {
		t.Fatalf("Summarize beside a vacuum: %v", err)
	}
	if took := time.Since(start); took > 900*time.Millisecond {
		t.Errorf("Summarize waited %s for the vacuum, longer than deadlock_timeout's default of 1 s", took)
	}
	if n != 0 {
		t.Errorf("Summarize summarized %d ranges of the partition vacuum holds", n)
	}
	if err := tx.Rollback(ctx); err != nil {
		t.Fatal(err)
	}
	if n, err := Summarize(ctx, db.Pool); err != nil || n == 0 {
		t.Errorf("Summarize after the vacuum: %d ranges, %v; want some", n, err)
	}
}
