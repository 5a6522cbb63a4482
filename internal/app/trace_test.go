package app

import (
	"fmt"
	"strings"
	"testing"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/telemesh/telemesh/internal/testutil"
	"github.com/telemesh/telemesh/internal/tracing"
)

// messageStages are the spans of a message that goes the whole way, each
// the child of the one before.
var messageStages = []string{"ingress", "validate", "mutate", "derive", "persist", "publish"}

// newTracedFixture runs a mesh exporting its spans to an in-process OTLP
// receiver with the given sampler.
func newTracedFixture(t *testing.T, sampler string, ratio float64) (*fixture, *otlpReceiver) {
	t.Helper()
	r := newOTLPReceiver(t)
	f := newFixture(t, func(o *Options) {
		o.Process.Tracing = tracing.Config{Endpoint: r.Endpoint(), Sampler: sampler, Ratio: ratio}
	})
	return f, r
}

// publishTraced publishes a payload with the device's traceparent header.
func (f *fixture) publishTraced(subject, payload, msgID, traceparent string) {
	f.t.Helper()
	m := nats.NewMsg(subject)
	m.Data = []byte(payload)
	m.Header.Set("Nats-Msg-Id", msgID)
	if traceparent != "" {
		m.Header.Set("traceparent", traceparent)
	}
	if _, err := f.js.PublishMsg(f.t.Context(), m); err != nil {
		f.t.Fatalf("publish %s: %v", subject, err)
	}
}

// traceIDOf returns the trace id stored with a message.
func (f *fixture) traceIDOf(msgID string) string {
	f.t.Helper()
	var id *string
	if err := f.db.Pool.QueryRow(f.t.Context(), `select trace_id from ingestion_messages where source_message_id = $1`, msgID).Scan(&id); err != nil {
		f.t.Fatalf("trace id of %s: %v", msgID, err)
	}
	if id == nil {
		return ""
	}
	return *id
}

// waitSpans waits until the receiver holds every named span of a trace,
// and returns the trace's spans by name (each name once).
func waitSpans(t *testing.T, r *otlpReceiver, traceID string, names []string) map[string]receivedSpan {
	t.Helper()
	var byName map[string]receivedSpan
	testutil.Eventually(t, meshWait, "spans "+strings.Join(names, ", ")+" of trace "+traceID, func() error {
		byName = map[string]receivedSpan{}
		for _, s := range r.Trace(traceID) {
			if _, dup := byName[s.Name]; dup {
				return fmt.Errorf("two %s spans in one message's trace:\n%s", s.Name, describe(r.Trace(traceID)))
			}
			byName[s.Name] = s
		}
		for _, n := range names {
			if _, ok := byName[n]; !ok {
				return fmt.Errorf("no %s span yet; have %d", n, len(byName))
			}
		}
		return nil
	})
	return byName
}

