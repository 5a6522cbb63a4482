package app

import (
	"encoding/json"
	"fmt"
	"log/slog"
	"os"
	"testing"
	"time"

	"github.com/google/uuid"
	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/credentials/insecure"

	gatewayv1 "github.com/telemesh/telemesh/gen/telemesh/gateway/v1"
	telemetryv1 "github.com/telemesh/telemesh/gen/telemesh/telemetry/v1"
	"github.com/telemesh/telemesh/internal/logging"
	"github.com/telemesh/telemesh/internal/testdb"
	"github.com/telemesh/telemesh/internal/testnats"
	"github.com/telemesh/telemesh/internal/testutil"
)

// fixture is a database seeded with the old system's example fleet, an
// in-process NATS server and a running mesh.
type fixture struct {
	t    testing.TB
	db   *testdb.DB
	ns   *testnats.Server
	nc   *nats.Conn
	js   jetstream.JetStream
	mesh *Mesh
	// logger is what the mesh's stages log to.
	logger *slog.Logger
	// gatewayCreds, if set, are what a client of the gateway's gRPC port
	// presents; nil is plaintext.
	gatewayCreds credentials.TransportCredentials

	acme, globex               uuid.UUID
	meter01, meter02, globex01 uuid.UUID
}

// testLogger keeps stage logs out of the test output unless asked for.
func testLogger(t testing.TB) *slog.Logger {
	if os.Getenv("TELEMESH_TEST_LOG") != "" {
		l, _ := logging.New(os.Stderr, "text", "debug")
		return l
	}
	return logging.Discard()
}

// on returns the fixture reporting to t, for use inside a subtest.
func (f *fixture) on(t testing.TB) *fixture {
	c := *f
	c.t = t
	return &c
}

// newFixture seeds a database and starts NATS and the mesh. tune adjusts
// every stage's options.
func newFixture(t testing.TB, tune func(*Options)) *fixture {
	t.Helper()
	return newFixtureLogging(t, tune, testLogger(t))
}

// newFixtureLogging is [newFixture] with the stages logging to logger.
func newFixtureLogging(t testing.TB, tune func(*Options), logger *slog.Logger) *fixture {
	t.Helper()
	f := &fixture{t: t, db: testdb.New(t), ns: testnats.New(t), logger: logger}
	f.seed()
	nc, err := nats.Connect(f.ns.URL())
	if err != nil {
		t.Fatalf("connect nats: %v", err)
	}
	t.Cleanup(nc.Close)
	f.nc = nc
	f.js, _ = jetstream.New(nc)
	f.start(tune)
	return f
}

func (f *fixture) start(tune func(*Options)) {
	f.t.Helper()
	m, err := StartMesh(f.t.Context(), MeshOptions{
		DatabaseURL: f.db.URL,
		NATSURL:     f.ns.URL(),
		Tune: func(o *Options) {
			o.Process.ShutdownGrace = 10 * time.Second
			o.Gateway.BatchAge = 2 * time.Millisecond
			o.Publisher.RetryEvery = 200 * time.Millisecond
			o.Publisher.RetryBase = 200 * time.Millisecond
			o.Publisher.RetryMax = time.Second
			if tune != nil {
				tune(o)
			}
		},
	}, f.logger)
	if err != nil {
		f.t.Fatalf("start mesh: %v", err)
	}
	f.mesh = m
	f.t.Cleanup(func() {
		if err := m.Stop(); err != nil {
			f.t.Errorf("stop mesh: %v", err)
		}
	})
	f.waitStream()
}

// waitStream waits for the stream the gateway creates in the background.
func (f *fixture) waitStream() {
	f.t.Helper()
	testutil.Eventually(f.t, meshWait, "stream TELEMETRY exists", func() error {
		_, err := f.js.Stream(f.t.Context(), "TELEMETRY")
		return err
	})
}

// The BEHAVIOUR.md fleet: temp_c with a +2 mutation and temp_f derived from
// it, humidity optional, feels_like needing humidity.
func (f *fixture) seed() {
	f.t.Helper()
	ctx := f.t.Context()
	f.acme, f.globex = uuid.New(), uuid.New()
	f.meter01, f.meter02, f.globex01 = uuid.New(), uuid.New(), uuid.New()
	exec := func(sql string, args ...any) {
		f.t.Helper()
		if _, err := f.db.Pool.Exec(ctx, sql, args...); err != nil {
			f.t.Fatalf("seed: %v\n%s", err, sql)
		}
	}
	exec(`insert into organizations (id, slug, name) values ($1, 'acme', 'Acme'), ($2, 'globex', 'Globex')`, f.acme, f.globex)
	for _, org := range []uuid.UUID{f.acme, f.globex} {
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
		if org == f.acme {
			exec(`insert into devices (id, organization_id, device_type_id, external_id, is_active) values
				($1, $3, $4, 'meter-01', true), ($2, $3, $4, 'meter-02', false)`, f.meter01, f.meter02, org, dt)
		} else {
			exec(`insert into devices (id, organization_id, device_type_id, external_id, is_active) values ($1, $2, $3, 'globex-01', true)`, f.globex01, org, dt)
		}
	}
}

