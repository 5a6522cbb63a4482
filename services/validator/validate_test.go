package validator

import (
	"encoding/json"
	"errors"
	"fmt"
	"math/big"
	"math/rand/v2"
	"reflect"
	"strconv"
	"strings"
	"sync"
	"testing"

	"github.com/telemesh/telemesh/internal/catalog"
)

// param builds a definition; opts adjust it.
func param(key, path, dataType string, opts ...func(*catalog.Parameter)) catalog.Parameter {
	p := catalog.Parameter{Key: key, JSONPath: path, DataType: dataType}
	for _, o := range opts {
		o(&p)
	}
	return p
}

func required(p *catalog.Parameter) { p.Required = true }
func critical(p *catalog.Parameter) { p.Critical = true }
func minimum(v float64) func(*catalog.Parameter) {
	return func(p *catalog.Parameter) { p.Rules.Min = &v }
}
func maximum(v float64) func(*catalog.Parameter) {
	return func(p *catalog.Parameter) { p.Rules.Max = &v }
}
func pattern(re string) func(*catalog.Parameter) {
	return func(p *catalog.Parameter) { p.Rules.Regex = re }
}
func enum(e ...any) func(*catalog.Parameter) {
	return func(p *catalog.Parameter) { p.Rules.Enum = e }
}

// codes lists the parameter and code of each issue, which is what the
// tables compare; messages are for people.
func codes(issues []Issue) []string {
	out := make([]string, len(issues))
	for i, is := range issues {
		out[i] = is.Parameter + ":" + is.Code
	}
	return out
}

func nested(open, close string, n int) string {
	return strings.Repeat(open, n) + strings.Repeat(close, n)
}

func manyKeys(n int) string {
	var b strings.Builder
	b.WriteString("{")
	for i := range n {
		if i > 0 {
			b.WriteString(",")
		}
		fmt.Fprintf(&b, `"k%d":%d`, i, i)
	}
	b.WriteString("}")
	return b.String()
}

func TestDefaultLimits(t *testing.T) {
	want := Limits{MaxBytes: 256 * 1024, MaxKeys: 1000, MaxDepth: 32}
	if got := DefaultLimits(); got != want {
		t.Errorf("DefaultLimits() = %+v, want %+v", got, want)
	}
	if got := NewChecker(Limits{}).limits; got != want {
		t.Errorf("NewChecker(Limits{}) enforces %+v, want the defaults %+v", got, want)
	}
	custom := Limits{MaxBytes: 10, MaxKeys: 2, MaxDepth: 3}
	if got := NewChecker(custom).limits; got != custom {
		t.Errorf("NewChecker(%+v) enforces %+v", custom, got)
	}
}

func TestCheckPayloadIssues(t *testing.T) {
	def := DefaultLimits()
	atSize := `{"a":"` + strings.Repeat("x", def.MaxBytes-8) + `"}`
	if len(atSize) != def.MaxBytes {
		t.Fatalf("fixture is %d bytes, want %d", len(atSize), def.MaxBytes)
	}
	tests := []struct {
		name    string
		limits  Limits
		payload string
		code    string // empty: accepted
	}{
		{name: "exactly max bytes", payload: atSize},
		{name: "one byte over max bytes", payload: atSize + " ", code: CodePayloadTooLarge},
		{name: "huge payload", payload: strings.Repeat(" ", 10<<20), code: CodePayloadTooLarge},
		{name: "10000 keys", payload: manyKeys(10000), code: CodeTooManyKeys},
		{name: "exactly max keys", payload: manyKeys(1000)},
		{name: "one key over max keys", payload: manyKeys(1001), code: CodeTooManyKeys},
		{name: "keys counted over the whole document", limits: Limits{MaxKeys: 2}, payload: `{"a":{"b":{"c":1}}}`, code: CodeTooManyKeys},
		{name: "keys in arrays counted", limits: Limits{MaxKeys: 2}, payload: `{"a":[{"b":1},{"c":1}]}`, code: CodeTooManyKeys},
		{name: "colons in strings are not keys", limits: Limits{MaxKeys: 1}, payload: `{"a:b":"c:d:e"}`},
		{name: "100000 nested arrays", payload: nested("[", "]", 100000), code: CodeTooDeep},
		{name: "100000 nested arrays in an object", payload: `{"a":` + nested("[", "]", 100000) + `}`, code: CodeTooDeep},
		{name: "100000 unclosed arrays", payload: strings.Repeat("[", 100000), code: CodeTooDeep},
		{name: "100000 nested objects", limits: Limits{MaxBytes: 1 << 20}, payload: strings.Repeat(`{"a":`, 100000) + "1" + strings.Repeat("}", 100000), code: CodeTooDeep},
		{name: "many keys before depth", limits: Limits{MaxKeys: 2, MaxDepth: 1000}, payload: strings.Repeat(`{"a":`, 100) + "1" + strings.Repeat("}", 100), code: CodeTooManyKeys},
		{name: "exactly max depth", payload: `{"a":` + nested("[", "]", 31) + `}`},
		{name: "one over max depth", payload: `{"a":` + nested("[", "]", 32) + `}`, code: CodeTooDeep},
		{name: "brackets in strings are not depth", limits: Limits{MaxDepth: 1}, payload: `{"a":"[[[{{{"}`},
		{name: "escaped quote does not end a string", limits: Limits{MaxDepth: 1}, payload: `{"a":"\"[[["}`},
		{name: "syntax error", payload: `{"a":}`, code: CodeInvalidJSON},
		{name: "truncated", payload: `{"a":1`, code: CodeInvalidJSON},
		{name: "empty", payload: ``, code: CodeInvalidJSON},
		{name: "only whitespace", payload: " \n\t ", code: CodeInvalidJSON},
		{name: "NaN literal", payload: `{"a":NaN}`, code: CodeInvalidJSON},
		{name: "Infinity literal", payload: `{"a":Infinity}`, code: CodeInvalidJSON},
		{name: "negative Infinity literal", payload: `{"a":-Infinity}`, code: CodeInvalidJSON},
		{name: "single quotes", payload: `{'a':1}`, code: CodeInvalidJSON},
		{name: "trailing comma", payload: `{"a":1,}`, code: CodeInvalidJSON},
		{name: "two documents", payload: `{"a":1} {"b":2}`, code: CodeInvalidJSON},
		{name: "trailing garbage", payload: `{"a":1} x`, code: CodeInvalidJSON},
		{name: "trailing whitespace", payload: "{\"a\":1} \r\n\t"},
		{name: "byte order mark", payload: "\xef\xbb\xbf{\"a\":1}", code: CodeInvalidJSON},
		{name: "unbalanced close", payload: `]]]]{"a":1}`, code: CodeInvalidJSON},
		{name: "array", payload: `[1,2]`, code: CodeNotAnObject},
		{name: "empty array", payload: `[]`, code: CodeNotAnObject},
		{name: "string", payload: `"x"`, code: CodeNotAnObject},
		{name: "number", payload: `42`, code: CodeNotAnObject},
		{name: "null", payload: `null`, code: CodeNotAnObject},
		{name: "boolean", payload: `true`, code: CodeNotAnObject},
		{name: "invalid UTF-8 in a string", payload: "{\"a\":\"\xff\"}", code: CodeInvalidUTF8},
		{name: "invalid UTF-8 in a key", payload: "{\"\xc3\x28\":1}", code: CodeInvalidUTF8},
		{name: "invalid UTF-8 alone", payload: "\xff", code: CodeInvalidUTF8},
		{name: "overlong UTF-8", payload: "{\"a\":\"\xc0\xaf\"}", code: CodeInvalidUTF8},
		{name: "UTF-8 text", payload: `{"a":"héllo 日本 🚀"}`},
		{name: "empty object", payload: `{}`},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			values, issues := NewChecker(tt.limits).Check([]byte(tt.payload), nil)
			if tt.code == "" {
				if len(issues) != 0 || values == nil {
					t.Fatalf("Check = %v, %+v; want accepted", values, issues)
				}
				return
			}
			if values != nil {
				t.Errorf("values = %v, want none", values)
			}
			if len(issues) != 1 {
				t.Fatalf("issues = %+v, want one %s", issues, tt.code)
			}
			is := issues[0]
			if is.Code != tt.code || is.Parameter != "" || !is.Critical || is.Message == "" {
				t.Errorf("issue = %+v, want payload-level critical %s with a message", is, tt.code)
			}
		})
	}
}

