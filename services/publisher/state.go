package publisher

import (
	"encoding/json"
	"time"
)

// DeviceState is the value kept under a device's uuid in the device-states
// bucket: the latest values of each topic.
type DeviceState struct {
	DeviceUUID   string                `json:"device_uuid"`
	Organization string                `json:"organization"`
	Topics       map[string]TopicState `json:"topics"`
	UpdatedAt    time.Time             `json:"updated_at"`
}

// TopicState is the latest message of one topic.
type TopicState struct {
	Values     map[string]any `json:"values"`
	MessageID  string         `json:"message_id"`
	RecordedAt time.Time      `json:"recorded_at"`
}

// newer reports whether a is newer than b: a later recorded time, or the same
// time and a later message id (time-ordered), so replicas agree on ties.
func newer(a, b TopicState) bool {
	if !a.RecordedAt.Equal(b.RecordedAt) {
		return a.RecordedAt.After(b.RecordedAt)
	}
	return a.MessageID > b.MessageID
}

// Merge folds the updates into the state, keeping for each topic the newest
// message, and reports whether anything changed. An older message never
// overwrites newer state.
func Merge(s *DeviceState, updates map[string]TopicState) bool {
	if s.Topics == nil {
		s.Topics = map[string]TopicState{}
	}
	changed := false
	for topic, u := range updates {
		cur, ok := s.Topics[topic]
		if ok && !newer(u, cur) {
			continue
		}
		s.Topics[topic] = u
		changed = true
	}
	return changed
}

func decodeState(b []byte) (DeviceState, error) {
	var s DeviceState
	err := json.Unmarshal(b, &s)
	return s, err
}