// publish publishes a payload; msgID, when set, goes in the Nats-Msg-Id
// header.
func (f *fixture) publish(subject, payload, msgID string) {
	f.t.Helper()
	m := nats.NewMsg(subject)
	m.Data = []byte(payload)
	if msgID != "" {
		m.Header.Set("Nats-Msg-Id", msgID)
	}
	if _, err := f.js.PublishMsg(f.t.Context(), m); err != nil {
		f.t.Fatalf("publish %s: %v", subject, err)
	}
}

// meshWait bounds each wait on the mesh. It is generous because under -race,
// beside other packages' tests on two cores, a stage can stall for tens of
// seconds; a passing test never waits it out.
const meshWait = 2 * time.Minute

// waitCount waits until the query's count is want.
func (f *fixture) waitCount(want int, what, sql string, args ...any) {
	f.t.Helper()
	testutil.Eventually(f.t, meshWait, what, func() error {
		if n := f.count(sql, args...); n != want {
			return fmt.Errorf("%d, want %d", n, want)
		}
		return nil
	})
}

func (f *fixture) count(sql string, args ...any) int {
	f.t.Helper()
	var n int
	if err := f.db.Pool.QueryRow(f.t.Context(), sql, args...).Scan(&n); err != nil {
		f.t.Fatalf("count: %v\n%s", err, sql)
	}
	return n
}

// waitMessages waits until n ingestion messages match where.
func (f *fixture) waitMessages(n int, where string, args ...any) {
	f.t.Helper()
	f.waitCount(n, "messages where "+where, "select count(*) from ingestion_messages where "+where, args...)
}

// waitIdle waits until the consumer has nothing pending or unacknowledged.
func (f *fixture) waitIdle() {
	f.t.Helper()
	testutil.Eventually(f.t, meshWait, "consumer drained", func() error {
		c, err := f.js.Consumer(f.t.Context(), "TELEMETRY", "telemesh-gateway")
		if err != nil {
			return err
		}
		info, err := c.Info(f.t.Context())
		if err != nil {
			return err
		}
		if info.NumPending != 0 || info.NumAckPending != 0 {
			return fmt.Errorf("%d pending, %d unacknowledged", info.NumPending, info.NumAckPending)
		}
		return nil
	})
}

// analytics waits until the analytics stream holds at least want events on
// subject filter, then returns every event it holds there. It waits on the
// stream's own count, not on a pause between reads, which a busy machine
// stretches: the count says when everything is there to read.
func (f *fixture) analytics(filter string, want int) []map[string]any {
	f.t.Helper()
	ctx := f.t.Context()
	stored := 0
	testutil.Eventually(f.t, meshWait, fmt.Sprintf("%d analytics events on %s", want, filter), func() error {
		s, err := f.js.Stream(ctx, "TELEMESH_ANALYTICS")
		if err != nil {
			return err
		}
		info, err := s.Info(ctx, jetstream.WithSubjectFilter(filter))
		if err != nil {
			return err
		}
		stored = 0
		for _, n := range info.State.Subjects {
			stored += int(n)
		}
		if stored < want {
			return fmt.Errorf("%d stored", stored)
		}
		return nil
	})
	if stored == 0 {
		return nil
	}
	cons, err := f.js.OrderedConsumer(ctx, "TELEMESH_ANALYTICS", jetstream.OrderedConsumerConfig{FilterSubjects: []string{filter}})
	if err != nil {
		f.t.Fatalf("analytics consumer: %v", err)
	}
	var out []map[string]any
	testutil.Eventually(f.t, meshWait, fmt.Sprintf("read the %d analytics events on %s", stored, filter), func() error {
		batch, err := cons.Fetch(min(stored-len(out), 1000), jetstream.FetchMaxWait(5*time.Second))
		if err != nil {
			return err
		}
		for m := range batch.Messages() {
			var ev map[string]any
			if err := json.Unmarshal(m.Data(), &ev); err != nil {
				f.t.Fatalf("analytics event %q: %v", m.Data(), err)
			}
			ev["_subject"] = m.Subject()
			ev["_traceparent"] = m.Headers().Get("traceparent")
			out = append(out, ev)
		}
		if len(out) < stored {
			return fmt.Errorf("%d read (last fetch: %v)", len(out), batch.Error())
		}
		return nil
	})
	return out
}

// waitProcessed waits until the telemetry row of the message matching
// messageWhere is processed.
func (f *fixture) waitProcessed(messageWhere string, args ...any) {
	f.t.Helper()
	testutil.Eventually(f.t, meshWait, "row processed where "+messageWhere, func() error {
		if state := f.telemetryOf(messageWhere, args...).State; state != "processed" {
			return fmt.Errorf("row is %s", state)
		}
		return nil
	})
}

