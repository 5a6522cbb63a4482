package persister

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"strings"
	"time"

	"github.com/google/uuid"
	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/pgtype"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/telemesh/telemesh/internal/pg"
	"github.com/telemesh/telemesh/internal/stagelog"
)

// ErrEncode is returned when a message's values cannot be stored as JSON.
var ErrEncode = errors.New("cannot encode values")

// Store writes batches to Postgres.
type Store struct {
	pool *pgxpool.Pool
	// publishLease is how long a pending row is left to the synchronous
	// publish before the publisher's retry loop may take it.
	publishLease time.Duration
}

// NewStore returns a store over pool.
func NewStore(pool *pgxpool.Pool, publishLease time.Duration) *Store {
	return &Store{pool: pool, publishLease: publishLease}
}

const insertMessages = `
insert into ingestion_messages (id, organization_id, device_id, source_subject, source_message_id,
	dedupe_key, stream_sequence, delivery_attempts, raw_payload, content_type, status, halted_stage,
	error_summary, received_at, processed_at)
select * from unnest($1::uuid[], $2::uuid[], $3::uuid[], $4::text[], $5::text[], $6::text[],
	$7::bigint[], $8::int[], $9::bytea[], $10::text[], $11::text[], $12::text[], $13::text[],
	$14::timestamptz[], $15::timestamptz[])
on conflict (dedupe_key) do update set
	organization_id = excluded.organization_id,
	device_id = excluded.device_id,
	status = excluded.status,
	halted_stage = excluded.halted_stage,
	error_summary = excluded.error_summary,
	delivery_attempts = excluded.delivery_attempts,
	processed_at = excluded.processed_at,
	updated_at = now()
-- Only a parked message is resumed; an original that reached persist is
-- never overwritten, so its status always tells what happened to it.
where ingestion_messages.status in ('parked', 'queued')
returning id, dedupe_key`

var telemetryColumns = []string{
	"id", "recorded_at", "received_at", "organization_id", "device_id", "topic", "ingestion_message_id",
	"raw_payload", "mutated_values", "transformed_values", "unresolved_values", "validation_status",
	"validation_errors", "processing_state", "failure_reason", "next_publish_at",
}

// Persist writes the batch in one transaction: the message rows, the
// telemetry rows of messages stored now, and the stage logs that logs()
// returns once the dispositions are known. With dryRun it writes nothing and
// reports what would happen.
func (s *Store) Persist(ctx context.Context, msgs []Message, dryRun bool, sl *stagelog.Writer, logs func([]Result) []stagelog.Entry) ([]Result, error) {
	results := make([]Result, len(msgs))
	first := FirstOfKey(msgs)
	var unique []int
	for i, f := range first {
		if f == i {
			unique = append(unique, i)
		}
	}
	if dryRun {
		if err := s.dryRun(ctx, msgs, unique, results); err != nil {
			return nil, err
		}
		fillInBatchDuplicates(msgs, first, results)
		return results, nil
	}

	results, err := s.persistTx(ctx, msgs, first, unique, false, sl, logs)
	var pgErr *pgconn.PgError
	if errors.As(err, &pgErr) && strings.HasPrefix(pgErr.Code, "22") {
		// A payload Go accepts as JSON that jsonb refuses (an unpaired
		// surrogate escape, say) must not fail the batch: write it again
		// without the jsonb copies of the raw payloads. The exact bytes stay
		// in ingestion_messages.raw_payload.
		results, err = s.persistTx(ctx, msgs, first, unique, true, sl, logs)
	}
	return results, err
}

func (s *Store) persistTx(ctx context.Context, msgs []Message, first, unique []int, noRawJSON bool, sl *stagelog.Writer, logs func([]Result) []stagelog.Entry) ([]Result, error) {
	results := make([]Result, len(msgs))
	tx, err := s.pool.Begin(ctx)
	if err != nil {
		return nil, fmt.Errorf("begin: %w", err)
	}
	defer func() { _ = tx.Rollback(context.WithoutCancel(ctx)) }()

	stored, err := s.insertMessages(ctx, tx, msgs, unique)
	if err != nil {
		return nil, err
	}
	var dupKeys []string
	for _, i := range unique {
		id, ok := stored[msgs[i].DedupeKey]
		if !ok {
			dupKeys = append(dupKeys, msgs[i].DedupeKey)
			continue
		}
		results[i] = Result{Disposition: Inserted, OriginalID: id}
		if id != msgs[i].ID {
			results[i].Disposition = Resumed
		}
	}
	if len(dupKeys) > 0 {
		originals, err := originalsOf(ctx, tx, dupKeys)
		if err != nil {
			return nil, err
		}
		for _, i := range unique {
			if o, ok := originals[msgs[i].DedupeKey]; ok && results[i].Disposition == 0 {
				results[i] = Result{Disposition: Duplicate, OriginalID: o.id, OriginalStatus: o.status}
			}
		}
	}
	fillInBatchDuplicates(msgs, first, results)

	if err := s.copyTelemetry(ctx, tx, msgs, results, noRawJSON); err != nil {
		return nil, err
	}
	if err := sl.Write(ctx, tx, logs(results)); err != nil {
		return nil, err
	}
	if err := tx.Commit(ctx); err != nil {
		return nil, fmt.Errorf("commit: %w", err)
	}
	return results, nil
}