// TestCheckPayloadIssueStopsParameters shows a payload issue is the only
// one: parameters, even required ones with broken rules, are not looked at.
func TestCheckPayloadIssueStopsParameters(t *testing.T) {
	params := []catalog.Parameter{
		param("temp_c", "$.temp_c", TypeDecimal, required, critical),
		param("bad", "$..", TypeString),
	}
	values, issues := NewChecker(DefaultLimits()).Check([]byte(`[1]`), params)
	if values != nil || !reflect.DeepEqual(codes(issues), []string{":not_an_object"}) {
		t.Errorf("Check = %v, %v; want only :not_an_object", values, codes(issues))
	}
}

func TestCheckTypes(t *testing.T) {
	tests := []struct {
		name     string
		dataType string
		raw      string // the JSON of field v
		want     any    // nil: absent
		code     string
	}{
		{name: "integer", dataType: TypeInteger, raw: `12`, want: int64(12)},
		{name: "integer negative", dataType: TypeInteger, raw: `-7`, want: int64(-7)},
		{name: "integer zero fraction", dataType: TypeInteger, raw: `12.0`, want: int64(12)},
		{name: "integer exponent", dataType: TypeInteger, raw: `1.2e1`, want: int64(12)},
		{name: "integer big exponent", dataType: TypeInteger, raw: `1E18`, want: int64(1e18)},
		{name: "integer negative zero", dataType: TypeInteger, raw: `-0.0`, want: int64(0)},
		{name: "integer zero with huge exponent", dataType: TypeInteger, raw: `0e999999999999999999999`, want: int64(0)},
		{name: "integer beyond float precision", dataType: TypeInteger, raw: `9007199254740993`, want: int64(9007199254740993)},
		{name: "integer max", dataType: TypeInteger, raw: `9223372036854775807`, want: int64(9223372036854775807)},
		{name: "integer min", dataType: TypeInteger, raw: `-9223372036854775808`, want: int64(-9223372036854775808)},
		{name: "integer min with fraction", dataType: TypeInteger, raw: `-9223372036854775808.000`, want: int64(-9223372036854775808)},
		{name: "integer over max", dataType: TypeInteger, raw: `9223372036854775808`, code: CodeType},
		{name: "integer 1e19", dataType: TypeInteger, raw: `1e19`, code: CodeType},
		{name: "integer fraction", dataType: TypeInteger, raw: `12.5`, code: CodeType},
		{name: "integer tiny fraction", dataType: TypeInteger, raw: `1.0000000000000000001`, code: CodeType},
		{name: "integer negative exponent", dataType: TypeInteger, raw: `15e-1`, code: CodeType},
		{name: "integer underflow", dataType: TypeInteger, raw: `1e-400`, code: CodeType},
		{name: "integer beyond float64", dataType: TypeInteger, raw: `1e400`, code: CodeInvalidNumber},
		{name: "integer with the smallest exponent", dataType: TypeInteger, raw: `1.5e-9223372036854775808`, code: CodeType},
		{name: "integer with an exponent beyond int64", dataType: TypeInteger, raw: `1e-99999999999999999999`, code: CodeType},
		{name: "integer zero with the smallest exponent", dataType: TypeInteger, raw: `0.0e-9223372036854775808`, want: int64(0)},
		{name: "integer trailing zeros cancel the exponent", dataType: TypeInteger, raw: `1000e-3`, want: int64(1)},
		{name: "integer leading zeros in the fraction", dataType: TypeInteger, raw: `0.0012e4`, want: int64(12)},
		{name: "integer from string is strict", dataType: TypeInteger, raw: `"12"`, code: CodeType},
		{name: "integer from boolean", dataType: TypeInteger, raw: `true`, code: CodeType},
		{name: "integer from object", dataType: TypeInteger, raw: `{}`, code: CodeType},
		{name: "integer from array", dataType: TypeInteger, raw: `[12]`, code: CodeType},
		{name: "decimal", dataType: TypeDecimal, raw: `21.5`, want: 21.5},
		{name: "decimal from integer literal", dataType: TypeDecimal, raw: `12`, want: 12.0},
		{name: "decimal negative exponent", dataType: TypeDecimal, raw: `-1.5e-3`, want: -0.0015},
		{name: "decimal largest", dataType: TypeDecimal, raw: `1.7976931348623157e308`, want: 1.7976931348623157e308},
		{name: "decimal 1e400", dataType: TypeDecimal, raw: `1e400`, code: CodeInvalidNumber},
		{name: "decimal -1e400", dataType: TypeDecimal, raw: `-1e400`, code: CodeInvalidNumber},
		{name: "decimal underflow is zero", dataType: TypeDecimal, raw: `1e-400`, want: 0.0},
		{name: "decimal from string is strict", dataType: TypeDecimal, raw: `"21.5"`, code: CodeType},
		{name: "decimal from NaN string", dataType: TypeDecimal, raw: `"NaN"`, code: CodeType},
		{name: "decimal from boolean", dataType: TypeDecimal, raw: `false`, code: CodeType},
		{name: "boolean true", dataType: TypeBoolean, raw: `true`, want: true},
		{name: "boolean false", dataType: TypeBoolean, raw: `false`, want: false},
		{name: "boolean from string", dataType: TypeBoolean, raw: `"true"`, code: CodeType},
		{name: "boolean from number", dataType: TypeBoolean, raw: `1`, code: CodeType},
		{name: "string", dataType: TypeString, raw: `"heat"`, want: "heat"},
		{name: "string empty is present", dataType: TypeString, raw: `""`, want: ""},
		{name: "string escapes", dataType: TypeString, raw: `"a\"b\u00e9\n"`, want: "a\"bé\n"},
		{name: "string from number", dataType: TypeString, raw: `12`, code: CodeType},
		{name: "string from object", dataType: TypeString, raw: `{"a":1}`, code: CodeType},
		{name: "json object", dataType: TypeJSON, raw: `{"b": [1, 2], "a": "<x>"}`, want: json.RawMessage(`{"a":"<x>","b":[1,2]}`)},
		{name: "json array", dataType: TypeJSON, raw: `[1, "two", true, null]`, want: json.RawMessage(`[1,"two",true,null]`)},
		{name: "json number keeps its literal", dataType: TypeJSON, raw: `12.50`, want: json.RawMessage(`12.50`)},
		{name: "json huge number kept as written", dataType: TypeJSON, raw: `1e400`, want: json.RawMessage(`1e400`)},
		{name: "json string", dataType: TypeJSON, raw: `"s&t"`, want: json.RawMessage(`"s&t"`)},
		{name: "json boolean", dataType: TypeJSON, raw: `false`, want: json.RawMessage(`false`)},
		{name: "null is absent", dataType: TypeDecimal, raw: `null`},
		{name: "json null is absent", dataType: TypeJSON, raw: `null`},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			payload := []byte(`{"v":` + tt.raw + `}`)
			values, issues := NewChecker(DefaultLimits()).Check(payload, []catalog.Parameter{param("v", "$.v", tt.dataType, critical)})
			if tt.code != "" {
				if values != nil || len(issues) != 1 || issues[0].Code != tt.code || issues[0].Parameter != "v" || !issues[0].Critical {
					t.Fatalf("Check(%s) = %v, %+v; want one critical v:%s", payload, values, issues, tt.code)
				}
				return
			}
			if len(issues) != 0 {
				t.Fatalf("Check(%s) issues = %+v, want none", payload, issues)
			}
			got, ok := values["v"]
			if tt.want == nil {
				if ok {
					t.Errorf("Check(%s) v = %#v, want absent", payload, got)
				}
				return
			}
			if !reflect.DeepEqual(got, tt.want) {
				t.Errorf("Check(%s) v = %#v (%T), want %#v (%T)", payload, got, got, tt.want, tt.want)
			}
		})
	}
}

