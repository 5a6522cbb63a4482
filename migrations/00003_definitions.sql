-- What to read from a payload and what to compute from it, per topic.

-- +goose Up

CREATE TABLE parameter_definitions (
    id                   uuid        PRIMARY KEY DEFAULT gen_random_uuid(),
    device_type_topic_id uuid        NOT NULL REFERENCES device_type_topics (id) ON DELETE CASCADE,
    key                  text        NOT NULL,
    json_path            text        NOT NULL,
    data_type            text        NOT NULL,
    unit                 text,
    description          text,
    required             boolean     NOT NULL DEFAULT false,
    critical             boolean     NOT NULL DEFAULT false,
    validation_rules     jsonb       NOT NULL DEFAULT '{}',
    mutation_expression  jsonb,
    sequence             integer     NOT NULL DEFAULT 0,
    is_active            boolean     NOT NULL DEFAULT true,
    created_at           timestamptz NOT NULL DEFAULT now(),
    updated_at           timestamptz NOT NULL DEFAULT now(),
    CONSTRAINT parameter_definitions_device_type_topic_id_key_key UNIQUE (device_type_topic_id, key),
    CONSTRAINT parameter_definitions_key_check CHECK (key <> ''),
    CONSTRAINT parameter_definitions_json_path_check CHECK (json_path <> ''),
    CONSTRAINT parameter_definitions_data_type_check
        CHECK (data_type IN ('integer', 'decimal', 'boolean', 'string', 'json')),
    CONSTRAINT parameter_definitions_validation_rules_check
        CHECK (jsonb_typeof(validation_rules) = 'object')
);

COMMENT ON TABLE parameter_definitions IS
    'Raw parameters of a topic: where each is in the payload (json_path), its type, whether it is required or critical, '
    'its validation rules and an optional mutation of the extracted value. Applied in sequence order.';
COMMENT ON COLUMN parameter_definitions.data_type IS 'One of integer, decimal, boolean, string, json.';
COMMENT ON COLUMN parameter_definitions.validation_rules IS
    'A JSON object with optional keys min, max (numbers), regex (string) and enum (array of allowed values).';
COMMENT ON COLUMN parameter_definitions.mutation_expression IS
    'Optional JSON-Logic applied to the extracted value, available as the variable val (e.g. {"+":[{"var":"val"},2]}).';
COMMENT ON COLUMN parameter_definitions.critical IS
    'A critical parameter that is missing or invalid makes the whole message invalid.';

CREATE TABLE derived_parameter_definitions (
    id                   uuid        PRIMARY KEY DEFAULT gen_random_uuid(),
    device_type_topic_id uuid        NOT NULL REFERENCES device_type_topics (id) ON DELETE CASCADE,
    key                  text        NOT NULL,
    data_type            text        NOT NULL,
    unit                 text,
    description          text,
    expression           jsonb       NOT NULL,
    dependencies         text[]      NOT NULL DEFAULT '{}',
    sequence             integer     NOT NULL DEFAULT 0,
    is_active            boolean     NOT NULL DEFAULT true,
    created_at           timestamptz NOT NULL DEFAULT now(),
    updated_at           timestamptz NOT NULL DEFAULT now(),
    CONSTRAINT derived_parameter_definitions_device_type_topic_id_key_key UNIQUE (device_type_topic_id, key),
    CONSTRAINT derived_parameter_definitions_key_check CHECK (key <> ''),
    CONSTRAINT derived_parameter_definitions_data_type_check
        CHECK (data_type IN ('integer', 'decimal', 'boolean', 'string', 'json')),
    CONSTRAINT derived_parameter_definitions_dependencies_check CHECK (array_position(dependencies, NULL) IS NULL)
);

COMMENT ON TABLE derived_parameter_definitions IS
    'Values computed from a topic''s parameters (and other derived values) with JSON-Logic, evaluated in dependency order.';
COMMENT ON COLUMN derived_parameter_definitions.expression IS 'JSON-Logic over the parameter and derived keys ({"var":"temp_c"}).';
COMMENT ON COLUMN derived_parameter_definitions.dependencies IS
    'Keys this value needs; when empty, the var names in expression are used.';

CREATE TRIGGER parameter_definitions_set_updated_at BEFORE UPDATE ON parameter_definitions
    FOR EACH ROW EXECUTE FUNCTION telemesh_set_updated_at();
CREATE TRIGGER derived_parameter_definitions_set_updated_at BEFORE UPDATE ON derived_parameter_definitions
    FOR EACH ROW EXECUTE FUNCTION telemesh_set_updated_at();

CREATE TRIGGER parameter_definitions_notify AFTER INSERT OR UPDATE OR DELETE ON parameter_definitions
    FOR EACH ROW EXECUTE FUNCTION telemesh_notify_definitions();
CREATE TRIGGER parameter_definitions_notify_truncate AFTER TRUNCATE ON parameter_definitions
    FOR EACH STATEMENT EXECUTE FUNCTION telemesh_notify_definitions();
CREATE TRIGGER derived_parameter_definitions_notify AFTER INSERT OR UPDATE OR DELETE ON derived_parameter_definitions
    FOR EACH ROW EXECUTE FUNCTION telemesh_notify_definitions();
CREATE TRIGGER derived_parameter_definitions_notify_truncate AFTER TRUNCATE ON derived_parameter_definitions
    FOR EACH STATEMENT EXECUTE FUNCTION telemesh_notify_definitions();

-- +goose Down
DROP TABLE derived_parameter_definitions;
DROP TABLE parameter_definitions;
