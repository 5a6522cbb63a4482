package ops

import (
	"context"
	"testing"
	"time"

	"github.com/google/uuid"
	"github.com/jackc/pgx/v5/pgxpool"
)

// fixture inserts rows for the tests.
type fixture struct {
	t    *testing.T
	pool *pgxpool.Pool
}

// exec runs one statement, failing the test on error.
func (f fixture) exec(sql string, args ...any) {
	f.t.Helper()
	if _, err := f.pool.Exec(context.Background(), sql, args...); err != nil {
		f.t.Fatalf("%s: %v", sql, err)
	}
}

// org adds an organization with one device type and returns its id.
func (f fixture) org(slug string) uuid.UUID {
	f.t.Helper()
	id := uuid.New()
	f.exec(`insert into organizations (id, slug, name) values ($1, $2, $2)`, id, slug)
	f.exec(`insert into device_types (organization_id, name) values ($1, 'sensor')`, id)
	return id
}

// device adds a device of org's type and returns its id.
func (f fixture) device(org uuid.UUID, external string) uuid.UUID {
	f.t.Helper()
	id := uuid.New()
	f.exec(`insert into devices (id, organization_id, device_type_id, external_id)
		select $1, $2, id, $3 from device_types where organization_id = $2`, id, org, external)
	return id
}

// msg is an ingestion_messages row.
type msg struct {
	id, org, device uuid.UUID
	subject         string
	sourceID        string
	dedupe          string
	status, halted  string
	summary         string
	payload         []byte
	received        time.Time
}

// message adds m, filling in what it leaves out, and returns its id.
func (f fixture) message(m msg) uuid.UUID {
	f.t.Helper()
	if m.id == uuid.Nil {
		m.id = uuid.Must(uuid.NewV7())
	}
	if m.dedupe == "" {
		m.dedupe = "seq:telemetry@1:" + m.id.String()
	}
	if m.subject == "" {
		m.subject = "devices.d1.telemetry"
	}
	if m.received.IsZero() {
		m.received = time.Now()
	}
	f.exec(`insert into ingestion_messages (id, organization_id, device_id, source_subject, source_message_id, dedupe_key,
			raw_payload, content_type, status, halted_stage, error_summary, received_at, updated_at)
		values ($1, $2, $3, $4, nullif($5, ''), $6, $7, 'application/json', $8, nullif($9, ''), nullif($10, ''), $11, $11)`,
		m.id, nilUUID(m.org), nilUUID(m.device), m.subject, m.sourceID, m.dedupe, m.payload, m.status, m.halted, m.summary, m.received)
	return m.id
}

// telemetry adds the telemetry row of message id.
func (f fixture) telemetry(id, org, device uuid.UUID, state string, recorded time.Time) {
	f.t.Helper()
	f.exec(`insert into device_telemetry_logs (id, recorded_at, received_at, organization_id, device_id, topic,
			ingestion_message_id, mutated_values, transformed_values, unresolved_values, validation_status,
			validation_errors, processing_state, failure_reason, next_publish_at)
		values ($1, $2, $2, $3, $4, 'telemetry', $1, '{"t": 21.5}', '{"t": 21.5, "f": 70.7}',
			'{"dew": "missing input humidity"}', 'valid', '[]', $5,
			case when $5 = 'publish_failed' then 'nats: timeout' end, now() + interval '1 hour')`,
		id, recorded, nilUUID(org), device, state)
	if state == "pending" || state == "publish_failed" {
		// The persister or the publisher keeps it in the publish outbox,
		// due at its next attempt.
		f.exec(`insert into publish_outbox (id, message_ids, recorded_from, recorded_to, due_at, attempts)
			values (gen_random_uuid(), array[$1::uuid], $2, $2, now() + interval '1 hour', 1)`, id, recorded)
	}
}

// stageLog adds a stage log row.
func (f fixture) stageLog(messageID uuid.UUID, dedupe, stage, status string, at time.Time) {
	f.t.Helper()
	f.exec(`insert into ingestion_stage_logs (message_id, dedupe_key, stage, status, duration_us, instance, errors, created_at)
		values ($1, nullif($2, ''), $3, $4, 42, 'test-0', case when $4 = 'halted' then '["t: too hot"]'::jsonb end, $5)`,
		messageID, dedupe, stage, status, at)
}

// nilUUID returns nil for the zero uuid, else a pointer to id.
func nilUUID(id uuid.UUID) *uuid.UUID {
	if id == uuid.Nil {
		return nil
	}
	return &id
}
