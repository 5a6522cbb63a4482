package ops

import (
	"context"
	"fmt"

	"github.com/google/uuid"
	"github.com/jackc/pgx/v5/pgxpool"
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
	tag, err := pool.Exec(ctx, `update device_telemetry_logs t set next_publish_at = now(), updated_at = now()
		where t.processing_state = 'publish_failed' and t.id = any($1)`, ids)
	if err != nil {
		return 0, fmt.Errorf("make publish_failed rows due: %w", err)
	}
	return tag.RowsAffected(), nil
}
