package app

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"math"
	"strings"
	"testing"
	"time"

	"github.com/google/uuid"
	"github.com/nats-io/nats.go/jetstream"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/protobuf/types/known/timestamppb"

	gatewayv1 "github.com/telemesh/telemesh/gen/telemesh/gateway/v1"
	telemetryv1 "github.com/telemesh/telemesh/gen/telemesh/telemetry/v1"
	validatorv1 "github.com/telemesh/telemesh/gen/telemesh/validator/v1"
	"github.com/telemesh/telemesh/internal/envelope"
	"github.com/telemesh/telemesh/internal/value"

	"github.com/telemesh/telemesh/internal/testutil"
)

func near(t *testing.T, what string, got any, want float64) {
	t.Helper()
	g, ok := got.(float64)
	if !ok || math.Abs(g-want) > 1e-9 {
		t.Errorf("%s = %v, want %v", what, got, want)
	}
}

// The old system's behaviours 1-5 and 8-9 on one mesh.
func TestPipelineBehaviour(t *testing.T) {
	f := newFixture(t, nil)

	t.Run("1 valid message is completed, mutated, derived and published once", func(t *testing.T) {
		f := f.on(t)
		f.publish("devices.meter-01.telemetry", `{"temp_c": 10, "humidity": 50}`, "valid-1")
		f.waitMessages(1, "source_message_id = 'valid-1' and status = 'completed'")
		f.waitProcessed("m.source_message_id = 'valid-1'")
		r := f.telemetryOf("m.source_message_id = 'valid-1'")
		near(t, "mutated temp_c", r.Mutated["temp_c"], 12)
		near(t, "transformed temp_c", r.Transformed["temp_c"], 12)
		near(t, "derived temp_f", r.Transformed["temp_f"], 53.6)
		near(t, "derived feels_like", r.Transformed["feels_like"], 58.6)
		if r.Validation != "valid" || len(r.Unresolved) != 0 {
			t.Errorf("validation %s, unresolved %v", r.Validation, r.Unresolved)
		}
		events := f.analytics(fmt.Sprintf("iot.v1.analytics.local.acme.%s.telemetry", f.meter01), 1)
		if len(events) != 1 {
			t.Fatalf("%d analytics events, want 1", len(events))
		}
		kv, _ := f.js.KeyValue(t.Context(), "device-states")
		entry, err := kv.Get(t.Context(), f.meter01.String())
		if err != nil {
			t.Fatalf("device state: %v", err)
		}
		var state struct {
			Topics map[string]struct{ Values map[string]any } `json:"topics"`
		}
		_ = json.Unmarshal(entry.Value(), &state)
		near(t, "kv temp_f", state.Topics["telemetry"].Values["temp_f"], 53.6)
	})

	t.Run("2 validation halt keeps the row invalid with reasons and no mutation", func(t *testing.T) {
		f := f.on(t)
		f.publish("devices.meter-01.telemetry", `{"humidity": 50}`, "invalid-1")
		f.waitMessages(1, "source_message_id = 'invalid-1' and status = 'failed_validation'")
		r := f.telemetryOf("m.source_message_id = 'invalid-1'")
		if r.State != "invalid" || r.Validation != "invalid" {
			t.Errorf("state %s validation %s, want invalid", r.State, r.Validation)
		}
		if len(r.Mutated) != 0 {
			t.Errorf("mutated = %v, want none", r.Mutated)
		}
		if len(r.Errors) != 1 || r.Errors[0]["parameter"] != "temp_c" || r.Errors[0]["code"] != "required" || r.Errors[0]["critical"] != true {
			t.Errorf("validation errors = %v, want temp_c required critical", r.Errors)
		}
		if n := f.count(`select count(*) from ingestion_messages where source_message_id = 'invalid-1' and error_summary like '%temp_c: required%'`); n != 1 {
			t.Errorf("error summary does not name temp_c")
		}
		if n := len(f.analytics("iot.v1.invalid.local.acme.required", 1)); n != 1 {
			t.Errorf("%d invalid events, want 1", n)
		}
	})

	t.Run("3 inactive device is skipped, kept, not derived, not published", func(t *testing.T) {
		f := f.on(t)
		f.publish("devices.meter-02.telemetry", `{"temp_c": 10}`, "inactive-1")
		f.waitMessages(1, "source_message_id = 'inactive-1' and status = 'inactive_skipped'")
		r := f.telemetryOf("m.source_message_id = 'inactive-1'")
		if r.State != "inactive_skipped" {
			t.Errorf("state = %s", r.State)
		}
		if _, ok := r.Transformed["temp_f"]; ok {
			t.Errorf("inactive message was derived: %v", r.Transformed)
		}
		if n := len(f.analytics(fmt.Sprintf("iot.v1.analytics.local.acme.%s.>", f.meter02), 0)); n != 0 {
			t.Errorf("%d analytics events for an inactive device", n)
		}
	})

	t.Run("4 the same message id twice is one message, one row, one publish", func(t *testing.T) {
		f := f.on(t)
		// The id is in the payload, not the header, so NATS's own window
		// does not drop the second copy: telemesh's key must.
		for range 2 {
			f.publish("devices.meter-01.telemetry", `{"message_id": "dup-1", "temp_c": 20}`, "")
		}
		f.waitIdle()
		if n := f.count(`select count(*) from ingestion_messages where source_message_id = 'dup-1'`); n != 1 {
			t.Errorf("%d message rows, want 1", n)
		}
		if n := f.count(`select count(*) from device_telemetry_logs t join ingestion_messages m on m.id = t.ingestion_message_id where m.source_message_id = 'dup-1'`); n != 1 {
			t.Errorf("%d telemetry rows, want 1", n)
		}
		if n := f.count(`select count(*) from ingestion_messages where source_message_id = 'dup-1' and status = 'completed'`); n != 1 {
			t.Errorf("original's status changed")
		}
		rows := stageRows(f.db.Pool, t, "id:devices.meter-01.telemetry:dup-1")
		if rows["validate:duplicate"]+rows["persist:duplicate"] != 1 {
			t.Errorf("stage rows = %v, want the second attempt reported duplicate", rows)
		}
		// Other subtests publish on the same subject: wait for dup-1's
		// event among theirs, then count them all.
		n := 0
		testutil.Eventually(t, meshWait, "dup-1 published", func() error {
			n = 0
			for _, e := range f.analytics(fmt.Sprintf("iot.v1.analytics.local.acme.%s.telemetry", f.meter01), 0) {
				if vals, ok := e["values"].(map[string]any); ok && vals["temp_c"] == 22.0 {
					n++
				}
			}
			if n == 0 {
				return errors.New("no event of dup-1 yet")
			}
			return nil
		})
		if n != 1 {
			t.Errorf("%d publishes of dup-1, want 1", n)
		}
	})

	t.Run("5 the same payload without an id twice is two messages", func(t *testing.T) {
		f := f.on(t)
		before := f.count(`select count(*) from ingestion_messages where status = 'completed'`)
		for range 2 {
			f.publish("devices.meter-01.telemetry", `{"temp_c": 33}`, "")
		}
		f.waitMessages(before+2, "status = 'completed'")
	})

	t.Run("9 a missing input leaves that value unresolved and keeps the rest", func(t *testing.T) {
		f := f.on(t)
		f.publish("devices.meter-01.telemetry", `{"temp_c": 10}`, "missing-1")
		f.waitMessages(1, "source_message_id = 'missing-1' and status = 'completed'")
		r := f.telemetryOf("m.source_message_id = 'missing-1'")
		near(t, "temp_f", r.Transformed["temp_f"], 53.6)
		u, ok := r.Unresolved["feels_like"].(map[string]any)
		if !ok || u["reason"] != "missing_input" || !strings.Contains(fmt.Sprint(u["missing_inputs"]), "humidity") {
			t.Errorf("unresolved = %v, want feels_like missing humidity", r.Unresolved)
		}
		rows := stageRows(f.db.Pool, t, "id:devices.meter-01.telemetry:missing-1")
		if rows["derive:unresolved"] != 1 {
			t.Errorf("stage rows = %v, want derive unresolved", rows)
		}
	})

	t.Run("unknown topic and invalid JSON are failed_terminal with the raw bytes kept", func(t *testing.T) {
		f := f.on(t)
		f.publish("devices.meter-01.nosuchtopic", `{"temp_c": 1}`, "unknown-topic-1")
		f.publish("devices.meter-01.telemetry", `{"temp_c": 1,`, "bad-json-1")
		f.waitMessages(1, "source_message_id = 'unknown-topic-1' and status = 'failed_terminal' and error_summary like '%unknown topic%' and raw_payload = $1", []byte(`{"temp_c": 1}`))
		f.waitMessages(1, "source_message_id = 'bad-json-1' and status = 'failed_terminal' and error_summary like '%not a JSON object%' and raw_payload = $1", []byte(`{"temp_c": 1,`))
	})

	t.Run("KV never goes backwards", func(t *testing.T) {
		f := f.on(t)
		now := time.Now().UTC()
		f.publish("devices.globex-01.telemetry", fmt.Sprintf(`{"temp_c": 30, "recorded_at": %q}`, now.Format(time.RFC3339Nano)), "order-new")
		f.waitMessages(1, "source_message_id = 'order-new' and status = 'completed'")
		f.publish("devices.globex-01.telemetry", fmt.Sprintf(`{"temp_c": 5, "recorded_at": %q}`, now.Add(-time.Hour).Format(time.RFC3339Nano)), "order-old")
		f.waitMessages(1, "source_message_id = 'order-old' and status = 'completed'")
		f.waitProcessed("m.source_message_id = 'order-old'")
		kv, _ := f.js.KeyValue(t.Context(), "device-states")
		entry, err := kv.Get(t.Context(), f.globex01.String())
		if err != nil {
			t.Fatal(err)
		}
		var state struct {
			Topics map[string]struct{ Values map[string]any } `json:"topics"`
		}
		_ = json.Unmarshal(entry.Value(), &state)
		near(t, "kv temp_c", state.Topics["telemetry"].Values["temp_c"], 32)
	})
}

