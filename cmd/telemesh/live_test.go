package main

import (
	"encoding/json"
	"reflect"

	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/telemesh/telemesh/internal/app"
	"github.com/telemesh/telemesh/services/publisher"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"

	gatewayv1 "github.com/telemesh/telemesh/gen/telemesh/gateway/v1"
	telemetryv1 "github.com/telemesh/telemesh/gen/telemesh/telemetry/v1"
	"github.com/telemesh/telemesh/internal/testutil"
)

// run runs the built binary against the live mesh and returns its stdout,
// stderr and exit code.
func (lm *liveMesh) run(t *testing.T, args ...string) (string, string, int) {
	t.Helper()
	return runBinary(t, lm.env, args...)
}

// mustRun runs the binary and fails the test unless it exits 0.
func (lm *liveMesh) mustRun(t *testing.T, args ...string) string {
	t.Helper()
	out, stderr, code := lm.run(t, args...)
	if code != 0 {
		t.Fatalf("telemesh %s: exit %d\nstdout:\n%s\nstderr:\n%s", strings.Join(args, " "), code, out, stderr)
	}
	return out
}

// count runs a count query on the mesh's database.
func (lm *liveMesh) count(t *testing.T, sql string, args ...any) int {
	t.Helper()
	var n int
	if err := lm.db.Pool.QueryRow(t.Context(), sql, args...).Scan(&n); err != nil {
		t.Fatalf("%s: %v", sql, err)
	}
	return n
}

// waitCount waits until the count query returns want.
func (lm *liveMesh) waitCount(t *testing.T, want int, sql string, args ...any) {
	t.Helper()
	testutil.Eventually(t, testWait, sql, func() error {
		if got := lm.count(t, sql, args...); got != want {
			return fmt.Errorf("%d, want %d", got, want)
		}
		return nil
	})
}

// waitGatewayPaused waits until the gateway's metrics say it stopped
// pulling: it sees the global switch when it next reads it, which on a busy
// machine may take a while.
func (lm *liveMesh) waitGatewayPaused(t *testing.T) {
	t.Helper()
	testutil.Eventually(t, testWait, "the gateway paused", func() error {
		v, err := testutil.Metric(t.Context(), "http://"+lm.mesh.Admin[app.Gateway]+"/metrics", "telemesh_gateway_paused")
		if err != nil {
			return err
		}
		if v != 1 {
			return fmt.Errorf("telemesh_gateway_paused %v", v)
		}
		return nil
	})
}

