package validator

import (
	"testing"
	"time"
)

func TestRecordedAt(t *testing.T) {
	noon := time.Date(2024, 5, 1, 12, 0, 0, 0, time.UTC)
	tests := []struct {
		name    string
		payload string
		want    time.Time // zero: not ok
	}{
		{name: "recorded_at RFC 3339", payload: `{"recorded_at": "2024-05-01T12:00:00Z"}`, want: noon},
		{name: "offset is converted to UTC", payload: `{"recorded_at": "2024-05-01T14:00:00+02:00"}`, want: noon},
		{name: "fractional seconds", payload: `{"timestamp": "2024-05-01T12:00:00.123456789Z"}`, want: noon.Add(123456789)},
		{name: "timestamp Unix seconds", payload: `{"timestamp": 1714564800}`, want: noon},
		{name: "ts Unix milliseconds", payload: `{"ts": 1714564800123}`, want: noon.Add(123 * time.Millisecond)},
		{name: "time fractional seconds", payload: `{"time": 1714564800.5}`, want: noon.Add(500 * time.Millisecond)},
		{name: "fractional milliseconds", payload: `{"ts": 1714564800123.0}`, want: noon.Add(123 * time.Millisecond)},
		{name: "seconds in a string", payload: `{"ts": "1714564800"}`, want: noon},
		{name: "milliseconds in a string", payload: `{"ts": "1714564800123"}`, want: noon.Add(123 * time.Millisecond)},
		{name: "exponent seconds", payload: `{"ts": 1.7145648e9}`, want: noon},
		{name: "1e12 is still seconds and out of range", payload: `{"ts": 1000000000000}`},
		{name: "just above 1e12 is milliseconds", payload: `{"ts": 1000000000001}`, want: time.UnixMilli(1000000000001).UTC()},
		{name: "negative seconds", payload: `{"ts": -1}`, want: time.Unix(-1, 0).UTC()},
		{name: "zero is the epoch", payload: `{"ts": 0}`, want: time.Unix(0, 0).UTC()},
		{name: "recorded_at wins over ts", payload: `{"ts": 1, "recorded_at": "2024-05-01T12:00:00Z"}`, want: noon},
		{name: "timestamp wins over time", payload: `{"time": 1, "timestamp": 1714564800}`, want: noon},
		{name: "unparsable recorded_at falls to ts", payload: `{"recorded_at": "yesterday", "ts": 1714564800}`, want: noon},
		{name: "null recorded_at falls to ts", payload: `{"recorded_at": null, "ts": 1714564800}`, want: noon},
		{name: "last duplicate counts", payload: `{"ts": 1, "ts": 1714564800}`, want: noon},
		{name: "escaped key", payload: `{"\u0074s": 1714564800}`, want: noon},
		{name: "nested value is passed over", payload: `{"meta": {"ts": 1}, "list": [{"ts": 2}], "s": "\"ts\": 3", "ts": 1714564800}`, want: noon},
		{name: "absent", payload: `{"temp_c": 1}`},
		{name: "only nested", payload: `{"meta": {"recorded_at": "2024-05-01T12:00:00Z"}}`},
		{name: "not a time", payload: `{"recorded_at": "not a time"}`},
		{name: "date only", payload: `{"recorded_at": "2024-05-01"}`},
		{name: "boolean", payload: `{"ts": true}`},
		{name: "object", payload: `{"ts": {"s": 1}}`},
		{name: "beyond float64", payload: `{"ts": 1e400}`},
		{name: "beyond year 9999 in milliseconds", payload: `{"ts": 1e15}`},
		{name: "before year 1", payload: `{"ts": -1e11}`},
		{name: "year 1", payload: `{"ts": -62135596799}`, want: time.Date(1, 1, 1, 0, 0, 1, 0, time.UTC)},
		{name: "smallest int64", payload: `{"ts": -9223372036854775808}`},
		{name: "largest int64 milliseconds", payload: `{"ts": 9223372036854775807}`},
		{name: "Inf string", payload: `{"ts": "Inf"}`},
		{name: "NaN string", payload: `{"ts": "NaN"}`},
		{name: "hex float string", payload: `{"ts": "0x1p30"}`},
		{name: "underscore string", payload: `{"ts": "1_714_564_800"}`},
		{name: "padded number string", payload: `{"ts": " 1714564800"}`},
		{name: "empty string", payload: `{"ts": ""}`},
		{name: "not an object", payload: `[{"ts": 1714564800}]`},
		{name: "invalid JSON", payload: `{"ts": 1714564800`},
		{name: "trailing data", payload: `{"ts": 1714564800} {}`},
		{name: "empty", payload: ``},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, ok := RecordedAt([]byte(tt.payload))
			if tt.want.IsZero() {
				if ok {
					t.Errorf("RecordedAt = %v, want none", got)
				}
				return
			}
			if !ok || !got.Equal(tt.want) || got.Location() != time.UTC {
				t.Errorf("RecordedAt = %v, %v; want %v in UTC", got, ok, tt.want)
			}
		})
	}
}

func TestMessageID(t *testing.T) {
	tests := []struct {
		name    string
		payload string
		want    string // empty: not ok
	}{
		{name: "message_id string", payload: `{"message_id": "abc-1"}`, want: "abc-1"},
		{name: "msg_id string", payload: `{"msg_id": "m-2"}`, want: "m-2"},
		{name: "id integer", payload: `{"id": 42}`, want: "42"},
		{name: "negative integer", payload: `{"id": -7}`, want: "-7"},
		{name: "escaped string", payload: `{"id": "a\"b\u00e9"}`, want: `a"bé`},
		{name: "message_id wins", payload: `{"id": 1, "msg_id": "two", "message_id": "three"}`, want: "three"},
		{name: "msg_id wins over id", payload: `{"id": 1, "msg_id": "two"}`, want: "two"},
		{name: "empty string falls through", payload: `{"message_id": "", "id": 5}`, want: "5"},
		{name: "null falls through", payload: `{"message_id": null, "msg_id": "x"}`, want: "x"},
		{name: "fraction falls through", payload: `{"message_id": 1.5, "id": "y"}`, want: "y"},
		{name: "last duplicate counts", payload: `{"id": "first", "id": "last"}`, want: "last"},
		{name: "SQL-looking id is data", payload: `{"id": "'; drop table devices; --"}`, want: "'; drop table devices; --"},
		{name: "fraction", payload: `{"id": 1.5}`},
		{name: "exponent", payload: `{"id": 1e3}`},
		{name: "beyond int64", payload: `{"id": 9223372036854775808}`},
		{name: "boolean", payload: `{"id": true}`},
		{name: "object", payload: `{"id": {"v": 1}}`},
		{name: "nested only", payload: `{"meta": {"id": "x"}}`},
		{name: "absent", payload: `{"temp_c": 1}`},
		{name: "not an object", payload: `["id", 1]`},
		{name: "invalid JSON", payload: `{"id": "x"`},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, ok := MessageID([]byte(tt.payload))
			if got != tt.want || ok != (tt.want != "") {
				t.Errorf("MessageID = %q, %v; want %q", got, ok, tt.want)
			}
		})
	}
}
