package app

import (
	"context"
	"encoding/json"
	"strings"
	"testing"
	"time"

	"github.com/telemesh/telemesh/internal/logging"
	"github.com/telemesh/telemesh/internal/testutil"
)

// TestStageLogLinesHaveEachKeyOnce runs a mesh with JSON logs through a
// short life (start, messages on every path, a stage restart, stop) and
// checks every line it wrote: log pipelines that reject an object with a
// repeated key would drop the line, and encoding/json would not notice.
func TestStageLogLinesHaveEachKeyOnce(t *testing.T) {
	logs := &syncBuffer{}
	logger, err := logging.New(logs, "json", "debug")
	if err != nil {
		t.Fatal(err)
	}
	f := newFixtureLogging(t, nil, logger)

	f.publish("devices.meter-01.telemetry", `{"temp_c": 10, "humidity": 50}`, "keys-valid")
	f.publish("devices.meter-01.telemetry", `{"humidity": 50}`, "keys-invalid")
	f.publish("devices.meter-02.telemetry", `{"temp_c": 10}`, "keys-inactive")
	f.publish("devices.meter-01.telemetry", `not json`, "keys-garbage")
	f.publish("devices.nosuch-01.telemetry", `{"temp_c": 10}`, "keys-unknown")
	for range 2 {
		f.publish("devices.meter-01.telemetry", `{"message_id": "keys-dup", "temp_c": 20}`, "")
	}
	f.waitIdle()
	f.waitMessages(1, "source_message_id = 'keys-valid' and status = 'completed'")

	ctx, cancel := context.WithTimeout(t.Context(), 60*time.Second)
	defer cancel()
	if err := f.mesh.Restart(ctx, Persister); err != nil {
		t.Fatalf("restart persister: %v", err)
	}
	f.publish("devices.meter-01.telemetry", `{"temp_c": 11}`, "keys-after-restart")
	f.waitMessages(1, "source_message_id = 'keys-after-restart' and status = 'completed'")
	if err := f.mesh.Stop(); err != nil {
		t.Fatalf("stop mesh: %v", err)
	}

	// The lifecycle lines of every stage are among those checked, so the
	// test cannot pass on a log that missed them.
	lifecycle := map[string]int{}
	lines := strings.Split(strings.TrimSpace(logs.String()), "\n")
	for i, line := range lines {
		dups, err := testutil.DuplicateKeys([]byte(line))
		if err != nil {
			t.Errorf("line %d is not one JSON object: %v\n%s", i+1, err, line)
			continue
		}
		if len(dups) > 0 {
			t.Errorf("line %d repeats %v:\n%s", i+1, dups, line)
		}
		var l struct {
			Msg   string `json:"msg"`
			Stage string `json:"stage"`
		}
		_ = json.Unmarshal([]byte(line), &l)
		switch l.Msg {
		case "serving", "shutting down", "stopped":
			lifecycle[l.Stage+" "+l.Msg]++
		}
	}
	for _, stage := range Stages {
		for _, msg := range []string{"serving", "shutting down", "stopped"} {
			if lifecycle[stage+" "+msg] == 0 {
				t.Errorf("no %q line from the %s", msg, stage)
			}
		}
	}
	if lifecycle[Persister+" serving"] != 2 {
		t.Errorf("%d serving lines from the restarted persister, want 2", lifecycle[Persister+" serving"])
	}
	t.Logf("checked %d log lines", len(lines))
}