// TestIntegerAgreesWithBigRat checks the exact integer conversion against
// math/big on random literals near the edges: long fractions, trailing
// zeros, exponents that cancel them, values around the int64 limits.
func TestIntegerAgreesWithBigRat(t *testing.T) {
	rng := rand.New(rand.NewPCG(1, 2))
	digits := func(n int) string {
		var b strings.Builder
		for range n {
			b.WriteByte(byte('0' + rng.IntN(10)))
		}
		return b.String()
	}
	for range 20000 {
		lit := ""
		if rng.IntN(2) == 0 {
			lit = "-"
		}
		if rng.IntN(4) == 0 {
			lit += "0"
		} else {
			lit += string(byte('1'+rng.IntN(9))) + digits(rng.IntN(22))
		}
		if rng.IntN(2) == 0 {
			lit += "." + digits(1+rng.IntN(6)) + strings.Repeat("0", rng.IntN(4))
		}
		if rng.IntN(2) == 0 {
			lit += "e" + strconv.Itoa(rng.IntN(50)-25)
		}
		r, ok := new(big.Rat).SetString(lit)
		if !ok {
			t.Fatalf("big.Rat cannot parse %q", lit)
		}
		v, code, _ := integer(lit)
		wantOK := r.IsInt() && r.Num().IsInt64()
		if wantOK != (code == "") {
			t.Fatalf("integer(%q) = %v, %q; big.Rat says integral int64 = %v", lit, v, code, wantOK)
		}
		if wantOK && v.(int64) != r.Num().Int64() {
			t.Fatalf("integer(%q) = %d, want %d", lit, v, r.Num().Int64())
		}
	}
}

func TestCheckRequired(t *testing.T) {
	tests := []struct {
		name    string
		param   catalog.Parameter
		payload string
		codes   []string
	}{
		{name: "absent and required", param: param("t", "$.t", TypeDecimal, required), payload: `{}`, codes: []string{"t:required"}},
		{name: "null and required", param: param("t", "$.t", TypeDecimal, required), payload: `{"t":null}`, codes: []string{"t:required"}},
		{name: "absent on the way and required", param: param("t", "$.a.b.t", TypeDecimal, required), payload: `{"a":1}`, codes: []string{"t:required"}},
		{name: "absent and optional", param: param("t", "$.t", TypeDecimal), payload: `{}`, codes: []string{}},
		{name: "null and optional", param: param("t", "$.t", TypeString), payload: `{"t":null}`, codes: []string{}},
		{name: "present and required", param: param("t", "$.t", TypeBoolean, required), payload: `{"t":false}`, codes: []string{}},
		{name: "wrong type is not missing", param: param("t", "$.t", TypeBoolean, required), payload: `{"t":"no"}`, codes: []string{"t:type"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, issues := NewChecker(DefaultLimits()).Check([]byte(tt.payload), []catalog.Parameter{tt.param})
			if got := codes(issues); !reflect.DeepEqual(got, tt.codes) {
				t.Errorf("issues = %v, want %v (%+v)", got, tt.codes, issues)
			}
		})
	}
}

