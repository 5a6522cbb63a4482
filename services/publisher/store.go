package publisher

import (
	"context"
	"fmt"
	"time"

	"github.com/google/uuid"
	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
	"github.com/sethvargo/go-retry"

	"github.com/telemesh/telemesh/internal/outbox"
)

// Backoff returns when a row that failed attempt times is tried again:
// doubling from base, capped at limit, then moved by up to ±20 %, so the
// rows that failed together (NATS down for a while) are retried spread out
// rather than in one burst.
func Backoff(attempts int, base, limit time.Duration) time.Duration {
	b := retry.WithJitterPercent(backoffJitterPercent, retry.WithCappedDuration(limit, retry.NewExponential(base)))
	// Past 64 doublings the exponential has long reached the cap.
	var d time.Duration
	for range min(max(attempts, 1), 64) {
		d, _ = b.Next()
	}
	return d
}

// backoffJitterPercent is how far, in percent either way, [Backoff] moves a
// row's next attempt.
const backoffJitterPercent = 20

// Execer is a pool or a transaction.
type Execer interface {
	Exec(ctx context.Context, sql string, args ...any) (pgconn.CommandTag, error)
}

// Row names a telemetry row: its id and its partition key.
type Row struct {
	ID         uuid.UUID
	RecordedAt time.Time
}

// Failure is a row whose publish failed.
type Failure struct {
	Row
	Reason   string
	Attempts int
	RetryAt  time.Time
}

// Mark records the outcome of a batch in one statement: processed rows and
// publish_failed rows with their reason and next attempt. Only rows still
// waiting for a publish change, so a late or repeated call never turns a
// processed row back.
func Mark(ctx context.Context, q Execer, processed []Row, failed []Failure) error {
	n := len(processed) + len(failed)
	if n == 0 {
		return nil
	}
	ids := make([][16]byte, 0, n)
	recorded := make([]time.Time, 0, n)
	states := make([]string, 0, n)
	reasons := make([]*string, 0, n)
	retry := make([]*time.Time, 0, n)
	var lo, hi time.Time
	add := func(r Row) {
		ids, recorded = append(ids, r.ID), append(recorded, r.RecordedAt)
		if lo.IsZero() || r.RecordedAt.Before(lo) {
			lo = r.RecordedAt
		}
		if r.RecordedAt.After(hi) {
			hi = r.RecordedAt
		}
	}
	for _, r := range processed {
		add(r)
		states, reasons, retry = append(states, "processed"), append(reasons, nil), append(retry, nil)
	}
	for _, f := range failed {
		add(f.Row)
		r, at := f.Reason, f.RetryAt
		states, reasons, retry = append(states, "publish_failed"), append(reasons, &r), append(retry, &at)
	}
	_, err := q.Exec(ctx, `update device_telemetry_logs t set
			processing_state = u.state,
			failure_reason = u.reason,
			next_publish_at = u.retry_at,
			publish_attempts = t.publish_attempts + 1,
			processed_at = case when u.state = 'processed' then now() else t.processed_at end,
			updated_at = now()
		from unnest($1::uuid[], $2::timestamptz[], $3::text[], $4::text[], $5::timestamptz[]) as u(id, recorded_at, state, reason, retry_at)
		where t.id = u.id and t.recorded_at = u.recorded_at
		  -- Constant bounds let the planner touch only the partitions of
		  -- the batch's days instead of every partition.
		  and t.recorded_at between $6 and $7
		  and t.processing_state in ('pending', 'publish_failed')`,
		ids, recorded, states, reasons, retry, lo, hi)
	if err != nil {
		return fmt.Errorf("mark %d rows: %w", len(ids), err)
	}
	return nil
}

// claimed is a row the retry loop took.
type claimed struct {
	item     Item
	attempts int
}

// unpublished reads the rows of the claimed outbox entries that are still
// pending or publish_failed; a row another attempt published meanwhile is
// left out.
func unpublished(ctx context.Context, tx pgx.Tx, entries []outbox.Entry) ([]claimed, error) {
	var out []claimed
	for _, e := range entries {
		rows, err := tx.Query(ctx, `select t.id, t.recorded_at, t.organization_id, t.device_id, t.topic,
				t.transformed_values, t.unresolved_values, t.publish_attempts, coalesce(d.external_id, '')
			from device_telemetry_logs t
			left join devices d on d.id = t.device_id
			where t.id = any($1) and t.recorded_at between $2 and $3
			  and t.processing_state in ('pending', 'publish_failed')
			for update of t`, e.MessageIDs, e.From, e.To)
		if err != nil {
			return nil, fmt.Errorf("read rows to publish: %w", err)
		}
		for rows.Next() {
			var (
				c                  claimed
				org                *uuid.UUID
				values, unresolved []byte
				device             uuid.UUID
			)
			if err := rows.Scan(&c.item.MessageID, &c.item.RecordedAt, &org, &device, &c.item.Topic,
				&values, &unresolved, &c.attempts, &c.item.DeviceExternalID); err != nil {
				rows.Close()
				return nil, fmt.Errorf("read rows to publish: %w", err)
			}
			if org != nil {
				c.item.OrganizationID = *org
			}
			c.item.DeviceUUID = device.String()
			c.item.Values, c.item.Unresolved = jsonObject(string(values)), jsonObject(string(unresolved))
			c.item.Attempt = c.attempts + 1
			out = append(out, c)
		}
		rows.Close()
		if err := rows.Err(); err != nil {
			return nil, fmt.Errorf("read rows to publish: %w", err)
		}
	}
	return out, nil
}
