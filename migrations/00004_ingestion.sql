-- What happened to each message: the message itself (with its dedupe key),
-- the telemetry row it produced, and what every stage did to it.
--
-- These hot tables carry no foreign keys to devices or to each other: a check
-- per row costs CPU on every COPY, and the three are kept for different times
-- (telemetry 90 days, messages 14, stage logs 7), so a reference would outlive
-- what it points to. Ids come from the application as UUIDv7 (time-ordered,
-- cheaper to index); the defaults are for rows written by hand. updated_at is
-- set by the statements that change a row, not by a trigger.

-- +goose Up

CREATE TABLE ingestion_messages (
    id                uuid        PRIMARY KEY DEFAULT gen_random_uuid(),
    organization_id   uuid        REFERENCES organizations (id) ON DELETE SET NULL,
    device_id         uuid,
    source_subject    text        NOT NULL,
    source_message_id text,
    dedupe_key        text        NOT NULL,
    stream_sequence   bigint,
    delivery_attempts integer     NOT NULL DEFAULT 1,
    raw_payload       bytea,
    content_type      text,
    status            text        NOT NULL,
    halted_stage      text,
    error_summary     text,
    received_at       timestamptz NOT NULL,
    processed_at      timestamptz,
    created_at        timestamptz NOT NULL DEFAULT now(),
    updated_at        timestamptz NOT NULL DEFAULT now(),
    CONSTRAINT ingestion_messages_dedupe_key_key UNIQUE (dedupe_key),
    CONSTRAINT ingestion_messages_status_check CHECK (status IN (
        'queued', 'processing', 'completed', 'failed_validation', 'inactive_skipped',
        'failed_terminal', 'duplicate', 'parked')),
    CONSTRAINT ingestion_messages_halted_stage_check CHECK (halted_stage IN (
        'ingress', 'validate', 'mutate', 'derive', 'persist', 'publish')),
    CONSTRAINT ingestion_messages_delivery_attempts_check CHECK (delivery_attempts >= 1),
    CONSTRAINT ingestion_messages_stream_sequence_check CHECK (stream_sequence >= 0)
);

-- What is not finished: the resume and park/unpark loops, the viewer.
CREATE INDEX ingestion_messages_unfinished_idx ON ingestion_messages (status, received_at)
    WHERE status NOT IN ('completed');
CREATE INDEX ingestion_messages_source_message_id_idx ON ingestion_messages (source_message_id)
    WHERE source_message_id IS NOT NULL;
CREATE INDEX ingestion_messages_device_id_received_at_idx ON ingestion_messages (device_id, received_at DESC);
CREATE INDEX ingestion_messages_organization_id_received_at_idx ON ingestion_messages (organization_id, received_at DESC);
-- Retention deletes by received_at.
CREATE INDEX ingestion_messages_received_at_idx ON ingestion_messages (received_at);

COMMENT ON TABLE ingestion_messages IS
    'One row per message taken from JetStream, whatever became of it; raw payload kept. dedupe_key is unique, which is why '
    'this table is not partitioned (a unique key on a partitioned table must include the partition key). Retention: 14 days, by received_at.';
COMMENT ON COLUMN ingestion_messages.dedupe_key IS
    'The device''s message id (Nats-Msg-Id header or payload id) within its subject, else the JetStream stream sequence: '
    'a redelivery is a duplicate, a device''s resend without an id is not.';
COMMENT ON COLUMN ingestion_messages.status IS
    'queued, processing, completed, failed_validation, inactive_skipped, failed_terminal, duplicate, '
    'parked (its organization''s pipeline switch is off; resumed when switched back).';
COMMENT ON COLUMN ingestion_messages.halted_stage IS
    'The stage that stopped the message (ingress, validate, mutate, derive, persist, publish); null when nothing stopped it.';
COMMENT ON COLUMN ingestion_messages.raw_payload IS 'The bytes as received, kept even when they are not valid JSON.';
COMMENT ON COLUMN ingestion_messages.delivery_attempts IS 'JetStream deliveries seen for this message, from 1.';