func TestCheckRules(t *testing.T) {
	tests := []struct {
		name  string
		param catalog.Parameter
		raw   string
		codes []string
	}{
		{name: "min inclusive", param: param("v", "$.v", TypeDecimal, minimum(-50)), raw: `-50`},
		{name: "below min", param: param("v", "$.v", TypeDecimal, minimum(-50)), raw: `-50.01`, codes: []string{"v:min"}},
		{name: "max inclusive", param: param("v", "$.v", TypeDecimal, maximum(150)), raw: `150`},
		{name: "above max", param: param("v", "$.v", TypeDecimal, maximum(150)), raw: `150.5`, codes: []string{"v:max"}},
		{name: "within min and max", param: param("v", "$.v", TypeDecimal, minimum(0), maximum(100)), raw: `50`},
		{name: "integer min", param: param("v", "$.v", TypeInteger, minimum(0)), raw: `-1`, codes: []string{"v:min"}},
		{name: "integer against fractional max", param: param("v", "$.v", TypeInteger, maximum(10.5)), raw: `11`, codes: []string{"v:max"}},
		{name: "integer below fractional max", param: param("v", "$.v", TypeInteger, maximum(10.5)), raw: `10`},
		{name: "integer max compared exactly", param: param("v", "$.v", TypeInteger, maximum(9007199254740992)), raw: `9007199254740993`, codes: []string{"v:max"}},
		{name: "integer far below huge max", param: param("v", "$.v", TypeInteger, maximum(1e30)), raw: `9223372036854775807`},
		{name: "integer above huge negative min", param: param("v", "$.v", TypeInteger, minimum(-1e30)), raw: `-9223372036854775808`},
		{name: "regex matches", param: param("v", "$.v", TypeString, pattern(`^v[0-9]+\.[0-9]+$`)), raw: `"v1.2"`},
		{name: "regex does not match", param: param("v", "$.v", TypeString, pattern(`^v[0-9]+\.[0-9]+$`)), raw: `"1.2"`, codes: []string{"v:regex"}},
		{name: "regex unanchored matches inside", param: param("v", "$.v", TypeString, pattern(`[0-9]`)), raw: `"abc1"`},
		{name: "regex does not compile", param: param("v", "$.v", TypeString, pattern(`(unclosed`)), raw: `"x"`, codes: []string{"v:rule_invalid"}},
		{name: "regex with backreference is not RE2", param: param("v", "$.v", TypeString, pattern(`(a)\1`)), raw: `"aa"`, codes: []string{"v:rule_invalid"}},
		{name: "regex on a decimal", param: param("v", "$.v", TypeDecimal, pattern(`^1`)), raw: `1`, codes: []string{"v:rule_invalid"}},
		{name: "enum string", param: param("v", "$.v", TypeString, enum("heat", "cool", "off")), raw: `"cool"`},
		{name: "enum string is exact", param: param("v", "$.v", TypeString, enum("heat", "cool", "off")), raw: `"Cool"`, codes: []string{"v:enum"}},
		{name: "enum integer against float entries", param: param("v", "$.v", TypeInteger, enum(1.0, 2.0, 3.0)), raw: `2`},
		{name: "enum integer against int entries", param: param("v", "$.v", TypeInteger, enum(1, 2, 3)), raw: `3.0`},
		{name: "enum integer not listed", param: param("v", "$.v", TypeInteger, enum(1, 2, 3)), raw: `4`, codes: []string{"v:enum"}},
		{name: "enum integer never equals a fraction", param: param("v", "$.v", TypeInteger, enum(2.5)), raw: `2`, codes: []string{"v:enum"}},
		{name: "enum decimal numerically", param: param("v", "$.v", TypeDecimal, enum(0.5, int64(2))), raw: `2.0`},
		{name: "enum decimal from json.Number entry", param: param("v", "$.v", TypeDecimal, enum(json.Number("0.50"))), raw: `0.5`},
		{name: "enum boolean", param: param("v", "$.v", TypeBoolean, enum(true)), raw: `true`},
		{name: "enum boolean not listed", param: param("v", "$.v", TypeBoolean, enum(true)), raw: `false`, codes: []string{"v:enum"}},
		{name: "empty enum is no rule", param: param("v", "$.v", TypeString, enum()), raw: `"x"`},
		{name: "enum entry of another kind", param: param("v", "$.v", TypeString, enum("a", 1)), raw: `"a"`, codes: []string{"v:rule_invalid"}},
		{name: "enum number entry for boolean", param: param("v", "$.v", TypeBoolean, enum(1)), raw: `true`, codes: []string{"v:rule_invalid"}},
		{name: "enum null entry", param: param("v", "$.v", TypeDecimal, enum(nil)), raw: `1`, codes: []string{"v:rule_invalid"}},
		{name: "enum on json", param: param("v", "$.v", TypeJSON, enum("a")), raw: `"a"`, codes: []string{"v:rule_invalid"}},
		{name: "regex and enum both fail", param: param("v", "$.v", TypeString, pattern(`^[a-z]+$`), enum("a", "b")), raw: `"C"`, codes: []string{"v:regex", "v:enum"}},
		{name: "max and enum both fail", param: param("v", "$.v", TypeDecimal, maximum(1), enum(0.5)), raw: `2`, codes: []string{"v:max", "v:enum"}},
		{name: "min above max", param: param("v", "$.v", TypeDecimal, minimum(10), maximum(1)), raw: `5`, codes: []string{"v:rule_invalid"}},
		{name: "min on a string", param: param("v", "$.v", TypeString, minimum(1)), raw: `"abc"`, codes: []string{"v:rule_invalid"}},
		{name: "max on a boolean", param: param("v", "$.v", TypeBoolean, maximum(1)), raw: `true`, codes: []string{"v:rule_invalid"}},
		{name: "unknown data type", param: param("v", "$.v", "float"), raw: `1.5`, codes: []string{"v:rule_invalid"}},
		{name: "rule invalid even when absent", param: param("v", "$.absent", TypeString, pattern(`[`)), raw: `1`, codes: []string{"v:rule_invalid"}},
		{name: "rules skipped when absent", param: param("v", "$.absent", TypeDecimal, minimum(1)), raw: `0`},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			tt.param.Critical = true
			values, issues := NewChecker(DefaultLimits()).Check([]byte(`{"v":`+tt.raw+`}`), []catalog.Parameter{tt.param})
			want := tt.codes
			if want == nil {
				want = []string{}
			}
			if got := codes(issues); !reflect.DeepEqual(got, want) {
				t.Fatalf("issues = %v, want %v (%+v)", got, want, issues)
			}
			for _, is := range issues {
				if !is.Critical || is.Message == "" {
					t.Errorf("issue %+v: want critical with a message", is)
				}
			}
			if (len(issues) > 0) != (values == nil) {
				t.Errorf("values = %v with %d issues; want values exactly when there is no issue", values, len(issues))
			}
		})
	}
}

