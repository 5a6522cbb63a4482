package bench_test

import (
	"context"
	"fmt"
	"testing"

	"github.com/google/uuid"
	"github.com/jackc/pgx/v5/pgxpool"
)

// devicesPerOrg is how many devices each of the fleet's two organizations
// has: forty in all, as a small fleet would be.
const devicesPerOrg = 20

// fleet is the devices the harness publishes for: thermometers with
// seed/BEHAVIOUR.md's parameters (temp_c with a +2 mutation and temp_f
// derived from it, humidity optional, status an enum, feels_like needing
// humidity), in two organizations.
type fleet struct {
	orgs    [2]uuid.UUID
	devices []device
}

// device is one device of the fleet.
type device struct {
	id, org  uuid.UUID
	external string
	subject  string
}

// seedFleet writes the fleet into the database behind pool.
func seedFleet(tb testing.TB, pool *pgxpool.Pool) *fleet {
	tb.Helper()
	ctx := context.Background()
	exec := func(sql string, args ...any) {
		tb.Helper()
		if _, err := pool.Exec(ctx, sql, args...); err != nil {
			tb.Fatalf("seed the bench fleet: %v\n%s", err, sql)
		}
	}
	f := &fleet{orgs: [2]uuid.UUID{uuid.New(), uuid.New()}}
	exec(`insert into organizations (id, slug, name) values ($1, 'bench-a', 'Bench A'), ($2, 'bench-b', 'Bench B')`, f.orgs[0], f.orgs[1])
	for o, org := range f.orgs {
		dt, topic := uuid.New(), uuid.New()
		exec(`insert into device_types (id, organization_id, name, base_topic) values ($1, $2, 'thermometer', 'devices')`, dt, org)
		exec(`insert into device_type_topics (id, device_type_id, suffix) values ($1, $2, 'telemetry')`, topic, dt)
		exec(`insert into parameter_definitions (device_type_topic_id, key, json_path, data_type, required, critical, validation_rules, mutation_expression, sequence) values
			($1, 'temp_c', '$.temp_c', 'decimal', true, true, '{"min": -50, "max": 150}', '{"+": [{"var": "val"}, 2]}', 1),
			($1, 'humidity', '$.humidity', 'decimal', false, false, '{"min": 0, "max": 100}', null, 2),
			($1, 'status', '$.status', 'string', false, false, '{"enum": ["ok", "warn"]}', null, 3)`, topic)
		exec(`insert into derived_parameter_definitions (device_type_topic_id, key, data_type, expression, dependencies, sequence) values
			($1, 'temp_f', 'decimal', '{"+": [{"*": [{"var": "temp_c"}, 1.8]}, 32]}', '{temp_c}', 1),
			($1, 'feels_like', 'decimal', '{"+": [{"var": "temp_f"}, {"*": [{"var": "humidity"}, 0.1]}]}', '{}', 2)`, topic)
		for i := range devicesPerOrg {
			d := device{id: uuid.New(), org: org, external: fmt.Sprintf("bench-%c-%02d", 'a'+o, i)}
			d.subject = "devices." + d.external + ".telemetry"
			exec(`insert into devices (id, organization_id, device_type_id, external_id, is_active) values ($1, $2, $3, $4, true)`,
				d.id, org, dt, d.external)
			f.devices = append(f.devices, d)
		}
	}
	return f
}

// message is the i-th message of a run whose message ids start with
// prefix: the device it comes from and its payload, valid for that device.
type message struct {
	device   *device
	id       string
	temp     int
	humidity int
	body     []byte
}

func (f *fleet) message(prefix string, i int) message {
	m := message{device: &f.devices[i%len(f.devices)], id: fmt.Sprintf("%s-%d", prefix, i), temp: i % 100, humidity: i % 90}
	m.body = fmt.Appendf(nil, `{"message_id": %q, "temp_c": %d, "humidity": %d, "status": "ok"}`, m.id, m.temp, m.humidity)
	return m
}
