package persister

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"math"
	"time"

	"github.com/google/uuid"
	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/pgtype"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/telemesh/telemesh/internal/bound"
	"github.com/telemesh/telemesh/internal/outbox"
	"github.com/telemesh/telemesh/internal/pg"
	"github.com/telemesh/telemesh/internal/pipeline"
	"github.com/telemesh/telemesh/internal/stagelog"
)

// ErrEncode is returned when a message's values cannot be stored as JSON.
var ErrEncode = errors.New("cannot encode values")

// Bounds of what a message recorded as refused keeps, as the gateway
// bounds them.
const (
	maxSubjectBytes   = 512
	maxSourceIDBytes  = 256
	maxContentTypeLen = 255
)

// Store writes batches to Postgres.
type Store struct {
	pool *pgxpool.Pool
	// publishLease is how long a pending row is left to the synchronous
	// publish before the publisher's retry loop may take it.
	publishLease time.Duration
	// storedPayloadBytes is the stored-payload limit.
	storedPayloadBytes int
}

// NewStore returns a store over pool that keeps payloads up to the default
// stored-payload limit.
func NewStore(pool *pgxpool.Pool, publishLease time.Duration) *Store {
	return &Store{pool: pool, publishLease: publishLease, storedPayloadBytes: stagelog.DefaultLimits().PayloadBytes}
}

// WithStoredPayloadLimit returns a copy of the store that keeps at most n
// bytes of a payload: of a longer one the message row keeps the first n
// bytes, its size and its SHA-256, and the telemetry row no copy. n <= 0
// keeps the default.
func (s *Store) WithStoredPayloadLimit(n int) *Store {
	c := *s
	if n > 0 {
		c.storedPayloadBytes = n
	}
	return &c
}

// LogFunc adds to b the stage-log rows of message i once its result is
// known: the ones it carried from the stages before (when carried is true)
// and the persist stage's own.
type LogFunc func(b *stagelog.Batch, i int, r Result, carried bool)

const insertMessages = `
insert into ingestion_messages (id, organization_id, device_id, source_subject, source_message_id,
	dedupe_key, stream_sequence, delivery_attempts, raw_payload, content_type, status, halted_stage,
	error_summary, received_at, processed_at, raw_payload_bytes, raw_payload_sha256, trace_id)
select * from unnest($1::uuid[], $2::uuid[], $3::uuid[], $4::text[], $5::text[], $6::text[],
	$7::bigint[], $8::int[], $9::bytea[], $10::text[], $11::text[], $12::text[], $13::text[],
	$14::timestamptz[], $15::timestamptz[], $16::int[], $17::bytea[], $18::text[])
on conflict (dedupe_key) do update set
	organization_id = excluded.organization_id,
	device_id = excluded.device_id,
	status = excluded.status,
	halted_stage = excluded.halted_stage,
	error_summary = excluded.error_summary,
	delivery_attempts = excluded.delivery_attempts,
	processed_at = excluded.processed_at,
	trace_id = excluded.trace_id,
	updated_at = now()
-- Only a parked message is resumed; an original that reached persist is
-- never overwritten, so its status always tells what happened to it.
where ingestion_messages.status in ('parked', 'queued')
returning id, dedupe_key`

var telemetryColumns = []string{
	"id", "recorded_at", "received_at", "organization_id", "device_id", "topic", "ingestion_message_id",
	"raw_payload", "mutated_values", "transformed_values", "unresolved_values", "validation_status",
	"validation_errors", "processing_state", "failure_reason",
}

