package deriver

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"math"
	"strconv"
	"strings"
	"unicode/utf8"
)

// toLogic converts a value to what JSON-Logic computes with: it knows only
// float64 numbers and decoded JSON, and panics on other number types.
func toLogic(v any) any {
	switch t := v.(type) {
	case float64, bool, string, nil, map[string]any, []any:
		return t
	case int64:
		return float64(t)
	case int:
		return float64(t)
	case int32:
		return float64(t)
	case float32:
		return float64(t)
	case json.RawMessage:
		var out any
		if err := json.Unmarshal(t, &out); err != nil {
			return string(t)
		}
		return out
	}
	b, err := json.Marshal(v)
	if err != nil {
		return nil
	}
	var out any
	if err := json.Unmarshal(b, &out); err != nil {
		return nil
	}
	return out
}

// convert turns a JSON-Logic result into a value of the data type. The
// library returns NaN for 0/0 and ±Inf for other divisions by zero instead
// of failing, so a non-finite number is refused here.
func convert(v any, dataType string) (any, error) {
	switch dataType {
	case typeInteger, typeDecimal:
		f, err := finite(v, article[dataType])
		if err != nil {
			return nil, err
		}
		if dataType == typeDecimal {
			return f, nil
		}
		if f != math.Trunc(f) {
			return nil, fmt.Errorf("result %s is not an integer", strconv.FormatFloat(f, 'g', -1, 64))
		}
		// 2^63 is exact in float64; int64 holds -2^63 to 2^63-1.
		if f < -(1<<63) || f >= 1<<63 {
			return nil, fmt.Errorf("result %s is out of the integer range", strconv.FormatFloat(f, 'g', -1, 64))
		}
		return int64(f), nil
	case typeBoolean:
		if b, ok := v.(bool); ok {
			return b, nil
		}
		return nil, notA(v, "a boolean")
	case typeString:
		if s, ok := v.(string); ok {
			return s, nil
		}
		return nil, notA(v, "a string")
	case typeJSON:
		return encode(v)
	}
	// An unknown data type keeps the result as returned, within the value
	// model the stages share.
	switch t := v.(type) {
	case nil:
		return nil, errors.New("result is null")
	case float64, int:
		return finite(t, "a number")
	case bool, string:
		return t, nil
	}
	return encode(v)
}

var article = map[string]string{typeInteger: "an integer", typeDecimal: "a decimal"}

func finite(v any, want string) (float64, error) {
	var f float64
	switch t := v.(type) {
	case float64:
		f = t
	case int:
		f = float64(t)
	default:
		return 0, notA(v, want)
	}
	switch {
	case math.IsNaN(f):
		return 0, errors.New("result is NaN (such as 0 divided by 0)")
	case math.IsInf(f, 0):
		return 0, fmt.Errorf("result is %s (such as a division by zero)", strconv.FormatFloat(f, 'g', -1, 64))
	}
	return f, nil
}

func encode(v any) (json.RawMessage, error) {
	b, err := json.Marshal(v)
	if err != nil {
		return nil, fmt.Errorf("result cannot be encoded as JSON: %w", err)
	}
	return b, nil
}

// notA describes a result of the wrong type; want is such as "a decimal".
func notA(v any, want string) error {
	if v == nil {
		return fmt.Errorf("result is null, not %s", want)
	}
	return fmt.Errorf("result %s is not %s", describeValue(v), want)
}

// describeValues lists values for a reason: "no arguments", "null",
// "null and 1.02", "1, 2 and 3".
func describeValues(vs []any) string {
	if len(vs) == 0 {
		return "no arguments"
	}
	parts := make([]string, len(vs))
	for i, v := range vs {
		parts[i] = describeValue(v)
	}
	if len(parts) == 1 {
		return parts[0]
	}
	return strings.Join(parts[:len(parts)-1], ", ") + " and " + parts[len(parts)-1]
}

// maxValueText bounds a value quoted in a reason, so that a large document
// does not become the reason.
const maxValueText = 64

// describeValue writes a value as JSON, shortened when long; a non-finite
// number, which JSON cannot hold, as Go formats it (+Inf, NaN).
func describeValue(v any) string {
	if f, ok := v.(float64); ok && (math.IsNaN(f) || math.IsInf(f, 0)) {
		return strconv.FormatFloat(f, 'g', -1, 64)
	}
	b, err := json.Marshal(v)
	if err != nil {
		return "a value that has no JSON form"
	}
	return shorten(string(b), maxValueText)
}

// maxExpressionText bounds an expression quoted in a reason or an error.
const maxExpressionText = 200

// expressionText returns an expression as compact JSON for a reason,
// shortened when long; text that is not JSON is quoted as it is.
func expressionText(expr json.RawMessage) string {
	if strings.TrimSpace(string(expr)) == "" {
		return `""`
	}
	var b bytes.Buffer
	if err := json.Compact(&b, expr); err != nil {
		return shorten(strings.TrimSpace(string(expr)), maxExpressionText)
	}
	return shorten(b.String(), maxExpressionText)
}

// shorten cuts s to at most n bytes on a rune boundary, marking the cut.
func shorten(s string, n int) string {
	if len(s) <= n {
		return s
	}
	cut := n
	for cut > 0 && !utf8.RuneStart(s[cut]) {
		cut--
	}
	return s[:cut] + "…"
}