CREATE TABLE device_telemetry_logs (
    id                   uuid        NOT NULL DEFAULT gen_random_uuid(),
    recorded_at          timestamptz NOT NULL,
    received_at          timestamptz NOT NULL,
    organization_id      uuid,
    device_id            uuid        NOT NULL,
    topic                text        NOT NULL,
    ingestion_message_id uuid        NOT NULL,
    raw_payload          jsonb,
    mutated_values       jsonb       NOT NULL DEFAULT '{}',
    transformed_values   jsonb       NOT NULL DEFAULT '{}',
    unresolved_values    jsonb       NOT NULL DEFAULT '{}',
    validation_status    text        NOT NULL,
    validation_errors    jsonb       NOT NULL DEFAULT '[]',
    processing_state     text        NOT NULL,
    failure_reason       text,
    publish_attempts     integer     NOT NULL DEFAULT 0,
    next_publish_at      timestamptz,
    processed_at         timestamptz,
    created_at           timestamptz NOT NULL DEFAULT now(),
    updated_at           timestamptz NOT NULL DEFAULT now(),
    CONSTRAINT device_telemetry_logs_pkey PRIMARY KEY (id, recorded_at),
    CONSTRAINT device_telemetry_logs_validation_status_check CHECK (validation_status IN ('valid', 'invalid')),
    CONSTRAINT device_telemetry_logs_processing_state_check CHECK (processing_state IN (
        'pending', 'processed', 'invalid', 'inactive_skipped', 'publish_failed')),
    CONSTRAINT device_telemetry_logs_publish_attempts_check CHECK (publish_attempts >= 0)
) PARTITION BY RANGE (recorded_at);

CREATE INDEX device_telemetry_logs_device_id_recorded_at_idx ON device_telemetry_logs (device_id, recorded_at DESC);
-- No index of its own on id or ingestion_message_id: the row's id is its
-- message's id, so the primary key (id, recorded_at) serves lookups by either,
-- and every index costs a write per row on the busiest table.
-- The publisher's retry loop: rows still to publish, the earliest due first.
CREATE INDEX device_telemetry_logs_next_publish_at_idx ON device_telemetry_logs (next_publish_at)
    WHERE processing_state IN ('pending', 'publish_failed');

-- Catches rows outside the daily partitions (a device clock years off), so no
-- row is ever refused for its recorded_at.
CREATE TABLE device_telemetry_logs_default PARTITION OF device_telemetry_logs DEFAULT;

COMMENT ON TABLE device_telemetry_logs IS
    'Telemetry rows, one per persisted message (valid, invalid, or from an inactive device, as evidence). Partitioned by UTC day of recorded_at '
    'as device_telemetry_logs_pYYYYMMDD, plus a DEFAULT partition. Pending and publish_failed rows are the publish outbox. '
    'Retention: 90 days, by dropping partitions.';
COMMENT ON COLUMN device_telemetry_logs.id IS
    'Supplied by the persister, which uses the ingestion message''s id: at most one telemetry row per message.';
COMMENT ON COLUMN device_telemetry_logs.raw_payload IS
    'The payload as JSON; null when it was not valid JSON (the bytes stay in ingestion_messages.raw_payload).';
COMMENT ON COLUMN device_telemetry_logs.mutated_values IS 'Parameter values after their mutation expressions.';
COMMENT ON COLUMN device_telemetry_logs.transformed_values IS 'The mutated parameter values plus the derived values.';
COMMENT ON COLUMN device_telemetry_logs.unresolved_values IS
    'Derived keys that could not be computed, each with its reason (missing input, cycle, evaluation error).';
COMMENT ON COLUMN device_telemetry_logs.validation_errors IS 'A JSON array of the reasons, per parameter, the payload was invalid.';
COMMENT ON COLUMN device_telemetry_logs.processing_state IS
    'pending (persisted, publish in flight), processed, invalid, inactive_skipped, publish_failed (retried from next_publish_at).';
COMMENT ON COLUMN device_telemetry_logs.ingestion_message_id IS
    'ingestion_messages.id; no foreign key, since messages are kept 14 days and telemetry 90.';

