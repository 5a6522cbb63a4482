-- Only the migrator creates objects in the schema telemesh lives in; its
-- stages, viewer and operator read and write rows and never add a table or
-- a function. Postgres before 15 lets every role (PUBLIC) create in the
-- public schema. That grant names no telemesh role, so it is taken here,
-- once, whatever prefix `telemesh roles apply` gives the roles; roles apply
-- grants CREATE to the migrator and USAGE to every role.
--
-- Only the schema's owner (or a superuser) can take it: on Postgres before
-- 15 that is the bootstrap superuser, so run the migrations as it there.
-- On later versions PUBLIC does not hold CREATE and there is nothing to do.
-- The Down gives back what Postgres gives PUBLIC by default: CREATE on the
-- public schema, before 15.

-- +goose Up
-- +goose StatementBegin
DO $$
BEGIN
    IF has_schema_privilege('public', current_schema(), 'CREATE') THEN
        EXECUTE format('REVOKE CREATE ON SCHEMA %I FROM PUBLIC', current_schema());
    END IF;
END
$$;
-- +goose StatementEnd

-- +goose Down
-- +goose StatementBegin
DO $$
BEGIN
    IF current_schema() = 'public' AND current_setting('server_version_num')::int < 150000 THEN
        GRANT CREATE ON SCHEMA public TO PUBLIC;
    END IF;
END
$$;
-- +goose StatementEnd
