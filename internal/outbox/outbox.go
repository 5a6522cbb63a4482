// Package outbox keeps publish_outbox: the telemetry rows whose publish is
// not recorded yet, a batch per entry. The persister adds an entry in the
// transaction that stores the rows, due when its publish lease ends; the
// publisher removes it in the transaction that records the publish, and
// adds one for the rows that failed, due at their next attempt; its retry
// loop claims due entries. Operators make rows due now by adding an entry.
//
// The telemetry rows keep their processing_state; the outbox only says
// which of them to look at, so an entry that outlives its rows (already
// processed by another attempt) costs a lookup and nothing else.
package outbox

import (
	"context"
	"fmt"
	"time"

	"github.com/google/uuid"
	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
)

// Execer runs a statement; a pool or a transaction.
type Execer interface {
	Exec(ctx context.Context, sql string, args ...any) (pgconn.CommandTag, error)
}

// Entry is one publish_outbox row.
type Entry struct {
	ID uuid.UUID
	// MessageIDs are the telemetry rows' ids (their messages' ids).
	MessageIDs []uuid.UUID
	// From and To bound the rows' recorded_at, so a lookup reads only the
	// partitions of their days.
	From, To time.Time
	DueAt    time.Time
	// Attempts is how many publish attempts the rows have had.
	Attempts int
}

// Row names a telemetry row: its id and its partition key.
type Row struct {
	ID         uuid.UUID
	RecordedAt time.Time
}

// Add inserts an entry for rows, due at due, and returns its id; no rows,
// no entry (uuid.Nil).
func Add(ctx context.Context, q Execer, rows []Row, due time.Time, attempts int) (uuid.UUID, error) {
	if len(rows) == 0 {
		return uuid.Nil, nil
	}
	ids := make([]uuid.UUID, len(rows))
	from, to := rows[0].RecordedAt, rows[0].RecordedAt
	for i, r := range rows {
		ids[i] = r.ID
		if r.RecordedAt.Before(from) {
			from = r.RecordedAt
		}
		if r.RecordedAt.After(to) {
			to = r.RecordedAt
		}
	}
	id := uuid.Must(uuid.NewV7())
	// row_count lets a reader count the rows that wait without unpacking
	// message_ids, which for a large batch is stored out of line.
	if _, err := q.Exec(ctx, `insert into publish_outbox (id, message_ids, recorded_from, recorded_to, due_at, attempts, row_count)
		values ($1, $2, $3, $4, $5, $6, $7)`, id, ids, from, to, due, attempts, len(ids)); err != nil {
		return uuid.Nil, fmt.Errorf("add %d rows to the publish outbox: %w", len(rows), err)
	}
	return id, nil
}

// Remove deletes the entries ids.
func Remove(ctx context.Context, q Execer, ids []uuid.UUID) error {
	if len(ids) == 0 {
		return nil
	}
	if _, err := q.Exec(ctx, `delete from publish_outbox where id = any($1)`, ids); err != nil {
		return fmt.Errorf("remove %d publish outbox entries: %w", len(ids), err)
	}
	return nil
}

// Delay makes the entries ids due at due and counts an attempt, for rows
// whose publish failed before the publisher saw them.
func Delay(ctx context.Context, q Execer, ids []uuid.UUID, due time.Time) error {
	if len(ids) == 0 {
		return nil
	}
	if _, err := q.Exec(ctx, `update publish_outbox set due_at = $2, attempts = attempts + 1 where id = any($1)`, ids, due); err != nil {
		return fmt.Errorf("delay %d publish outbox entries: %w", len(ids), err)
	}
	return nil
}

// Renew extends the publish lease of the entries ids: they become due lease
// from now, by the database's clock, which every replica shares. The
// persister renews the entries of a publish still under way, so the lease
// can be short and a crashed owner's rows are taken over within one lease.
// An entry already removed (its publish recorded) is no longer there to
// renew, which is what should happen.
func Renew(ctx context.Context, q Execer, ids []uuid.UUID, lease time.Duration) error {
	if len(ids) == 0 {
		return nil
	}
	if _, err := q.Exec(ctx, `update publish_outbox set due_at = now() + $2::interval where id = any($1)`, ids, lease); err != nil {
		return fmt.Errorf("renew the publish lease of %d outbox entries: %w", len(ids), err)
	}
	return nil
}

// ClaimDue locks due entries, the earliest first, skipping entries another
// replica holds, until they hold at least rows message ids or there are no
// more; the lock lasts as long as tx.
func ClaimDue(ctx context.Context, tx pgx.Tx, rows int) ([]Entry, error) {
	// Entries hold a batch each; a few are enough for one round.
	limit := max(rows/100, 1)
	q, err := tx.Query(ctx, `select id, message_ids, recorded_from, recorded_to, due_at, attempts
		from publish_outbox where due_at <= now() order by due_at limit $1 for update skip locked`, limit)
	if err != nil {
		return nil, fmt.Errorf("claim due publish outbox entries: %w", err)
	}
	entries, err := pgx.CollectRows(q, func(r pgx.CollectableRow) (Entry, error) {
		var e Entry
		err := r.Scan(&e.ID, &e.MessageIDs, &e.From, &e.To, &e.DueAt, &e.Attempts)
		return e, err
	})
	if err != nil {
		return nil, fmt.Errorf("claim due publish outbox entries: %w", err)
	}
	n := 0
	for i, e := range entries {
		if n >= rows {
			// Locked but not taken: the transaction's end lets them go.
			return entries[:i], nil
		}
		n += len(e.MessageIDs)
	}
	return entries, nil
}

// RowsSQL lists the telemetry rows the outbox holds, as (id, recorded_from,
// recorded_to), for a reader to join device_telemetry_logs with: on t.id =
// o.id and t.recorded_at between o.recorded_from and o.recorded_to, which
// lets Postgres read only the partitions of each entry's days. The rows
// still to publish are the ones the outbox holds; no index on
// device_telemetry_logs covers processing_state.
const RowsSQL = `select m.id, e.recorded_from, e.recorded_to, e.due_at, e.attempts
	from publish_outbox e cross join lateral unnest(e.message_ids) as m(id)`