// fillInBatchDuplicates marks the later messages of a key repeated inside the
// batch as duplicates of the first.
func fillInBatchDuplicates(msgs []Message, first []int, results []Result) {
	for i, f := range first {
		if f == i {
			continue
		}
		orig := results[f]
		status := msgs[f].Status
		if orig.Disposition == Duplicate {
			status = orig.OriginalStatus
		}
		results[i] = Result{Disposition: Duplicate, OriginalID: orig.OriginalID, OriginalStatus: status}
	}
}

func (s *Store) insertMessages(ctx context.Context, tx pgx.Tx, msgs []Message, idx []int) (map[string]uuid.UUID, error) {
	n := len(idx)
	var (
		ids, orgs, devs                   = make([]pgtype.UUID, n), make([]pgtype.UUID, n), make([]pgtype.UUID, n)
		subjects, keys, statuses          = make([]string, n), make([]string, n), make([]string, n)
		srcIDs, ctypes, halted, summaries = make([]pgtype.Text, n), make([]pgtype.Text, n), make([]pgtype.Text, n), make([]pgtype.Text, n)
		seqs                              = make([]pgtype.Int8, n)
		attempts                          = make([]int32, n)
		payloads                          = make([][]byte, n)
		received, processed               = make([]time.Time, n), make([]pgtype.Timestamptz, n)
		now                               = time.Now()
	)
	for j, i := range idx {
		m := &msgs[i]
		ids[j] = pgUUID(m.ID)
		orgs[j] = pgUUID(m.OrganizationID)
		devs[j] = pgUUID(m.DeviceID)
		subjects[j], keys[j], statuses[j] = m.SourceSubject, m.DedupeKey, m.Status
		srcIDs[j], ctypes[j], halted[j], summaries[j] = pgText(m.SourceMessageID), pgText(m.ContentType), pgText(m.HaltedStage), pgText(m.Reason)
		seqs[j] = pgtype.Int8{Int64: int64(m.StreamSequence), Valid: m.StreamSequence > 0}
		attempts[j] = int32(max(m.DeliveryAttempt, 1))
		payloads[j] = m.RawPayload
		received[j] = m.ReceivedAt
		processed[j] = pgtype.Timestamptz{Time: now, Valid: m.Status != StatusParked}
	}
	rows, err := tx.Query(ctx, insertMessages, ids, orgs, devs, subjects, srcIDs, keys, seqs, attempts,
		payloads, ctypes, statuses, halted, summaries, received, processed)
	if err != nil {
		return nil, fmt.Errorf("insert ingestion_messages: %w", err)
	}
	defer rows.Close()
	stored := make(map[string]uuid.UUID, n)
	for rows.Next() {
		var (
			id  uuid.UUID
			key string
		)
		if err := rows.Scan(&id, &key); err != nil {
			return nil, fmt.Errorf("insert ingestion_messages: %w", err)
		}
		stored[key] = id
	}
	if err := rows.Err(); err != nil {
		return nil, fmt.Errorf("insert ingestion_messages: %w", err)
	}
	return stored, nil
}

type original struct {
	id     uuid.UUID
	status string
}

func originalsOf(ctx context.Context, q interface {
	Query(context.Context, string, ...any) (pgx.Rows, error)
}, keys []string) (map[string]original, error) {
	rows, err := q.Query(ctx, `select dedupe_key, id, status from ingestion_messages where dedupe_key = any($1)`, keys)
	if err != nil {
		return nil, fmt.Errorf("read originals: %w", err)
	}
	defer rows.Close()
	out := make(map[string]original, len(keys))
	for rows.Next() {
		var (
			key string
			o   original
		)
		if err := rows.Scan(&key, &o.id, &o.status); err != nil {
			return nil, fmt.Errorf("read originals: %w", err)
		}
		out[key] = o
	}
	return out, rows.Err()
}

