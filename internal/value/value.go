// Package value holds what the stages do with parameter values as plain Go:
// their stored JSON form and how they are described to people.
//
// A value is one of float64 (decimal), int64 (integer), bool, string, or
// json.RawMessage (an object, array or null).
package value

import (
	"encoding/json"
	"fmt"
	"math"
)

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
