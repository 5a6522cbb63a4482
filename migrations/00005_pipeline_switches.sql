-- The kill switches: one global row (organization_id null) and optional rows
-- per organization.

-- +goose Up

CREATE TABLE pipeline_switches (
    id                     uuid        PRIMARY KEY DEFAULT gen_random_uuid(),
    organization_id        uuid        REFERENCES organizations (id) ON DELETE CASCADE,
    pipeline_enabled       boolean     NOT NULL DEFAULT true,
    publish_analytics      boolean     NOT NULL DEFAULT true,
    publish_invalid_events boolean     NOT NULL DEFAULT true,
    created_at             timestamptz NOT NULL DEFAULT now(),
    updated_at             timestamptz NOT NULL DEFAULT now(),
    updated_by             text,
    -- At most one global row and one row per organization; lets writers
    -- upsert with ON CONFLICT (organization_id), null included.
    CONSTRAINT pipeline_switches_organization_id_key UNIQUE NULLS NOT DISTINCT (organization_id)
);

COMMENT ON TABLE pipeline_switches IS
    'Kill switches. The global row (organization_id null) pauses consumption when pipeline_enabled is false (JetStream keeps the backlog); '
    'an organization''s row parks its messages (kept, status parked) until switched back. Changes are sent on NOTIFY channel telemesh_switches.';
COMMENT ON COLUMN pipeline_switches.updated_by IS 'Who changed the switch last (an operator, the CLI, the viewer).';

CREATE TRIGGER pipeline_switches_set_updated_at BEFORE UPDATE ON pipeline_switches
    FOR EACH ROW EXECUTE FUNCTION telemesh_set_updated_at();
CREATE TRIGGER pipeline_switches_notify AFTER INSERT OR UPDATE OR DELETE ON pipeline_switches
    FOR EACH ROW EXECUTE FUNCTION telemesh_notify_switches();
CREATE TRIGGER pipeline_switches_notify_truncate AFTER TRUNCATE ON pipeline_switches
    FOR EACH STATEMENT EXECUTE FUNCTION telemesh_notify_switches();

INSERT INTO pipeline_switches (organization_id, updated_by) VALUES (NULL, 'migration');

-- +goose Down
DROP TABLE pipeline_switches;