// row returns a telemetry row as JSON objects by column.
type telemetryRow struct {
	State       string
	Validation  string
	Mutated     map[string]any
	Transformed map[string]any
	Unresolved  map[string]any
	Errors      []map[string]any
	Reason      *string
}

func (f *fixture) telemetryOf(messageWhere string, args ...any) telemetryRow {
	f.t.Helper()
	var r telemetryRow
	var mutated, transformed, unresolved, errs []byte
	err := f.db.Pool.QueryRow(f.t.Context(), `select t.processing_state, t.validation_status, t.mutated_values,
			t.transformed_values, t.unresolved_values, t.validation_errors, t.failure_reason
		from device_telemetry_logs t join ingestion_messages m on m.id = t.ingestion_message_id
		where `+messageWhere, args...).Scan(&r.State, &r.Validation, &mutated, &transformed, &unresolved, &errs, &r.Reason)
	if err != nil {
		f.t.Fatalf("telemetry row where %s: %v", messageWhere, err)
	}
	_ = json.Unmarshal(mutated, &r.Mutated)
	_ = json.Unmarshal(transformed, &r.Transformed)
	_ = json.Unmarshal(unresolved, &r.Unresolved)
	_ = json.Unmarshal(errs, &r.Errors)
	return r
}

func (f *fixture) setSwitch(org *uuid.UUID, enabled bool) {
	f.t.Helper()
	if _, err := f.db.Pool.Exec(f.t.Context(), `insert into pipeline_switches (organization_id, pipeline_enabled) values ($1, $2)
		on conflict (organization_id) do update set pipeline_enabled = excluded.pipeline_enabled, updated_at = now()`, org, enabled); err != nil {
		f.t.Fatalf("set switch: %v", err)
	}
}

// waitGatewayPaused waits until the gateway's metrics say it has stopped
// pulling (paused) or pulls again: the global switch takes effect when the
// gateway next reads it, and on a busy machine that may be seconds.
func (f *fixture) waitGatewayPaused(paused bool) {
	f.t.Helper()
	want := 0.0
	if paused {
		want = 1
	}
	url := "http://" + f.mesh.Admin[Gateway] + "/metrics"
	testutil.Eventually(f.t, meshWait, fmt.Sprintf("telemesh_gateway_paused %v", want), func() error {
		v, err := testutil.Metric(f.t.Context(), url, "telemesh_gateway_paused")
		if err != nil {
			return err
		}
		if v != want {
			return fmt.Errorf("it is %v", v)
		}
		return nil
	})
}

// waitOrgSwitch waits until the gateway parks the device's messages (its
// organization's switch off) or lets them through (on).
func (f *fixture) waitOrgSwitch(device string, enabled bool) {
	f.t.Helper()
	testutil.Eventually(f.t, meshWait, fmt.Sprintf("the gateway sees %s's switch %v", device, enabled), func() error {
		st, err := f.dryRun(device)
		if err != nil {
			return err
		}
		if parked := st == telemetryv1.MessageStatus_MESSAGE_STATUS_PARKED; parked == enabled {
			return fmt.Errorf("dry run is %v", st)
		}
		return nil
	})
}

// dryRun asks the gateway what would become of a message of the device,
// without writing anything: it sees what the stages' catalogs see now.
func (f *fixture) dryRun(device string) (telemetryv1.MessageStatus, error) {
	creds := f.gatewayCreds
	if creds == nil {
		creds = insecure.NewCredentials()
	}
	conn, err := grpc.NewClient(f.mesh.GRPC[Gateway], grpc.WithTransportCredentials(creds))
	if err != nil {
		return 0, err
	}
	defer conn.Close()
	resp, err := gatewayv1.NewGatewayServiceClient(conn).Ingest(f.t.Context(), &gatewayv1.IngestRequest{
		Subject: "devices." + device + ".telemetry", Payload: []byte(`{"temp_c": 1}`), DryRun: true,
	})
	if err != nil {
		return 0, err
	}
	return resp.GetOutcome().GetStatus(), nil
}

func stageRows(pool *pgxpool.Pool, t testing.TB, dedupeLike string) map[string]int {
	t.Helper()
	// The rows of every delivery of the messages: completed rows carry no
	// dedupe key, and are found by the message ids the others lead to.
	rows, err := pool.Query(t.Context(), `select stage || ':' || status, count(*) from ingestion_stage_logs
		where message_id in (select id from ingestion_messages where dedupe_key like $1
			union select message_id from ingestion_stage_logs where dedupe_key like $1)
		group by 1`, dedupeLike)
	if err != nil {
		t.Fatal(err)
	}
	defer rows.Close()
	out := map[string]int{}
	for rows.Next() {
		var k string
		var n int
		if err := rows.Scan(&k, &n); err != nil {
			t.Fatal(err)
		}
		out[k] = n
	}
	return out
}
