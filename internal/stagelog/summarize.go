package stagelog

import (
	"context"
	"fmt"
	"log/slog"
	"time"

	"github.com/jackc/pgx/v5"
)

// SummarizeEvery is how often a stage summarizes the new block ranges of
// the stage rows' message_id index. A trace reads in full the pages written
// since the last summary (at full rate, a few thousand per second), so a
// few seconds keep it quick; each call reads only those pages, once.
const SummarizeEvery = 5 * time.Second

// RowQuerier runs a query that returns one row: a pool or a connection.
type RowQuerier interface {
	QueryRow(ctx context.Context, sql string, args ...any) pgx.Row
}

// Summarize summarizes the block ranges of ingestion_stage_logs that its
// message_id index (BRIN, see migration 00013) has not summarized yet and
// returns how many it summarized: 0 when another stage is at it.
func Summarize(ctx context.Context, q RowQuerier) (int, error) {
	var n int
	if err := q.QueryRow(ctx, `select telemesh_summarize_stage_logs()`).Scan(&n); err != nil {
		return 0, fmt.Errorf("summarize stage log ranges: %w", err)
	}
	return n, nil
}

// SummarizeLoop calls [Summarize] every interval until ctx ends. A failure
// is logged and tried again at the next tick: a summary that waits only
// makes a trace read more pages, and the stage's own writes do not need it.
func SummarizeLoop(ctx context.Context, q RowQuerier, every time.Duration, logger *slog.Logger) error {
	t := time.NewTicker(every)
	defer t.Stop()
	failing := false
	for {
		select {
		case <-ctx.Done():
			return nil
		case <-t.C:
		}
		n, err := Summarize(ctx, q)
		switch {
		case err != nil && ctx.Err() != nil:
			return nil
		case err != nil:
			if !failing {
				logger.Warn("stage log ranges not summarized; traces read more pages until they are", "err", err)
			}
			failing = true
		default:
			if failing {
				logger.Info("stage log ranges summarized again", "ranges", n)
			}
			failing = false
		}
	}
}