func TestStageLogModes(t *testing.T) {
	tests := []struct {
		mode     string
		rate     float64
		wantRows int
	}{
		{mode: "failures", rate: 0, wantRows: 0},
		{mode: "all", rate: 0, wantRows: 6},
		{mode: "sampled", rate: 1, wantRows: 6},
	}
	for _, tt := range tests {
		t.Run(tt.mode, func(t *testing.T) {
			f := newFixture(t, func(o *Options) {
				o.Process.StageLogMode = tt.mode
				o.Process.StageLogSampleRate = tt.rate
			})
			f.publish("devices.meter-01.telemetry", `{"temp_c": 10, "humidity": 1}`, "clean-1")
			f.waitMessages(1, "source_message_id = 'clean-1' and status = 'completed'")
			f.waitProcessed("m.source_message_id = 'clean-1'")
			// Acknowledged is finished: every stage row that will be
			// written has been.
			f.waitIdle()
			rows := stageRows(f.db.Pool, t, "%clean-1")
			total := 0
			for _, n := range rows {
				total += n
			}
			if total != tt.wantRows {
				t.Fatalf("%d stage rows %v, want %d", total, rows, tt.wantRows)
			}
			if tt.wantRows == 6 {
				for _, s := range []string{"ingress", "validate", "mutate", "derive", "persist", "publish"} {
					if rows[s+":completed"] != 1 {
						t.Errorf("no completed %s row: %v", s, rows)
					}
				}
			}
		})
	}
}

