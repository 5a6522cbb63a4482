-- A stable code for why a stage did not complete a message, beside the full
-- text of the reason in errors. status, doctor and the viewer group failures
-- by it, so one cause is one line whatever its texts say (an offset, a
-- subject, a device).
--
-- A column rather than a key in errors: grouping reads one short text per
-- row instead of parsing jsonb, and the rows that completed leave it null,
-- which costs nothing on disk. Adding a nullable column without a default
-- changes only the catalog, so it does not rewrite the partitions.

-- +goose Up
ALTER TABLE ingestion_stage_logs ADD COLUMN reason_code text;

COMMENT ON COLUMN ingestion_stage_logs.reason_code IS
    'Why the stage did not complete the message, as a stable code (invalid_json, unknown_device, required, max, duplicate, parked, '
    'missing_input, kv_unavailable, ...; see internal/reason); null for completed rows and for rows written before codes were recorded.';

-- +goose Down
ALTER TABLE ingestion_stage_logs DROP COLUMN reason_code;
