// Package value converts parameter values between the plain Go values the
// stages compute with and the typed protobuf values on the wire.
//
// A value is one of float64 (decimal), int64 (integer), bool, string, or
// json.RawMessage (an object, array or null).
package value

import (
	"encoding/json"
	"fmt"
	"math"

	telemetryv1 "github.com/telemesh/telemesh/gen/telemesh/telemetry/v1"
)

// ToProto converts a Go value to its protobuf form. Other Go types are
// encoded as JSON.
func ToProto(v any) *telemetryv1.Value {
	switch t := v.(type) {
	case float64:
		return &telemetryv1.Value{Kind: &telemetryv1.Value_Number{Number: t}}
	case int64:
		return &telemetryv1.Value{Kind: &telemetryv1.Value_Integer{Integer: t}}
	case int:
		return &telemetryv1.Value{Kind: &telemetryv1.Value_Integer{Integer: int64(t)}}
	case bool:
		return &telemetryv1.Value{Kind: &telemetryv1.Value_Boolean{Boolean: t}}
	case string:
		return &telemetryv1.Value{Kind: &telemetryv1.Value_Text{Text: t}}
	case json.RawMessage:
		return &telemetryv1.Value{Kind: &telemetryv1.Value_Json{Json: string(t)}}
	default:
		b, err := json.Marshal(t)
		if err != nil {
			b = []byte("null")
		}
		return &telemetryv1.Value{Kind: &telemetryv1.Value_Json{Json: string(b)}}
	}
}

// FromProto converts a protobuf value back to Go; an empty value is nil.
func FromProto(v *telemetryv1.Value) any {
	switch k := v.GetKind().(type) {
	case *telemetryv1.Value_Number:
		return k.Number
	case *telemetryv1.Value_Integer:
		return k.Integer
	case *telemetryv1.Value_Boolean:
		return k.Boolean
	case *telemetryv1.Value_Text:
		return k.Text
	case *telemetryv1.Value_Json:
		return json.RawMessage(k.Json)
	}
	return nil
}

// MapToProto converts a map of Go values.
func MapToProto(m map[string]any) map[string]*telemetryv1.Value {
	if len(m) == 0 {
		return nil
	}
	out := make(map[string]*telemetryv1.Value, len(m))
	for k, v := range m {
		out[k] = ToProto(v)
	}
	return out
}

// MapFromProto converts a map of protobuf values.
func MapFromProto(m map[string]*telemetryv1.Value) map[string]any {
	out := make(map[string]any, len(m))
	for k, v := range m {
		out[k] = FromProto(v)
	}
	return out
}

// JSON returns the value as it is stored in a jsonb column: numbers,
// booleans and strings as themselves, JSON documents inline.
func JSON(v any) any {
	switch t := v.(type) {
	case json.RawMessage:
		return t
	case float64:
		if math.IsNaN(t) || math.IsInf(t, 0) {
			return nil
		}
	}
	return v
}

// Describe renders a value for messages.
func Describe(v any) string {
	switch t := v.(type) {
	case json.RawMessage:
		return string(t)
	case string:
		return fmt.Sprintf("%q", t)
	default:
		return fmt.Sprint(t)
	}
}