// TestOneTracePerMessage runs a traced mesh sampling everything: a message
// whose device sent a traceparent continues the device's trace, one without
// starts its trace at the gateway, and each trace holds one span per stage,
// each the child of the stage before, linked to the gRPC calls the batch
// travelled in, whose spans continue each other across the hops. The
// analytics event carries the message's trace, and the message row keeps
// its trace id.
func TestOneTracePerMessage(t *testing.T) {
	f, r := newTracedFixture(t, "parentbased_traceidratio", 1)
	const deviceTrace, deviceSpan = "4bf92f3577b34da6a3ce929d0e0e4736", "00f067aa0ba902b7"
	f.publishTraced("devices.meter-01.telemetry", `{"temp_c": 21.5, "humidity": 40}`, "traced-1", "00-"+deviceTrace+"-"+deviceSpan+"-01")
	f.publishTraced("devices.meter-01.telemetry", `{"temp_c": 22.5, "humidity": 41}`, "traced-2", "")
	f.waitMessages(2, "source_message_id in ('traced-1', 'traced-2') and status = 'completed'")
	f.waitProcessed("source_message_id = 'traced-1'")
	f.waitProcessed("source_message_id = 'traced-2'")

	if got := f.traceIDOf("traced-1"); got != deviceTrace {
		t.Fatalf("trace_id of traced-1 = %q, want the device's %s", got, deviceTrace)
	}
	own := f.traceIDOf("traced-2")
	if len(own) != 32 || own == deviceTrace {
		t.Fatalf("trace_id of traced-2 = %q, want a trace of its own", own)
	}

	for _, tc := range []struct {
		msgID, traceID, root string
	}{{"traced-1", deviceTrace, deviceSpan}, {"traced-2", own, ""}} {
		spans := waitSpans(t, r, tc.traceID, messageStages)
		t.Logf("trace of %s as the receiver recorded it:\n%s", tc.msgID, describe(r.Trace(tc.traceID)))
		if n := len(r.Trace(tc.traceID)); n != len(messageStages) {
			t.Errorf("%s: %d spans in its trace, want one per stage (%d):\n%s", tc.msgID, n, len(messageStages), describe(r.Trace(tc.traceID)))
		}
		parent := tc.root
		for _, name := range messageStages {
			s := spans[name]
			if s.ParentSpanID != parent && !(parent == "" && s.ParentSpanID == "") {
				t.Errorf("%s: %s span's parent = %q, want %q", tc.msgID, name, s.ParentSpanID, parent)
			}
			parent = s.SpanID
			for k, want := range map[string]string{
				"telemesh.outcome": "completed", "telemesh.device": "meter-01", "telemesh.topic": "telemetry",
			} {
				if s.Attributes[k] != want {
					t.Errorf("%s: %s span %s = %q, want %q", tc.msgID, name, k, s.Attributes[k], want)
				}
			}
			if !strings.Contains(s.Attributes["telemesh.dedupe_key"], tc.msgID) {
				t.Errorf("%s: %s span's dedupe key %q does not hold the message id", tc.msgID, name, s.Attributes["telemesh.dedupe_key"])
			}
			if s.Error {
				t.Errorf("%s: %s span is an error: %s", tc.msgID, name, s.Status)
			}
		}
		if want := "devices.meter-01.telemetry"; spans["ingress"].Attributes["messaging.destination.name"] != want {
			t.Errorf("%s: ingress subject = %q, want %q", tc.msgID, spans["ingress"].Attributes["messaging.destination.name"], want)
		}
		// Across every hop the message span links to the call that carried
		// it, and that call's server span is the child of the caller's
		// client span: the gRPC calls continue one trace of their own.
		for _, hop := range []struct{ stage, method string }{
			{"validate", "telemesh.validator.v1.ValidatorService/Validate"},
			{"mutate", "telemesh.deriver.v1.DeriverService/Derive"},
			{"persist", "telemesh.persister.v1.PersisterService/Persist"},
			{"publish", "telemesh.publisher.v1.PublisherService/Publish"},
		} {
			s := spans[hop.stage]
			if len(s.Links) != 1 {
				t.Errorf("%s: %s span has links %v, want one to its call", tc.msgID, hop.stage, s.Links)
				continue
			}
			var server, client receivedSpan
			testutil.Eventually(t, meshWait, "the spans of the call "+hop.method, func() error {
				var ok bool
				if server, ok = r.Span(s.Links[0]); !ok {
					return fmt.Errorf("no span %s", s.Links[0])
				}
				if client, ok = r.Span(server.ParentSpanID); !ok {
					return fmt.Errorf("no span %s, the parent of %s", server.ParentSpanID, server.Name)
				}
				return nil
			})
			if server.Name != hop.method || server.Kind != 2 /* server */ || client.Name != hop.method || client.Kind != 3 /* client */ {
				t.Errorf("%s: %s links to %s (kind %v) under %s (kind %v), want the server span of %s under its client span",
					tc.msgID, hop.stage, server.Name, server.Kind, client.Name, client.Kind, hop.method)
			}
			if server.TraceID != client.TraceID || server.TraceID == tc.traceID {
				t.Errorf("%s: the call %s is in trace %s under %s, want the batch's own trace", tc.msgID, hop.method, server.TraceID, client.TraceID)
			}
		}
		events := f.analytics(fmt.Sprintf("iot.v1.analytics.local.acme.%s.telemetry", f.meter01), 2)
		var found bool
		for _, ev := range events {
			tp, _ := ev["_traceparent"].(string)
			if tracing.TraceID(tp) != tc.traceID {
				continue
			}
			found = true
			if want := "00-" + tc.traceID + "-" + spans["publish"].SpanID + "-01"; tp != want {
				t.Errorf("%s: analytics event traceparent = %q, want %q (the publish span)", tc.msgID, tp, want)
			}
		}
		if !found {
			t.Errorf("%s: no analytics event carries trace %s: %v", tc.msgID, tc.traceID, events)
		}
	}
}

