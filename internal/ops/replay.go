package ops

import (
	"context"
	"fmt"
	"time"

	"github.com/google/uuid"
	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/telemesh/telemesh/internal/outbox"
)

// StaleQueued is how long a resumed message may stay queued before
// Repark puts it back to parked: the gateway claims parked messages by
// marking them queued, and one that crashes leaves them there.
const StaleQueued = 2 * time.Minute

// publishFailedRows selects the publish_failed telemetry rows the publish
// outbox holds and f matches, as (id, recorded_at); no index covers
// processing_state, and the outbox holds every row not yet published.
func publishFailedRows(start int) string {
	return `select distinct t.id, t.recorded_at from (` + outbox.RowsSQL + `) o
		join device_telemetry_logs t on t.id = o.id and t.recorded_at between o.recorded_from and o.recorded_to
		where t.processing_state = 'publish_failed' and ` + filterSQL("t", start)
}

// CountPublishFailed returns how many telemetry rows matching f are
// publish_failed.
func CountPublishFailed(ctx context.Context, pool *pgxpool.Pool, f Filter) (int64, error) {
	r, err := f.resolve(ctx, pool)
	if err != nil {
		return 0, err
	}
	var n int64
	err = pool.QueryRow(ctx, `select count(*) from (`+publishFailedRows(1)+`) x`, r.args()...).Scan(&n)
	if err != nil {
		return 0, fmt.Errorf("count publish_failed rows: %w", err)
	}
	return n, nil
}

// ReplayPublishFailed makes every publish_failed telemetry row matching f
// due now, so the publisher's retry loop publishes it on its next pass: it
// adds an outbox entry for them, due now. It returns how many rows it
// made due.
func ReplayPublishFailed(ctx context.Context, pool *pgxpool.Pool, f Filter) (int64, error) {
	r, err := f.resolve(ctx, pool)
	if err != nil {
		return 0, err
	}
	return replayRows(ctx, pool, publishFailedRows(1), r.args()...)
}

// replayRows adds one outbox entry, due now, for the rows query selects as
// (id, recorded_at), and returns how many there are.
func replayRows(ctx context.Context, pool *pgxpool.Pool, query string, args ...any) (int64, error) {
	rows, err := pool.Query(ctx, query, args...)
	if err != nil {
		return 0, fmt.Errorf("find publish_failed rows: %w", err)
	}
	due, err := pgx.CollectRows(rows, func(r pgx.CollectableRow) (outbox.Row, error) {
		var o outbox.Row
		err := r.Scan(&o.ID, &o.RecordedAt)
		return o, err
	})
	if err != nil {
		return 0, fmt.Errorf("find publish_failed rows: %w", err)
	}
	if _, err := outbox.Add(ctx, pool, due, time.Now(), 0); err != nil {
		return 0, fmt.Errorf("make publish_failed rows due: %w", err)
	}
	return int64(len(due)), nil
}

// ParkedGroup is how many messages of one organization are parked, and
// whether they resume by themselves (the global and the organization's
// pipeline switches are both on).
type ParkedGroup struct {
	OrganizationID uuid.UUID `json:"organization_id"`
	Organization   string    `json:"organization"`
	Parked         int64     `json:"parked"`
	// StaleQueued are messages claimed for resumption longer than
	// StaleQueued ago and not finished.
	StaleQueued int64 `json:"stale_queued"`
	SwitchOn    bool  `json:"switch_on"`
}

// Parked reports the parked messages matching f per organization.
func Parked(ctx context.Context, pool *pgxpool.Pool, f Filter) ([]ParkedGroup, error) {
	r, err := f.resolve(ctx, pool)
	if err != nil {
		return nil, err
	}
	rows, err := pool.Query(ctx, `select m.organization_id, coalesce(o.slug, ''),
			count(*) filter (where m.status = 'parked'),
			count(*) filter (where m.status = 'queued' and m.updated_at < now() - $5::interval),
			coalesce((select pipeline_enabled from pipeline_switches where organization_id is null), true)
			and coalesce((select pipeline_enabled from pipeline_switches s where s.organization_id = m.organization_id), true)
		from ingestion_messages m left join organizations o on o.id = m.organization_id
		where m.organization_id is not null
		  and (m.status = 'parked' or (m.status = 'queued' and m.updated_at < now() - $5::interval))
		  and `+filterSQL("m", 1)+`
		group by m.organization_id, o.slug order by o.slug`, append(r.args(), staleInterval())...)
	if err != nil {
		return nil, fmt.Errorf("count parked messages: %w", err)
	}
	groups, err := pgx.CollectRows(rows, func(row pgx.CollectableRow) (ParkedGroup, error) {
		var g ParkedGroup
		err := row.Scan(&g.OrganizationID, &g.Organization, &g.Parked, &g.StaleQueued, &g.SwitchOn)
		return g, err
	})
	if err != nil {
		return nil, fmt.Errorf("count parked messages: %w", err)
	}
	return groups, nil
}

