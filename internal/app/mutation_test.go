package app

import (
	"encoding/json"
	"errors"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/google/uuid"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/telemesh/telemesh/internal/testdb"
	"github.com/telemesh/telemesh/internal/testnats"
	"github.com/telemesh/telemesh/internal/testutil"
)

// goRuntimeText are fragments of Go runtime messages that no recorded
// reason may contain.
var goRuntimeText = []string{"interface conversion", "runtime error", "interface {}", "panic", "goroutine"}

// TestFailedMutationIsRecorded runs definitions that bypassed the apply-time
// check (inserted in SQL) or pass it and fail on some values, through the
// whole mesh: each failed mutation is an evaluation error in the telemetry
// row, the mutate stage log and the message's reason, never the raw value
// passed on as if mutated.
func TestFailedMutationIsRecorded(t *testing.T) {
	f := &fixture{t: t, db: testdb.New(t), ns: testnats.New(t), logger: testLogger(t)}
	f.seed()
	cal := uuid.New()
	exec := func(sql string, args ...any) {
		t.Helper()
		if _, err := f.db.Pool.Exec(t.Context(), sql, args...); err != nil {
			t.Fatalf("seed: %v\n%s", err, sql)
		}
	}
	// Topic telemetry: temp_c reads a variable that does not exist (the
	// name the old system's docs used), humidity divides by zero at 50,
	// pressure is fine. Topic single has one parameter, whose mutation
	// fails, so nothing of the message is mutated.
	dt, telemetry, single := uuid.New(), uuid.New(), uuid.New()
	exec(`insert into device_types (id, organization_id, name, base_topic) values ($1, $2, 'calibrated', 'devices')`, dt, f.acme)
	exec(`insert into device_type_topics (id, device_type_id, suffix) values ($1, $3, 'telemetry'), ($2, $3, 'single')`, telemetry, single, dt)
	exec(`insert into parameter_definitions (device_type_topic_id, key, json_path, data_type, required, critical, validation_rules, mutation_expression, sequence) values
		($1, 'temp_c', '$.temp_c', 'decimal', false, false, '{}', '{"*":[{"var":"value"},1.02]}', 1),
		($1, 'humidity', '$.humidity', 'decimal', false, false, '{}', '{"/":[{"var":"val"},{"-":[{"var":"val"},50]}]}', 2),
		($1, 'pressure', '$.pressure', 'decimal', false, false, '{}', '{"+":[{"var":"val"},1]}', 3),
		($2, 'temp_c', '$.temp_c', 'decimal', true, false, '{}', '{"*":[{"var":"value"},1.02]}', 1)`, telemetry, single)
	exec(`insert into derived_parameter_definitions (device_type_topic_id, key, data_type, expression, dependencies, sequence) values
		($1, 'temp_f', 'decimal', '{"+": [{"*": [{"var": "temp_c"}, 1.8]}, 32]}', '{}', 1),
		($1, 'h2', 'decimal', '{"*": [{"var": "humidity"}, 2]}', '{}', 2),
		($1, 'p2', 'decimal', '{"*": [{"var": "pressure"}, 2]}', '{}', 3)`, telemetry)
	exec(`insert into devices (id, organization_id, device_type_id, external_id, is_active) values ($1, $2, $3, 'cal-01', true)`, cal, f.acme, dt)
	nc, err := nats.Connect(f.ns.URL())
	if err != nil {
		t.Fatalf("connect nats: %v", err)
	}
	t.Cleanup(nc.Close)
	f.nc = nc
	f.js, _ = jetstream.New(nc)
	f.start(func(o *Options) { o.Process.StageLogMode = "all" })

	f.publish("devices.cal-01.telemetry", `{"temp_c": 10, "humidity": 50, "pressure": 1000}`, "mutfail-1")
	f.publish("devices.cal-01.single", `{"temp_c": 10}`, "mutfail-single")
	f.publish("devices.cal-01.telemetry", `{"humidity": 60, "pressure": 1000}`, "mutfail-ok")
	f.waitIdle()
	for _, id := range []string{"mutfail-1", "mutfail-single", "mutfail-ok"} {
		testutil.Eventually(t, 15*time.Second, id+" persisted and published", func() error {
			if !(f.count(`select count(*) from device_telemetry_logs t join ingestion_messages m on m.id = t.ingestion_message_id
				where m.source_message_id = $1 and t.processing_state = 'processed'`, id) == 1) {
				return errors.New("not yet")
			}
			return nil
		})
	}

	// recorded collects every reason written for a message, to show that
	// none is a Go runtime message.
	recorded := func(t *testing.T, id string) []string {
		t.Helper()
		var out []string
		rows, err := f.db.Pool.Query(t.Context(), `select coalesce(m.error_summary, ''), coalesce(t.unresolved_values::text, ''),
				coalesce((select string_agg(coalesce(s.errors::text, ''), ' ') from ingestion_stage_logs s where s.message_id = m.id), '')
			from ingestion_messages m left join device_telemetry_logs t on t.ingestion_message_id = m.id where m.source_message_id = $1`, id)
		if err != nil {
			t.Fatal(err)
		}
		defer rows.Close()
		for rows.Next() {
			var a, b, c string
			if err := rows.Scan(&a, &b, &c); err != nil {
				t.Fatal(err)
			}
			out = append(out, a, b, c)
		}
		return out
	}
	noGoText := func(t *testing.T, id string) {
		t.Helper()
		for _, r := range recorded(t, id) {
			for _, bad := range goRuntimeText {
				if strings.Contains(r, bad) {
					t.Errorf("%s: recorded %q, which contains the Go text %q", id, r, bad)
				}
			}
		}
	}
	unresolved := func(t *testing.T, r telemetryRow, key string) map[string]any {
		t.Helper()
		u, ok := r.Unresolved[key].(map[string]any)
		if !ok {
			t.Errorf("unresolved_values = %v, want %s listed", r.Unresolved, key)
		}
		return u
	}

	t.Run("each failed mutation is an evaluation error, not a pass-through", func(t *testing.T) {
		f := f.on(t)
		r := f.telemetryOf("m.source_message_id = 'mutfail-1'")
		for _, k := range []string{"temp_c", "humidity"} {
			if v, ok := r.Mutated[k]; ok {
				t.Errorf("mutated_values[%s] = %v, want it left out: its mutation failed", k, v)
			}
			if v, ok := r.Transformed[k]; ok {
				t.Errorf("transformed_values[%s] = %v, want it left out: its mutation failed", k, v)
			}
		}
		near(t, "mutated pressure", r.Mutated["pressure"], 1001)
		near(t, "derived p2", r.Transformed["p2"], 2002)
		if u := unresolved(t, r, "temp_c"); u["reason"] != "evaluation_error" ||
			u["detail"] != `mutation {"*":[{"var":"value"},1.02]} reads "value", which is not defined` {
			t.Errorf("unresolved temp_c = %v, want evaluation_error naming the variable", u)
		}
		if u := unresolved(t, r, "humidity"); u["reason"] != "evaluation_error" || !strings.Contains(fmt.Sprint(u["detail"]), "division by zero") {
			t.Errorf("unresolved humidity = %v, want evaluation_error for the division by zero", u)
		}
		for dep, key := range map[string]string{"temp_c": "temp_f", "humidity": "h2"} {
			if u := unresolved(t, r, key); u["reason"] != "missing_input" || fmt.Sprint(u["missing_inputs"]) != "["+dep+"]" {
				t.Errorf("unresolved %s = %v, want missing_input %s", key, u, dep)
			}
		}
		noGoText(t, "mutfail-1")
	})

	t.Run("the mutate stage log and the message say so", func(t *testing.T) {
		f := f.on(t)
		var status, stageStatus, reason string
		var errs []byte
		if err := f.db.Pool.QueryRow(t.Context(), `select m.status, coalesce(m.error_summary, ''), s.status, s.errors
			from ingestion_messages m join ingestion_stage_logs s on s.message_id = m.id and s.stage = 'mutate'
			where m.source_message_id = 'mutfail-1'`).Scan(&status, &reason, &stageStatus, &errs); err != nil {
			t.Fatalf("mutate stage row: %v", err)
		}
		if stageStatus == "completed" {
			t.Errorf("mutate stage status = completed, want a failure")
		}
		want := `temp_c: mutation {"*":[{"var":"value"},1.02]} reads "value", which is not defined`
		if !strings.Contains(reason, want) || !strings.Contains(reason, "humidity: mutation") {
			t.Errorf("message %s, error_summary %q; want it to name both failed mutations, e.g. %q", status, reason, want)
		}
		var e struct {
			Reason     string                    `json:"reason"`
			Parameters map[string]map[string]any `json:"parameters"`
		}
		if err := json.Unmarshal(errs, &e); err != nil {
			t.Fatalf("mutate errors %s: %v", errs, err)
		}
		if !strings.Contains(e.Reason, want) || e.Parameters["temp_c"]["reason"] != "evaluation_error" || e.Parameters["humidity"]["reason"] != "evaluation_error" {
			t.Errorf("mutate stage errors = %s, want the reason and each parameter's evaluation error", errs)
		}
		if n := f.count(`select count(*) from ingestion_stage_logs s join ingestion_messages m on m.id = s.message_id
			where m.source_message_id = 'mutfail-1' and s.stage = 'derive' and s.status = 'unresolved'`); n != 1 {
			t.Errorf("%d unresolved derive rows, want 1", n)
		}
	})

	t.Run("a message whose only mutation failed stores no mutated value", func(t *testing.T) {
		f := f.on(t)
		r := f.telemetryOf("m.source_message_id = 'mutfail-single'")
		if len(r.Mutated) != 0 || len(r.Transformed) != 0 {
			t.Errorf("mutated %v, transformed %v; want both empty: the one mutation failed", r.Mutated, r.Transformed)
		}
		if u := unresolved(t, r, "temp_c"); u["reason"] != "evaluation_error" {
			t.Errorf("unresolved temp_c = %v, want evaluation_error", u)
		}
		events := f.analytics(fmt.Sprintf("iot.v1.analytics.local.acme.%s.single", cal), 1)
		if len(events) != 1 {
			t.Fatalf("%d analytics events, want 1", len(events))
		}
		if vals, _ := events[0]["values"].(map[string]any); len(vals) != 0 {
			t.Errorf("published values %v, want none: the one mutation failed", vals)
		}
		noGoText(t, "mutfail-single")
	})

	t.Run("values whose mutations succeed are untouched", func(t *testing.T) {
		f := f.on(t)
		r := f.telemetryOf("m.source_message_id = 'mutfail-ok'")
		near(t, "mutated humidity", r.Mutated["humidity"], 6)
		near(t, "derived h2", r.Transformed["h2"], 12)
		if _, ok := r.Unresolved["humidity"]; ok {
			t.Errorf("unresolved = %v, want humidity resolved", r.Unresolved)
		}
		if n := f.count(`select count(*) from ingestion_stage_logs s join ingestion_messages m on m.id = s.message_id
			where m.source_message_id = 'mutfail-ok' and s.stage = 'mutate' and s.status = 'completed'`); n != 1 {
			t.Errorf("%d completed mutate rows, want 1", n)
		}
	})
}