// Persist writes the batch in one transaction: the message rows, the
// telemetry rows of messages stored now, and their stage logs, which logs
// (if not nil) returns once the dispositions are known. With dryRun it
// writes nothing and reports what would happen.
//
// What one message holds never fails its batch: when Postgres refuses the
// batch for its content, it is split and each part written in its own
// transaction, until the message it refuses is alone; that one is recorded
// failed_terminal at persist with the reason (disposition [Refused]) and
// the rest are stored as usual.
//
// The rows still to publish (pending) are added to the publish outbox in the
// same transaction; Persist returns the outbox entries, one per
// transaction, for the publisher to remove once it has recorded them.
func (s *Store) Persist(ctx context.Context, msgs []Message, dryRun bool, sl *stagelog.Writer, logs LogFunc) ([]Result, []uuid.UUID, error) {
	results := make([]Result, len(msgs))
	idx := make([]int, len(msgs))
	for i := range idx {
		idx[i] = i
	}
	if dryRun {
		first := FirstOfKey(msgs)
		var unique []int
		for i, f := range first {
			if f == i {
				unique = append(unique, i)
			}
		}
		if err := s.dryRun(ctx, msgs, unique, results); err != nil {
			return nil, nil, err
		}
		fillInBatchDuplicates(msgs, idx, first, results)
		return results, nil, nil
	}
	var outbox []uuid.UUID
	if err := s.persistIsolating(ctx, msgs, idx, sl, logs, results, &outbox); err != nil {
		return nil, nil, err
	}
	return results, outbox, nil
}

// refused reports whether a write failed for what its rows held, so that
// it fails again however often it is retried.
func refused(err error) bool {
	if errors.Is(err, errKeyTaken) {
		return false // another writer's row, not this one's content
	}
	return pg.Refused(err) || errors.Is(err, ErrEncode)
}

// persistIsolating writes the messages idx of msgs and fills in their
// results, splitting them as [Store.Persist] says.
func (s *Store) persistIsolating(ctx context.Context, msgs []Message, idx []int, sl *stagelog.Writer, logs LogFunc, results []Result, outbox *[]uuid.UUID) error {
	err := s.persistTx(ctx, msgs, idx, false, sl, logs, results, outbox)
	for range 3 {
		if !errors.Is(err, errKeyTaken) {
			break
		}
		// Another writer stored one of the keys after this one looked:
		// the next lookup finds it.
		err = s.persistTx(ctx, msgs, idx, false, sl, logs, results, outbox)
	}
	if !refused(err) {
		return err
	}
	// Most often a payload Go accepts as JSON that jsonb refuses (an
	// unpaired surrogate escape, say): write the batch again without the
	// jsonb copies of the raw payloads. The bytes stay in
	// ingestion_messages.raw_payload.
	if err = s.persistTx(ctx, msgs, idx, true, sl, logs, results, outbox); !refused(err) {
		return err
	}
	if len(idx) > 1 {
		mid := len(idx) / 2
		if err := s.persistIsolating(ctx, msgs, idx[:mid], sl, logs, results, outbox); err != nil {
			return err
		}
		return s.persistIsolating(ctx, msgs, idx[mid:], sl, logs, results, outbox)
	}
	return s.persistRefused(ctx, msgs, idx[0], err, sl, logs, results)
}

// persistRefused records message i, which Postgres refused even alone, as
// failed_terminal at persist with the reason. The record holds only
// bounded, cleaned fields and the payload within the stored-payload limit,
// and no telemetry row, so it cannot be refused for what the message holds.
func (s *Store) persistRefused(ctx context.Context, msgs []Message, i int, cause error, sl *stagelog.Writer, logs LogFunc, results []Result) error {
	m := &msgs[i]
	reason := "could not be stored: " + pg.Reason(cause)
	rec := Message{
		ID: m.ID, DedupeKey: bound.Key(m.DedupeKey, bound.MaxKeyBytes),
		SourceMessageID: bound.Text(m.SourceMessageID, maxSourceIDBytes), SourceSubject: bound.Text(m.SourceSubject, maxSubjectBytes),
		OrganizationID: m.OrganizationID, DeviceID: m.DeviceID, StreamSequence: m.StreamSequence, DeliveryAttempt: m.DeliveryAttempt,
		RawPayload: m.RawPayload, ContentType: bound.Text(m.ContentType, maxContentTypeLen),
		Status: pipeline.StatusFailedTerminal, HaltedStage: string(pipeline.Persist), Reason: bound.Text(reason, bound.MaxReasonBytes), ReceivedAt: m.ReceivedAt,
	}
	if rec.ID == uuid.Nil {
		rec.ID = uuid.Must(uuid.NewV7())
	}
	recs := []Message{rec}
	res, err := s.writeRefused(ctx, recs, i, sl, logs, true)
	if refused(err) {
		// The rows it carried may be what Postgres refuses: record it with
		// the persist stage's row alone.
		res, err = s.writeRefused(ctx, recs, i, sl, logs, false)
	}
	if refused(err) {
		// Only the organization can still be refused (deleted since the
		// catalog was read): keep the record without it.
		recs[0].OrganizationID = uuid.Nil
		recs[0].Reason = bound.Text(rec.Reason+fmt.Sprintf(" (recorded without its organization: %s)", pg.Reason(err)), bound.MaxReasonBytes)
		res, err = s.writeRefused(ctx, recs, i, sl, logs, false)
	}
	if err != nil {
		return fmt.Errorf("record message %s as refused: %w", m.ID, err)
	}
	results[i] = res
	return nil
}