func TestCheckIssueMessages(t *testing.T) {
	long := strings.Repeat("é", 200)
	params := []catalog.Parameter{
		param("temp_c", "$.temp_c", TypeDecimal, maximum(150)),
		param("mode", "$.mode", TypeString, enum("heat", "cool")),
		param("missing", "$.missing", TypeInteger, required),
		param("firmware", "$.fw", TypeString, pattern(`^v[0-9]+$`)),
		param("count", "$.count", TypeInteger),
	}
	payload := fmt.Sprintf(`{"temp_c":151.5,"mode":"warm","fw":%q,"count":"3"}`, long)
	_, issues := NewChecker(DefaultLimits()).Check([]byte(payload), params)
	want := []string{
		"151.5 is above the maximum 150",
		`"warm" is not one of ["heat","cool"]`,
		"required value missing at $.missing",
		`does not match ^v[0-9]+$`,
		`want an integer, got string "3"`,
	}
	if len(issues) != len(want) {
		t.Fatalf("issues = %+v, want %d", issues, len(want))
	}
	for i, w := range want {
		if !strings.Contains(issues[i].Message, w) {
			t.Errorf("issue %d message %q, want it to contain %q", i, issues[i].Message, w)
		}
	}
	if n := len(issues[3].Message); n > 200 {
		t.Errorf("message repeats %d bytes of the value, want it shortened: %q", n, issues[3].Message)
	}
}

func TestCheckPaths(t *testing.T) {
	payload := []byte(`{
		"temp_c": 21.5,
		"meta": {"firmware": "v1.2", "sensors": [{"id": "a", "v": 1}, {"id": "b", "v": 2}]},
		"key with.dot": 7,
		"a.b": 8,
		"a": {"b": 9},
		"it's": 10,
		"say \"hi\"": 11,
		"$x": 12,
		"日本": 13,
		"back\\slash": 14,
		"": 15,
		"rows": [[1, 2], [3, 4]]
	}`)
	tests := []struct {
		name     string
		path     string
		dataType string
		want     any // nil: absent
		code     string
	}{
		{name: "dollar dot", path: "$.temp_c", dataType: TypeDecimal, want: 21.5},
		{name: "bare key", path: "temp_c", dataType: TypeDecimal, want: 21.5},
		{name: "dollar nested", path: "$.meta.firmware", dataType: TypeString, want: "v1.2"},
		{name: "no dollar nested", path: "meta.firmware", dataType: TypeString, want: "v1.2"},
		{name: "index then key", path: "$.meta.sensors[1].v", dataType: TypeInteger, want: int64(2)},
		{name: "no dollar index", path: "meta.sensors[0].id", dataType: TypeString, want: "a"},
		{name: "nested indexes", path: "$.rows[1][0]", dataType: TypeInteger, want: int64(3)},
		{name: "quoted key with dot", path: "$['key with.dot']", dataType: TypeInteger, want: int64(7)},
		{name: "double quoted key with dot", path: `$["key with.dot"]`, dataType: TypeInteger, want: int64(7)},
		{name: "quoted dotted key is one key", path: "$['a.b']", dataType: TypeInteger, want: int64(8)},
		{name: "dotted path is two keys", path: "$.a.b", dataType: TypeInteger, want: int64(9)},
		{name: "quoted then dotted", path: "$['a'].b", dataType: TypeInteger, want: int64(9)},
		{name: "all brackets", path: "$['meta']['sensors'][1]['id']", dataType: TypeString, want: "b"},
		{name: "escaped single quote", path: `$['it\'s']`, dataType: TypeInteger, want: int64(10)},
		{name: "double quote in single quotes", path: `$['say "hi"']`, dataType: TypeInteger, want: int64(11)},
		{name: "escaped double quote", path: `$["say \"hi\""]`, dataType: TypeInteger, want: int64(11)},
		{name: "escaped backslash", path: `$['back\\slash']`, dataType: TypeInteger, want: int64(14)},
		{name: "empty quoted key", path: `$['']`, dataType: TypeInteger, want: int64(15)},
		{name: "bare key starting with dollar", path: "$x", dataType: TypeInteger, want: int64(12)},
		{name: "unicode name", path: "$.日本", dataType: TypeInteger, want: int64(13)},
		{name: "whole payload", path: "$", dataType: TypeJSON, want: nil},
		{name: "index past the end", path: "$.meta.sensors[5].v", dataType: TypeInteger},
		{name: "key into a number", path: "$.temp_c.x", dataType: TypeInteger},
		{name: "index into an object", path: "$.meta[0]", dataType: TypeJSON},
		{name: "key into an array", path: "$.rows.x", dataType: TypeJSON},
		{name: "index into the root object", path: "[0]", dataType: TypeJSON},
		{name: "missing key", path: "$.nope", dataType: TypeJSON},
		{name: "empty path", path: "", code: CodeRuleInvalid},
		{name: "dollar dot only", path: "$.", code: CodeRuleInvalid},
		{name: "recursive descent", path: "$..a", code: CodeRuleInvalid},
		{name: "leading dot", path: ".a", code: CodeRuleInvalid},
		{name: "trailing dot", path: "a.", code: CodeRuleInvalid},
		{name: "double dot", path: "a..b", code: CodeRuleInvalid},
		{name: "unterminated bracket", path: "$.a[", code: CodeRuleInvalid},
		{name: "unterminated index", path: "$.a[1", code: CodeRuleInvalid},
		{name: "non-numeric index", path: "$.a[x]", code: CodeRuleInvalid},
		{name: "negative index", path: "$.a[-1]", code: CodeRuleInvalid},
		{name: "empty brackets", path: "$[]", code: CodeRuleInvalid},
		{name: "huge index", path: "$[99999999999999999999]", code: CodeRuleInvalid},
		{name: "wildcard index", path: "$.a[*]", code: CodeRuleInvalid},
		{name: "wildcard name", path: "$.*", code: CodeRuleInvalid},
		{name: "filter", path: "$.a[?(@.v>1)]", code: CodeRuleInvalid},
		{name: "unterminated quote", path: "$['a", code: CodeRuleInvalid},
		{name: "quote without bracket", path: "$['a'", code: CodeRuleInvalid},
		{name: "junk after bracket", path: "$['a']x", code: CodeRuleInvalid},
		{name: "unknown escape", path: `$['a\x']`, code: CodeRuleInvalid},
		{name: "space in dotted name", path: "$.temp c", code: CodeRuleInvalid},
		{name: "trailing space", path: "$.temp_c ", code: CodeRuleInvalid},
		{name: "stray close bracket", path: "$.a]", code: CodeRuleInvalid},
		{name: "quote in dotted name", path: "$.it's", code: CodeRuleInvalid},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			dataType := tt.dataType
			if dataType == "" {
				dataType = TypeJSON
			}
			values, issues := NewChecker(DefaultLimits()).Check(payload, []catalog.Parameter{param("p", tt.path, dataType)})
			if tt.code != "" {
				if len(issues) != 1 || issues[0].Code != tt.code || issues[0].Parameter != "p" {
					t.Fatalf("Check(path %q) = %v, %+v; want one p:%s", tt.path, values, issues, tt.code)
				}
				return
			}
			if len(issues) != 0 {
				t.Fatalf("Check(path %q) issues = %+v, want none", tt.path, issues)
			}
			got, ok := values["p"]
			switch {
			case tt.path == "$":
				var doc map[string]any
				if err := json.Unmarshal(got.(json.RawMessage), &doc); err != nil || doc["temp_c"] != 21.5 {
					t.Errorf("path $ = %s, want the whole payload", got)
				}
			case tt.want == nil && ok:
				t.Errorf("path %q = %#v, want absent", tt.path, got)
			case tt.want != nil && !reflect.DeepEqual(got, tt.want):
				t.Errorf("path %q = %#v, want %#v", tt.path, got, tt.want)
			}
		})
	}
}

