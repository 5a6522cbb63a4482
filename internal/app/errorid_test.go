package app

import (
	"encoding/json"
	"strings"
	"testing"
	"time"

	"github.com/telemesh/telemesh/internal/buildinfo"
	"github.com/telemesh/telemesh/internal/logging"
)

// TestInternalErrorKeepsItsCause makes the persister fail inside (a trigger
// raises an error Postgres does not class as a refused row, standing in for
// any failure a stage cannot map to a code). The message is dead-lettered
// by the gateway with the error id in its reason and its stage row; the
// persister's log line under that id says what happened, while nothing of
// the cause reaches the callers or the dead-letter row.
func TestInternalErrorKeepsItsCause(t *testing.T) {
	logs := &syncBuffer{}
	logger, err := logging.New(logs, "json", "debug")
	if err != nil {
		t.Fatal(err)
	}
	f := newFixtureLogging(t, func(o *Options) {
		o.Gateway.BatchSize = 4
		o.Gateway.BatchAge = time.Second
	}, logger)
	if _, err := f.db.Pool.Exec(t.Context(), `
		create function boom() returns trigger language plpgsql as $$
		begin
			if new.raw_payload ? 'boom' then
				raise exception 'the boom row is not welcome';
			end if;
			return new;
		end $$;
		create trigger boom before insert on device_telemetry_logs for each row execute function boom()`); err != nil {
		t.Fatal(err)
	}
	f.publish("devices.meter-01.telemetry", `{"temp_c": 1}`, "calm-1")
	f.publish("devices.meter-01.telemetry", `{"temp_c": 1, "boom": true}`, "boom-1")
	f.publish("devices.meter-01.telemetry", `{"temp_c": 1}`, "calm-2")
	f.waitMessages(2, "source_message_id like 'calm-%' and status = 'completed'")
	f.waitMessages(1, "source_message_id = 'boom-1' and status = 'failed_terminal'")

	var summary, rowID string
	if err := f.db.Pool.QueryRow(t.Context(), `select m.error_summary, coalesce(s.errors->>'error_id', '')
		from ingestion_messages m join ingestion_stage_logs s on s.message_id = m.id and s.stage = 'ingress' and s.status = 'failed'
		where m.source_message_id = 'boom-1'`).Scan(&summary, &rowID); err != nil {
		t.Fatalf("dead letter of boom-1: %v", err)
	}
	if len(rowID) != 16 {
		t.Fatalf("stage row error_id = %q, want a 16-digit id (reason %q)", rowID, summary)
	}
	if !strings.Contains(summary, "error id "+rowID) {
		t.Errorf("dead-letter reason %q does not name error id %s", summary, rowID)
	}
	if strings.Contains(summary, "boom row") {
		t.Errorf("dead-letter reason %q carries the cause; callers get the error id only", summary)
	}

	// Every stage the failure crossed logs it under the same id; the
	// persister's line holds the cause.
	var persisterCause bool
	for _, line := range strings.Split(strings.TrimSpace(logs.String()), "\n") {
		var l map[string]any
		if json.Unmarshal([]byte(line), &l) != nil || l["error_id"] != rowID || l["msg"] != "finished call" {
			continue
		}
		if l["grpc.code"] != "Internal" {
			t.Errorf("line under error id %s has code %v, want Internal: %s", rowID, l["grpc.code"], line)
		}
		if l["stage"] == Persister && strings.Contains(l["grpc.error"].(string), "the boom row is not welcome") {
			persisterCause = true
		}
	}
	if !persisterCause {
		t.Errorf("no persister log line with error_id %s and the cause; log:\n%s", rowID, logs.String())
	}
}

// TestEveryStageShowsItsBuild checks every stage's /metrics carries the
// telemesh_build_info gauge with the build the process was given.
func TestEveryStageShowsItsBuild(t *testing.T) {
	f := newFixture(t, func(o *Options) {
		o.Build = buildinfo.Info{Version: "v0.0.0-test", Commit: "c0ffee"}
	})
	for _, stage := range Stages {
		series := `telemesh_build_info{commit="c0ffee",version="v0.0.0-test"}`
		if got, ok := scrape(t, f.mesh.Admin[stage])[series]; !ok || got != 1 {
			t.Errorf("%s: %s = %v (present %v), want 1", stage, series, got, ok)
		}
	}
}
