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