// TestCheckValidationHalt is BEHAVIOUR.md's test 2: a payload missing a
// required critical parameter halts with the reason for that parameter.
func TestCheckValidationHalt(t *testing.T) {
	params := []catalog.Parameter{
		param("temp_c", "$.temp_c", TypeDecimal, required, critical, minimum(-50), maximum(150)),
		param("humidity", "$.humidity", TypeDecimal, minimum(0), maximum(100)),
		param("status", "$.status", TypeString, enum("ok", "warn")),
	}
	c := NewChecker(DefaultLimits())
	t.Run("missing required critical parameter", func(t *testing.T) {
		values, issues := c.Check([]byte(`{"humidity": 50}`), params)
		if values != nil {
			t.Errorf("values = %v, want none: a halted message carries no values", values)
		}
		if len(issues) != 1 {
			t.Fatalf("issues = %+v, want one", issues)
		}
		is := issues[0]
		is.Message = ""
		if want := (Issue{Parameter: "temp_c", Code: CodeRequired, Critical: true}); is != want {
			t.Errorf("issue = %+v, want %+v", is, want)
		}
	})
	t.Run("valid message", func(t *testing.T) {
		values, issues := c.Check([]byte(`{"temp_c": 10, "humidity": 50, "status": "ok", "extra": [1]}`), params)
		if len(issues) != 0 {
			t.Fatalf("issues = %+v, want none", issues)
		}
		want := map[string]any{"temp_c": 10.0, "humidity": 50.0, "status": "ok"}
		if !reflect.DeepEqual(values, want) {
			t.Errorf("values = %#v, want %#v", values, want)
		}
	})
	t.Run("optional parameters may be absent", func(t *testing.T) {
		values, issues := c.Check([]byte(`{"temp_c": -50}`), params)
		if len(issues) != 0 || !reflect.DeepEqual(values, map[string]any{"temp_c": -50.0}) {
			t.Errorf("Check = %v, %+v; want temp_c only", values, issues)
		}
	})
}

// TestCheckReportsEveryIssue shows extraction goes on after an issue and
// the issues come in definition order with each parameter's critical flag.
func TestCheckReportsEveryIssue(t *testing.T) {
	params := []catalog.Parameter{
		param("temp_c", "$.temp_c", TypeDecimal, required, critical, maximum(150)),
		param("co2", "$.co2", TypeInteger, required),
		param("mode", "$.mode", TypeString, enum("heat", "cool")),
		param("ok", "$.ok", TypeBoolean),
		param("bad_path", "$.[", TypeString, critical),
		param("fine", "$.fine", TypeString),
	}
	values, issues := NewChecker(DefaultLimits()).Check([]byte(`{"temp_c": 200, "mode": "warm", "ok": "yes", "fine": "x"}`), params)
	if values != nil {
		t.Errorf("values = %v, want none", values)
	}
	want := []Issue{
		{Parameter: "temp_c", Code: CodeMax, Critical: true},
		{Parameter: "co2", Code: CodeRequired},
		{Parameter: "mode", Code: CodeEnum},
		{Parameter: "ok", Code: CodeType},
		{Parameter: "bad_path", Code: CodeRuleInvalid, Critical: true},
	}
	for i := range issues {
		issues[i].Message = ""
	}
	if !reflect.DeepEqual(issues, want) {
		t.Errorf("issues = %+v\nwant %+v", issues, want)
	}
}