func TestKillSwitch(t *testing.T) {
	f := newFixture(t, nil)
	t.Run("6 global switch off processes nothing and keeps the backlog; on drains it", func(t *testing.T) {
		f := f.on(t)
		f.setSwitch(nil, false)
		f.waitGatewayPaused(true)
		for i := range 50 {
			f.publish("devices.meter-01.telemetry", `{"temp_c": 10}`, fmt.Sprintf("paused-%d", i))
		}
		// Nothing to wait for: a second in which a gateway that wrongly
		// still pulled would store some.
		time.Sleep(time.Second)
		if n := f.count(`select count(*) from ingestion_messages where source_message_id like 'paused-%'`); n != 0 {
			t.Fatalf("%d messages processed while paused", n)
		}
		c, _ := f.js.Consumer(t.Context(), "TELEMETRY", "telemesh-gateway")
		info, _ := c.Info(t.Context())
		if info.NumPending+uint64(info.NumAckPending) < 50 {
			t.Fatalf("backlog %d pending + %d unacked, want 50 kept in the stream", info.NumPending, info.NumAckPending)
		}
		f.setSwitch(nil, true)
		f.waitMessages(50, "source_message_id like 'paused-%' and status = 'completed'")
	})
	t.Run("per-organization switch parks and resumes without loss", func(t *testing.T) {
		f := f.on(t)
		f.setSwitch(&f.globex, false)
		f.waitOrgSwitch("globex-01", false)
		for i := range 20 {
			f.publish("devices.globex-01.telemetry", `{"temp_c": 10}`, fmt.Sprintf("parked-%d", i))
		}
		f.publish("devices.meter-01.telemetry", `{"temp_c": 10}`, "acme-while-globex-parked")
		f.waitMessages(20, "source_message_id like 'parked-%' and status = 'parked'")
		f.waitMessages(1, "source_message_id = 'acme-while-globex-parked' and status = 'completed'")
		f.setSwitch(&f.globex, true)
		f.waitMessages(20, "source_message_id like 'parked-%' and status = 'completed'")
		f.waitCount(20, "20 parked rows processed", `select count(*) from device_telemetry_logs t join ingestion_messages m on m.id = t.ingestion_message_id where m.source_message_id like 'parked-%' and t.processing_state = 'processed'`)
	})
}

