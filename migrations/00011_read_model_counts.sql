-- What status, doctor and the viewer read, kept where they can read it
-- without the rows it describes. At 20,000 messages a second the hour of
-- stage logs behind a failure count holds millions of rows, and the
-- publish_failed rows behind a count of them as many again; counting them
-- took seconds, every refresh of the viewer's panel. So:
--
-- * ingestion_stage_counts also counts the rows that only repeat a
--   failure already counted for the same message (the publish retry
--   loop's failed attempts), so a reader counts messages rather than
--   attempts, and keeps the reason of the latest row of each minute that
--   is not completed, the example shown beside its count.
-- * publish_outbox keeps how many rows each entry holds, so the rows that
--   wait for another publish attempt are counted from the entries, without
--   unpacking their arrays or reading the telemetry rows.
--
-- The new columns are nullable or have a constant default, so adding them
-- rewrites nothing; their checks read the two tables once, which are small
-- (minutes and batches, not rows). Writers of an older version leave them
-- empty, and readers fall back to what the rows themselves say.

-- +goose Up
ALTER TABLE ingestion_stage_counts ADD COLUMN repeats bigint NOT NULL DEFAULT 0;
ALTER TABLE ingestion_stage_counts ADD COLUMN example text;
ALTER TABLE ingestion_stage_counts ADD CONSTRAINT ingestion_stage_counts_repeats_check CHECK (repeats >= 0 AND repeats <= rows);
COMMENT ON COLUMN ingestion_stage_counts.repeats IS
    'Of rows, those that repeat a failure the stage already recorded for the same message at an earlier attempt (a publish retried '
    'after it failed): a reader counting messages leaves them out.';
COMMENT ON COLUMN ingestion_stage_counts.example IS
    'The reason of the latest row of the minute and slot that is not completed, cut to 160 characters: what status and the viewer '
    'show beside the count. Null for completed rows and for rows counted before it was kept.';

ALTER TABLE publish_outbox ADD COLUMN row_count integer;
ALTER TABLE publish_outbox ADD CONSTRAINT publish_outbox_row_count_check CHECK (row_count >= 0);
COMMENT ON COLUMN publish_outbox.row_count IS
    'How many rows message_ids holds, so counting the rows that wait reads no array; null in entries added before it was kept.';

-- +goose Down
ALTER TABLE publish_outbox DROP CONSTRAINT publish_outbox_row_count_check;
ALTER TABLE publish_outbox DROP COLUMN row_count;
ALTER TABLE ingestion_stage_counts DROP CONSTRAINT ingestion_stage_counts_repeats_check;
ALTER TABLE ingestion_stage_counts DROP COLUMN example;
ALTER TABLE ingestion_stage_counts DROP COLUMN repeats;