// TestFailedMessageIsTracedAtRatioZero samples nothing, yet a message that
// fails keeps its spans, at every stage it crossed, with the failure as
// their status: written after the fact, they still read as one trace, each
// the child of the stage before under the device's span, the last the one
// the invalid event names; one that succeeds leaves nothing behind.
func TestFailedMessageIsTracedAtRatioZero(t *testing.T) {
	f, r := newTracedFixture(t, "parentbased_traceidratio", 0)
	f.publishTraced("devices.meter-01.telemetry", `{"temp_c": 21.5}`, "quiet-1", "")
	f.waitMessages(1, "source_message_id = 'quiet-1' and status = 'completed'")
	f.waitProcessed("source_message_id = 'quiet-1'")
	// The device's own trace context says "not sampled" (flags 00).
	const deviceTrace = "5af7183fc1d7d9e1a2b3c4d5e6f70819"
	f.publishTraced("devices.meter-01.telemetry", `{"humidity": 40}`, "failing-1", "00-"+deviceTrace+"-1111111111111111-00")
	f.waitMessages(1, "source_message_id = 'failing-1' and status = 'failed_validation'")
	if got := f.traceIDOf("failing-1"); got != deviceTrace {
		t.Fatalf("trace_id of failing-1 = %q, want %s", got, deviceTrace)
	}
	// Halted at validation: stored as evidence and published as an invalid
	// event, never mutated or derived.
	spans := waitSpans(t, r, deviceTrace, []string{"ingress", "validate", "persist", "publish"})
	t.Logf("trace of failing-1 at ratio 0:\n%s", describe(r.Trace(deviceTrace)))
	for name, s := range spans {
		if !s.Error || s.Attributes["telemesh.outcome"] != "failed_validation" || !strings.Contains(s.Status, "temp_c") {
			t.Errorf("%s span: error %v, outcome %q, status %q; want an error naming temp_c, outcome failed_validation",
				name, s.Error, s.Attributes["telemesh.outcome"], s.Status)
		}
	}
	if s := spans["validate"]; s.Attributes["telemesh.stage_status"] != "halted" || s.Attributes["telemesh.reason_code"] != "required" {
		t.Errorf("validate span: stage status %q, reason code %q; want halted, required", s.Attributes["telemesh.stage_status"], s.Attributes["telemesh.reason_code"])
	}
	parent := "1111111111111111"
	for _, name := range []string{"ingress", "validate", "persist", "publish"} {
		if got := spans[name].ParentSpanID; got != parent {
			t.Errorf("%s span's parent = %q, want %q", name, got, parent)
		}
		parent = spans[name].SpanID
	}
	invalid := f.analytics("iot.v1.invalid.local.acme.required", 1)
	// Not sampled: the event says so, and names the publish span all the
	// same, the one written when the message failed.
	if tp, _ := invalid[0]["_traceparent"].(string); tp != "00-"+deviceTrace+"-"+spans["publish"].SpanID+"-00" {
		t.Errorf("invalid event traceparent = %q, want trace %s's publish span %s, unsampled", tp, deviceTrace, spans["publish"].SpanID)
	}

	// Stopping the mesh flushes every exporter: what was not sent by now
	// never will be.
	quiet := f.traceIDOf("quiet-1")
	if err := f.mesh.Stop(); err != nil {
		t.Fatalf("stop mesh: %v", err)
	}
	if got := r.Trace(quiet); len(got) != 0 {
		t.Errorf("the completed message's trace was exported at ratio 0:\n%s", describe(got))
	}
	if got := r.Trace(deviceTrace); len(got) != len(spans) {
		t.Errorf("the failed message's trace has %d spans, want one per stage it crossed (%d):\n%s", len(got), len(spans), describe(got))
	}
}