func TestPublishFailureIsRetried(t *testing.T) {
	f := newFixture(t, nil)
	// 7: the KV bucket disappears: the rows stay, publish_failed with the
	// reason, and are processed once it is back, with one event each.
	if err := f.js.DeleteKeyValue(t.Context(), "device-states"); err != nil {
		t.Fatal(err)
	}
	for i := range 5 {
		f.publish("devices.meter-01.telemetry", `{"temp_c": 10}`, fmt.Sprintf("kvdown-%d", i))
	}
	f.waitMessages(5, "source_message_id like 'kvdown-%' and status = 'completed'")
	f.waitCount(5, "rows publish_failed with a reason", `select count(*) from device_telemetry_logs t join ingestion_messages m on m.id = t.ingestion_message_id
			where m.source_message_id like 'kvdown-%' and t.processing_state = 'publish_failed' and t.failure_reason = 'KV bucket "device-states" does not exist'`)
	if n := f.count(`select count(*) from ingestion_stage_logs where stage = 'publish' and status = 'failed' and dedupe_key like '%kvdown-%' and errors->>'reason' <> ''`); n < 5 {
		t.Errorf("%d failed publish stage rows with a reason, want 5", n)
	}
	if _, err := f.js.CreateKeyValue(t.Context(), jetstream.KeyValueConfig{Bucket: "device-states", History: 1}); err != nil {
		t.Fatal(err)
	}
	f.waitCount(5, "rows processed by the retry loop", `select count(*) from device_telemetry_logs t join ingestion_messages m on m.id = t.ingestion_message_id
			where m.source_message_id like 'kvdown-%' and t.processing_state = 'processed'`)
	events := f.analytics(fmt.Sprintf("iot.v1.analytics.local.acme.%s.telemetry", f.meter01), 5)
	if len(events) != 5 {
		t.Errorf("%d analytics events, want exactly 5", len(events))
	}
}