// Repark puts messages matching f that were claimed for resumption (status
// queued) more than StaleQueued ago back to parked, so the gateway takes
// them again. It returns how many it changed.
func Repark(ctx context.Context, pool *pgxpool.Pool, f Filter) (int64, error) {
	r, err := f.resolve(ctx, pool)
	if err != nil {
		return 0, err
	}
	tag, err := pool.Exec(ctx, `update ingestion_messages m set status = 'parked', updated_at = now()
		where m.status = 'queued' and m.updated_at < now() - $5::interval and m.organization_id is not null
		  and `+filterSQL("m", 1), append(r.args(), staleInterval())...)
	if err != nil {
		return 0, fmt.Errorf("repark stale queued messages: %w", err)
	}
	return tag.RowsAffected(), nil
}

// DeadLetter is a message the gateway gave up on, with the bytes it kept.
type DeadLetter struct {
	ID          uuid.UUID `json:"id"`
	Subject     string    `json:"subject"`
	ContentType string    `json:"content_type,omitempty"`
	Payload     []byte    `json:"-"`
	Reason      string    `json:"reason"`
}

// deadLetterWhere matches the dead letters not yet replayed. One whose
// payload was longer than the stored-payload limit keeps only its first
// bytes, so it cannot be replayed.
const deadLetterWhere = `m.status = 'failed_terminal' and m.halted_stage = 'ingress'
	and (m.error_summary like 'dead-lettered%' or m.error_summary like 'rejected by the chain%')
	and m.error_summary not like '%(replayed at %'
	and m.raw_payload is not null and m.raw_payload_bytes is null`

// DeadLetters returns the dead letters matching f that were not replayed
// yet, oldest first.
func DeadLetters(ctx context.Context, pool *pgxpool.Pool, f Filter) ([]DeadLetter, error) {
	r, err := f.resolve(ctx, pool)
	if err != nil {
		return nil, err
	}
	rows, err := pool.Query(ctx, `select m.id, m.source_subject, coalesce(m.content_type, ''), m.raw_payload, m.error_summary
		from ingestion_messages m where `+deadLetterWhere+` and `+filterSQL("m", 1)+` order by m.received_at`, r.args()...)
	if err != nil {
		return nil, fmt.Errorf("read dead letters: %w", err)
	}
	dls, err := pgx.CollectRows(rows, func(row pgx.CollectableRow) (DeadLetter, error) {
		var d DeadLetter
		err := row.Scan(&d.ID, &d.Subject, &d.ContentType, &d.Payload, &d.Reason)
		return d, err
	})
	if err != nil {
		return nil, fmt.Errorf("read dead letters: %w", err)
	}
	return dls, nil
}

// ReplayDeadLetter publishes a dead letter's kept payload to its original
// subject with the Nats-Msg-Id "replay-<message id>" (so the gateway takes
// it as a new message, and a second replay within the stream's duplicate
// window is dropped) and then notes the replay in its error_summary.
func ReplayDeadLetter(ctx context.Context, pool *pgxpool.Pool, js jetstream.JetStream, d DeadLetter) error {
	msg := nats.NewMsg(d.Subject)
	msg.Data = d.Payload
	msg.Header.Set(jetstream.MsgIDHeader, "replay-"+d.ID.String())
	if d.ContentType != "" {
		msg.Header.Set("Content-Type", d.ContentType)
	}
	if _, err := js.PublishMsg(ctx, msg); err != nil {
		return fmt.Errorf("republish dead letter %s to %s: %w", d.ID, d.Subject, err)
	}
	_, err := pool.Exec(ctx, `update ingestion_messages
		set error_summary = error_summary || ' (replayed at ' || to_char(now() at time zone 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS"Z"') || ')',
		    updated_at = now()
		where id = $1`, d.ID)
	if err != nil {
		return fmt.Errorf("mark dead letter %s replayed: %w", d.ID, err)
	}
	return nil
}

// staleInterval is StaleQueued as a Postgres interval.
func staleInterval() string {
	return fmt.Sprintf("%d seconds", int64(StaleQueued/time.Second))
}
