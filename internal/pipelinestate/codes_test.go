package pipelinestate

import (
	"errors"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/nats-io/nats.go"

	"github.com/telemesh/telemesh/internal/reason"
	"github.com/telemesh/telemesh/internal/testutil"
)

// publishTo publishes one payload on subject with a message id.
func (m *mesh) publishTo(t *testing.T, subject, id, payload string) {
	t.Helper()
	msg := nats.NewMsg(subject)
	msg.Data = []byte(payload)
	msg.Header.Set("Nats-Msg-Id", id)
	if _, err := m.js.PublishMsg(t.Context(), msg); err != nil {
		t.Fatalf("publish: %v", err)
	}
}

// Failures of one cause are one line, whatever their texts: payloads cut
// at different offsets, unknown devices and topics on different subjects,
// and publishes that failed for different devices.
func TestFailuresGroupedByCode(t *testing.T) {
	m := startMesh(t)
	if _, err := m.db.Pool.Exec(t.Context(), `insert into devices (organization_id, device_type_id, external_id)
		select organization_id, device_type_id, 'meter-02' from devices where external_id = 'meter-01'`); err != nil {
		t.Fatal(err)
	}
	sent := 0
	testutil.Eventually(t, 30*time.Second, "meter-02 known to the gateway", func() error {
		sent++
		m.publishTo(t, "devices.meter-02.telemetry", fmt.Sprintf("probe-%d", sent), `{"temp_c": 1}`)
		if m.count(t, `select count(*) from ingestion_messages m join devices d on d.id = m.device_id
			where d.external_id = 'meter-02' and m.status = 'completed'`) == 0 {
			return errors.New("no message of meter-02 completed yet")
		}
		return nil
	})
	// Probes sent before the gateway knew meter-02 were halted as unknown;
	// count them once every probe is recorded.
	testutil.Eventually(t, 30*time.Second, "every probe recorded", func() error {
		if n := m.count(t, `select count(*) from ingestion_messages where source_message_id like 'probe-%'`); n != sent {
			return fmt.Errorf("%d of %d", n, sent)
		}
		return nil
	})
	probes := m.count(t, `select count(*) from ingestion_messages where status = 'failed_terminal' and halted_stage = 'ingress'`)
	for i, p := range []string{`{"temp_c": 1`, `{"temp_c": 12, "x": [1, 2`, `{"temp_c": 123, "note": "cut here`} {
		m.publishTo(t, "devices.meter-01.telemetry", fmt.Sprintf("cut-%d", i), p)
	}
	for i := range 3 {
		m.publishTo(t, fmt.Sprintf("devices.ghost-%d.telemetry", i), fmt.Sprintf("ghost-%d", i), `{"temp_c": 1}`)
	}
	for _, d := range []string{"meter-01", "meter-02"} {
		m.publishTo(t, "devices."+d+".nosuchtopic", "topic-"+d, `{"temp_c": 1}`)
	}
	testutil.Eventually(t, 30*time.Second, "8 more messages halted at ingress", func() error {
		n := m.count(t, `select count(*) from ingestion_messages where status = 'failed_terminal' and halted_stage = 'ingress'
			and (source_message_id like 'cut-%' or source_message_id like 'ghost-%' or source_message_id like 'topic-%')`)
		if n != 8 {
			return fmt.Errorf("%d of them", n)
		}
		return nil
	})

	rep, err := Gather(t.Context(), m.config())
	if err != nil {
		t.Fatal(err)
	}
	var lines []string
	total := 0
	got := map[string]StageCount{}
	for _, c := range rep.Throughput {
		if c.Stage == "ingress" && c.Status == "halted" {
			lines = append(lines, fmt.Sprintf("%d × %s (e.g. %s)", c.Count, c.Code, c.Example))
			total += c.Count
			got[c.Code] = c
		}
	}
	t.Logf("ingress halted:\n%s", strings.Join(lines, "\n"))
	if len(lines) != 3 || total != probes+8 {
		t.Errorf("ingress halted in %d lines of %d messages, want 3 lines of %d: the cut payloads, the unknown devices and the unknown topic",
			len(lines), total, probes+8)
	}
	for code, want := range map[string]struct {
		n       int
		example string
	}{
		reason.InvalidJSON:   {3, "payload is not a JSON object: unexpected end of JSON input at offset "},
		reason.UnknownDevice: {3 + probes, `subject "devices.`},
		reason.UnknownTopic:  {2, `subject "devices.meter-0`},
	} {
		if c := got[code]; c.Count != want.n || !strings.HasPrefix(c.Example, want.example) {
			t.Errorf("%s: %d × %q, want %d with an example beginning %q", code, c.Count, c.Example, want.n, want.example)
		}
	}

	// A publish that fails for two devices: one cause.
	if err := m.js.DeleteKeyValue(t.Context(), "device-states"); err != nil {
		t.Fatal(err)
	}
	m.publishTo(t, "devices.meter-01.telemetry", "kv-1", `{"temp_c": 5}`)
	m.publishTo(t, "devices.meter-02.telemetry", "kv-2", `{"temp_c": 6}`)
	testutil.Eventually(t, 30*time.Second, "2 rows publish_failed", func() error {
		if !(m.count(t, `select count(*) from device_telemetry_logs where processing_state = 'publish_failed'`) == 2) {
			return errors.New("not yet")
		}
		return nil
	})
	v := doctor(t, m.config(), DoctorOptions{})
	var reasons []string
	for _, r := range v.Report.PublishFailedReasons {
		reasons = append(reasons, ReasonLine(r))
	}
	if len(reasons) != 1 || v.Report.PublishFailedReasons[0].Count != 2 || v.Report.PublishFailedReasons[0].Code != reason.KVUnavailable {
		t.Errorf("publish_failed reasons in %d lines, want one line of 2 kv_unavailable:\n%s", len(reasons), strings.Join(reasons, "\n"))
	}
	if ev := strings.Join(v.Evidence, "\n"); !strings.Contains(ev, "2 × kv_unavailable (e.g. ") {
		t.Errorf("doctor's evidence lacks the grouped publish failures:\n%s", ev)
	}
}

// A failure row written before codes were recorded is still counted, as
// unclassified, with its text as the example. Its count is the one the
// migration that added the per-minute counts made of the last hour's rows.
func TestFailureWithoutCodeIsUnclassified(t *testing.T) {
	m := startMesh(t)
	if _, err := m.db.Pool.Exec(t.Context(), `insert into ingestion_stage_logs (message_id, stage, status, duration_us, instance, errors)
		values (gen_random_uuid(), 'ingress', 'halted', 1, 'old', '{"reason": "written before codes"}');
		insert into ingestion_stage_counts (minute, stage, status, reason_code, rows)
		values (date_trunc('minute', now()), 'ingress', 'halted', '', 1)`); err != nil {
		t.Fatal(err)
	}
	rep, err := Gather(t.Context(), m.config())
	if err != nil {
		t.Fatal(err)
	}
	for _, c := range rep.Throughput {
		if c.Stage == "ingress" && c.Status == "halted" {
			if c.Code != reason.Unclassified || c.Count != 1 || c.Example != "written before codes" {
				t.Errorf("the old row: %+v, want 1 × unclassified with its text", c)
			}
			return
		}
	}
	t.Errorf("the old row is not counted: %+v", rep.Throughput)
}