func TestRedeliveryAndResume(t *testing.T) {
	f := newFixture(t, nil)
	conn, err := grpc.NewClient(f.mesh.GRPC[Validator], grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	validator := validatorv1.NewValidatorServiceClient(conn)
	newEnvelope := func(key string, attempt uint32) *telemetryv1.Envelope {
		return &telemetryv1.Envelope{
			MessageId: uuid.Must(uuid.NewV7()).String(), DedupeKey: key, SourceSubject: "devices.meter-01.telemetry",
			OrganizationId: f.acme.String(), OrganizationSlug: "acme", DeviceUuid: f.meter01.String(), DeviceExternalId: "meter-01",
			DeviceActive: true, Topic: "telemetry", TopicId: f.topicID(), StreamSequence: 42, DeliveryAttempt: attempt,
			ReceivedAt: timestamppb.Now(), Payload: []byte(`{"temp_c": 1}`), ContentType: "application/json",
			Status: telemetryv1.MessageStatus_MESSAGE_STATUS_PROCESSING,
		}
	}

	t.Run("a redelivery after persist (crash before ack) is a duplicate and publishes once", func(t *testing.T) {
		f := f.on(t)
		first, err := validator.Validate(t.Context(), &validatorv1.ValidateRequest{WireVersion: envelope.WireVersion, Envelopes: []*telemetryv1.Envelope{newEnvelope("seq:test@1:42", 1)}})
		if err != nil || first.GetOutcomes()[0].GetStatus() != telemetryv1.MessageStatus_MESSAGE_STATUS_COMPLETED {
			t.Fatalf("first = %v, %v", first, err)
		}
		again, err := validator.Validate(t.Context(), &validatorv1.ValidateRequest{WireVersion: envelope.WireVersion, Envelopes: []*telemetryv1.Envelope{newEnvelope("seq:test@1:42", 2)}})
		if err != nil || again.GetOutcomes()[0].GetStatus() != telemetryv1.MessageStatus_MESSAGE_STATUS_DUPLICATE {
			t.Fatalf("redelivery = %v, %v", again, err)
		}
		if again.GetOutcomes()[0].GetMessageId() != first.GetOutcomes()[0].GetMessageId() {
			t.Errorf("duplicate names %s, want the original %s", again.GetOutcomes()[0].GetMessageId(), first.GetOutcomes()[0].GetMessageId())
		}
		events := f.analytics(fmt.Sprintf("iot.v1.analytics.local.acme.%s.telemetry", f.meter01), 1)
		if len(events) != 1 {
			t.Errorf("%d publishes, want 1", len(events))
		}
	})

	t.Run("an original stopped half-way is resumed, not called a duplicate", func(t *testing.T) {
		f := f.on(t)
		// A crashed original leaves its ingress and validate rows, and no
		// message row.
		e := newEnvelope("seq:test@1:43", 1)
		if _, err := f.db.Pool.Exec(t.Context(), `insert into ingestion_stage_logs (message_id, dedupe_key, stage, status, duration_us, attempt, instance)
			values ($1, $2, 'validate', 'completed', 10, 1, 'crashed')`, e.GetMessageId(), e.GetDedupeKey()); err != nil {
			t.Fatal(err)
		}
		resp, err := validator.Validate(t.Context(), &validatorv1.ValidateRequest{WireVersion: envelope.WireVersion, Envelopes: []*telemetryv1.Envelope{newEnvelope("seq:test@1:43", 2)}})
		if err != nil || resp.GetOutcomes()[0].GetStatus() != telemetryv1.MessageStatus_MESSAGE_STATUS_COMPLETED {
			t.Fatalf("resumed = %v, %v", resp, err)
		}
	})

	t.Run("dry_run computes the outcome and writes nothing", func(t *testing.T) {
		f := f.on(t)
		gconn, err := grpc.NewClient(f.mesh.GRPC[Gateway], grpc.WithTransportCredentials(insecure.NewCredentials()))
		if err != nil {
			t.Fatal(err)
		}
		defer gconn.Close()
		before := f.count(`select (select count(*) from ingestion_messages) + (select count(*) from device_telemetry_logs) + (select count(*) from ingestion_stage_logs)`)
		resp, err := gatewayv1.NewGatewayServiceClient(gconn).Ingest(t.Context(), &gatewayv1.IngestRequest{
			Subject: "devices.meter-01.telemetry", Payload: []byte(`{"temp_c": 10}`), MessageId: "dry-1", DryRun: true,
		})
		if err != nil {
			t.Fatal(err)
		}
		o := resp.GetOutcome()
		if o.GetStatus() != telemetryv1.MessageStatus_MESSAGE_STATUS_COMPLETED {
			t.Errorf("dry-run status = %v (%s)", o.GetStatus(), o.GetReason())
		}
		transformed, err := value.ParseObject(o.GetEnvelope().GetTransformed())
		if d, _ := transformed["temp_f"].(float64); err != nil || math.Abs(d-53.6) > 1e-9 {
			t.Errorf("dry-run temp_f = %v (%v), want 53.6", transformed["temp_f"], err)
		}
		invalid, err := gatewayv1.NewGatewayServiceClient(gconn).Ingest(t.Context(), &gatewayv1.IngestRequest{
			Subject: "devices.meter-01.telemetry", Payload: []byte(`{"temp_c": 1000}`), DryRun: true,
		})
		if err != nil || invalid.GetOutcome().GetStatus() != telemetryv1.MessageStatus_MESSAGE_STATUS_FAILED_VALIDATION {
			t.Errorf("dry-run of an invalid payload = %v, %v", invalid.GetOutcome(), err)
		}
		// Nothing to wait for: a moment in which a stray write would land.
		time.Sleep(300 * time.Millisecond)
		after := f.count(`select (select count(*) from ingestion_messages) + (select count(*) from device_telemetry_logs) + (select count(*) from ingestion_stage_logs)`)
		if after != before {
			t.Errorf("dry run wrote %d rows", after-before)
		}
	})
}

func (f *fixture) topicID() string {
	var id string
	if err := f.db.Pool.QueryRow(f.t.Context(), `select t.id::text from device_type_topics t join device_types d on d.id = t.device_type_id where d.organization_id = $1`, f.acme).Scan(&id); err != nil {
		f.t.Fatal(err)
	}
	return id
}

func TestPoisonMessageIsDeadLettered(t *testing.T) {
	// The validator accepts requests of at most 64 KiB: a 100 KB payload is
	// rejected on its own, and its neighbours go through.
	f := newFixture(t, func(o *Options) {
		if o.Stage == Validator {
			o.Process.MaxRecvMsgBytes = 64 << 10
		}
	})
	big := `{"temp_c": 1, "pad": "` + strings.Repeat("x", 100_000) + `"}`
	f.publish("devices.meter-01.telemetry", `{"temp_c": 1}`, "before-poison")
	f.publish("devices.meter-01.telemetry", big, "poison-1")
	f.publish("devices.meter-01.telemetry", `{"temp_c": 1}`, "after-poison")
	f.waitMessages(1, "source_message_id = 'poison-1' and status = 'failed_terminal' and halted_stage = 'ingress'")
	f.waitMessages(2, "source_message_id in ('before-poison', 'after-poison') and status = 'completed'")
	f.waitIdle()
}

func TestDeadLetterAfterMaxDeliver(t *testing.T) {
	// The validator is unreachable: each delivery fails, and the last one
	// is recorded as a dead letter instead of vanishing.
	f := newFixture(t, func(o *Options) {
		if o.Stage == Gateway {
			o.Hops[Validator] = "127.0.0.1:1"
			o.Gateway.MaxDeliver = 3
			o.Gateway.Backoff = []time.Duration{50 * time.Millisecond}
			o.Gateway.CallTimeout = 300 * time.Millisecond
			o.Gateway.AckWait = 2 * time.Second
		}
	})
	f.publish("devices.meter-01.telemetry", `{"temp_c": 1}`, "unreachable-1")
	f.waitMessages(1, "source_message_id = 'unreachable-1' and status = 'failed_terminal' and error_summary like 'dead-lettered after 3 deliveries%' and raw_payload is not null")
	f.waitIdle()
}

func TestRestartMidStreamLosesNothing(t *testing.T) {
	if testing.Short() {
		t.Skip("long: 10,000 messages with a stage restart")
	}
	f := newFixture(t, nil)
	const n = 10000
	done := make(chan struct{})
	// A publish NATS did not acknowledge is sent again with the same
	// message_id, as a device would; only then does the test expect all n.
	publishErr := make(chan error, 1)
	go func() {
		defer close(done)
		payload := func(i int) []byte {
			return []byte(fmt.Sprintf(`{"message_id": "stream-%d", "temp_c": %d}`, i, i%100))
		}
		futures := make([]jetstream.PubAckFuture, n)
		for i := range n {
			for {
				fut, err := f.js.PublishAsync("devices.meter-01.telemetry", payload(i))
				if err == nil {
					futures[i] = fut
					break
				}
				time.Sleep(10 * time.Millisecond)
			}
		}
		<-f.js.PublishAsyncComplete()
		for i, fut := range futures {
			select {
			case <-fut.Ok():
				continue
			case <-fut.Err():
			}
			// Until acknowledged, as a device would, however long a busy
			// machine makes that.
			var err error
			for deadline := time.Now().Add(meshWait); ; {
				if _, err = f.js.Publish(t.Context(), "devices.meter-01.telemetry", payload(i)); err == nil || time.Now().After(deadline) {
					break
				}
				time.Sleep(100 * time.Millisecond)
			}
			if err != nil {
				publishErr <- fmt.Errorf("publish stream-%d: %w", i, err)
				return
			}
		}
	}()
	testutil.Eventually(t, meshWait, "a quarter processed", func() error {
		if got := f.count(`select count(*) from ingestion_messages where source_message_id like 'stream-%'`); got <= n/4 {
			return fmt.Errorf("%d processed", got)
		}
		return nil
	})
	for _, stage := range []string{Persister, Validator, Publisher} {
		ctx, cancel := context.WithTimeout(t.Context(), meshWait)
		if err := f.mesh.Restart(ctx, stage); err != nil {
			t.Fatalf("restart %s: %v", stage, err)
		}
		cancel()
	}
	<-done
	select {
	case err := <-publishErr:
		t.Fatal(err)
	default:
	}
	// Generous: under -race with the other packages' tests on two cores a
	// restarted stage's in-flight batch waits out its call timeout first.
	testutil.Eventually(t, 4*time.Minute, "all 10,000 stored", func() error {
		if got := f.count(`select count(*) from ingestion_messages where source_message_id like 'stream-%'`); got != n {
			return fmt.Errorf("%d stored", got)
		}
		return nil
	})
	f.waitIdle()
	f.waitCount(n, "all rows processed", `select count(*) from device_telemetry_logs t join ingestion_messages m on m.id = t.ingestion_message_id
			where m.source_message_id like 'stream-%' and t.processing_state = 'processed'`)
	if d := f.count(`select count(*) - count(distinct ingestion_message_id) from device_telemetry_logs`); d != 0 {
		t.Errorf("%d duplicated telemetry rows", d)
	}
	if n2 := len(f.analytics(fmt.Sprintf("iot.v1.analytics.local.acme.%s.telemetry", f.meter01), n)); n2 != n {
		t.Errorf("%d analytics events, want %d", n2, n)
	}
}
