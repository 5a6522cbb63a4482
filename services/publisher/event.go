package publisher

import (
	"encoding/json"
	"slices"
	"strconv"
	"time"
	"unicode/utf8"

	"github.com/telemesh/telemesh/internal/envelope"
)

// The events and the device state are written by hand rather than through
// protojson: the values arrive as JSON already, and protojson would parse
// them into a google.protobuf.Struct only to print them again, at several
// times the CPU and allocations per event (BenchmarkEncodeEvent). What is
// written is the protojson form of the messages of
// proto/telemesh/analytics/v1 (analyticsv1), field for field and in field
// order; TestEncodingMatchesProtojson holds the two together.

// appendEvent appends the JSON of it's event: an analyticsv1.Event, or an
// analyticsv1.InvalidEvent when the item is invalid.
func appendEvent(b []byte, it *Item) []byte {
	b = append(b, `{"message_id":"`...)
	b = append(b, it.MessageID.String()...)
	b = append(b, `","organization":`...)
	b = appendString(b, it.OrganizationSlug)
	b = append(b, `,"device_uuid":`...)
	b = appendString(b, it.DeviceUUID)
	if it.DeviceExternalID != "" {
		b = append(b, `,"device_external_id":`...)
		b = appendString(b, it.DeviceExternalID)
	}
	b = append(b, `,"topic":`...)
	b = appendString(b, it.Topic)
	b = append(b, `,"recorded_at":`...)
	b = appendTimestamp(b, it.RecordedAt)
	if it.Invalid {
		if len(it.ValidationErrors) > 0 {
			b = append(b, `,"errors":[`...)
			for i, e := range it.ValidationErrors {
				if i > 0 {
					b = append(b, ',')
				}
				b = appendValidationError(b, e)
			}
			b = append(b, ']')
		}
	} else {
		if len(it.Values) > 0 {
			b = append(b, `,"values":`...)
			b = append(b, it.Values...)
		}
		if len(it.Unresolved) > 0 {
			b = append(b, `,"unresolved":`...)
			b = append(b, it.Unresolved...)
		}
	}
	return append(b, '}')
}

// appendValidationError appends an analyticsv1.ValidationError. Its code,
// message and critical have explicit presence, so they are always written.
func appendValidationError(b []byte, e envelope.ValidationError) []byte {
	b = append(b, '{')
	if e.Parameter != "" {
		b = append(b, `"parameter":`...)
		b = appendString(b, e.Parameter)
		b = append(b, ',')
	}
	b = append(b, `"code":`...)
	b = appendString(b, e.Code)
	b = append(b, `,"message":`...)
	b = appendString(b, e.Message)
	b = append(b, `,"critical":`...)
	b = strconv.AppendBool(b, e.Critical)
	return append(b, '}')
}

// MarshalJSON returns the state as an analyticsv1.DeviceState in JSON, the
// topics in key order as protojson writes a map.
func (s DeviceState) MarshalJSON() ([]byte, error) {
	b := make([]byte, 0, 256)
	b = append(b, `{"device_uuid":`...)
	b = appendString(b, s.DeviceUUID)
	b = append(b, `,"organization":`...)
	b = appendString(b, s.Organization)
	if len(s.Topics) > 0 {
		b = append(b, `,"topics":{`...)
		keys := make([]string, 0, len(s.Topics))
		for k := range s.Topics {
			keys = append(keys, k)
		}
		slices.Sort(keys)
		for i, k := range keys {
			if i > 0 {
				b = append(b, ',')
			}
			b = appendString(b, k)
			b = append(b, ':')
			b = s.Topics[k].appendJSON(b)
		}
		b = append(b, '}')
	}
	if !s.UpdatedAt.IsZero() {
		b = append(b, `,"updated_at":`...)
		b = appendTimestamp(b, s.UpdatedAt)
	}
	return append(b, '}'), nil
}

// appendJSON appends the topic's state as an analyticsv1.TopicState.
func (t TopicState) appendJSON(b []byte) []byte {
	b = append(b, '{')
	if len(t.Values) > 0 {
		b = append(b, `"values":`...)
		b = append(b, t.Values...)
		b = append(b, ',')
	}
	b = append(b, `"message_id":`...)
	b = appendString(b, t.MessageID)
	b = append(b, `,"recorded_at":`...)
	b = appendTimestamp(b, t.RecordedAt)
	return append(b, '}')
}

// appendTimestamp appends t as protojson writes a google.protobuf.Timestamp:
// UTC, with 0, 3, 6 or 9 fractional digits.
func appendTimestamp(b []byte, t time.Time) []byte {
	t = t.UTC()
	b = append(b, '"')
	b = t.AppendFormat(b, "2006-01-02T15:04:05")
	if ns := t.Nanosecond(); ns != 0 {
		digits := 9
		switch {
		case ns%1_000_000 == 0:
			ns, digits = ns/1_000_000, 3
		case ns%1_000 == 0:
			ns, digits = ns/1_000, 6
		}
		b = append(b, '.')
		s := strconv.Itoa(ns)
		for range digits - len(s) {
			b = append(b, '0')
		}
		b = append(b, s...)
	}
	return append(b, `Z"`...)
}

// appendString appends s as a JSON string. Text that needs no escaping, as
// uuids, slugs and topics do not, is copied as it is; the rest goes through
// encoding/json, which also replaces invalid UTF-8.
func appendString(b []byte, s string) []byte {
	for i := 0; i < len(s); i++ {
		if c := s[i]; c < 0x20 || c == '"' || c == '\\' || c >= utf8.RuneSelf {
			q, _ := json.Marshal(s)
			return append(b, q...)
		}
	}
	b = append(b, '"')
	b = append(b, s...)
	return append(b, '"')
}
