package publisher

import (
	"encoding/json"
	"testing"
	"time"

	"github.com/telemesh/telemesh/internal/value"
)

func TestMerge(t *testing.T) {
	t0 := time.Date(2026, 11, 28, 12, 0, 0, 0, time.UTC)
	at := func(d time.Duration, id string, v float64) TopicState {
		return TopicState{RecordedAt: t0.Add(d), MessageID: id, Values: json.RawMessage(value.Object(map[string]any{"v": v}))}
	}
	tests := []struct {
		name        string
		state       map[string]TopicState
		updates     map[string]TopicState
		wantChanged bool
		wantV       float64
	}{
		{"first value", nil, map[string]TopicState{"telemetry": at(0, "a", 1)}, true, 1},
		{"newer replaces", map[string]TopicState{"telemetry": at(0, "a", 1)}, map[string]TopicState{"telemetry": at(time.Second, "b", 2)}, true, 2},
		{"older never overwrites", map[string]TopicState{"telemetry": at(time.Second, "b", 2)}, map[string]TopicState{"telemetry": at(0, "a", 1)}, false, 2},
		{"same time, later id wins", map[string]TopicState{"telemetry": at(0, "a", 1)}, map[string]TopicState{"telemetry": at(0, "b", 3)}, true, 3},
		{"same message again is no change", map[string]TopicState{"telemetry": at(0, "a", 1)}, map[string]TopicState{"telemetry": at(0, "a", 1)}, false, 1},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			s := DeviceState{Topics: tt.state}
			if got := Merge(&s, tt.updates); got != tt.wantChanged {
				t.Errorf("changed = %v, want %v", got, tt.wantChanged)
			}
			if got := s.Topics["telemetry"].Value("v"); got != tt.wantV {
				t.Errorf("v = %v, want %v", got, tt.wantV)
			}
		})
	}
}

func TestSubjects(t *testing.T) {
	tests := []struct{ got, want string }{
		{AnalyticsSubject("Prod", "ACME Corp", "0190a0b0-0000-7000-8000-000000000001", "telemetry"), "iot.v1.analytics.prod.acme-corp.0190a0b0-0000-7000-8000-000000000001.telemetry"},
		{InvalidSubject("prod", "acme", "required"), "iot.v1.invalid.prod.acme.required"},
		{InvalidSubject("prod", "a.b*c>", ""), "iot.v1.invalid.prod.a-b-c-.unknown"},
	}
	for _, tt := range tests {
		if tt.got != tt.want {
			t.Errorf("got %q, want %q", tt.got, tt.want)
		}
	}
}