// TestPublishRetryIsTraced samples nothing; a message whose publish fails
// (the KV bucket gone) is traced as failed, and the retry loop's publish of
// its row, once the bucket is back, is a "publish retry" span in the same
// trace, exported although nothing is sampled, which the event it finally
// published names as its traceparent.
func TestPublishRetryIsTraced(t *testing.T) {
	f, r := newTracedFixture(t, "parentbased_traceidratio", 0)
	if err := f.js.DeleteKeyValue(t.Context(), "device-states"); err != nil {
		t.Fatal(err)
	}
	const deviceTrace = "6bf7183fc1d7d9e1a2b3c4d5e6f70819"
	f.publishTraced("devices.meter-01.telemetry", `{"temp_c": 10}`, "retried-1", "00-"+deviceTrace+"-2222222222222222-00")
	f.waitCount(1, "the row publish_failed", `select count(*) from device_telemetry_logs t join ingestion_messages m on m.id = t.ingestion_message_id
			where m.source_message_id = 'retried-1' and t.processing_state = 'publish_failed'`)
	// The retry loop's spans join the trace as it tries again.
	spans := map[string]receivedSpan{}
	testutil.Eventually(t, meshWait, "the failed message's spans of trace "+deviceTrace, func() error {
		for _, s := range r.Trace(deviceTrace) {
			spans[s.Name] = s
		}
		for _, n := range messageStages {
			if _, ok := spans[n]; !ok {
				return fmt.Errorf("no %s span yet:\n%s", n, describe(r.Trace(deviceTrace)))
			}
		}
		return nil
	})
	if s := spans["publish"]; !s.Error || s.Attributes["telemesh.processing_state"] != "publish_failed" {
		t.Errorf("publish span: error %v, state %q; want the publish failure", s.Error, s.Attributes["telemesh.processing_state"])
	}
	if _, err := f.js.CreateKeyValue(t.Context(), jetstream.KeyValueConfig{Bucket: "device-states", History: 1}); err != nil {
		t.Fatal(err)
	}
	f.waitProcessed("source_message_id = 'retried-1'")
	var retry receivedSpan
	testutil.Eventually(t, meshWait, "the retry's span of trace "+deviceTrace, func() error {
		for _, s := range r.Trace(deviceTrace) {
			if s.Name == "publish retry" && !s.Error {
				retry = s
				return nil
			}
		}
		return fmt.Errorf("no successful publish retry span yet:\n%s", describe(r.Trace(deviceTrace)))
	})
	if retry.ParentSpanID != "" || retry.Kind != 4 /* producer */ || retry.Attributes["telemesh.processing_state"] != "processed" ||
		retry.Attributes["telemesh.device"] != "meter-01" || !strings.HasSuffix(retry.Attributes["telemesh.dedupe_key"], ":retried-1") {
		t.Errorf("retry span: parent %q, kind %v, attributes %v; want a producer span of its own, processed, of meter-01", retry.ParentSpanID, retry.Kind, retry.Attributes)
	}
	events := f.analytics(fmt.Sprintf("iot.v1.analytics.local.acme.%s.telemetry", f.meter01), 1)
	if tp, _ := events[0]["_traceparent"].(string); tp != "00-"+deviceTrace+"-"+retry.SpanID+"-01" {
		t.Errorf("the retried event's traceparent = %q, want the retry span %s of trace %s", tp, retry.SpanID, deviceTrace)
	}
}
