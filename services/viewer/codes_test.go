package viewer

import (
	"fmt"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/telemesh/telemesh/internal/testutil"
)

// The failures tables group by cause, whatever the texts: payloads cut at
// different offsets, unknown devices and topics on different subjects,
// and rule violations of different parameters.
func TestFailuresGroupedByCode(t *testing.T) {
	e := newMeshEnv(t)
	publish := func(subject, id, payload string) {
		t.Helper()
		msg := nats.NewMsg(subject)
		msg.Data = []byte(payload)
		msg.Header.Set("Nats-Msg-Id", id)
		if _, err := e.js.PublishMsg(t.Context(), msg); err != nil {
			t.Fatal(err)
		}
	}
	for i, p := range []string{`{"temp_c": 1`, `{"temp_c": 12, "x": [1, 2`, `{"temp_c": 123, "note": "cut here`} {
		publish("devices.thermo-01.telemetry", fmt.Sprintf("cut-%d", i), p)
	}
	for i := range 3 {
		publish(fmt.Sprintf("devices.ghost-%d.telemetry", i), fmt.Sprintf("ghost-%d", i), `{"temp_c": 1}`)
	}
	for _, d := range []string{"thermo-01", "thermo-02"} {
		publish("devices."+d+".nosuchtopic", "topic-"+d, `{"temp_c": 1}`)
	}
	publish("devices.thermo-01.telemetry", "max-1", `{"temp_c": 500}`)
	publish("devices.thermo-02.telemetry", "max-2", `{"temp_c": 20, "humidity": 150}`)
	testutil.Eventually(t, 30*time.Second, "10 messages failed", func() error {
		if n := e.count(`select count(*) from ingestion_messages where status in ('failed_terminal', 'failed_validation')`); n != 10 {
			return fmt.Errorf("%d failed", n)
		}
		return nil
	})
	var h Health
	var lines []string
	testutil.Eventually(t, 30*time.Second, "the failures in the panel", func() error {
		h = Health{}
		e.do(http.MethodGet, "/api/health", "", nil, &h)
		lines = nil
		total := int64(0)
		for _, f := range h.Failures5m {
			lines = append(lines, fmt.Sprintf("%s %s %d × %s (e.g. %s)", f.Stage, f.Status, f.Count, f.Code, f.Example))
			total += f.Count
		}
		if total != 10 {
			return fmt.Errorf("%d failures in the panel", total)
		}
		return nil
	})
	t.Logf("failures, 5 minutes:\n%s", strings.Join(lines, "\n"))
	if len(lines) != 4 {
		t.Errorf("%d lines, want 4: the cut payloads, the unknown devices, the unknown topics and the maxima", len(lines))
	}
	got := map[string]Failure{}
	for _, f := range h.Failures5m {
		got[f.Stage+"/"+f.Status+"/"+f.Code] = f
	}
	for key, want := range map[string]struct {
		n       int64
		example string
	}{
		"ingress/halted/invalid_json":   {3, "payload is not a JSON object: unexpected end of JSON input at offset "},
		"ingress/halted/unknown_device": {3, `subject "devices.ghost-`},
		"ingress/halted/unknown_topic":  {2, `subject "devices.thermo-0`},
		"validate/halted/max":           {2, "validation failed: "},
	} {
		if f := got[key]; f.Count != want.n || !strings.HasPrefix(f.Example, want.example) {
			t.Errorf("%s: %d × %q, want %d with an example beginning %q", key, f.Count, f.Example, want.n, want.example)
		}
	}
	if h.Rate5m.Failed != 10 {
		t.Errorf("five-minute rate %+v, want 10 failed", h.Rate5m)
	}
}
