-- Who sends telemetry: organizations, device types with their topics, and
-- devices. A device's telemetry arrives on the NATS subject
-- <device_types.base_topic>.<devices.external_id or devices.id>.<device_type_topics.suffix>
-- (an MQTT device publishes <base>/<device>/<suffix>; the bridge maps / to .).

-- +goose Up

CREATE TABLE organizations (
    id         uuid        PRIMARY KEY DEFAULT gen_random_uuid(),
    slug       text        NOT NULL,
    name       text        NOT NULL,
    created_at timestamptz NOT NULL DEFAULT now(),
    updated_at timestamptz NOT NULL DEFAULT now(),
    CONSTRAINT organizations_slug_key UNIQUE (slug),
    -- The slug is a NATS subject token (analytics subjects carry it).
    CONSTRAINT organizations_slug_check CHECK (slug ~ '^[a-z0-9][a-z0-9_-]{0,62}$'),
    CONSTRAINT organizations_name_check CHECK (name <> '')
);

COMMENT ON TABLE organizations IS
    'Tenants. slug is the lower-case token used in NATS subjects (iot.v1.analytics.<env>.<slug>...). Kept until deleted.';

CREATE TABLE device_types (
    id              uuid        PRIMARY KEY DEFAULT gen_random_uuid(),
    organization_id uuid        NOT NULL REFERENCES organizations (id) ON DELETE CASCADE,
    name            text        NOT NULL,
    base_topic      text        NOT NULL DEFAULT 'devices',
    description     text,
    created_at      timestamptz NOT NULL DEFAULT now(),
    updated_at      timestamptz NOT NULL DEFAULT now(),
    CONSTRAINT device_types_organization_id_name_key UNIQUE (organization_id, name),
    -- Lets devices check that their type belongs to their organization.
    CONSTRAINT device_types_id_organization_id_key UNIQUE (id, organization_id),
    CONSTRAINT device_types_name_check CHECK (name <> ''),
    -- One NATS subject token: no dots (the gateway reads subjects as
    -- <base>.<device>.<suffix>), no wildcards, no MQTT slashes, and no
    -- system prefix (those start with $ or _).
    CONSTRAINT device_types_base_topic_check CHECK (base_topic ~ '^[A-Za-z0-9][A-Za-z0-9_-]*$')
);

COMMENT ON TABLE device_types IS
    'Kinds of device. base_topic is the first token of the NATS subjects their devices publish on (default devices).';

CREATE TABLE device_type_topics (
    id             uuid        PRIMARY KEY DEFAULT gen_random_uuid(),
    device_type_id uuid        NOT NULL REFERENCES device_types (id) ON DELETE CASCADE,
    suffix         text        NOT NULL,
    description    text,
    created_at     timestamptz NOT NULL DEFAULT now(),
    updated_at     timestamptz NOT NULL DEFAULT now(),
    CONSTRAINT device_type_topics_device_type_id_suffix_key UNIQUE (device_type_id, suffix),
    CONSTRAINT device_type_topics_suffix_check CHECK (suffix ~ '^[A-Za-z0-9_-]+$')
);

COMMENT ON TABLE device_type_topics IS
    'Topics of a device type: the subject suffix (e.g. telemetry) after <base_topic>.<device>. Parameter definitions belong to a topic.';

CREATE TABLE devices (
    id              uuid        PRIMARY KEY DEFAULT gen_random_uuid(),
    organization_id uuid        NOT NULL REFERENCES organizations (id) ON DELETE CASCADE,
    device_type_id  uuid        NOT NULL,
    external_id     text        NOT NULL,
    name            text,
    is_active       boolean     NOT NULL DEFAULT true,
    deleted_at      timestamptz,
    created_at      timestamptz NOT NULL DEFAULT now(),
    updated_at      timestamptz NOT NULL DEFAULT now(),
    -- The type must belong to the device's organization.
    CONSTRAINT devices_device_type_fkey FOREIGN KEY (device_type_id, organization_id)
        REFERENCES device_types (id, organization_id),
    -- The external id is one NATS subject token (and an MQTT topic level).
    CONSTRAINT devices_external_id_check CHECK (external_id ~ '^[A-Za-z0-9_:-]{1,200}$')
);

-- A subject names a device by external id, so an external id resolves to
-- one live device; a soft-deleted device frees its external id.
CREATE UNIQUE INDEX devices_external_id_live_key ON devices (external_id) WHERE deleted_at IS NULL;
CREATE INDEX devices_organization_id_idx ON devices (organization_id);
CREATE INDEX devices_device_type_id_idx ON devices (device_type_id);

COMMENT ON TABLE devices IS
    'Devices; id is the device uuid. is_active is the one active/inactive switch; rows with deleted_at set are soft-deleted and ignored.';
COMMENT ON COLUMN devices.external_id IS
    'The device''s own name, used in subjects; unique among live (not soft-deleted) devices.';

CREATE TRIGGER organizations_set_updated_at BEFORE UPDATE ON organizations
    FOR EACH ROW EXECUTE FUNCTION telemesh_set_updated_at();
CREATE TRIGGER device_types_set_updated_at BEFORE UPDATE ON device_types
    FOR EACH ROW EXECUTE FUNCTION telemesh_set_updated_at();
CREATE TRIGGER device_type_topics_set_updated_at BEFORE UPDATE ON device_type_topics
    FOR EACH ROW EXECUTE FUNCTION telemesh_set_updated_at();
CREATE TRIGGER devices_set_updated_at BEFORE UPDATE ON devices
    FOR EACH ROW EXECUTE FUNCTION telemesh_set_updated_at();

CREATE TRIGGER organizations_notify AFTER INSERT OR UPDATE OR DELETE ON organizations
    FOR EACH ROW EXECUTE FUNCTION telemesh_notify_definitions();
CREATE TRIGGER organizations_notify_truncate AFTER TRUNCATE ON organizations
    FOR EACH STATEMENT EXECUTE FUNCTION telemesh_notify_definitions();
CREATE TRIGGER device_types_notify AFTER INSERT OR UPDATE OR DELETE ON device_types
    FOR EACH ROW EXECUTE FUNCTION telemesh_notify_definitions();
CREATE TRIGGER device_types_notify_truncate AFTER TRUNCATE ON device_types
    FOR EACH STATEMENT EXECUTE FUNCTION telemesh_notify_definitions();
CREATE TRIGGER device_type_topics_notify AFTER INSERT OR UPDATE OR DELETE ON device_type_topics
    FOR EACH ROW EXECUTE FUNCTION telemesh_notify_definitions();
CREATE TRIGGER device_type_topics_notify_truncate AFTER TRUNCATE ON device_type_topics
    FOR EACH STATEMENT EXECUTE FUNCTION telemesh_notify_definitions();
CREATE TRIGGER devices_notify AFTER INSERT OR UPDATE OR DELETE ON devices
    FOR EACH ROW EXECUTE FUNCTION telemesh_notify_definitions();
CREATE TRIGGER devices_notify_truncate AFTER TRUNCATE ON devices
    FOR EACH STATEMENT EXECUTE FUNCTION telemesh_notify_definitions();

-- +goose Down
DROP TABLE devices;
DROP TABLE device_type_topics;
DROP TABLE device_types;
DROP TABLE organizations;
