package ops

import (
	"context"

	"github.com/google/uuid"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/telemesh/telemesh/internal/outbox"
)

// ReplayPublishFailedRows makes the publish_failed telemetry rows of the
// given messages due now, as [ReplayPublishFailed] does for a filter, so the
// publisher's retry loop publishes them on its next pass; the viewer's Retry
// button names one row. Rows in any other state are left alone. It returns
// how many rows it changed.
func ReplayPublishFailedRows(ctx context.Context, pool *pgxpool.Pool, ids []uuid.UUID) (int64, error) {
	if len(ids) == 0 {
		return 0, nil
	}
	return replayRows(ctx, pool, `select distinct t.id, t.recorded_at from (`+outbox.RowsSQL+`) o
		join device_telemetry_logs t on t.id = o.id and t.recorded_at between o.recorded_from and o.recorded_to
		where t.processing_state = 'publish_failed' and t.id = any($1)`, ids)
}