// writeRefused writes the record of a refused message and its stage log in
// one transaction.
func (s *Store) writeRefused(ctx context.Context, recs []Message, i int, sl *stagelog.Writer, logs LogFunc, carried bool) (Result, error) {
	tx, err := s.pool.Begin(ctx)
	if err != nil {
		return Result{}, fmt.Errorf("begin: %w", err)
	}
	defer func() { _ = tx.Rollback(context.WithoutCancel(ctx)) }()
	stored, err := s.insertMessages(ctx, tx, recs, []int{0}, false)
	if err != nil {
		return Result{}, err
	}
	res := Result{Disposition: Refused, OriginalID: recs[0].ID, Reason: recs[0].Reason}
	if id, ok := stored[recs[0].DedupeKey]; ok {
		res.OriginalID = id
	} else {
		// An original that reached persist has the key already.
		originals, err := originalsOf(ctx, tx, []string{recs[0].DedupeKey})
		if err != nil {
			return Result{}, err
		}
		o := originals[recs[0].DedupeKey]
		res = Result{Disposition: Duplicate, OriginalID: o.id, OriginalStatus: o.status}
	}
	if logs != nil {
		b := sl.Batch()
		logs(b, i, res, carried)
		if err := b.Write(ctx, tx); err != nil {
			return Result{}, err
		}
	}
	if err := tx.Commit(ctx); err != nil {
		return Result{}, fmt.Errorf("commit: %w", err)
	}
	return res, nil
}

// persistTx writes the messages idx of msgs in one transaction and, once it
// commits, fills in their results.
func (s *Store) persistTx(ctx context.Context, msgs []Message, idx []int, noRawJSON bool, sl *stagelog.Writer, logs LogFunc, results []Result, outboxIDs *[]uuid.UUID) error {
	// first is, for each message of idx, the message of idx with its key
	// that comes first.
	first := make([]int, len(msgs))
	seen := make(map[string]int, len(idx))
	var unique []int
	for _, i := range idx {
		if f, ok := seen[msgs[i].DedupeKey]; ok {
			first[i] = f
			continue
		}
		seen[msgs[i].DedupeKey] = i
		first[i] = i
		unique = append(unique, i)
	}
	part := make([]Result, len(msgs))

	tx, err := s.pool.Begin(ctx)
	if err != nil {
		return fmt.Errorf("begin: %w", err)
	}
	defer func() { _ = tx.Rollback(context.WithoutCancel(ctx)) }()

	stored, err := s.insertMessages(ctx, tx, msgs, unique, true)
	if err != nil {
		return err
	}
	var dupKeys []string
	for _, i := range unique {
		id, ok := stored[msgs[i].DedupeKey]
		if !ok {
			dupKeys = append(dupKeys, msgs[i].DedupeKey)
			continue
		}
		part[i] = Result{Disposition: Inserted, OriginalID: id, PayloadNote: s.storedPayload(msgs[i].RawPayload).Note()}
		if id != msgs[i].ID {
			part[i].Disposition = Resumed
		}
	}
	if len(dupKeys) > 0 {
		originals, err := originalsOf(ctx, tx, dupKeys)
		if err != nil {
			return err
		}
		for _, i := range unique {
			if o, ok := originals[msgs[i].DedupeKey]; ok && part[i].Disposition == 0 {
				part[i] = Result{Disposition: Duplicate, OriginalID: o.id, OriginalStatus: o.status}
			}
		}
	}
	fillInBatchDuplicates(msgs, idx, first, part)

	pending, err := s.copyTelemetry(ctx, tx, msgs, idx, part, noRawJSON)
	if err != nil {
		return err
	}
	entry, err := outbox.Add(ctx, tx, pending, time.Now().Add(s.publishLease), 0)
	if err != nil {
		return err
	}
	if logs != nil {
		b := sl.Batch()
		for _, i := range idx {
			logs(b, i, part[i], true)
		}
		// Last: it adds to the per-minute counts, which every writer
		// updates, so their rows are held only while this commits.
		if err := b.Write(ctx, tx); err != nil {
			return err
		}
	}
	if err := tx.Commit(ctx); err != nil {
		return fmt.Errorf("commit: %w", err)
	}
	for _, i := range idx {
		results[i] = part[i]
	}
	if entry != uuid.Nil {
		*outboxIDs = append(*outboxIDs, entry)
	}
	return nil
}

