-- What is kept of a payload longer than the stored-payload limit: its first
-- bytes in raw_payload, its full size and its SHA-256. Stage-log snapshots
-- are bounded by the writer; the comments say how.

-- +goose Up

ALTER TABLE ingestion_messages
    ADD COLUMN raw_payload_bytes  integer,
    ADD COLUMN raw_payload_sha256 bytea;

-- NOT VALID: every existing row holds null in both columns, which the checks
-- accept, so the scan that validating them would make under this migration's
-- lock on the table is skipped. New and updated rows are checked.
ALTER TABLE ingestion_messages
    ADD CONSTRAINT ingestion_messages_raw_payload_cut_check
        CHECK ((raw_payload_bytes IS NULL) = (raw_payload_sha256 IS NULL)) NOT VALID,
    ADD CONSTRAINT ingestion_messages_raw_payload_bytes_check
        CHECK (raw_payload_bytes > octet_length(raw_payload)) NOT VALID,
    ADD CONSTRAINT ingestion_messages_raw_payload_sha256_check
        CHECK (octet_length(raw_payload_sha256) = 32) NOT VALID;

COMMENT ON COLUMN ingestion_messages.raw_payload IS
    'The bytes as received, kept even when they are not valid JSON; of a payload longer than the stored-payload limit '
    '(--stored-payload-bytes, 256 KiB by default) only the first bytes, up to the limit, with raw_payload_bytes and raw_payload_sha256 set.';
COMMENT ON COLUMN ingestion_messages.raw_payload_bytes IS
    'The full size of a payload longer than the stored-payload limit, whose first bytes alone are in raw_payload; null when raw_payload is the whole payload.';
COMMENT ON COLUMN ingestion_messages.raw_payload_sha256 IS
    'The SHA-256 of the whole payload when raw_payload holds only its first bytes (raw_payload_bytes is set); null otherwise.';
COMMENT ON COLUMN device_telemetry_logs.raw_payload IS
    'The payload as JSON; null when it was not valid JSON, when the validator refused it as a whole (too large, too many keys, too deep) '
    'or when it is longer than the stored-payload limit (what is kept of it is in ingestion_messages.raw_payload).';
COMMENT ON COLUMN ingestion_stage_logs.input_snapshot IS
    'What the stage was given, for entries that are not completed. A message''s payload appears as "payload", or as {"omitted": true, "bytes": N} '
    'when it is longer than the stored-payload limit. A snapshot longer than --stage-log-snapshot-bytes (16 KiB by default) is stored as '
    '{"truncated": true, "bytes": N, "head": "<its first bytes as JSON text>"}; so are output_snapshot, change_set and errors.';
COMMENT ON COLUMN ingestion_stage_logs.output_snapshot IS
    'What the stage produced, for entries that are not completed; bounded like input_snapshot.';

-- +goose Down
COMMENT ON COLUMN ingestion_stage_logs.output_snapshot IS NULL;
COMMENT ON COLUMN ingestion_stage_logs.input_snapshot IS NULL;
COMMENT ON COLUMN device_telemetry_logs.raw_payload IS
    'The payload as JSON; null when it was not valid JSON (the bytes stay in ingestion_messages.raw_payload).';
COMMENT ON COLUMN ingestion_messages.raw_payload IS 'The bytes as received, kept even when they are not valid JSON.';
ALTER TABLE ingestion_messages
    DROP COLUMN raw_payload_sha256,
    DROP COLUMN raw_payload_bytes;
