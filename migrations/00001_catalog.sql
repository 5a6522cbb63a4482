-- +goose Up
create table organizations (
	id         uuid primary key default gen_random_uuid(),
	slug       text not null unique check (slug ~ '^[a-z0-9][a-z0-9_-]*$'),
	name       text not null,
	created_at timestamptz not null default now(),
	updated_at timestamptz not null default now()
);
comment on table organizations is 'Tenants. slug is the token used in analytics subjects.';

create table device_types (
	id              uuid primary key default gen_random_uuid(),
	organization_id uuid not null references organizations (id) on delete cascade,
	name            text not null,
	base_topic      text not null default 'devices' check (base_topic ~ '^[A-Za-z0-9_-]+$'),
	created_at      timestamptz not null default now(),
	updated_at      timestamptz not null default now(),
	unique (organization_id, name)
);
comment on table device_types is 'Kinds of device; a device publishes on <base_topic>.<external id or uuid>.<topic suffix>.';

create table device_type_topics (
	id             uuid primary key default gen_random_uuid(),
	device_type_id uuid not null references device_types (id) on delete cascade,
	suffix         text not null check (suffix ~ '^[A-Za-z0-9_-]+$'),
	created_at     timestamptz not null default now(),
	unique (device_type_id, suffix)
);
comment on table device_type_topics is 'The subject suffixes (topics) of a device type, such as telemetry.';

create table devices (
	id              uuid primary key default gen_random_uuid(),
	organization_id uuid not null references organizations (id) on delete cascade,
	device_type_id  uuid not null references device_types (id),
	external_id     text not null check (external_id ~ '^[A-Za-z0-9_-]+$'),
	name            text,
	is_active       boolean not null default true,
	deleted_at      timestamptz,
	created_at      timestamptz not null default now(),
	updated_at      timestamptz not null default now()
);
comment on table devices is 'Devices. id is the device uuid; is_active is the one active/inactive switch; soft-deleted rows (deleted_at) are ignored.';
create unique index devices_external_id_live on devices (external_id) where deleted_at is null;
create index devices_organization on devices (organization_id);

create table parameter_definitions (
	id                   uuid primary key default gen_random_uuid(),
	device_type_topic_id uuid not null references device_type_topics (id) on delete cascade,
	key                  text not null,
	json_path            text not null,
	data_type            text not null check (data_type in ('integer', 'decimal', 'boolean', 'string', 'json')),
	required             boolean not null default false,
	critical             boolean not null default false,
	validation_rules     jsonb not null default '{}' check (jsonb_typeof(validation_rules) = 'object'),
	mutation_expression  jsonb,
	sequence             integer not null default 0,
	is_active            boolean not null default true,
	created_at           timestamptz not null default now(),
	updated_at           timestamptz not null default now(),
	unique (device_type_topic_id, key)
);
comment on table parameter_definitions is 'Values extracted from a topic''s payload by json_path, typed and checked against validation_rules (min, max, regex, enum); mutation_expression is JSON-Logic over the extracted value val.';

create table derived_parameter_definitions (
	id                   uuid primary key default gen_random_uuid(),
	device_type_topic_id uuid not null references device_type_topics (id) on delete cascade,
	key                  text not null,
	data_type            text not null check (data_type in ('integer', 'decimal', 'boolean', 'string', 'json')),
	expression           jsonb not null,
	dependencies         text[] not null default '{}',
	sequence             integer not null default 0,
	is_active            boolean not null default true,
	created_at           timestamptz not null default now(),
	updated_at           timestamptz not null default now(),
	unique (device_type_topic_id, key)
);
comment on table derived_parameter_definitions is 'Values computed with JSON-Logic from parameters and other derived values; dependencies empty means the var names in expression.';

-- Stages cache the catalog and reload it when told.
-- +goose StatementBegin
create function telemesh_notify_definitions() returns trigger language plpgsql as $$
begin
	perform pg_notify('telemesh_definitions', tg_table_name);
	return null;
end;
$$;
-- +goose StatementEnd
create trigger organizations_notify after insert or update or delete on organizations
	for each statement execute function telemesh_notify_definitions();
create trigger device_types_notify after insert or update or delete on device_types
	for each statement execute function telemesh_notify_definitions();
create trigger device_type_topics_notify after insert or update or delete on device_type_topics
	for each statement execute function telemesh_notify_definitions();
create trigger devices_notify after insert or update or delete on devices
	for each statement execute function telemesh_notify_definitions();
create trigger parameter_definitions_notify after insert or update or delete on parameter_definitions
	for each statement execute function telemesh_notify_definitions();
create trigger derived_parameter_definitions_notify after insert or update or delete on derived_parameter_definitions
	for each statement execute function telemesh_notify_definitions();

-- +goose Down
drop table derived_parameter_definitions;
drop table parameter_definitions;
drop table devices;
drop table device_type_topics;
drop table device_types;
drop table organizations;
drop function telemesh_notify_definitions();
