package deriver

import (
	"encoding/json"
	"fmt"
	"math"
	"reflect"
	"testing"
)

// sameResult compares two evaluation results; NaN equals NaN, since the
// library returns it for 0/0.
func sameResult(a, b any) bool {
	return reflect.DeepEqual(a, b) || fmt.Sprintf("%#v", a) == fmt.Sprintf("%#v", b)
}

// FuzzEvaluate runs arbitrary JSON-Logic rules on arbitrary data. A rule
// never panics out of evaluate, fails with a reason free of Go runtime
// text, never changes the rule or the data (one decoded rule is shared by
// every message and goroutine), gives the same result twice, and convert
// turns its result into a value of the asked type or an error, never a
// non-finite number.
func FuzzEvaluate(f *testing.F) {
	for _, s := range []struct{ rule, data string }{
		{`{"+": [{"*": [{"var": "temp_c"}, 1.8]}, 32]}`, `{"temp_c": 10}`},
		{`{"/": [{"var": "a"}, 0]}`, `{"a": 0}`},
		{`{"/": [1, 0]}`, `{}`},
		{`{"var": ""}`, `{"a": [1, 2]}`},
		{`{"merge": [{"var": "a"}, {"var": "a"}]}`, `{"a": [1, [2]]}`},
		{`{"map": [{"var": "a"}, {"+": [{"var": ""}, 1]}]}`, `{"a": [1, 2, 3]}`},
		{`{"filter": [{"var": "a"}, {">": [{"var": ""}, 1]}]}`, `{"a": [1, 2, 3]}`},
		{`{"reduce": [{"var": "a"}, {"+": [{"var": "current"}, {"var": "accumulator"}]}, 0]}`, `{"a": [1, 2, 3]}`},
		{`{"all": [{"var": "a"}, {"var": ""}]}`, `{"a": []}`},
		{`{"some": [{"var": "a"}, {"==": [{"var": "x"}, 1]}]}`, `{"a": [{"x": 1}]}`},
		{`{"if": [{"var": "a"}, "yes", "no"]}`, `{"a": null}`},
		{`{"set": [1, "a", 2]}`, `{}`},
		{`{"substr": ["abcdef", -100, 1000]}`, `{}`},
		{`{"cat": [{"var": "s"}, 1e400]}`, `{"s": "x"}`},
		{`{"max": []}`, `{}`},
		{`{"min": [{"var": "a"}]}`, `{"a": "NaN"}`},
		{`{"missing_some": [1, ["a", "b"]]}`, `{"a": 1}`},
		{`{"in": ["a", {"var": "s"}]}`, `{"s": "cat"}`},
		{`{"in_sorted": [2, [1, 2, 3]]}`, `{}`},
		{`{"%": [{"var": "a"}, 0]}`, `{"a": 5}`},
		{`{"var": ["a.b.c", {"var": "d"}]}`, `{"a": {"b": 1}, "d": 2}`},
		{`{"var": {"var": "k"}}`, `{"k": "v", "v": 3}`},
		{`{"?:": [true]}`, `{}`},
		{`{"abs": "x"}`, `{}`},
		{`[{"var": "a"}, {"var": "b"}]`, `{"a": 1}`},
		{`{"nosuchop": [1]}`, `{}`},
		{`{"==": [{"var": "a"}, {"var": "a"}]}`, `{"a": {"b": [1]}}`},
		{`{"!!": [[]]}`, `{}`},
	} {
		f.Add(s.rule, s.data)
	}
	types := []string{typeDecimal, typeInteger, typeBoolean, typeString, typeJSON, ""}
	f.Fuzz(func(t *testing.T, ruleText, dataText string) {
		var rule, again any
		if json.Unmarshal([]byte(ruleText), &rule) != nil {
			return
		}
		_ = json.Unmarshal([]byte(ruleText), &again)
		var decoded any
		if json.Unmarshal([]byte(dataText), &decoded) != nil {
			return
		}
		data, ok := decoded.(map[string]any)
		if !ok {
			data = map[string]any{"val": decoded}
		}
		var dataCopy any
		_ = json.Unmarshal([]byte(dataText), &dataCopy)
		if _, isMap := dataCopy.(map[string]any); !isMap {
			dataCopy = map[string]any{"val": dataCopy}
		}

		first, err1 := evaluate(rule, data)
		if !reflect.DeepEqual(rule, again) {
			t.Fatalf("evaluate changed the rule %s into %#v", ruleText, rule)
		}
		if !reflect.DeepEqual(any(data), dataCopy) {
			t.Fatalf("evaluate of %s changed the data %s into %#v", ruleText, dataText, data)
		}
		second, err2 := evaluate(rule, data)
		if (err1 == nil) != (err2 == nil) || !sameResult(first, second) {
			t.Fatalf("evaluate %s on %s twice: %#v, %v then %#v, %v", ruleText, dataText, first, err1, second, err2)
		}
		if err1 != nil {
			if first != nil {
				t.Fatalf("evaluate returned %#v with error %v", first, err1)
			}
			checkReason(t, "evaluate "+ruleText+" error", err1.Error())
			return
		}
		for _, dt := range types {
			v, err := convert(first, dt)
			if err != nil {
				if err.Error() == "" {
					t.Fatalf("convert(%#v, %q): an error without a message", first, dt)
				}
				continue
			}
			switch x := v.(type) {
			case float64:
				if math.IsNaN(x) || math.IsInf(x, 0) || (dt != typeDecimal && dt != "") {
					t.Fatalf("convert(%#v, %q) = %v", first, dt, x)
				}
			case int64:
				if dt != typeInteger {
					t.Fatalf("convert(%#v, %q) = int64 %d", first, dt, x)
				}
			case bool:
				if dt != typeBoolean && dt != "" {
					t.Fatalf("convert(%#v, %q) = bool", first, dt)
				}
			case string:
				if dt != typeString && dt != "" {
					t.Fatalf("convert(%#v, %q) = string", first, dt)
				}
			case json.RawMessage:
				if (dt != typeJSON && dt != "") || !json.Valid(x) {
					t.Fatalf("convert(%#v, %q) = %s", first, dt, x)
				}
			default:
				t.Fatalf("convert(%#v, %q) = %T, outside the value model", first, dt, v)
			}
		}
	})
}
