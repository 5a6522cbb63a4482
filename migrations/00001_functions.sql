-- Helper functions the later migrations and the stages rely on: keeping
-- updated_at current, daily partitions and their retention, and the NOTIFY
-- payloads that let stages refresh their caches within a second.

-- +goose Up

-- +goose StatementBegin
CREATE FUNCTION telemesh_set_updated_at() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    -- Respect an explicit change of updated_at; otherwise stamp it.
    IF NEW.updated_at IS NOT DISTINCT FROM OLD.updated_at THEN
        NEW.updated_at := now();
    END IF;
    RETURN NEW;
END;
$$;
-- +goose StatementEnd

COMMENT ON FUNCTION telemesh_set_updated_at() IS
    'BEFORE UPDATE trigger on the configuration tables: stamps updated_at unless the statement set it. '
    'The hot tables (ingestion_messages, device_telemetry_logs) set updated_at themselves, saving a trigger call per row.';

-- +goose StatementBegin
CREATE FUNCTION telemesh_ensure_partitions(parent regclass, from_day date, to_day date) RETURNS integer
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

COMMENT ON FUNCTION telemesh_ensure_partitions(regclass, date, date) IS
    'Creates the missing daily partitions <parent>_pYYYYMMDD for from_day..to_day inclusive (UTC days), '
    'moving matching rows out of the DEFAULT partition. Idempotent and safe to run concurrently. Returns how many it created.';

-- +goose StatementBegin
CREATE FUNCTION telemesh_drop_partitions_before(parent regclass, before_day date) RETURNS integer
LANGUAGE plpgsql AS $$
DECLARE
    parent_name text;
    part        record;
    dropped     integer := 0;
BEGIN
    IF before_day IS NULL THEN
        RAISE EXCEPTION 'telemesh_drop_partitions_before: before_day is required';
    END IF;
    SELECT c.relname INTO parent_name FROM pg_class c WHERE c.oid = parent AND c.relkind = 'p';
    IF parent_name IS NULL THEN
        RAISE EXCEPTION 'telemesh_drop_partitions_before: % is not a partitioned table', parent;
    END IF;

    PERFORM pg_advisory_xact_lock(hashtext('telemesh_partitions'), parent::oid::integer);

    -- Only the daily partitions named <parent>_pYYYYMMDD. The one for day D
    -- holds [D, D+1), so it lies wholly before before_day when D < before_day.
    -- The DEFAULT partition is never dropped; retention deletes its old rows.
    FOR part IN
        SELECT n.nspname AS schema_name, c.relname AS name
        FROM pg_inherits i
        JOIN pg_class c ON c.oid = i.inhrelid
        JOIN pg_namespace n ON n.oid = c.relnamespace
        WHERE i.inhparent = parent
          AND left(c.relname, length(parent_name) + 2) = parent_name || '_p'
          AND substr(c.relname, length(parent_name) + 3) ~ '^[0-9]{8}$'
          AND to_date(right(c.relname, 8), 'YYYYMMDD') < before_day
        ORDER BY c.relname
    LOOP
        EXECUTE format('DROP TABLE %I.%I', part.schema_name, part.name);
        dropped := dropped + 1;
    END LOOP;
    RETURN dropped;
END;
$$;
-- +goose StatementEnd

COMMENT ON FUNCTION telemesh_drop_partitions_before(regclass, date) IS
    'Drops the daily partitions of parent that lie wholly before before_day (UTC) and returns how many it dropped. '
    'Rows in the DEFAULT partition are left to the retention job, which deletes them.';

-- +goose StatementBegin
CREATE FUNCTION telemesh_notify_definitions() RETURNS trigger
LANGUAGE plpgsql AS $$
DECLARE
    row_id uuid;
BEGIN
    IF TG_LEVEL = 'ROW' THEN
        IF TG_OP = 'DELETE' THEN
            row_id := OLD.id;
        ELSE
            row_id := NEW.id;
        END IF;
    END IF;
    -- Delivered at commit; identical payloads in one transaction are folded
    -- into one.
    PERFORM pg_notify('telemesh_definitions',
        json_build_object('table', TG_TABLE_NAME, 'op', TG_OP, 'id', row_id)::text);
    RETURN NULL;
END;
$$;
-- +goose StatementEnd

COMMENT ON FUNCTION telemesh_notify_definitions() IS
    'AFTER trigger: NOTIFY telemesh_definitions with {"table","op","id"} (id null for TRUNCATE) so stages refresh their device and definition caches.';

-- +goose StatementBegin
CREATE FUNCTION telemesh_notify_switches() RETURNS trigger
LANGUAGE plpgsql AS $$
DECLARE
    r record;
BEGIN
    IF TG_LEVEL = 'STATEMENT' THEN
        PERFORM pg_notify('telemesh_switches', json_build_object('op', TG_OP)::text);
        RETURN NULL;
    END IF;
    IF TG_OP = 'DELETE' THEN
        r := OLD;
    ELSE
        r := NEW;
    END IF;
    PERFORM pg_notify('telemesh_switches', json_build_object(
        'op', TG_OP,
        'organization_id', r.organization_id,
        'pipeline_enabled', r.pipeline_enabled,
        'publish_analytics', r.publish_analytics,
        'publish_invalid_events', r.publish_invalid_events)::text);
    RETURN NULL;
END;
$$;
-- +goose StatementEnd

COMMENT ON FUNCTION telemesh_notify_switches() IS
    'AFTER trigger: NOTIFY telemesh_switches with the changed row (organization_id null = the global switch) so every replica applies a switch within a second.';

-- +goose Down
DROP FUNCTION telemesh_notify_switches();
DROP FUNCTION telemesh_notify_definitions();
DROP FUNCTION telemesh_drop_partitions_before(regclass, date);
DROP FUNCTION telemesh_ensure_partitions(regclass, date, date);
DROP FUNCTION telemesh_set_updated_at();