// TestCheckSQLLookingData shows keys and values that look like SQL are
// data like any other.
func TestCheckSQLLookingData(t *testing.T) {
	const drop = `'; drop table devices; --`
	payload, _ := json.Marshal(map[string]any{
		drop:       drop,
		"name":     "Robert'); DROP TABLE students;--",
		"nested":   map[string]any{drop: 1},
		"$['x']":   "bracket-looking key",
		"1 OR 1=1": true,
	})
	params := []catalog.Parameter{
		param("drop", `$["'; drop table devices; --"]`, TypeString, required),
		param("name", "name", TypeString, required),
		param("nested", "$.nested", TypeJSON, required),
		param("nested_drop", `$.nested["'; drop table devices; --"]`, TypeInteger, required),
		param("bracket", `$["$['x']"]`, TypeString, required),
		param("or", `$['1 OR 1=1']`, TypeBoolean, required),
	}
	values, issues := NewChecker(DefaultLimits()).Check(payload, params)
	if len(issues) != 0 {
		t.Fatalf("issues = %+v", issues)
	}
	want := map[string]any{
		"drop":        drop,
		"name":        "Robert'); DROP TABLE students;--",
		"nested":      json.RawMessage(`{"'; drop table devices; --":1}`),
		"nested_drop": int64(1),
		"bracket":     "bracket-looking key",
		"or":          true,
	}
	if !reflect.DeepEqual(values, want) {
		t.Errorf("values = %#v\nwant %#v", values, want)
	}
	t.Run("as a path that does not parse", func(t *testing.T) {
		_, issues := NewChecker(DefaultLimits()).Check(payload, []catalog.Parameter{param("p", drop, TypeString)})
		if got := codes(issues); !reflect.DeepEqual(got, []string{"p:rule_invalid"}) {
			t.Errorf("issues = %v, want p:rule_invalid", got)
		}
	})
}

// TestCheckerCompilesOnce shows a regex and a path are compiled on first
// use only, so later messages never compile one.
func TestCheckerCompilesOnce(t *testing.T) {
	c := NewChecker(DefaultLimits())
	var regexBuilds, pathBuilds int
	buildRegex, buildPath := c.regexes.build, c.paths.build
	c.regexes.build = func(s string) compiledRegex { regexBuilds++; return buildRegex(s) }
	c.paths.build = func(s string) compiledPath { pathBuilds++; return buildPath(s) }
	params := []catalog.Parameter{
		param("fw", "$.fw", TypeString, pattern(`^v[0-9]+$`)),
		param("bad", "$.bad", TypeString, pattern(`(`)),
		param("same", "$.other", TypeString, pattern(`^v[0-9]+$`)),
	}
	for range 100 {
		c.Check([]byte(`{"fw":"v1","bad":"x","other":"v2"}`), params)
	}
	if regexBuilds != 2 || pathBuilds != 3 {
		t.Errorf("compiled %d regexes and %d paths over 100 messages, want 2 and 3", regexBuilds, pathBuilds)
	}
}

func TestCacheIsBounded(t *testing.T) {
	c := cache[int]{build: func(s string) int { return len(s) }}
	for i := range maxCached + 10 {
		c.get(fmt.Sprint(i))
	}
	if n := c.len(); n > maxCached {
		t.Errorf("cache holds %d entries, want at most %d", n, maxCached)
	}
	if got := c.get("abc"); got != 3 {
		t.Errorf("get(abc) = %d after eviction, want 3", got)
	}
}

// TestCheckerConcurrent is for the race detector: one checker, many
// goroutines, cold caches.
func TestCheckerConcurrent(t *testing.T) {
	c := NewChecker(DefaultLimits())
	params := []catalog.Parameter{
		param("temp_c", "$.temp_c", TypeDecimal, required, maximum(150)),
		param("fw", "$.meta.fw", TypeString, pattern(`^v[0-9]+$`)),
		param("bad", "$.bad", TypeString, pattern(`[`)),
	}
	var wg sync.WaitGroup
	for g := range 16 {
		wg.Go(func() {
			for i := range 200 {
				payload := fmt.Sprintf(`{"temp_c": %d, "meta": {"fw": "v%d"}}`, g*i%300, i)
				_, issues := c.Check([]byte(payload), params)
				if len(issues) == 0 || issues[len(issues)-1].Code != CodeRuleInvalid {
					t.Errorf("issues = %+v, want the invalid regex reported", issues)
					return
				}
			}
		})
	}
	wg.Wait()
}

func TestValidateDefinition(t *testing.T) {
	tests := []struct {
		name  string
		param catalog.Parameter
		want  error
	}{
		{name: "valid", param: param("t", "$.t", TypeDecimal, minimum(0), maximum(10))},
		{name: "valid string rules", param: param("t", "t", TypeString, pattern(`^a`), enum("a", "ab"))},
		{name: "malformed path", param: param("t", "$..t", TypeDecimal), want: ErrInvalidPath},
		{name: "unknown type", param: param("t", "$.t", "number"), want: ErrUnknownType},
		{name: "bad regex", param: param("t", "$.t", TypeString, pattern(`*`)), want: ErrInvalidRule},
		{name: "min above max", param: param("t", "$.t", TypeInteger, minimum(2), maximum(1)), want: ErrInvalidRule},
		{name: "rule of the wrong kind", param: param("t", "$.t", TypeBoolean, pattern(`x`)), want: ErrInvalidRule},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			err := ValidateDefinition(tt.param)
			if !errors.Is(err, tt.want) || (tt.want == nil) != (err == nil) {
				t.Errorf("ValidateDefinition = %v, want %v", err, tt.want)
			}
		})
	}
}

// fuzzParams cover every data type and rule kind.
var fuzzParams = []catalog.Parameter{
	param("temp_c", "$.temp_c", TypeDecimal, required, critical, minimum(-50), maximum(150)),
	param("co2", "co2", TypeInteger, minimum(0), enum(400, 800, 1200)),
	param("fw", "$.meta.firmware", TypeString, pattern(`^v[0-9]+\.[0-9]+$`)),
	param("mode", "$['mode']", TypeString, enum("heat", "cool", "off")),
	param("on", "$.flags[0]", TypeBoolean),
	param("raw", "$.meta", TypeJSON),
	param("id", "$.message_id", TypeString),
}