CREATE TABLE ingestion_stage_logs (
    id              uuid        NOT NULL DEFAULT gen_random_uuid(),
    message_id      uuid        NOT NULL,
    dedupe_key      text,
    stage           text        NOT NULL,
    status          text        NOT NULL,
    duration_us     bigint      NOT NULL,
    attempt         integer     NOT NULL DEFAULT 1,
    instance        text        NOT NULL,
    input_snapshot  jsonb,
    output_snapshot jsonb,
    change_set      jsonb,
    errors          jsonb,
    created_at      timestamptz NOT NULL DEFAULT now(),
    CONSTRAINT ingestion_stage_logs_pkey PRIMARY KEY (id, created_at),
    CONSTRAINT ingestion_stage_logs_stage_check CHECK (stage IN (
        'ingress', 'validate', 'mutate', 'derive', 'persist', 'publish')),
    CONSTRAINT ingestion_stage_logs_status_check CHECK (status IN (
        'completed', 'halted', 'failed', 'retrying', 'skipped', 'duplicate', 'unresolved', 'parked', 'dry_run')),
    CONSTRAINT ingestion_stage_logs_duration_us_check CHECK (duration_us >= 0),
    CONSTRAINT ingestion_stage_logs_attempt_check CHECK (attempt >= 1)
) PARTITION BY RANGE (created_at);

CREATE INDEX ingestion_stage_logs_message_id_created_at_idx ON ingestion_stage_logs (message_id, created_at);
CREATE INDEX ingestion_stage_logs_stage_status_created_at_idx ON ingestion_stage_logs (stage, status, created_at);
-- "Where is my message" often starts from the device's message id.
CREATE INDEX ingestion_stage_logs_dedupe_key_idx ON ingestion_stage_logs (dedupe_key);

CREATE TABLE ingestion_stage_logs_default PARTITION OF ingestion_stage_logs DEFAULT;

COMMENT ON TABLE ingestion_stage_logs IS
    'What each stage did to each message (every entry, a sample, or only the failures, per the stage-log mode). Partitioned by UTC day '
    'of created_at as ingestion_stage_logs_pYYYYMMDD, plus a DEFAULT partition. Retention: 7 days, by dropping partitions.';
COMMENT ON COLUMN ingestion_stage_logs.stage IS 'ingress, validate, mutate, derive, persist or publish.';
COMMENT ON COLUMN ingestion_stage_logs.status IS
    'completed: the stage did its work and passed the message on (the only status the failures mode leaves out); '
    'halted: the stage stopped the message on purpose (invalid payload, inactive device, unknown topic), reasons in errors; '
    'failed: the stage''s work failed and this attempt is over (a terminal error, dead-lettered after MaxDeliver, a publish left to the retry loop); '
    'retrying: a transient failure (a stage or Postgres unreachable, a deadline exceeded); the message is redelivered; '
    'skipped: the stage had nothing to do for this message (e.g. publishing switched off); '
    'duplicate: the message''s dedupe key had already reached persist; '
    'unresolved: the stage finished but left some values unresolved, reasons in errors; '
    'parked: held because its organization''s pipeline switch is off, resumed when switched back; '
    'dry_run: the stage ran for a preview or replay check and wrote nothing.';
COMMENT ON COLUMN ingestion_stage_logs.duration_us IS 'Time the stage spent on the message (its share of the batch), in microseconds.';
COMMENT ON COLUMN ingestion_stage_logs.attempt IS 'The delivery or publish attempt, from 1.';
COMMENT ON COLUMN ingestion_stage_logs.instance IS 'The replica that wrote the row (pod or host name).';
COMMENT ON COLUMN ingestion_stage_logs.message_id IS
    'ingestion_messages.id; no foreign key, since stage logs are written in batches and kept on their own schedule.';

SELECT telemesh_ensure_partitions('device_telemetry_logs',
    (now() AT TIME ZONE 'UTC')::date - 1, (now() AT TIME ZONE 'UTC')::date + 7);
SELECT telemesh_ensure_partitions('ingestion_stage_logs',
    (now() AT TIME ZONE 'UTC')::date - 1, (now() AT TIME ZONE 'UTC')::date + 7);

-- +goose Down
-- Dropping a partitioned table drops its partitions.
DROP TABLE ingestion_stage_logs;
DROP TABLE device_telemetry_logs;
DROP TABLE ingestion_messages;
