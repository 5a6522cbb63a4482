// Package demo seeds a small fleet so a newcomer sees telemetry flow the
// moment `telemesh up` starts: two organizations, three device types with
// their topics, parameters with rules and mutations, and a chain of derived
// values, one of whose inputs is sometimes missing.
package demo

import (
	"context"
	"fmt"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"
)

// Device is a seeded device.
type Device struct {
	ExternalID string
	Subject    string
	Active     bool
	// Kind names its device type: thermostat, energy-meter or air-quality.
	Kind string
}

// Devices are the seeded devices, in a stable order.
var Devices = []Device{
	{ExternalID: "thermo-01", Subject: "devices.thermo-01.telemetry", Active: true, Kind: "thermostat"},
	{ExternalID: "thermo-02", Subject: "devices.thermo-02.telemetry", Active: true, Kind: "thermostat"},
	{ExternalID: "thermo-03", Subject: "devices.thermo-03.telemetry", Active: false, Kind: "thermostat"},
	{ExternalID: "main-energy-meter-01", Subject: "energy.main-energy-meter-01.telemetry", Active: true, Kind: "energy-meter"},
	{ExternalID: "main-energy-meter-02", Subject: "energy.main-energy-meter-02.telemetry", Active: true, Kind: "energy-meter"},
	{ExternalID: "aq-01", Subject: "devices.aq-01.telemetry", Active: true, Kind: "air-quality"},
	{ExternalID: "aq-02", Subject: "devices.aq-02.telemetry", Active: true, Kind: "air-quality"},
}

// Subjects are the subjects the demo devices publish on; the gateway's
// stream must capture them.
var Subjects = []string{"devices.>", "energy.>"}

// seedSQL is idempotent: running it again changes nothing.
const seedSQL = `
insert into organizations (slug, name) values ('acme', 'Acme Buildings'), ('globex', 'Globex Energy')
on conflict (slug) do nothing;

insert into device_types (organization_id, name, base_topic)
select o.id, t.name, t.base from (values
	('acme', 'thermostat', 'devices'),
	('acme', 'air-quality', 'devices'),
	('globex', 'energy-meter', 'energy')) as t(org, name, base)
join organizations o on o.slug = t.org
on conflict (organization_id, name) do nothing;

insert into device_type_topics (device_type_id, suffix)
select id, 'telemetry' from device_types where name in ('thermostat', 'air-quality', 'energy-meter')
on conflict (device_type_id, suffix) do nothing;

insert into parameter_definitions (device_type_topic_id, key, json_path, data_type, required, critical, validation_rules, mutation_expression, sequence)
select tt.id, p.key, p.path, p.type, p.required, p.critical, p.rules::jsonb, p.mutation::jsonb, p.seq
from (values
	('thermostat', 'temp_c', '$.temp_c', 'decimal', true, true, '{"min": -50, "max": 150}', '{"+": [{"var": "val"}, 2]}', 1),
	('thermostat', 'humidity', '$.humidity', 'decimal', false, false, '{"min": 0, "max": 100}', null, 2),
	('thermostat', 'mode', '$.mode', 'string', false, false, '{"enum": ["heat", "cool", "off"]}', null, 3),
	('air-quality', 'pm25', '$.pm25', 'decimal', true, true, '{"min": 0, "max": 1000}', null, 1),
	('air-quality', 'co2_ppm', '$.co2', 'integer', true, false, '{"min": 0, "max": 10000}', null, 2),
	('air-quality', 'firmware', '$.meta.firmware', 'string', false, false, '{"regex": "^v[0-9]+\\.[0-9]+$"}', null, 3),
	('energy-meter', 'power_w', '$.power_w', 'decimal', true, true, '{"min": 0}', null, 1),
	('energy-meter', 'voltage_v', '$.voltage_v', 'decimal', true, false, '{"min": 0, "max": 500}', '{"*": [{"var": "val"}, 1.01]}', 2),
	('energy-meter', 'current_a', '$.current_a', 'decimal', false, false, '{"min": 0}', null, 3)
) as p(kind, key, path, type, required, critical, rules, mutation, seq)
join device_types dt on dt.name = p.kind
join device_type_topics tt on tt.device_type_id = dt.id and tt.suffix = 'telemetry'
on conflict (device_type_topic_id, key) do nothing;

insert into derived_parameter_definitions (device_type_topic_id, key, data_type, expression, dependencies, sequence)
select tt.id, d.key, d.type, d.expr::jsonb, d.deps::text[], d.seq
from (values
	('thermostat', 'temp_f', 'decimal', '{"+": [{"*": [{"var": "temp_c"}, 1.8]}, 32]}', '{temp_c}', 1),
	('thermostat', 'feels_like_f', 'decimal', '{"+": [{"var": "temp_f"}, {"*": [{"var": "humidity"}, 0.1]}]}', '{temp_f,humidity}', 2),
	('air-quality', 'aqi_band', 'string', '{"if": [{"<": [{"var": "pm25"}, 12]}, "good", {"<": [{"var": "pm25"}, 35]}, "moderate", "unhealthy"]}', '{pm25}', 1),
	('energy-meter', 'apparent_power_va', 'decimal', '{"*": [{"var": "voltage_v"}, {"var": "current_a"}]}', '{voltage_v,current_a}', 1),
	('energy-meter', 'power_factor', 'decimal', '{"/": [{"var": "power_w"}, {"var": "apparent_power_va"}]}', '{power_w,apparent_power_va}', 2)
) as d(kind, key, type, expr, deps, seq)
join device_types dt on dt.name = d.kind
join device_type_topics tt on tt.device_type_id = dt.id and tt.suffix = 'telemetry'
on conflict (device_type_topic_id, key) do nothing;
`

// Seed creates the demo fleet; it is safe to run on every start.
func Seed(ctx context.Context, pool *pgxpool.Pool) error {
	return pgx.BeginFunc(ctx, pool, func(tx pgx.Tx) error {
		if _, err := tx.Exec(ctx, seedSQL); err != nil {
			return fmt.Errorf("seed definitions: %w", err)
		}
		for _, d := range Devices {
			if _, err := tx.Exec(ctx, `insert into devices (organization_id, device_type_id, external_id, name, is_active)
				select dt.organization_id, dt.id, $1, $1, $2 from device_types dt where dt.name = $3
				and not exists (select 1 from devices where external_id = $1 and deleted_at is null)`,
				d.ExternalID, d.Active, d.Kind); err != nil {
				return fmt.Errorf("seed device %s: %w", d.ExternalID, err)
			}
		}
		return nil
	})
}
