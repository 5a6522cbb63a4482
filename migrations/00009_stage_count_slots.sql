-- Every writer adds its batch's counts to the same few rows of
-- ingestion_stage_counts (this minute, each stage, completed), so two
-- transactions that commit at the same time queue on those rows' locks for
-- the length of a commit's fsync: the rollup serialised the writers it was
-- meant to spare. A slot column spreads each minute's counts over sixteen
-- rows, chosen by the writer's backend, so concurrent writers rarely meet;
-- readers already sum, and now sum over the slots too.

-- +goose Up
ALTER TABLE ingestion_stage_counts ADD COLUMN slot smallint NOT NULL DEFAULT 0;
ALTER TABLE ingestion_stage_counts DROP CONSTRAINT ingestion_stage_counts_pkey;
ALTER TABLE ingestion_stage_counts ADD CONSTRAINT ingestion_stage_counts_pkey PRIMARY KEY (minute, stage, status, reason_code, slot);
ALTER TABLE ingestion_stage_counts ADD CONSTRAINT ingestion_stage_counts_slot_check CHECK (slot >= 0 AND slot < 16);
COMMENT ON COLUMN ingestion_stage_counts.slot IS
    'Which of a minute''s sixteen rows per stage, status and reason code a writer adds to (its backend pid modulo 16), '
    'so concurrent writers do not wait for each other''s commit; a reader sums over the slots.';

-- +goose Down
-- Fold the slots back into one row per key before the key narrows.
CREATE TEMPORARY TABLE telemesh_stage_counts_folded ON COMMIT DROP AS
    SELECT minute, stage, status, reason_code, sum(rows)::bigint AS rows,
           coalesce((SELECT array_agg(s ORDER BY i) FROM (
               SELECT i, sum(x)::bigint AS s FROM ingestion_stage_counts c2, unnest(c2.durations) WITH ORDINALITY AS u(x, i)
               WHERE c2.minute = c.minute AND c2.stage = c.stage AND c2.status = c.status AND c2.reason_code = c.reason_code
               GROUP BY i) h), '{}') AS durations
    FROM ingestion_stage_counts c
    GROUP BY minute, stage, status, reason_code;
DELETE FROM ingestion_stage_counts;
ALTER TABLE ingestion_stage_counts DROP CONSTRAINT ingestion_stage_counts_slot_check;
ALTER TABLE ingestion_stage_counts DROP CONSTRAINT ingestion_stage_counts_pkey;
ALTER TABLE ingestion_stage_counts DROP COLUMN slot;
ALTER TABLE ingestion_stage_counts ADD CONSTRAINT ingestion_stage_counts_pkey PRIMARY KEY (minute, stage, status, reason_code);
INSERT INTO ingestion_stage_counts (minute, stage, status, reason_code, rows, durations)
    SELECT minute, stage, status, reason_code, rows, durations FROM telemesh_stage_counts_folded;
