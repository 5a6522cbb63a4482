-- What a message costs Postgres. Every message writes a message row, a
-- telemetry row and, in stage-log mode all, six stage rows; each index entry
-- is a WAL record of its own, and an update that changes an indexed column
-- (or a partial index's predicate) writes the whole row and every index
-- again. So:
--
-- * Stage rows: no per-row uuid key (a row is found by its message), the
--   dedupe key only on rows that are not completed, and one index on
--   message_id. Failures are found through a partial index on the rows that
--   are not completed; counts per stage and status come from a per-minute
--   rollup the writers keep in the same transaction.
-- * Telemetry rows: the outbox of rows to publish moves to publish_outbox,
--   one row per batch, so no index covers processing_state any more, and
--   partitions keep free space (telemesh_partition_storage) so that marking
--   a row processed is a HOT update that rewrites no index.
-- * Message rows: the per-device and per-organization indexes only ever
--   served queries about messages that did not complete; they become partial
--   indexes over those, and retention's index on received_at becomes a BRIN.

-- +goose Up

-- Stage rows.
ALTER TABLE ingestion_stage_logs DROP CONSTRAINT ingestion_stage_logs_pkey;
ALTER TABLE ingestion_stage_logs DROP COLUMN id;
DROP INDEX ingestion_stage_logs_dedupe_key_idx;
DROP INDEX ingestion_stage_logs_stage_status_created_at_idx;
DROP INDEX ingestion_stage_logs_message_id_created_at_idx;
CREATE INDEX ingestion_stage_logs_message_id_idx ON ingestion_stage_logs (message_id);
-- The failures: few beside the completed rows in mode all, all of them in
-- mode failures.
CREATE INDEX ingestion_stage_logs_failures_idx ON ingestion_stage_logs (created_at, stage, status)
    WHERE status <> 'completed';
-- Other deliveries of a message (a duplicate, a redelivery after a failure)
-- are found by the dedupe key their rows that are not completed carry.
CREATE INDEX ingestion_stage_logs_dedupe_key_idx ON ingestion_stage_logs (dedupe_key)
    WHERE dedupe_key IS NOT NULL;

COMMENT ON COLUMN ingestion_stage_logs.dedupe_key IS
    'The message''s dedupe key, on rows that are not completed: it leads from a message to the rows of its other deliveries '
    '(a duplicate, a redelivery). Completed rows are found by message_id alone.';

CREATE TABLE ingestion_stage_counts (
    minute      timestamptz NOT NULL,
    stage       text        NOT NULL,
    status      text        NOT NULL,
    reason_code text        NOT NULL DEFAULT '',
    rows        bigint      NOT NULL,
    durations   bigint[]    NOT NULL DEFAULT '{}',
    CONSTRAINT ingestion_stage_counts_pkey PRIMARY KEY (minute, stage, status, reason_code),
    CONSTRAINT ingestion_stage_counts_rows_check CHECK (rows >= 0)
);

COMMENT ON TABLE ingestion_stage_counts IS
    'How many ingestion_stage_logs rows each stage wrote per UTC minute, by status and reason code (empty for none), and how long they '
    'took: the writers add their batch''s counts in the transaction that writes the rows, so status and the viewer read minutes instead '
    'of counting rows. Retention: as the stage logs.';
COMMENT ON COLUMN ingestion_stage_counts.durations IS
    'A histogram of the rows'' duration_us: element 1 counts the rows under 1 microsecond, element i > 1 those with '
    '2^((i-2)/2) <= duration_us < 2^((i-1)/2), the last one all longer ones; see internal/stagelog.';

-- +goose StatementBegin
CREATE FUNCTION telemesh_add_counts(a bigint[], b bigint[]) RETURNS bigint[]
LANGUAGE sql IMMUTABLE PARALLEL SAFE AS $$
    SELECT coalesce(array_agg(coalesce(x, 0) + coalesce(y, 0) ORDER BY i), '{}')
    FROM unnest(a, b) WITH ORDINALITY AS u(x, y, i)
$$;
-- +goose StatementEnd
COMMENT ON FUNCTION telemesh_add_counts(bigint[], bigint[]) IS
    'Adds two arrays of counts element by element, the shorter one taken as ending in zeros: how a batch''s duration histogram is added '
    'to its minute''s in ingestion_stage_counts.';

-- The last hour of counts, from the stage logs written before the rollup,
-- so status and the viewer read the same right after the upgrade.
INSERT INTO ingestion_stage_counts (minute, stage, status, reason_code, rows)
SELECT date_trunc('minute', created_at), stage, status, coalesce(reason_code, ''), count(*)
FROM ingestion_stage_logs WHERE created_at > now() - interval '1 hour'
GROUP BY 1, 2, 3, 4;

-- Telemetry rows.
DROP INDEX device_telemetry_logs_next_publish_at_idx;

CREATE TABLE publish_outbox (
    id            uuid        PRIMARY KEY,
    message_ids   uuid[]      NOT NULL,
    recorded_from timestamptz NOT NULL,
    recorded_to   timestamptz NOT NULL,
    due_at        timestamptz NOT NULL,
    attempts      integer     NOT NULL DEFAULT 0,
    created_at    timestamptz NOT NULL DEFAULT now(),
    CONSTRAINT publish_outbox_recorded_check CHECK (recorded_from <= recorded_to),
    CONSTRAINT publish_outbox_attempts_check CHECK (attempts >= 0)
);
CREATE INDEX publish_outbox_due_at_idx ON publish_outbox (due_at);

COMMENT ON TABLE publish_outbox IS
    'Telemetry rows whose publish is not recorded yet, a batch per row: the persister adds one in the transaction that stores the rows, '
    'due when its publish lease ends; the publisher removes it in the transaction that records the publish, and adds one for the rows that '
    'failed, due at their next attempt. The retry loop takes due rows with FOR UPDATE SKIP LOCKED. A message id whose telemetry row is no '
    'longer pending or publish_failed is skipped, so an entry may outlive its rows harmlessly.';
COMMENT ON COLUMN publish_outbox.recorded_from IS 'The earliest recorded_at of the rows: it bounds the partitions their lookup reads.';
COMMENT ON COLUMN publish_outbox.due_at IS 'When the retry loop may take the rows: the end of the publish lease, or the next attempt after a failure.';
COMMENT ON COLUMN publish_outbox.attempts IS 'Publish attempts the rows have had, from 0.';
COMMENT ON COLUMN device_telemetry_logs.next_publish_at IS
    'When a publish_failed row is tried again (publish_outbox schedules it); null once processed.';

CREATE TABLE telemesh_partition_storage (
    table_name text    PRIMARY KEY,
    fillfactor integer NOT NULL,
    CONSTRAINT telemesh_partition_storage_fillfactor_check CHECK (fillfactor BETWEEN 10 AND 100)
);
COMMENT ON TABLE telemesh_partition_storage IS
    'Storage parameters telemesh_ensure_partitions gives the daily partitions it creates. device_telemetry_logs keeps room on each page '
    'for the row''s next version: a row is written pending and marked processed right after, and with room on its page that update is '
    'HOT (no index entry written again, no full row in the WAL) at the cost of pages not filled to the brim.';
INSERT INTO telemesh_partition_storage (table_name, fillfactor) VALUES ('device_telemetry_logs', 55);

-- The partitions that exist keep room from now on.
-- +goose StatementBegin
DO $$
DECLARE
    part record;
BEGIN
    FOR part IN
        SELECT c.oid::regclass AS name FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid
        WHERE i.inhparent = 'device_telemetry_logs'::regclass
    LOOP
        EXECUTE format('ALTER TABLE %s SET (fillfactor = 55)', part.name);
    END LOOP;
END;
$$;
-- +goose StatementEnd

-- +goose StatementBegin
CREATE OR REPLACE FUNCTION telemesh_ensure_partitions(parent regclass, from_day date, to_day date) RETURNS integer
LANGUAGE plpgsql AS $$
DECLARE
    parent_name   text;
    parent_schema text;
    key_column    text;
    default_name  text;
    fill          integer;
    day           date;
    part_name     text;
    lo            timestamptz;
    hi            timestamptz;
    created       integer := 0;
BEGIN
    IF from_day IS NULL OR to_day IS NULL THEN
        RAISE EXCEPTION 'telemesh_ensure_partitions: from_day and to_day are required';
    END IF;

    SELECT c.relname, n.nspname INTO parent_name, parent_schema
    FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
    WHERE c.oid = parent AND c.relkind = 'p';
    IF parent_name IS NULL THEN
        RAISE EXCEPTION 'telemesh_ensure_partitions: % is not a partitioned table', parent;
    END IF;

    -- The one column the table is range-partitioned on.
    SELECT a.attname INTO key_column
    FROM pg_partitioned_table pt
    JOIN pg_attribute a ON a.attrelid = pt.partrelid AND a.attnum = pt.partattrs[0]
    WHERE pt.partrelid = parent AND pt.partstrat = 'r' AND pt.partnatts = 1;
    IF key_column IS NULL THEN
        RAISE EXCEPTION 'telemesh_ensure_partitions: % is not range-partitioned on one column', parent;
    END IF;

    SELECT s.fillfactor INTO fill FROM telemesh_partition_storage s WHERE s.table_name = parent_name;

    -- Replicas may run this at the same time; serialise per parent so two
    -- of them never race to create the same partition.
    PERFORM pg_advisory_xact_lock(hashtext('telemesh_partitions'), parent::oid::integer);

    SELECT c.relname INTO default_name
    FROM pg_inherits i
    JOIN pg_class c ON c.oid = i.inhrelid
    WHERE i.inhparent = parent AND pg_get_expr(c.relpartbound, c.oid) = 'DEFAULT';

    day := from_day;
    WHILE day <= to_day LOOP
        part_name := parent_name || '_p' || to_char(day, 'YYYYMMDD');
        IF to_regclass(format('%I.%I', parent_schema, part_name)) IS NULL THEN
            -- Days are UTC days, whatever the session's TimeZone.
            lo := day::timestamp AT TIME ZONE 'UTC';
            hi := (day + 1)::timestamp AT TIME ZONE 'UTC';
            -- Build the partition beside the parent and ATTACH it: ATTACH
            -- locks the parent more weakly than CREATE ... PARTITION OF, so
            -- ingestion keeps writing while this runs. Rows that already
            -- landed in the DEFAULT partition for the day move into the new
            -- partition first (ATTACH would refuse otherwise).
            EXECUTE format(
                'CREATE TABLE %I.%I (LIKE %s INCLUDING DEFAULTS INCLUDING CONSTRAINTS INCLUDING STORAGE INCLUDING COMPRESSION)',
                parent_schema, part_name, parent);
            IF fill IS NOT NULL THEN
                EXECUTE format('ALTER TABLE %I.%I SET (fillfactor = %s)', parent_schema, part_name, fill);
            END IF;
            IF default_name IS NOT NULL THEN
                EXECUTE format(
                    'WITH moved AS (DELETE FROM %I.%I WHERE %I >= $1 AND %I < $2 RETURNING *) INSERT INTO %I.%I SELECT * FROM moved',
                    parent_schema, default_name, key_column, key_column, parent_schema, part_name)
                USING lo, hi;
            END IF;
            EXECUTE format(
                'ALTER TABLE %s ATTACH PARTITION %I.%I FOR VALUES FROM (%L) TO (%L)',
                parent, parent_schema, part_name, lo, hi);
            created := created + 1;
        END IF;
        day := day + 1;
    END LOOP;
    RETURN created;
END;
$$;
-- +goose StatementEnd

-- Message rows.
DROP INDEX ingestion_messages_device_id_received_at_idx;
DROP INDEX ingestion_messages_organization_id_received_at_idx;
DROP INDEX ingestion_messages_received_at_idx;
CREATE INDEX ingestion_messages_unfinished_device_idx ON ingestion_messages (device_id, received_at)
    WHERE status NOT IN ('completed');
CREATE INDEX ingestion_messages_received_at_brin ON ingestion_messages USING brin (received_at);

-- +goose Down
DROP INDEX ingestion_messages_received_at_brin;
DROP INDEX ingestion_messages_unfinished_device_idx;
CREATE INDEX ingestion_messages_received_at_idx ON ingestion_messages (received_at);
CREATE INDEX ingestion_messages_organization_id_received_at_idx ON ingestion_messages (organization_id, received_at DESC);
CREATE INDEX ingestion_messages_device_id_received_at_idx ON ingestion_messages (device_id, received_at DESC);

-- +goose StatementBegin
CREATE OR REPLACE FUNCTION telemesh_ensure_partitions(parent regclass, from_day date, to_day date) RETURNS integer
LANGUAGE plpgsql AS $$
DECLARE
    parent_name   text;
    parent_schema text;
    key_column    text;
    default_name  text;
    day           date;
    part_name     text;
    lo            timestamptz;
    hi            timestamptz;
    created       integer := 0;
BEGIN
    IF from_day IS NULL OR to_day IS NULL THEN
        RAISE EXCEPTION 'telemesh_ensure_partitions: from_day and to_day are required';
    END IF;

    SELECT c.relname, n.nspname INTO parent_name, parent_schema
    FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
    WHERE c.oid = parent AND c.relkind = 'p';
    IF parent_name IS NULL THEN
        RAISE EXCEPTION 'telemesh_ensure_partitions: % is not a partitioned table', parent;
    END IF;

    -- The one column the table is range-partitioned on.
    SELECT a.attname INTO key_column
    FROM pg_partitioned_table pt
    JOIN pg_attribute a ON a.attrelid = pt.partrelid AND a.attnum = pt.partattrs[0]
    WHERE pt.partrelid = parent AND pt.partstrat = 'r' AND pt.partnatts = 1;
    IF key_column IS NULL THEN
        RAISE EXCEPTION 'telemesh_ensure_partitions: % is not range-partitioned on one column', parent;
    END IF;

    -- Replicas may run this at the same time; serialise per parent so two
    -- of them never race to create the same partition.
    PERFORM pg_advisory_xact_lock(hashtext('telemesh_partitions'), parent::oid::integer);

    SELECT c.relname INTO default_name
    FROM pg_inherits i
    JOIN pg_class c ON c.oid = i.inhrelid
    WHERE i.inhparent = parent AND pg_get_expr(c.relpartbound, c.oid) = 'DEFAULT';

    day := from_day;
    WHILE day <= to_day LOOP
        part_name := parent_name || '_p' || to_char(day, 'YYYYMMDD');
        IF to_regclass(format('%I.%I', parent_schema, part_name)) IS NULL THEN
            -- Days are UTC days, whatever the session's TimeZone.
            lo := day::timestamp AT TIME ZONE 'UTC';
            hi := (day + 1)::timestamp AT TIME ZONE 'UTC';
            -- Build the partition beside the parent and ATTACH it: ATTACH
            -- locks the parent more weakly than CREATE ... PARTITION OF, so
            -- ingestion keeps writing while this runs. Rows that already
            -- landed in the DEFAULT partition for the day move into the new
            -- partition first (ATTACH would refuse otherwise).
            EXECUTE format(
                'CREATE TABLE %I.%I (LIKE %s INCLUDING DEFAULTS INCLUDING CONSTRAINTS INCLUDING STORAGE INCLUDING COMPRESSION)',
                parent_schema, part_name, parent);
            IF default_name IS NOT NULL THEN
                EXECUTE format(
                    'WITH moved AS (DELETE FROM %I.%I WHERE %I >= $1 AND %I < $2 RETURNING *) INSERT INTO %I.%I SELECT * FROM moved',
                    parent_schema, default_name, key_column, key_column, parent_schema, part_name)
                USING lo, hi;
            END IF;
            EXECUTE format(
                'ALTER TABLE %s ATTACH PARTITION %I.%I FOR VALUES FROM (%L) TO (%L)',
                parent, parent_schema, part_name, lo, hi);
            created := created + 1;
        END IF;
        day := day + 1;
    END LOOP;
    RETURN created;
END;
$$;
-- +goose StatementEnd

DROP TABLE telemesh_partition_storage;
CREATE INDEX device_telemetry_logs_next_publish_at_idx ON device_telemetry_logs (next_publish_at)
    WHERE processing_state IN ('pending', 'publish_failed');
-- Rows the publish_outbox still held are pending or publish_failed: they
-- are due now, so the retry loop of the version this returns to takes them.
-- (The Down statements run in order; this one needs the outbox, so it
-- comes before the table is dropped.)
UPDATE device_telemetry_logs t SET next_publish_at = least(coalesce(t.next_publish_at, now()), now())
    FROM publish_outbox o
    WHERE t.id = ANY (o.message_ids) AND t.recorded_at BETWEEN o.recorded_from AND o.recorded_to
      AND t.processing_state IN ('pending', 'publish_failed');
DROP TABLE publish_outbox;
COMMENT ON COLUMN device_telemetry_logs.next_publish_at IS NULL;
DROP TABLE ingestion_stage_counts;
DROP FUNCTION telemesh_add_counts(bigint[], bigint[]);

COMMENT ON COLUMN ingestion_stage_logs.dedupe_key IS NULL;
DROP INDEX ingestion_stage_logs_dedupe_key_idx;
DROP INDEX ingestion_stage_logs_failures_idx;
DROP INDEX ingestion_stage_logs_message_id_idx;
CREATE INDEX ingestion_stage_logs_message_id_created_at_idx ON ingestion_stage_logs (message_id, created_at);
CREATE INDEX ingestion_stage_logs_stage_status_created_at_idx ON ingestion_stage_logs (stage, status, created_at);
CREATE INDEX ingestion_stage_logs_dedupe_key_idx ON ingestion_stage_logs (dedupe_key);
ALTER TABLE ingestion_stage_logs ADD COLUMN id uuid NOT NULL DEFAULT gen_random_uuid();
ALTER TABLE ingestion_stage_logs ADD CONSTRAINT ingestion_stage_logs_pkey PRIMARY KEY (id, created_at);