// storedPayload is what is stored of a payload under the stored-payload
// limit.
func (s *Store) storedPayload(b []byte) bound.Payload {
	return bound.StorePayload(b, s.storedPayloadBytes)
}

// fillInBatchDuplicates marks the later messages idx of a key repeated
// inside the batch as duplicates of the first.
func fillInBatchDuplicates(msgs []Message, idx, first []int, results []Result) {
	for _, i := range idx {
		f := first[i]
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

// errKeyTaken is returned when another writer stored a message row with
// one of the batch's dedupe keys between the lookup and the copy: the
// transaction is written again, and the lookup then finds the key.
var errKeyTaken = errors.New("a dedupe key was stored by another writer meanwhile")

// messageColumns are the columns of a message row, in the order of
// insertMessages' parameters.
var messageColumns = []string{
	"id", "organization_id", "device_id", "source_subject", "source_message_id",
	"dedupe_key", "stream_sequence", "delivery_attempts", "raw_payload", "content_type", "status", "halted_stage",
	"error_summary", "received_at", "processed_at", "raw_payload_bytes", "raw_payload_sha256", "trace_id",
}

// messageRow is a message row as it is written, one value per column of
// messageColumns.
type messageRow struct {
	id, org, dev                           pgtype.UUID
	subject, key, status                   string
	srcID, ctype, halted, summary, traceID pgtype.Text
	seq                                    pgtype.Int8
	attempts                               int32
	payload, sum                           []byte
	size                                   pgtype.Int4
	received                               time.Time
	processed                              pgtype.Timestamptz
}

func (s *Store) messageRow(m *Message, now time.Time) messageRow {
	p := s.storedPayload(m.RawPayload)
	return messageRow{
		id: pgUUID(m.ID), org: pgUUID(m.OrganizationID), dev: pgUUID(m.DeviceID),
		subject: m.SourceSubject, key: m.DedupeKey, status: string(m.Status),
		srcID: pgText(m.SourceMessageID), ctype: pgText(m.ContentType), halted: pgText(m.HaltedStage),
		summary: pgText(withNote(m.Reason, p.Note())), traceID: pgText(m.TraceID),
		seq:      pgtype.Int8{Int64: int64(m.StreamSequence), Valid: m.StreamSequence > 0},
		attempts: int32(max(m.DeliveryAttempt, 1)),
		payload:  p.Kept, sum: p.SHA256,
		size:      pgtype.Int4{Int32: int32(min(p.Size, math.MaxInt32)), Valid: p.Cut()},
		received:  m.ReceivedAt,
		processed: pgtype.Timestamptz{Time: now, Valid: m.Status != pipeline.StatusParked},
	}
}

// copy writes r as a row of c, its values in the order of messageColumns
// and as pgx writes the row's Go values: a value that is not Valid, and a
// nil payload or sum, is NULL.
func (r *messageRow) copy(c *pg.CopyRows) {
	c.Row()
	copyUUID(c, r.id)
	copyUUID(c, r.org)
	copyUUID(c, r.dev)
	c.Text(r.subject)
	copyText(c, r.srcID)
	c.Text(r.key)
	if r.seq.Valid {
		c.Int64(r.seq.Int64)
	} else {
		c.Null()
	}
	c.Int32(r.attempts)
	c.Bytea(r.payload)
	copyText(c, r.ctype)
	c.Text(r.status)
	copyText(c, r.halted)
	copyText(c, r.summary)
	c.Timestamptz(r.received)
	if r.processed.Valid {
		c.Timestamptz(r.processed.Time)
	} else {
		c.Null()
	}
	if r.size.Valid {
		c.Int32(r.size.Int32)
	} else {
		c.Null()
	}
	c.Bytea(r.sum)
	copyText(c, r.traceID)
}

// copyUUID writes u, or NULL when it is not Valid.
func copyUUID(c *pg.CopyRows, u pgtype.UUID) {
	if u.Valid {
		c.UUID(u.Bytes)
	} else {
		c.Null()
	}
}

// copyText writes t, or NULL when it is not Valid.
func copyText(c *pg.CopyRows, t pgtype.Text) {
	if t.Valid {
		c.Text(t.String)
	} else {
		c.Null()
	}
}

// insertMessages writes the message rows of msgs idx (their dedupe keys
// distinct) and returns the ids of the rows written, by dedupe key: a new
// row, or a parked or queued one resumed. A key whose original reached
// persist is left out; the caller reads it as a duplicate.
//
// With fresh, the keys are looked up first and the rows of keys never seen
// are copied: a row copied is written once, where an upsert writes it with a
// speculative insertion and its confirmation, and in Postgres' multi-row
// form. Only the keys found go through the upsert. A key another writer
// stores between the lookup and the copy fails the copy with
// [errKeyTaken].
func (s *Store) insertMessages(ctx context.Context, tx pgx.Tx, msgs []Message, idx []int, fresh bool) (map[string]uuid.UUID, error) {
	now := time.Now()
	rows := make([]messageRow, len(idx))
	for j, i := range idx {
		rows[j] = s.messageRow(&msgs[i], now)
	}
	if !fresh {
		return upsertMessages(ctx, tx, rows)
	}
	keys := make([]string, len(rows))
	for j := range rows {
		keys[j] = rows[j].key
	}
	found, err := originalsOf(ctx, tx, keys)
	if err != nil {
		return nil, err
	}
	if len(found) == 0 {
		return copyMessages(ctx, tx, rows)
	}
	var known, unknown []messageRow
	for _, r := range rows {
		if _, ok := found[r.key]; ok {
			known = append(known, r)
		} else {
			unknown = append(unknown, r)
		}
	}
	stored, err := copyMessages(ctx, tx, unknown)
	if err != nil {
		return nil, err
	}
	resumed, err := upsertMessages(ctx, tx, known)
	if err != nil {
		return nil, err
	}
	for k, id := range resumed {
		stored[k] = id
	}
	return stored, nil
}

// copyMessages copies rows, whose keys no stored row has, into
// ingestion_messages.
func copyMessages(ctx context.Context, tx pgx.Tx, rows []messageRow) (map[string]uuid.UUID, error) {
	stored := make(map[string]uuid.UUID, len(rows))
	if len(rows) == 0 {
		return stored, nil
	}
	c := pg.NewCopyRows(pgx.Identifier{"ingestion_messages"}, messageColumns)
	for i := range rows {
		rows[i].copy(c)
	}
	if _, err := c.Send(ctx, tx); err != nil {
		if keyTaken(err) {
			return nil, fmt.Errorf("copy ingestion_messages: %w: %w", errKeyTaken, err)
		}
		return nil, fmt.Errorf("copy ingestion_messages: %w", err)
	}
	for j := range rows {
		stored[rows[j].key] = rows[j].id.Bytes
	}
	return stored, nil
}

// uniqueViolation is the SQLSTATE of a unique constraint refusing a row.
const uniqueViolation = "23505"

// keyTaken reports whether err is a unique violation of a message row's
// dedupe key.
func keyTaken(err error) bool {
	var pgErr *pgconn.PgError
	return errors.As(err, &pgErr) && pgErr.Code == uniqueViolation && pgErr.ConstraintName == "ingestion_messages_dedupe_key_key"
}

// upsertMessages writes rows with insertMessagesSQL: new keys are inserted,
// parked and queued rows resumed, others left as they are.
func upsertMessages(ctx context.Context, tx pgx.Tx, rows []messageRow) (map[string]uuid.UUID, error) {
	n := len(rows)
	stored := make(map[string]uuid.UUID, n)
	if n == 0 {
		return stored, nil
	}
	var (
		ids, orgs, devs                   = make([]pgtype.UUID, n), make([]pgtype.UUID, n), make([]pgtype.UUID, n)
		subjects, keys, statuses          = make([]string, n), make([]string, n), make([]string, n)
		srcIDs, ctypes, halted, summaries = make([]pgtype.Text, n), make([]pgtype.Text, n), make([]pgtype.Text, n), make([]pgtype.Text, n)
		traces                            = make([]pgtype.Text, n)
		seqs                              = make([]pgtype.Int8, n)
		attempts                          = make([]int32, n)
		payloads, sums                    = make([][]byte, n), make([][]byte, n)
		sizes                             = make([]pgtype.Int4, n)
		received, processed               = make([]time.Time, n), make([]pgtype.Timestamptz, n)
	)
	for j := range rows {
		r := &rows[j]
		ids[j], orgs[j], devs[j] = r.id, r.org, r.dev
		subjects[j], keys[j], statuses[j] = r.subject, r.key, r.status
		srcIDs[j], ctypes[j], halted[j], summaries[j], traces[j] = r.srcID, r.ctype, r.halted, r.summary, r.traceID
		seqs[j], attempts[j], payloads[j], sums[j], sizes[j] = r.seq, r.attempts, r.payload, r.sum, r.size
		received[j], processed[j] = r.received, r.processed
	}
	res, err := tx.Query(ctx, insertMessages, ids, orgs, devs, subjects, srcIDs, keys, seqs, attempts,
		payloads, ctypes, statuses, halted, summaries, received, processed, sizes, sums, traces)
	if err != nil {
		return nil, fmt.Errorf("insert ingestion_messages: %w", err)
	}
	defer res.Close()
	for res.Next() {
		var (
			id  uuid.UUID
			key string
		)
		if err := res.Scan(&id, &key); err != nil {
			return nil, fmt.Errorf("insert ingestion_messages: %w", err)
		}
		stored[key] = id
	}
	if err := res.Err(); err != nil {
		return nil, fmt.Errorf("insert ingestion_messages: %w", err)
	}
	return stored, nil
}

type original struct {
	id     uuid.UUID
	status pipeline.Status
}

func originalsOf(ctx context.Context, q interface {
	Query(context.Context, string, ...any) (pgx.Rows, error)
}, keys []string) (map[string]original, error) {
	rows, err := q.Query(ctx, `select dedupe_key, id, status from ingestion_messages where dedupe_key = any($1)`, pg.PlanEachTime, keys)
	if err != nil {
		return nil, fmt.Errorf("read originals: %w", err)
	}
	defer rows.Close()
	out := make(map[string]original, len(keys))
	for rows.Next() {
		var (
			key, status string
			o           original
		)
		if err := rows.Scan(&key, &o.id, &status); err != nil {
			return nil, fmt.Errorf("read originals: %w", err)
		}
		o.status = pipeline.Status(status)
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
		if o, ok := originals[msgs[i].DedupeKey]; ok && o.status != pipeline.StatusParked && o.status != pipeline.StatusQueued {
			results[i] = Result{Disposition: Duplicate, OriginalID: o.id, OriginalStatus: o.status}
			continue
		}
		results[i] = Result{Disposition: Inserted, OriginalID: msgs[i].ID}
	}
	return nil
}

// withNote joins a message's reason and what the stored-payload limit left
// of its payload.
func withNote(reason, note string) string {
	switch {
	case note == "":
		return reason
	case reason == "":
		return note
	}
	return reason + "; " + note
}

// copyTelemetry copies the telemetry rows of the messages stored now and
// returns the ones still to publish.
func (s *Store) copyTelemetry(ctx context.Context, tx pgx.Tx, msgs []Message, idx []int, results []Result, noRawJSON bool) ([]outbox.Row, error) {
	c := pg.NewCopyRows(pgx.Identifier{"device_telemetry_logs"}, telemetryColumns)
	var pending []outbox.Row
	for _, i := range idx {
		m, r := &msgs[i], results[i]
		if m.Telemetry == nil || (r.Disposition != Inserted && r.Disposition != Resumed) {
			continue
		}
		t := m.Telemetry
		verrs, err := jsonText(t.ValidationErrors, "[]")
		if err != nil {
			return nil, fmt.Errorf("%w: message %s: %w", ErrEncode, m.ID, err)
		}
		vstatus := "valid"
		if !t.Valid {
			vstatus = "invalid"
		}
		var raw []byte
		// A payload refused as a whole was never decoded, and one over the
		// stored-payload limit is not kept whole even in the message row:
		// neither gets a JSON copy here.
		if !noRawJSON && !t.PayloadRefused && len(m.RawPayload) <= s.storedPayloadBytes {
			raw = rawJSON(m.RawPayload)
		}
		if t.State == pipeline.StatePending {
			pending = append(pending, outbox.Row{ID: r.OriginalID, RecordedAt: t.RecordedAt})
		}
		c.Row()
		c.UUID(r.OriginalID)
		c.Timestamptz(t.RecordedAt)
		c.Timestamptz(m.ReceivedAt)
		c.NullUUID(m.OrganizationID)
		c.UUID(m.DeviceID)
		c.Text(t.Topic)
		c.UUID(r.OriginalID)
		c.JSONBBytes(raw)
		c.JSONB(pgJSON(orEmpty(t.Mutated, "{}")))
		c.JSONB(pgJSON(orEmpty(t.Transformed, "{}")))
		c.JSONB(pgJSON(orEmpty(t.Unresolved, "{}")))
		c.Text(vstatus)
		c.JSONB(pgJSON(verrs))
		c.Text(string(t.State))
		c.NullText(t.FailureReason)
	}
	if _, err := c.Send(ctx, tx); err != nil {
		return nil, fmt.Errorf("copy device_telemetry_logs: %w", err)
	}
	return pending, nil
}

// orEmpty returns s, or empty when s is "".
func orEmpty(s, empty string) string {
	if s == "" {
		return empty
	}
	return s
}

// MarkPublishFailed records that the publisher could not be reached for the
// given rows, recorded between from and to, and makes their outbox entries
// due at retryAt, when the publisher's retry loop takes them.
func (s *Store) MarkPublishFailed(ctx context.Context, ids []uuid.UUID, from, to time.Time, reason string, retryAt time.Time, entries []uuid.UUID) error {
	return pgx.BeginFunc(ctx, s.pool, func(tx pgx.Tx) error {
		_, err := tx.Exec(ctx, `update device_telemetry_logs
			set processing_state = 'publish_failed', failure_reason = $2, next_publish_at = $3,
			    publish_attempts = publish_attempts + 1, updated_at = now()
			where id = any($1) and recorded_at between $4 and $5 and processing_state = 'pending'`, pg.PlanEachTime, ids, reason, retryAt, from, to)
		if err != nil {
			return fmt.Errorf("mark publish_failed: %w", err)
		}
		return outbox.Delay(ctx, tx, entries, retryAt)
	})
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
func rawJSON(b []byte) []byte {
	if len(b) == 0 || bytes.Contains(b, []byte(`\u0000`)) {
		return nil
	}
	return b
}

// pgJSON makes JSON text acceptable to jsonb, which refuses the NUL
// character; it becomes U+FFFD.
func pgJSON(s string) string {
	return pg.JSONB(s)
}
