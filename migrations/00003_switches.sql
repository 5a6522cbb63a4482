-- +goose Up
create table pipeline_switches (
	organization_id        uuid references organizations (id) on delete cascade,
	pipeline_enabled       boolean not null default true,
	publish_analytics      boolean not null default true,
	publish_invalid_events boolean not null default true,
	updated_at             timestamptz not null default now(),
	updated_by             text,
	constraint pipeline_switches_organization unique nulls not distinct (organization_id)
);
comment on table pipeline_switches is 'The global switches (organization_id null) and per-organization ones. pipeline_enabled off globally pauses consumption; per organization it parks that organization''s messages.';
insert into pipeline_switches (organization_id) values (null);

-- +goose StatementBegin
create function telemesh_notify_switches() returns trigger language plpgsql as $$
begin
	perform pg_notify('telemesh_switches', '');
	return null;
end;
$$;
-- +goose StatementEnd
create trigger pipeline_switches_notify after insert or update or delete on pipeline_switches
	for each statement execute function telemesh_notify_switches();

-- +goose Down
drop table pipeline_switches;
drop function telemesh_notify_switches();