func FuzzCheck(f *testing.F) {
	for _, s := range []string{
		`{"temp_c": 21.5, "co2": 800, "meta": {"firmware": "v1.2"}, "mode": "heat", "flags": [true]}`,
		`{"humidity": 50}`,
		`{"temp_c": 1e400}`,
		`{"temp_c": NaN}`,
		`{"temp_c": Infinity, "co2": -Infinity}`,
		`{"co2": 12.0, "temp_c": "21"}`,
		`{"co2": 9223372036854775808, "temp_c": -51}`,
		`{"co2": 1.5e-9223372036854775808, "temp_c": 0.0012e4}`,
		`{"co2": 8.00e2, "temp_c": 150, "mode": "off", "flags": [false]}`,
		`{"meta": [[[[[[]]]]]], "temp_c": null}`,
		`[1,2,3]`,
		`"just a string"`,
		``,
		"{\"a\":\"\xff\"}",
		`{"'; drop table devices; --": 1, "temp_c": 0}`,
		`{"recorded_at": "2024-05-01T12:00:00Z", "ts": 1714564800123, "message_id": 42, "temp_c": 1}`,
		`{"time": "1714564800.5", "id": "abc", "temp_c": 1} trailing`,
		`{"a":"\"[[[{{{","temp_c":0}`,
		`{"\u0074s": 1714564800, "temp_c": 2}`,
		nested("[", "]", 40),
	} {
		f.Add([]byte(s))
	}
	c := NewChecker(Limits{MaxBytes: 4096, MaxKeys: 64, MaxDepth: 16})
	f.Fuzz(func(t *testing.T, payload []byte) {
		values, issues := c.Check(payload, fuzzParams)
		payloadIssue := len(issues) > 0 && issues[0].Parameter == ""
		if payloadIssue && (len(issues) != 1 || values != nil || !issues[0].Critical) {
			t.Fatalf("payload issue %+v with %d issues and values %v; want it alone", issues[0], len(issues), values)
		}
		if !json.Valid(payload) && !payloadIssue {
			t.Fatalf("invalid JSON %q gave %v, %+v; want a payload issue", payload, values, issues)
		}
		if len(issues) > 0 && values != nil {
			t.Fatalf("values %v alongside issues %+v", values, issues)
		}
		for _, is := range issues {
			if is.Code == "" || is.Message == "" {
				t.Fatalf("issue without code or message: %+v", is)
			}
		}
		if len(issues) == 0 {
			if values == nil {
				t.Fatalf("no issues and no values")
			}
			for _, p := range fuzzParams {
				v, ok := values[p.Key]
				if p.Required && !ok {
					t.Fatalf("required %s missing without an issue", p.Key)
				}
				if ok && !typeMatches(v, p.DataType) {
					t.Fatalf("%s = %#v (%T), not a %s", p.Key, v, v, p.DataType)
				}
			}
		}
		if ts, ok := RecordedAt(payload); ok && (ts.Year() < 1 || ts.Year() > 9999 || !json.Valid(payload)) {
			t.Fatalf("RecordedAt = %v from %q", ts, payload)
		}
	})
}

func typeMatches(v any, dataType string) bool {
	switch dataType {
	case TypeInteger:
		_, ok := v.(int64)
		return ok
	case TypeDecimal:
		_, ok := v.(float64)
		return ok
	case TypeBoolean:
		_, ok := v.(bool)
		return ok
	case TypeString:
		_, ok := v.(string)
		return ok
	case TypeJSON:
		raw, ok := v.(json.RawMessage)
		return ok && json.Valid(raw)
	}
	return false
}

// benchPayload is a 1 KB reading of a typical device.
func benchPayload(b *testing.B) []byte {
	b.Helper()
	doc := map[string]any{
		"message_id":  "0c5b7a1e-6f1c-4a8e-9d2b-3f1f6e8a9b10",
		"recorded_at": "2024-05-01T12:00:00.123Z",
		"temp_c":      21.5,
		"humidity":    48.25,
		"co2":         812,
		"mode":        "heat",
		"online":      true,
		"meta": map[string]any{
			"firmware": "v2.14",
			"model":    "TX-9000",
			"serial":   "SN-0042-7781-AB",
			"location": map[string]any{"site": "north-campus", "building": "B7", "floor": 3, "room": "3.14"},
		},
	}
	readings := make([]any, 0, 16)
	for i := range 12 {
		readings = append(readings, map[string]any{"t": 1714564800 + i*5, "v": 20.0 + float64(i)/10})
	}
	doc["history"] = readings
	payload, err := json.Marshal(doc)
	if err != nil {
		b.Fatal(err)
	}
	// Pad to 1 KB with a note; `,"note":""` is 10 bytes.
	doc["note"] = strings.Repeat("x", 1024-len(payload)-10)
	if payload, err = json.Marshal(doc); err != nil || len(payload) != 1024 {
		b.Fatalf("payload is %d bytes (%v), want 1024", len(payload), err)
	}
	return payload
}

func BenchmarkCheck(b *testing.B) {
	payload := benchPayload(b)
	params := []catalog.Parameter{
		param("temp_c", "$.temp_c", TypeDecimal, required, critical, minimum(-50), maximum(150)),
		param("humidity", "humidity", TypeDecimal, minimum(0), maximum(100)),
		param("co2", "$.co2", TypeInteger, minimum(0), maximum(10000)),
		param("firmware", "$.meta.firmware", TypeString, pattern(`^v[0-9]+\.[0-9]+$`)),
		param("mode", "$['mode']", TypeString, enum("heat", "cool", "off")),
	}
	c := NewChecker(DefaultLimits())
	if _, issues := c.Check(payload, params); len(issues) != 0 {
		b.Fatalf("issues = %+v", issues)
	}
	b.SetBytes(int64(len(payload)))
	b.ReportAllocs()
	for b.Loop() {
		c.Check(payload, params)
	}
}

func BenchmarkRecordedAt(b *testing.B) {
	payload := benchPayload(b)
	b.SetBytes(int64(len(payload)))
	b.ReportAllocs()
	for b.Loop() {
		if _, ok := RecordedAt(payload); !ok {
			b.Fatal("no recorded time")
		}
	}
}