// waitDryRun waits until the gateway, asked with a dry run that writes
// nothing, says a message of the device would end with want: the stages
// follow catalog changes when they next read them.
func (lm *liveMesh) waitDryRun(t *testing.T, device string, want telemetryv1.MessageStatus) {
	t.Helper()
	conn, err := grpc.NewClient(lm.mesh.GRPC[app.Gateway], grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	client := gatewayv1.NewGatewayServiceClient(conn)
	testutil.Eventually(t, testWait, fmt.Sprintf("a dry run of %s is %v", device, want), func() error {
		resp, err := client.Ingest(t.Context(), &gatewayv1.IngestRequest{
			Subject: "devices." + device + ".telemetry", Payload: []byte(`{"temp_c": 20}`), DryRun: true,
		})
		if err != nil {
			return err
		}
		if got := resp.GetOutcome().GetStatus(); got != want {
			return fmt.Errorf("it is %v", got)
		}
		return nil
	})
}

const (
	countCompleted = `select count(*) from ingestion_messages where status = 'completed'`
	countProcessed = `select count(*) from device_telemetry_logs where processing_state = 'processed'`
	countPubFailed = `select count(*) from device_telemetry_logs where processing_state = 'publish_failed'`
)

// TestOperatorCommandsOnLiveMesh drives the operator's commands, through the
// built binary, against a whole mesh with the demo fleet: simulate feeds it,
// status and doctor read it, trace follows one message, flags pause and
// resume it, replay re-drives rows whose publish failed and a dead letter,
// devices deactivates and activates a device, and retention runs on it
// without touching recent data.
func TestOperatorCommandsOnLiveMesh(t *testing.T) {
	lm := startLiveMesh(t, func(o *app.Options) {
		// A failed publish waits for replay rather than for the retry
		// loop's backoff, so the test shows what replay does.
		o.Publisher.RetryEvery = 200 * time.Millisecond
		o.Publisher.RetryBase = time.Hour
		o.Publisher.RetryMax = time.Hour
		// A message the chain cannot take is dead-lettered after three
		// deliveries: a call waits for a stage that is down for
		// CallTimeout (wait for ready, so a rolling restart costs no
		// delivery), then it is NAKed. The timeout is still long enough
		// that a healthy chain on a busy machine never reaches it.
		o.Gateway.MaxDeliver = 3
		o.Gateway.Backoff = []time.Duration{50 * time.Millisecond}
		o.Gateway.CallTimeout = 10 * time.Second
		o.Gateway.AckWait = 30 * time.Second
	})
	natsURL := lm.nats.URL()

	out := lm.mustRun(t, "simulate", "--count", "40", "--rate", "0", "--nats-url", natsURL)
	if !strings.Contains(out, "40") {
		t.Errorf("simulate summary does not mention the 40 messages sent:\n%s", out)
	}
	lm.waitCount(t, 40, countCompleted)
	lm.waitCount(t, 40, countProcessed)

	t.Run("status", func(t *testing.T) {
		out := lm.mustRun(t, "status", "--json")
		var rep struct {
			Healthy    bool `json:"healthy"`
			Throughput []struct {
				Stage  string `json:"stage"`
				Status string `json:"status"`
				Count  int    `json:"count"`
			} `json:"throughput"`
			Stream struct {
				Messages uint64 `json:"messages"`
			} `json:"stream"`
		}
		if err := json.Unmarshal([]byte(out), &rep); err != nil {
			t.Fatalf("%v:\n%s", err, out)
		}
		completed := map[string]int{}
		for _, c := range rep.Throughput {
			if c.Status == "completed" {
				completed[c.Stage] += c.Count
			}
		}
		if !rep.Healthy || rep.Stream.Messages < 40 {
			t.Errorf("healthy %v, stream messages %d:\n%s", rep.Healthy, rep.Stream.Messages, out)
		}
		for _, stage := range []string{"ingress", "validate", "derive", "persist", "publish"} {
			if completed[stage] != 40 {
				t.Errorf("stage %s completed %d in the last minutes, want 40 (%v)", stage, completed[stage], completed)
			}
		}
	})

	t.Run("doctor healthy", func(t *testing.T) {
		out := lm.mustRun(t, "doctor", "--window", "300ms")
		if !strings.Contains(out, "verdict: healthy") {
			t.Errorf("doctor on a healthy mesh:\n%s", out)
		}
	})

	t.Run("doctor validator down", func(t *testing.T) {
		if err := lm.mesh.StopStage(app.Validator); err != nil {
			t.Fatal(err)
		}
		out, _, code := lm.run(t, "doctor", "--window", "300ms")
		if code != 4 || !strings.Contains(out, "verdict: stage validator unreachable") || !strings.Contains(out, "telemesh serve validator") {
			t.Errorf("doctor with the validator down: exit %d, want 4 naming the validator and the fix:\n%s", code, out)
		}
		if _, _, code := lm.run(t, "status"); code != 1 {
			t.Errorf("status with the validator down: exit %d, want 1", code)
		}
		if err := lm.mesh.StartStage(t.Context(), app.Validator); err != nil {
			t.Fatal(err)
		}
		lm.mustRun(t, "status")
	})

	t.Run("trace", func(t *testing.T) {
		var id string
		if err := lm.db.Pool.QueryRow(t.Context(),
			`select id::text from ingestion_messages where source_subject = 'devices.thermo-01.telemetry' and status = 'completed' limit 1`).Scan(&id); err != nil {
			t.Fatalf("a completed thermo-01 message: %v", err)
		}
		out := lm.mustRun(t, "trace", id)
		for _, want := range []string{id, "completed", "devices.thermo-01.telemetry", "state", "processed", "temp_f"} {
			if !strings.Contains(out, want) {
				t.Errorf("trace lacks %q:\n%s", want, out)
			}
		}
		var tr struct {
			StageLogs []struct {
				Stage  string `json:"stage"`
				Status string `json:"status"`
			} `json:"stage_logs"`
		}
		if err := json.Unmarshal([]byte(lm.mustRun(t, "trace", "--json", id)), &tr); err != nil {
			t.Fatal(err)
		}
		var stages []string
		for _, l := range tr.StageLogs {
			stages = append(stages, l.Stage+"="+l.Status)
		}
		for _, stage := range []string{"ingress", "validate", "derive", "persist", "publish"} {
			if !strings.Contains(strings.Join(stages, " "), stage+"=completed") {
				t.Errorf("trace stages %v lack %s=completed", stages, stage)
			}
		}
	})

	t.Run("flags pause and resume", func(t *testing.T) {
		lm.mustRun(t, "flags", "set", "pipeline.enabled", "off")
		if out := lm.mustRun(t, "flags", "get"); !strings.Contains(out, "off") {
			t.Errorf("flags get after switching off:\n%s", out)
		}
		before := lm.count(t, `select count(*) from ingestion_messages`)
		lm.waitGatewayPaused(t)
		lm.mustRun(t, "simulate", "--count", "20", "--rate", "0", "--seed", "2", "--nats-url", natsURL)
		// Nothing to wait for: two seconds in which a gateway that wrongly
		// still pulled would store some.
		time.Sleep(2 * time.Second)
		if got := lm.count(t, `select count(*) from ingestion_messages`); got != before {
			t.Fatalf("%d messages taken while the pipeline is off, want 0", got-before)
		}
		cons, err := lm.js.Consumer(t.Context(), "TELEMETRY", "telemesh-gateway")
		if err != nil {
			t.Fatal(err)
		}
		info, err := cons.Info(t.Context())
		if err != nil {
			t.Fatal(err)
		}
		if info.NumPending != 20 {
			t.Errorf("consumer pending %d while paused, want the 20 kept in the stream", info.NumPending)
		}
		lm.mustRun(t, "flags", "set", "pipeline.enabled", "on")
		lm.waitCount(t, 60, countCompleted)
		lm.waitCount(t, 60, countProcessed)
	})

	t.Run("replay publish-failed", func(t *testing.T) {
		ctx := t.Context()
		published := lm.deviceStates(t)
		if err := lm.js.DeleteKeyValue(ctx, "device-states"); err != nil {
			t.Fatalf("delete KV bucket: %v", err)
		}
		lm.mustRun(t, "simulate", "--count", "5", "--rate", "0", "--seed", "3", "--nats-url", natsURL)
		lm.waitCount(t, 5, countPubFailed)

		out, _, code := lm.run(t, "doctor", "--window", "300ms")
		if code != 5 || !strings.Contains(out, "publish") {
			t.Errorf("doctor with the KV bucket gone: exit %d, want 5:\n%s", code, out)
		}

		// The fix names the command that recreates the bucket and refills it
		// from Postgres: run it as printed.
		lm.mustRun(t, fixCommand(t, out, "telemesh replay kv-rebuild")...)
		// Every device has back the state the publisher had written, quiet
		// ones included: the 5 new rows are publish_failed, not yet
		// processed.
		rebuilt := lm.deviceStates(t)
		if len(rebuilt) == 0 || len(rebuilt) != len(published) {
			t.Errorf("%d device states rebuilt, want the %d the publisher had written", len(rebuilt), len(published))
		}
		for device, want := range published {
			if got, ok := rebuilt[device]; !ok || !reflect.DeepEqual(got, want) {
				t.Errorf("device %s rebuilt as\n%+v\nwant what the publisher wrote\n%+v", device, got, want)
			}
		}
		out = lm.mustRun(t, "replay", "publish-failed", "--dry-run")
		if !strings.HasPrefix(out, "5 publish_failed telemetry row(s) match") {
			t.Errorf("dry run:\n%s", out)
		}
		// The retry backoff is an hour: nothing moves without replay. Nothing
		// to wait for: a second in which a wrong retry would show.
		time.Sleep(time.Second)
		if n := lm.count(t, countPubFailed); n != 5 {
			t.Fatalf("%d publish_failed rows after the dry run, want 5 untouched", n)
		}
		out = lm.mustRun(t, "replay", "publish-failed")
		if !strings.Contains(out, "made 5 row(s) due now") {
			t.Errorf("replay:\n%s", out)
		}
		lm.waitCount(t, 0, countPubFailed)
		lm.waitCount(t, 65, countProcessed)
	})

	t.Run("devices deactivate and activate", func(t *testing.T) {
		out := lm.mustRun(t, "devices", "deactivate", "thermo-01")
		if !strings.Contains(out, "thermo-01") {
			t.Errorf("deactivate:\n%s", out)
		}
		if out := lm.mustRun(t, "devices", "list"); !strings.Contains(out, "thermo-01") {
			t.Errorf("devices list lacks thermo-01:\n%s", out)
		}
		publish := func(id string) {
			t.Helper()
			if _, err := lm.js.Publish(t.Context(), "devices.thermo-01.telemetry",
				[]byte(`{"message_id": "`+id+`", "temp_c": 20}`)); err != nil {
				t.Fatal(err)
			}
		}
		lm.waitDryRun(t, "thermo-01", telemetryv1.MessageStatus_MESSAGE_STATUS_INACTIVE_SKIPPED)
		publish("live-inactive")
		lm.waitCount(t, 1, `select count(*) from ingestion_messages
			where source_message_id = 'live-inactive' and status = 'inactive_skipped'`)
		lm.mustRun(t, "devices", "activate", "thermo-01")
		lm.waitDryRun(t, "thermo-01", telemetryv1.MessageStatus_MESSAGE_STATUS_COMPLETED)
		publish("live-active")
		lm.waitCount(t, 1, `select count(*) from ingestion_messages
			where source_message_id = 'live-active' and status = 'completed'`)
	})

	t.Run("replay dead-lettered", func(t *testing.T) {
		if err := lm.mesh.StopStage(app.Validator); err != nil {
			t.Fatal(err)
		}
		if _, err := lm.js.Publish(t.Context(), "devices.thermo-02.telemetry", []byte(`{"message_id": "live-dl", "temp_c": 19}`)); err != nil {
			t.Fatal(err)
		}
		lm.waitCount(t, 1, `select count(*) from ingestion_messages
			where source_message_id = 'live-dl' and status = 'failed_terminal' and raw_payload is not null`)
		if err := lm.mesh.StartStage(t.Context(), app.Validator); err != nil {
			t.Fatal(err)
		}
		out := lm.mustRun(t, "replay", "dead-lettered", "--device", "thermo-02", "--dry-run")
		if !strings.HasPrefix(out, "1 dead letter(s) match") {
			t.Fatalf("dry run:\n%s", out)
		}
		out = lm.mustRun(t, "replay", "dead-lettered", "--device", "thermo-02", "--nats-url", natsURL)
		if !strings.Contains(out, "replayed 1 dead letter(s)") {
			t.Errorf("replay:\n%s", out)
		}
		// The replayed payload goes through the chain again as a new message
		// (its Nats-Msg-Id is replay-<dead letter id>) and completes.
		lm.waitCount(t, 1, `select count(*) from device_telemetry_logs t
			join ingestion_messages m on m.id = t.ingestion_message_id
			join ingestion_messages dl on m.source_message_id = 'replay-' || dl.id::text
			where dl.source_message_id = 'live-dl' and m.status = 'completed' and t.processing_state = 'processed'`)
		if out := lm.mustRun(t, "replay", "dead-lettered", "--device", "thermo-02"); !strings.HasPrefix(out, "0 dead letter(s) match") {
			t.Errorf("a second replay finds the dead letter again:\n%s", out)
		}
	})

	t.Run("retention", func(t *testing.T) {
		out := lm.mustRun(t, "retention", "--json")
		if !json.Valid([]byte(out)) {
			t.Errorf("retention --json is not JSON:\n%s", out)
		}
		if n := lm.count(t, `select count(*) from device_telemetry_logs`); n != 68 {
			t.Errorf("%d telemetry rows after retention, want the 68 recent ones kept (65 simulated, the inactive, active and replayed ones)", n)
		}
		// Safe to run again, as from cron.
		lm.mustRun(t, "retention")
	})
}

// fixCommand returns the arguments of the command starting with prefix in
// the fix doctor printed in out, up to the next semicolon, without the
// leading "telemesh".
func fixCommand(t *testing.T, out, prefix string) []string {
	t.Helper()
	_, fix, ok := strings.Cut(out, "\nfix: ")
	_, cmd, found := strings.Cut(fix, prefix)
	if !ok || !found {
		t.Fatalf("doctor printed no %q in its fix:\n%s", prefix, out)
	}
	cmd, _, _ = strings.Cut(prefix+cmd, ";")
	cmd, _, _ = strings.Cut(cmd, "\n")
	return strings.Fields(cmd)[1:]
}

// deviceStates reads every entry of the device-states bucket, with the
// time of the write left out and recorded times at Postgres's microsecond
// precision, so states written by the publisher and rebuilt from the rows
// compare equal.
func (lm *liveMesh) deviceStates(t *testing.T) map[string]publisher.DeviceState {
	t.Helper()
	kv, err := lm.js.KeyValue(t.Context(), "device-states")
	if err != nil {
		t.Fatalf("KV bucket: %v", err)
	}
	keys, err := kv.ListKeys(t.Context())
	if err != nil {
		t.Fatal(err)
	}
	out := map[string]publisher.DeviceState{}
	for key := range keys.Keys() {
		e, err := kv.Get(t.Context(), key)
		if err != nil {
			t.Fatalf("entry %s: %v", key, err)
		}
		var s publisher.DeviceState
		if err := json.Unmarshal(e.Value(), &s); err != nil {
			t.Fatalf("entry %s: %v", key, err)
		}
		s.UpdatedAt = time.Time{}
		for topic, ts := range s.Topics {
			ts.RecordedAt = ts.RecordedAt.Truncate(time.Microsecond)
			// The same values, however spaced and ordered: the publisher
			// writes them as the deriver encoded them, a rebuild as
			// Postgres prints them.
			var v any
			if err := json.Unmarshal(ts.Values, &v); err != nil {
				t.Fatalf("entry %s, topic %s: values %s: %v", key, topic, ts.Values, err)
			}
			ts.Values, _ = json.Marshal(v)
			s.Topics[topic] = ts
		}
		out[key] = s
	}
	return out
}
