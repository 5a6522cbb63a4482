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
	"github.com/telemesh/telemesh/internal/pg"
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

// Mark records the outcome of a batch: processed rows in one statement,
// publish_failed rows with their reason and next attempt in another. Only rows still
// waiting for a publish change, so a late or repeated call never turns a
// processed row back.
func Mark(ctx context.Context, q Execer, processed []Row, failed []Failure) error {
	n := len(processed) + len(failed)
	if n == 0 {
		return nil
	}
	if len(processed) > 0 {
		ids := make([][16]byte, len(processed))
		lo, hi := processed[0].RecordedAt, processed[0].RecordedAt
		for i, r := range processed {
			ids[i] = r.ID
			lo, hi = earlier(lo, r.RecordedAt), later(hi, r.RecordedAt)
		}
		// Every processed row gets the same values, so the rows are found
		// through the primary key by their ids alone: a join with the
		// batch's arrays would let the planner, which knows nothing yet
		// of a new partition's rows, loop over the whole batch for each
		// row it finds.
		_, err := q.Exec(ctx, `update device_telemetry_logs set
				processing_state = 'processed',
				failure_reason = null,
				next_publish_at = null,
				publish_attempts = publish_attempts + 1,
				processed_at = now(),
				updated_at = now()
			where id = any($1) and recorded_at between $2 and $3
			  and processing_state in ('pending', 'publish_failed')`, pg.PlanEachTime, ids, lo, hi)
		if err != nil {
			return fmt.Errorf("mark %d rows processed: %w", len(ids), err)
		}
	}
	if len(failed) == 0 {
		return nil
	}
	ids := make([][16]byte, len(failed))
	recorded := make([]time.Time, len(failed))
	reasons := make([]string, len(failed))
	retry := make([]time.Time, len(failed))
	lo, hi := failed[0].RecordedAt, failed[0].RecordedAt
	for i, f := range failed {
		ids[i], recorded[i], reasons[i], retry[i] = f.ID, f.RecordedAt, f.Reason, f.RetryAt
		lo, hi = earlier(lo, f.RecordedAt), later(hi, f.RecordedAt)
	}
	// The ids again on their own let the planner find the rows through the
	// primary key before it joins them with their reasons.
	_, err := q.Exec(ctx, `update device_telemetry_logs t set
			processing_state = 'publish_failed',
			failure_reason = u.reason,
			next_publish_at = u.retry_at,
			publish_attempts = t.publish_attempts + 1,
			updated_at = now()
		from unnest($1::uuid[], $2::timestamptz[], $3::text[], $4::timestamptz[]) as u(id, recorded_at, reason, retry_at)
		where t.id = any($1) and t.id = u.id and t.recorded_at = u.recorded_at
		  -- Constant bounds let the planner touch only the partitions of
		  -- the batch's days instead of every partition.
		  and t.recorded_at between $5 and $6
		  and t.processing_state in ('pending', 'publish_failed')`, pg.PlanEachTime, ids, recorded, reasons, retry, lo, hi)
	if err != nil {
		return fmt.Errorf("mark %d rows publish_failed: %w", len(ids), err)
	}
	return nil
}

func earlier(a, b time.Time) time.Time {
	if b.Before(a) {
		return b
	}
	return a
}

func later(a, b time.Time) time.Time {
	if b.After(a) {
		return b
	}
	return a
}

// claimed is a row the retry loop took.
type claimed struct {
	item     Item
	attempts int
	// traceID is the trace id its message keeps, "" for none.
	traceID string
}

// unpublished reads the rows of the claimed outbox entries that are still
// pending or publish_failed; a row another attempt published meanwhile is
// left out.
func unpublished(ctx context.Context, tx pgx.Tx, entries []outbox.Entry) ([]claimed, error) {
	var out []claimed
	for _, e := range entries {
		rows, err := tx.Query(ctx, `select t.id, t.recorded_at, t.organization_id, t.device_id, t.topic,
				t.transformed_values, t.unresolved_values, t.publish_attempts, coalesce(d.external_id, ''),
				coalesce(m.dedupe_key, ''), coalesce(m.trace_id, '')
			from device_telemetry_logs t
			left join devices d on d.id = t.device_id
			left join ingestion_messages m on m.id = t.ingestion_message_id
			where t.id = any($1) and t.recorded_at between $2 and $3
			  and t.processing_state in ('pending', 'publish_failed')
			for update of t`, pg.PlanEachTime, e.MessageIDs, e.From, e.To)
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
				&values, &unresolved, &c.attempts, &c.item.DeviceExternalID, &c.item.DedupeKey, &c.traceID); err != nil {
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