func (s *Store) dryRun(ctx context.Context, msgs []Message, unique []int, results []Result) error {
	keys := make([]string, 0, len(unique))
	for _, i := range unique {
		keys = append(keys, msgs[i].DedupeKey)
	}
	originals, err := originalsOf(ctx, s.pool, keys)
	if err != nil {
		return err
	}
	for _, i := range unique {
		if o, ok := originals[msgs[i].DedupeKey]; ok && o.status != StatusParked && o.status != "queued" {
			results[i] = Result{Disposition: Duplicate, OriginalID: o.id, OriginalStatus: o.status}
			continue
		}
		results[i] = Result{Disposition: Inserted, OriginalID: msgs[i].ID}
	}
	return nil
}

func (s *Store) copyTelemetry(ctx context.Context, tx pgx.Tx, msgs []Message, results []Result, noRawJSON bool) error {
	rows := make([][]any, 0, len(msgs))
	lease := time.Now().Add(s.publishLease)
	for i := range msgs {
		m, r := &msgs[i], results[i]
		if m.Telemetry == nil || (r.Disposition != Inserted && r.Disposition != Resumed) {
			continue
		}
		t := m.Telemetry
		mutated, err1 := jsonText(t.Mutated, "{}")
		transformed, err2 := jsonText(t.Transformed, "{}")
		unresolved, err3 := jsonText(t.Unresolved, "{}")
		verrs, err4 := jsonText(t.ValidationErrors, "[]")
		if err := errors.Join(err1, err2, err3, err4); err != nil {
			return fmt.Errorf("%w: message %s: %w", ErrEncode, m.ID, err)
		}
		vstatus := "valid"
		if !t.Valid {
			vstatus = "invalid"
		}
		raw := rawJSON(m.RawPayload)
		if noRawJSON {
			raw = nil
		}
		var next any
		if t.State == StatePending {
			next = lease
		}
		rows = append(rows, []any{
			[16]byte(r.OriginalID), t.RecordedAt, m.ReceivedAt, pgUUID(m.OrganizationID), [16]byte(m.DeviceID), t.Topic, [16]byte(r.OriginalID),
			raw, pgJSON(mutated), pgJSON(transformed), pgJSON(unresolved), vstatus,
			pgJSON(verrs), t.State, pgText(t.FailureReason), next,
		})
	}
	if len(rows) == 0 {
		return nil
	}
	if _, err := tx.CopyFrom(ctx, pgx.Identifier{"device_telemetry_logs"}, telemetryColumns, pgx.CopyFromRows(rows)); err != nil {
		return fmt.Errorf("copy device_telemetry_logs: %w", err)
	}
	return nil
}

// MarkPublishFailed records that the publisher could not be reached for the
// given rows, recorded between from and to; the publisher's retry loop takes them from next_publish_at on.
func (s *Store) MarkPublishFailed(ctx context.Context, ids []uuid.UUID, from, to time.Time, reason string, retryAt time.Time) error {
	_, err := s.pool.Exec(ctx, `update device_telemetry_logs
		set processing_state = 'publish_failed', failure_reason = $2, next_publish_at = $3,
		    publish_attempts = publish_attempts + 1, updated_at = now()
		where id = any($1) and recorded_at between $4 and $5 and processing_state = 'pending'`, ids, reason, retryAt, from, to)
	if err != nil {
		return fmt.Errorf("mark publish_failed: %w", err)
	}
	return nil
}

func pgUUID(u uuid.UUID) pgtype.UUID {
	return pgtype.UUID{Bytes: u, Valid: u != uuid.Nil}
}

func pgText(s string) pgtype.Text {
	return pgtype.Text{String: s, Valid: s != ""}
}

// rawJSON returns the payload for the jsonb raw_payload column, or nil when
// Postgres would refuse it; the exact bytes are always kept in
// ingestion_messages.raw_payload.
func rawJSON(b []byte) any {
	if len(b) == 0 || bytes.Contains(b, []byte(`\u0000`)) {
		return nil
	}
	return string(b)
}

// pgJSON makes JSON text acceptable to jsonb, which refuses the NUL
// character; it becomes U+FFFD.
func pgJSON(s string) string {
	return pg.JSONB(s)
}
