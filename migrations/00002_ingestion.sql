-- +goose Up
-- Daily partitions, made ahead of time; a row whose day has none lands in
-- the default partition instead of being refused.
-- +goose StatementBegin
create function telemesh_ensure_partitions(parent regclass, from_day date, to_day date) returns integer
language plpgsql as $$
declare
	d date := from_day;
	made integer := 0;
	name text;
begin
	while d <= to_day loop
		name := format('%s_p%s', parent::text, to_char(d, 'YYYYMMDD'));
		if to_regclass(name) is null then
			execute format('create table %I partition of %s for values from (%L) to (%L)',
				name, parent, d::timestamptz, (d + 1)::timestamptz);
			made := made + 1;
		end if;
		d := d + 1;
	end loop;
	return made;
end;
$$;
-- +goose StatementEnd

-- +goose StatementBegin
create function telemesh_drop_partitions_before(parent regclass, before_day date) returns integer
language plpgsql as $$
declare
	p record;
	dropped integer := 0;
begin
	for p in
		select c.oid::regclass::text as name
		from pg_inherits i join pg_class c on c.oid = i.inhrelid
		where i.inhparent = parent
		  and c.relname ~ '_p[0-9]{8}$'
		  and to_date(right(c.relname, 8), 'YYYYMMDD') + 1 <= before_day
	loop
		execute format('drop table %s', p.name);
		dropped := dropped + 1;
	end loop;
	return dropped;
end;
$$;
-- +goose StatementEnd

create table ingestion_messages (
	id                uuid primary key,
	organization_id   uuid references organizations (id) on delete set null,
	device_id         uuid,
	source_subject    text not null,
	source_message_id text,
	dedupe_key        text not null unique,
	stream_sequence   bigint,
	delivery_attempts integer not null default 1,
	raw_payload       bytea,
	content_type      text,
	status            text not null check (status in ('queued', 'processing', 'completed', 'failed_validation',
	                      'inactive_skipped', 'failed_terminal', 'duplicate', 'parked')),
	halted_stage      text check (halted_stage in ('ingress', 'validate', 'mutate', 'derive', 'persist', 'publish')),
	error_summary     text,
	received_at       timestamptz not null,
	processed_at      timestamptz,
	created_at        timestamptz not null default now(),
	updated_at        timestamptz not null default now()
);
comment on table ingestion_messages is 'One row per message (per dedupe key), written when it reaches persist; raw payload kept. Kept 14 days.';
comment on column ingestion_messages.dedupe_key is 'id:<subject>:<device message id>, or seq:<stream>@<created>:<stream sequence> when the device sent none.';
create index ingestion_messages_unfinished on ingestion_messages (status, received_at) where status <> 'completed';
create index ingestion_messages_source_id on ingestion_messages (source_message_id) where source_message_id is not null;
create index ingestion_messages_device on ingestion_messages (device_id, received_at desc);
create index ingestion_messages_organization on ingestion_messages (organization_id, received_at desc);
create index ingestion_messages_received on ingestion_messages (received_at);

create table device_telemetry_logs (
	id                   uuid not null,
	recorded_at          timestamptz not null,
	received_at          timestamptz not null,
	organization_id      uuid,
	device_id            uuid not null,
	topic                text not null,
	ingestion_message_id uuid not null,
	raw_payload          jsonb,
	mutated_values       jsonb not null default '{}',
	transformed_values   jsonb not null default '{}',
	unresolved_values    jsonb not null default '{}',
	validation_status    text not null check (validation_status in ('valid', 'invalid')),
	validation_errors    jsonb not null default '[]',
	processing_state     text not null check (processing_state in ('pending', 'processed', 'invalid', 'inactive_skipped', 'publish_failed')),
	failure_reason       text,
	publish_attempts     integer not null default 0,
	next_publish_at      timestamptz,
	processed_at         timestamptz,
	created_at           timestamptz not null default now(),
	updated_at           timestamptz not null default now(),
	primary key (id, recorded_at)
) partition by range (recorded_at);
comment on table device_telemetry_logs is 'Telemetry rows, daily partitions by recorded_at; retention drops whole partitions (90 days). The persisted rows are the publish outbox: pending and publish_failed rows are retried.';
comment on column device_telemetry_logs.transformed_values is 'Parameter values after mutation, plus derived values.';
comment on column device_telemetry_logs.unresolved_values is 'Derived keys that could not be computed: {key: {reason: missing_input|cycle|evaluation_error, ...}}.';
create table device_telemetry_logs_default partition of device_telemetry_logs default;
create index device_telemetry_logs_device on device_telemetry_logs (device_id, recorded_at desc);
create index device_telemetry_logs_message on device_telemetry_logs (ingestion_message_id);
create index device_telemetry_logs_id on device_telemetry_logs (id);
create index device_telemetry_logs_due on device_telemetry_logs (next_publish_at) where processing_state in ('pending', 'publish_failed');
create index device_telemetry_logs_organization on device_telemetry_logs (organization_id, recorded_at desc);

create table ingestion_stage_logs (
	id              uuid not null,
	message_id      uuid not null,
	dedupe_key      text,
	stage           text not null check (stage in ('ingress', 'validate', 'mutate', 'derive', 'persist', 'publish')),
	status          text not null check (status in ('completed', 'halted', 'duplicate', 'unresolved', 'failed', 'parked')),
	duration_us     bigint not null,
	attempt         integer not null default 1,
	instance        text not null,
	input_snapshot  jsonb,
	output_snapshot jsonb,
	change_set      jsonb,
	errors          jsonb,
	created_at      timestamptz not null default now(),
	primary key (id, created_at)
) partition by range (created_at);
comment on table ingestion_stage_logs is 'What each stage did to each message; daily partitions, kept 7 days.';
comment on column ingestion_stage_logs.status is 'completed: handled normally; halted: stopped the message (errors say why); duplicate: original already persisted; unresolved: derived values left unresolved; failed: the stage''s work failed (a publish); parked: held by its organization''s switch.';
create table ingestion_stage_logs_default partition of ingestion_stage_logs default;
create index ingestion_stage_logs_message on ingestion_stage_logs (message_id, created_at);
create index ingestion_stage_logs_dedupe on ingestion_stage_logs (dedupe_key);
create index ingestion_stage_logs_stage on ingestion_stage_logs (stage, status, created_at);

select telemesh_ensure_partitions('device_telemetry_logs', current_date - 1, current_date + 7);
select telemesh_ensure_partitions('ingestion_stage_logs', current_date - 1, current_date + 7);

-- +goose Down
drop table ingestion_stage_logs;
drop table device_telemetry_logs;
drop table ingestion_messages;
drop function telemesh_drop_partitions_before(regclass, date);
drop function telemesh_ensure_partitions(regclass, date, date);
