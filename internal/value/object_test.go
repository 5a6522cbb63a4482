package value

import (
	"encoding/json"
	"math"
	"reflect"
	"testing"
)

func TestObject(t *testing.T) {
	tests := []struct {
		name string
		in   map[string]any
		want string
	}{
		{"empty", nil, `{}`},
		{"sorted keys", map[string]any{"b": int64(2), "a": 1.5}, `{"a":1.5,"b":2}`},
		{"whole float", map[string]any{"t": 12.0}, `{"t":12}`},
		{"small and large floats as encoding/json", map[string]any{"s": 1e-7, "l": 1e21, "m": 123456789.125}, `{"l":1e+21,"m":123456789.125,"s":1e-7}`},
		{"not finite", map[string]any{"n": math.NaN(), "i": math.Inf(1)}, `{"i":null,"n":null}`},
		{"types", map[string]any{"b": true, "s": "x", "j": json.RawMessage(`{"k":[1,2]}`), "z": nil}, `{"b":true,"j":{"k":[1,2]},"s":"x","z":null}`},
		{"escapes", map[string]any{"q\"k": "a\"b\\c\nd\te\x01f"}, `{"q\"k":"a\"b\\c\nd\te\u0001f"}`},
		{"NUL and invalid UTF-8 replaced", map[string]any{"k": "a\x00b\xffc"}, "{\"k\":\"a\ufffdb\ufffdc\"}"},
		{"line separators escaped", map[string]any{"k": "a\u2028b"}, `{"k":"a\u2028b"}`},
		{"other types through encoding/json", map[string]any{"k": []int{1, 2}}, `{"k":[1,2]}`},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got := Object(tt.in)
			if got != tt.want {
				t.Fatalf("Object = %s, want %s", got, tt.want)
			}
			if !json.Valid([]byte(got)) {
				t.Fatalf("%s is not valid JSON", got)
			}
		})
	}
}

func TestParseObject(t *testing.T) {
	tests := []struct {
		name    string
		in      string
		want    map[string]any
		wantErr bool
	}{
		{"empty", `{}`, map[string]any{}, false},
		{"postgres spacing", `{"a": 1, "b": 2.5, "c": "x", "d": true, "e": null}`,
			map[string]any{"a": int64(1), "b": 2.5, "c": "x", "d": true, "e": nil}, false},
		{"int64 kept exact", `{"big":9007199254740993}`, map[string]any{"big": int64(9007199254740993)}, false},
		{"beyond int64 is a float", `{"big":92233720368547758070}`, map[string]any{"big": 92233720368547758070.0}, false},
		{"exponent is a float", `{"e":1e2}`, map[string]any{"e": 100.0}, false},
		{"nested kept raw", `{"j": {"k": [1, "}"]}, "a": [1,{"x":"]"}]}`,
			map[string]any{"j": json.RawMessage(`{"k": [1, "}"]}`), "a": json.RawMessage(`[1,{"x":"]"}]`)}, false},
		{"escaped key and value", `{"q\"k":"a\u00e9\n"}`, map[string]any{"q\"k": "aé\n"}, false},
		{"not an object", `[1]`, nil, true},
		{"truncated", `{"a":1`, nil, true},
		{"trailing text", `{"a":1} x`, nil, true},
		{"bad literal", `{"a":tru}`, nil, true},
		{"bad number", `{"a":1.2.3}`, nil, true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := ParseObject(tt.in)
			if (err != nil) != tt.wantErr {
				t.Fatalf("ParseObject(%s) error = %v, want error %v", tt.in, err, tt.wantErr)
			}
			if err == nil && !reflect.DeepEqual(got, tt.want) {
				t.Fatalf("ParseObject(%s) = %#v, want %#v", tt.in, got, tt.want)
			}
		})
	}
}

// FuzzObject checks that what Object writes is valid JSON that reads back,
// through ParseObject and encoding/json alike, as the same values.
func FuzzObject(f *testing.F) {
	f.Add("temp_c", 12.5, int64(7), "ok", true)
	f.Add("k\x00\xff", math.MaxFloat64, int64(math.MinInt64), "\u2028\"\\", false)
	f.Fuzz(func(t *testing.T, key string, num float64, n int64, s string, b bool) {
		in := map[string]any{key: num, key + "i": n, key + "s": s, key + "b": b}
		text := Object(in)
		var std map[string]any
		if err := json.Unmarshal([]byte(text), &std); err != nil {
			t.Fatalf("Object wrote invalid JSON %q: %v", text, err)
		}
		got, err := ParseObject(text)
		if err != nil {
			t.Fatalf("ParseObject(%q): %v", text, err)
		}
		if len(got) != len(std) {
			t.Fatalf("ParseObject(%q) has %d keys, encoding/json %d", text, len(got), len(std))
		}
		for k, v := range std {
			g, ok := got[k]
			if !ok {
				t.Fatalf("key %q missing from ParseObject(%q)", k, text)
			}
			switch sv := v.(type) {
			case float64:
				var gf float64
				switch gv := g.(type) {
				case int64:
					gf = float64(gv)
				case float64:
					gf = gv
				default:
					t.Fatalf("key %q: %T, want a number", k, g)
				}
				if gf != sv {
					t.Fatalf("key %q: %v, encoding/json reads %v", k, gf, sv)
				}
			default:
				if !reflect.DeepEqual(g, v) {
					t.Fatalf("key %q: %#v, encoding/json reads %#v", k, g, v)
				}
			}
		}
	})
}
