-- What a message costs Postgres, again (see 00008). Measured with
-- pg_waldump over a backlog of 200,000 messages in stage-log mode all:
--
-- * The btree on ingestion_stage_logs.message_id was the largest single
--   writer after the stage rows themselves: one WAL record per stage row,
--   about 490 bytes per message, for an index that only an operator's trace
--   of one message reads. Message ids are time-ordered (UUIDv7, made by the
--   gateway when a message arrives) and a message's stage rows are written
--   within moments of it, so the rows of a table range hold a narrow range
--   of ids: a BRIN index finds them by reading the few ranges whose ids
--   bracket the one asked for, and writes nothing for a row added to the
--   range still being filled. The minmax-multi summary keeps a range that
--   also holds a few ids from long before (a publish retried hours later)
--   from matching every id in between. A range not summarized yet matches
--   every id, so the stages summarize new ranges every few seconds
--   (telemesh_summarize_stage_logs, internal/stagelog): autovacuum's
--   autosummarize requests overflow their queue of 256 at full rate and
--   wait for a worker up to a minute. A trace then reads in full only the
--   pages written since.
-- * device_telemetry_logs partitions kept 45 % of each page free so that
--   marking a row processed is a HOT update. A batch marks all its rows in
--   one transaction, so none of the old versions can be pruned before the
--   last row is rewritten: the page needs room for a second copy of every
--   row, each a little wider (processed_at set). At 55 % filled about one
--   update in ten found no room and wrote the row again with both index
--   entries. 48 % leaves room for a second copy of every row up to 24
--   bytes wider, for any row of 300 bytes or more.

-- +goose Up
DROP INDEX ingestion_stage_logs_message_id_idx;
CREATE INDEX ingestion_stage_logs_message_id_brin ON ingestion_stage_logs
    USING brin (message_id uuid_minmax_multi_ops) WITH (pages_per_range = 16);

-- Summarizing a BRIN index takes its owner; the stages own nothing, so this
-- function runs as its owner (SECURITY DEFINER) and does this alone. One
-- call at a time summarizes (the others find nothing left to do); it
-- returns the ranges it summarized. It waits at most a moment for a
-- partition that autovacuum is working on (autovacuum summarizes it too):
-- waiting longer than deadlock_timeout would cancel autovacuum. The search
-- path is fixed, with pg_temp last, so a caller's objects never stand in
-- for the schema's.
-- +goose StatementBegin
DO $do$
BEGIN
    EXECUTE format($f$
        CREATE FUNCTION telemesh_summarize_stage_logs() RETURNS integer
        LANGUAGE plpgsql SECURITY DEFINER SET search_path = %I, pg_temp SET lock_timeout = '200ms' AS $body$
        DECLARE
            idx   regclass;
            total integer := 0;
        BEGIN
            IF NOT pg_try_advisory_xact_lock(hashtext('telemesh_summarize_stage_logs')) THEN
                RETURN 0;
            END IF;
            FOR idx IN
                SELECT i.inhrelid::regclass FROM pg_inherits i
                WHERE i.inhparent = 'ingestion_stage_logs_message_id_brin'::regclass
            LOOP
                BEGIN
                    total := total + brin_summarize_new_values(idx);
                EXCEPTION WHEN lock_not_available THEN
                    NULL;
                END;
            END LOOP;
            RETURN total;
        END;
        $body$ $f$, current_schema());
END;
$do$;
-- +goose StatementEnd
COMMENT ON FUNCTION telemesh_summarize_stage_logs() IS
    'Summarizes the new block ranges of every ingestion_stage_logs partition''s message_id BRIN index, as its owner; the stages call it '
    'every few seconds so a trace reads only the few pages written since. Returns the ranges summarized, 0 when another call is at it.';

UPDATE telemesh_partition_storage SET fillfactor = 48 WHERE table_name = 'device_telemetry_logs';

-- The partitions that exist keep the new room from now on; their pages
-- already filled keep what they have.
-- +goose StatementBegin
DO $$
DECLARE
    part record;
BEGIN
    FOR part IN
        SELECT c.oid::regclass AS name FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid
        WHERE i.inhparent = 'device_telemetry_logs'::regclass
    LOOP
        EXECUTE format('ALTER TABLE %s SET (fillfactor = 48)', part.name);
    END LOOP;
END;
$$;
-- +goose StatementEnd

-- +goose Down
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
UPDATE telemesh_partition_storage SET fillfactor = 55 WHERE table_name = 'device_telemetry_logs';

DROP FUNCTION telemesh_summarize_stage_logs();
DROP INDEX ingestion_stage_logs_message_id_brin;
CREATE INDEX ingestion_stage_logs_message_id_idx ON ingestion_stage_logs (message_id);
