-- The trace id of each message (W3C trace context, 32 hex digits): the
-- device's when its NATS message carried a traceparent header, else the one
-- the gateway started. `telemesh trace` and the viewer show it, so a row
-- leads to the message's trace in the tracing backend and a trace back to
-- the rows. Null when the message has no trace (tracing off and no
-- traceparent from the device).
--
-- A nullable column without a default changes only the catalog, so adding
-- it does not rewrite the partitions; no index, so it costs the writes
-- nothing beyond its 33 bytes when set.

-- +goose Up
ALTER TABLE ingestion_messages ADD COLUMN trace_id text;

COMMENT ON COLUMN ingestion_messages.trace_id IS
    'The message''s trace id (32 lower-case hex digits, W3C trace context); null when the message has no trace.';

-- +goose Down
ALTER TABLE ingestion_messages DROP COLUMN trace_id;
