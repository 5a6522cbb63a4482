package deriver

import (
	"encoding/json"
	"errors"
	"math"
	"reflect"
	"slices"
	"strings"
	"sync"
	"testing"

	"github.com/telemesh/telemesh/internal/catalog"
)

// tolerance compares decimals: results are kept as float64 computes them,
// so a figure such as 53.6 is checked as close, not bit-identical.
const tolerance = 1e-9

func param(key, dataType, mutation string) catalog.Parameter {
	p := catalog.Parameter{Key: key, DataType: dataType}
	if mutation != "" {
		p.Mutation = json.RawMessage(mutation)
	}
	return p
}

func derived(key, dataType, expr string, seq int, deps ...string) catalog.Derived {
	return catalog.Derived{Key: key, DataType: dataType, Expression: json.RawMessage(expr), Sequence: seq, Dependencies: deps}
}

func mustCompile(t testing.TB, params []catalog.Parameter, defs []catalog.Derived) *Program {
	t.Helper()
	p, err := Compile(params, defs)
	if err != nil {
		t.Fatalf("Compile: %v", err)
	}
	return p
}

// sameValue compares values of the value model, decimals with a tolerance
// and JSON by content.
func sameValue(got, want any) bool {
	switch w := want.(type) {
	case float64:
		g, ok := got.(float64)
		return ok && math.Abs(g-w) <= tolerance
	case json.RawMessage:
		g, ok := got.(json.RawMessage)
		if !ok {
			return false
		}
		var a, b any
		return json.Unmarshal(g, &a) == nil && json.Unmarshal(w, &b) == nil && reflect.DeepEqual(a, b)
	}
	return reflect.DeepEqual(got, want)
}

func TestCompile(t *testing.T) {
	tests := []struct {
		name    string
		params  []catalog.Parameter
		derived []catalog.Derived
		wantErr error
		errText string
	}{
		{name: "valid definitions",
			params:  []catalog.Parameter{param("temp_c", "decimal", `{"+":[{"var":"val"},2]}`)},
			derived: []catalog.Derived{derived("temp_f", "decimal", `{"+":[{"*":[{"var":"temp_c"},1.8]},32]}`, 1)}},
		{name: "null mutation is no mutation",
			params: []catalog.Parameter{param("temp_c", "decimal", `null`)}},
		{name: "a cycle does not fail",
			derived: []catalog.Derived{derived("a", "decimal", `{"var":"b"}`, 1), derived("b", "decimal", `{"var":"a"}`, 2)}},
		{name: "an unknown operator does not fail",
			derived: []catalog.Derived{derived("a", "decimal", `{"round":1.5}`, 1)}},
		{name: "mutation that is not JSON",
			params:  []catalog.Parameter{param("temp_c", "decimal", `{"+":[`)},
			wantErr: ErrInvalidExpression, errText: `parameter "temp_c": mutation: invalid expression`},
		{name: "expression that is not JSON",
			derived: []catalog.Derived{derived("temp_f", "decimal", `{"+" 1}`, 1)},
			wantErr: ErrInvalidExpression, errText: `derived parameter "temp_f": invalid expression`},
		{name: "empty expression",
			derived: []catalog.Derived{derived("temp_f", "decimal", ``, 1)},
			wantErr: ErrInvalidExpression, errText: `derived parameter "temp_f"`},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			p, err := Compile(tt.params, tt.derived)
			if tt.wantErr == nil {
				if err != nil || p == nil {
					t.Fatalf("Compile = %v, %v; want a program", p, err)
				}
				return
			}
			if !errors.Is(err, tt.wantErr) {
				t.Fatalf("Compile error = %v, want %v", err, tt.wantErr)
			}
			if !strings.Contains(err.Error(), tt.errText) {
				t.Errorf("Compile error %q does not contain %q", err, tt.errText)
			}
		})
	}
}

// goRuntimeText are fragments of Go runtime and library messages, which no
// recorded reason may contain: an operator reads the reason, not a stack.
var goRuntimeText = []string{"interface conversion", "runtime error", "interface {}", "panic", "goroutine", "expression failed", "not supported"}

// checkReason fails t when reason reads like a Go runtime message.
func checkReason(t *testing.T, what, reason string) {
	t.Helper()
	for _, bad := range goRuntimeText {
		if strings.Contains(reason, bad) {
			t.Errorf("%s = %q, which contains the Go text %q", what, reason, bad)
		}
	}
}

func TestApplyMutation(t *testing.T) {
	tests := []struct {
		name    string
		param   catalog.Parameter
		in      any
		want    any    // the mutated value; unused when wantErr is set
		wantErr string // substring of the mutation error; empty for none
	}{
		{name: "calibration offset (behaviour test 1)", param: param("temp_c", "decimal", `{"+":[{"var":"val"},2]}`), in: 10.0, want: 12.0},
		{name: "no mutation copies the value", param: param("temp_c", "decimal", ""), in: 10.5, want: 10.5},
		{name: "integer stays int64", param: param("count", "integer", `{"*":[{"var":"val"},2]}`), in: int64(21), want: int64(42)},
		{name: "integer from a non-integral result fails", param: param("count", "integer", `{"/":[{"var":"val"},2]}`), in: int64(5),
			wantErr: `mutation {"/":[{"var":"val"},2]}: result 2.5 is not an integer`},
		{name: "integer out of range fails", param: param("count", "integer", `{"*":[{"var":"val"},1e30]}`), in: int64(5), wantErr: "out of the integer range"},
		{name: "decimal from an integer input", param: param("ratio", "decimal", `{"/":[{"var":"val"},4]}`), in: int64(1), want: 0.25},
		{name: "division by zero fails", param: param("temp_c", "decimal", `{"/":[{"var":"val"},0]}`), in: 10.0, wantErr: "+Inf"},
		{name: "zero by zero fails", param: param("temp_c", "decimal", `{"/":[{"var":"val"},0]}`), in: 0.0, wantErr: "NaN"},
		{name: "string mutation", param: param("label", "string", `{"cat":[{"var":"val"},"-x"]}`), in: "a", want: "a-x"},
		{name: "boolean mutation", param: param("on", "boolean", `{"!":{"var":"val"}}`), in: true, want: false},
		{name: "json mutation reads into the document", param: param("doc", "json", `{"var":"val.a"}`), in: json.RawMessage(`{"a":[1,2]}`), want: json.RawMessage(`[1,2]`)},
		{name: "whole data reads val", param: param("temp_c", "decimal", `{"+":[{"var":""},{"var":"val"}]}`), in: 1.5, wantErr: `"+" cannot be applied to {"val":1.5} and 1.5`},
		{name: "wrong result type fails", param: param("label", "string", `{"+":[{"var":"val"},1]}`), in: "a", wantErr: "result 1 is not a string"},
		{name: "unknown operator fails instead of returning truthiness", param: param("temp_c", "decimal", `{"round":{"var":"val"}}`), in: 1.5, wantErr: `unknown operator "round"`},
		{name: "unknown variable, as the old system named the value", param: param("temp_c", "decimal", `{"*":[{"var":"value"},1.02]}`), in: 10.0,
			wantErr: `mutation {"*":[{"var":"value"},1.02]} reads "value", which is not defined`},
		{name: "another parameter is not readable", param: param("temp_c", "decimal", `{"+":[{"var":"val"},{"var":"untouched"}]}`), in: 10.0,
			wantErr: `reads "untouched", which is not defined`},
		{name: "library panic is explained", param: param("temp_c", "decimal", `{"-":[]}`), in: 1.5, wantErr: `mutation {"-":[]}: "-" cannot be applied to no arguments`},
		{name: "arithmetic on a boolean is explained", param: param("temp_c", "decimal", `{"+":[{"var":"val"},true]}`), in: 1.5,
			wantErr: `"+" cannot be applied to 1.5 and true`},
		{name: "arithmetic on a null inside a document is explained", param: param("doc", "json", `{"*":[{"var":"val.a"},2]}`), in: json.RawMessage(`{"a":null}`),
			wantErr: `"*" cannot be applied to null and 2`},
		{name: "a failing inner operation is the one named", param: param("temp_c", "decimal", `{"+":[1,{"*":[{"var":"val"},{"in":[1,2]}]}]}`), in: 1.5,
			wantErr: `"in" cannot be applied to 1 and 2`},
		{name: "null result fails", param: param("temp_c", "decimal", `{"if":[false,1]}`), in: 1.5, wantErr: "result is null, not a decimal"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			p := mustCompile(t, []catalog.Parameter{tt.param}, nil)
			res := p.Apply(map[string]any{tt.param.Key: tt.in, "untouched": "x"})
			got, present := res.Mutated[tt.param.Key]
			if tt.wantErr == "" && !sameValue(got, tt.want) {
				t.Errorf("Mutated[%s] = %#v, want %#v", tt.param.Key, got, tt.want)
			}
			if tt.wantErr != "" && present {
				// A value whose mutation failed is not the mutated value:
				// passing the raw value on would store it as if mutated.
				t.Errorf("Mutated[%s] = %#v, want it left out after a failed mutation", tt.param.Key, got)
			}
			if got := res.Mutated["untouched"]; got != "x" {
				t.Errorf("Mutated[untouched] = %#v, want it copied", got)
			}
			gotErr, failed := res.MutationErrors[tt.param.Key]
			switch {
			case tt.wantErr == "" && failed:
				t.Errorf("unexpected mutation error %q", gotErr)
			case tt.wantErr != "" && !strings.Contains(gotErr, tt.wantErr):
				t.Errorf("mutation error = %q, want it to contain %q", gotErr, tt.wantErr)
			}
			checkReason(t, "mutation error", gotErr)
			if tt.wantErr == "" && res.MutationErrors != nil {
				t.Errorf("MutationErrors = %v, want nil", res.MutationErrors)
			}
		})
	}
}

// TestApplyFailedMutationFeedsNoDerivation shows that a value whose mutation
// failed is neither kept as if mutated nor read by a derivation: what
// depends on it is unresolved, the rest is computed.
func TestApplyFailedMutationFeedsNoDerivation(t *testing.T) {
	params := []catalog.Parameter{
		param("temp_c", "decimal", `{"*":[{"var":"value"},1.02]}`),
		param("humidity", "decimal", `{"/":[{"var":"val"},{"-":[{"var":"val"},50]}]}`),
		param("pressure", "decimal", `{"+":[{"var":"val"},1]}`),
	}
	defs := []catalog.Derived{
		derived("temp_f", "decimal", tempF, 1),
		derived("h2", "decimal", `{"*":[{"var":"humidity"},2]}`, 2),
		derived("p2", "decimal", `{"*":[{"var":"pressure"},2]}`, 3),
	}
	p := mustCompile(t, params, defs)
	res := p.Apply(map[string]any{"temp_c": 10.0, "humidity": 50.0, "pressure": 1000.0})
	for _, k := range []string{"temp_c", "humidity"} {
		if v, ok := res.Mutated[k]; ok {
			t.Errorf("Mutated[%s] = %v, want it left out", k, v)
		}
		checkReason(t, "MutationErrors["+k+"]", res.MutationErrors[k])
	}
	if want := `mutation {"*":[{"var":"value"},1.02]} reads "value", which is not defined`; res.MutationErrors["temp_c"] != want {
		t.Errorf("MutationErrors[temp_c] = %q, want %q", res.MutationErrors["temp_c"], want)
	}
	if !strings.Contains(res.MutationErrors["humidity"], "+Inf (such as a division by zero)") {
		t.Errorf("MutationErrors[humidity] = %q, want the division by zero", res.MutationErrors["humidity"])
	}
	if res.Mutated["pressure"] != 1001.0 || res.Derived["p2"] != 2002.0 {
		t.Errorf("pressure %v, p2 %v; want 1001 and 2002", res.Mutated["pressure"], res.Derived["p2"])
	}
	want := map[string]Unresolved{
		"temp_f": {Reason: ReasonMissingInput, MissingInputs: []string{"temp_c"}},
		"h2":     {Reason: ReasonMissingInput, MissingInputs: []string{"humidity"}},
	}
	if !reflect.DeepEqual(res.Unresolved, want) {
		t.Errorf("Unresolved = %+v, want %+v", res.Unresolved, want)
	}
}

// behaviourParams are the definitions of the old system's test 1.
var behaviourParams = []catalog.Parameter{
	param("temp_c", "decimal", `{"+":[{"var":"val"},2]}`),
	param("humidity", "decimal", ""),
	param("count", "integer", ""),
	param("doc", "json", ""),
}

const tempF = `{"+":[{"*":[{"var":"temp_c"},1.8]},32]}`

func TestApplyDerived(t *testing.T) {
	full := map[string]any{"temp_c": 10.0, "humidity": 40.0, "count": int64(3), "doc": json.RawMessage(`{"site":{"floor":2}}`)}
	tests := []struct {
		name       string
		derived    []catalog.Derived
		extracted  map[string]any
		want       map[string]any
		unresolved map[string]Unresolved
		// detail is a substring expected in each evaluation_error Detail.
		detail map[string]string
	}{
		{name: "mutated value feeds derivation (behaviour test 1)",
			derived: []catalog.Derived{derived("temp_f", "decimal", tempF, 1)},
			want:    map[string]any{"temp_f": 53.6}},
		{name: "derived value uses a derived value defined later (behaviour test 9)",
			derived: []catalog.Derived{
				derived("comfort", "string", `{"if":[{">":[{"var":"temp_k"},300]},"hot","ok"]}`, 1),
				derived("temp_k", "decimal", `{"+":[{"/":[{"-":[{"var":"temp_f"},32]},1.8]},273.15]}`, 2),
				derived("temp_f", "decimal", tempF, 3),
			},
			want: map[string]any{"temp_f": 53.6, "temp_k": 285.15, "comfort": "ok"}},
		{name: "missing input leaves that value unresolved, the rest kept (behaviour test 9)",
			derived: []catalog.Derived{
				derived("temp_f", "decimal", tempF, 1),
				derived("dew", "decimal", `{"-":[{"var":"temp_c"},{"/":[{"-":[100,{"var":"humidity"}]},5]}]}`, 2),
			},
			extracted:  map[string]any{"temp_c": 10.0},
			want:       map[string]any{"temp_f": 53.6},
			unresolved: map[string]Unresolved{"dew": {Reason: ReasonMissingInput, MissingInputs: []string{"humidity"}}}},
		{name: "absent extracted value is a missing input",
			derived:    []catalog.Derived{derived("temp_f", "decimal", tempF, 1), derived("h2", "decimal", `{"*":[{"var":"humidity"},2]}`, 2)},
			extracted:  map[string]any{"humidity": 40.0},
			want:       map[string]any{"h2": 80.0},
			unresolved: map[string]Unresolved{"temp_f": {Reason: ReasonMissingInput, MissingInputs: []string{"temp_c"}}}},
		{name: "unresolved dependency propagates as missing input",
			derived: []catalog.Derived{
				derived("a", "decimal", `{"var":"humidity"}`, 1),
				derived("b", "decimal", `{"+":[{"var":"a"},{"var":"temp_c"}]}`, 2),
			},
			extracted: map[string]any{"temp_c": 10.0},
			want:      map[string]any{},
			unresolved: map[string]Unresolved{
				"a": {Reason: ReasonMissingInput, MissingInputs: []string{"humidity"}},
				"b": {Reason: ReasonMissingInput, MissingInputs: []string{"a"}},
			}},
		{name: "a name that is not defined is an evaluation error, not a missing input",
			derived: []catalog.Derived{
				derived("a", "decimal", `{"var":"nope"}`, 1),
				derived("b", "decimal", `{"+":[{"var":"a"},{"var":"temp_c"}]}`, 2),
				derived("c", "decimal", `{"var":"temp_c"}`, 3, "temp_c", "pressure"),
			},
			want: map[string]any{},
			unresolved: map[string]Unresolved{
				"a": {Reason: ReasonEvaluationError},
				"b": {Reason: ReasonMissingInput, MissingInputs: []string{"a"}},
				"c": {Reason: ReasonEvaluationError},
			},
			detail: map[string]string{
				"a": `expression {"var":"nope"} reads "nope", which is not defined`,
				"c": `expression {"var":"temp_c"} lists dependency "pressure", which is not defined`,
			}},
		{name: "a var beyond the explicit dependencies is still read",
			derived: []catalog.Derived{derived("t", "decimal", `{"+":[{"var":"temp_c"},{"var":"humidity"}]}`, 1, "temp_c")},
			want:    map[string]any{"t": 52.0}},
		{name: "two-key cycle, dependants missing, the rest kept (behaviour test 10)",
			derived: []catalog.Derived{
				derived("a", "decimal", `{"+":[{"var":"b"},1]}`, 1),
				derived("b", "decimal", `{"+":[{"var":"a"},1]}`, 2),
				derived("c", "decimal", `{"*":[{"var":"a"},2]}`, 3),
				derived("temp_f", "decimal", tempF, 4),
			},
			want: map[string]any{"temp_f": 53.6},
			unresolved: map[string]Unresolved{
				"a": {Reason: ReasonCycle, Cycle: []string{"a", "b", "a"}},
				"b": {Reason: ReasonCycle, Cycle: []string{"a", "b", "a"}},
				"c": {Reason: ReasonMissingInput, MissingInputs: []string{"a"}},
			}},
		{name: "self-dependency is a cycle",
			derived:    []catalog.Derived{derived("a", "decimal", `{"+":[{"var":"a"},1]}`, 1)},
			want:       map[string]any{},
			unresolved: map[string]Unresolved{"a": {Reason: ReasonCycle, Cycle: []string{"a", "a"}}}},
		{name: "three-key cycle starts at the first definition",
			derived: []catalog.Derived{
				derived("z", "decimal", `{"var":"x"}`, 1),
				derived("y", "decimal", `{"var":"z"}`, 2),
				derived("x", "decimal", `{"var":"y"}`, 3),
			},
			want: map[string]any{},
			unresolved: map[string]Unresolved{
				"x": {Reason: ReasonCycle, Cycle: []string{"z", "x", "y", "z"}},
				"y": {Reason: ReasonCycle, Cycle: []string{"z", "x", "y", "z"}},
				"z": {Reason: ReasonCycle, Cycle: []string{"z", "x", "y", "z"}},
			}},
		{name: "explicit dependencies are required even when not read",
			derived:   []catalog.Derived{derived("t", "decimal", `{"+":[{"var":"temp_c"},1]}`, 1, "temp_c", "humidity")},
			extracted: map[string]any{"temp_c": 10.0},
			want:      map[string]any{},
			unresolved: map[string]Unresolved{
				"t": {Reason: ReasonMissingInput, MissingInputs: []string{"humidity"}},
			}},
		{name: "var with a default tolerates absence",
			derived:   []catalog.Derived{derived("p", "decimal", `{"+":[{"var":["humidity",1000]},{"var":"temp_c"}]}`, 1)},
			extracted: map[string]any{"temp_c": 10.0},
			want:      map[string]any{"p": 1012.0}},
		{name: "dotted path reads into a json value",
			derived: []catalog.Derived{derived("floor", "integer", `{"var":"doc.site.floor"}`, 1)},
			want:    map[string]any{"floor": int64(2)}},
		{name: "integer input and integer result",
			derived: []catalog.Derived{derived("double", "integer", `{"*":[{"var":"count"},2]}`, 1)},
			want:    map[string]any{"double": int64(6)}},
		{name: "json result is encoded and readable by the next derivation",
			derived: []catalog.Derived{
				derived("pair", "json", `{"merge":[{"var":"temp_c"},{"var":"humidity"}]}`, 1),
				derived("first", "decimal", `{"var":"pair.0"}`, 2),
			},
			want: map[string]any{"pair": json.RawMessage(`[12,40]`), "first": 12.0}},
		{name: "whole-data result does not make the data contain itself",
			derived: []catalog.Derived{
				derived("whole", "json", `{"var":""}`, 1),
				derived("again", "decimal", `{"+":[{"var":"whole.temp_c"},{"var":"temp_c"}]}`, 2),
				derived("third", "json", `{"var":""}`, 3),
			},
			want: map[string]any{
				"whole": json.RawMessage(`{"temp_c":12}`),
				"again": 24.0,
				"third": json.RawMessage(`{"temp_c":12,"whole":{"temp_c":12}}`),
			}},
		{name: "boolean and string results",
			derived: []catalog.Derived{
				derived("warm", "boolean", `{">":[{"var":"temp_c"},11]}`, 1),
				derived("label", "string", `{"cat":["t=",{"var":"temp_c"}]}`, 2),
			},
			want: map[string]any{"warm": true, "label": "t=12"}},
		{name: "evaluation errors stay with their key",
			derived: []catalog.Derived{
				derived("inf", "decimal", `{"/":[{"var":"temp_c"},0]}`, 1),
				derived("nan", "decimal", `{"%":[{"var":"temp_c"},0]}`, 2),
				derived("half", "integer", `{"/":[{"var":"count"},2]}`, 3),
				derived("notbool", "boolean", `{"+":[{"var":"temp_c"},1]}`, 4),
				derived("null", "decimal", `{"if":[false,1]}`, 5),
				derived("panics", "decimal", `{"?:":[{"var":"temp_c"},1,2]}`, 6),
				derived("badop", "decimal", `{"sqrt":{"var":"temp_c"}}`, 7),
				derived("badop2", "decimal", `{"pow":[{"var":"temp_c"},2]}`, 8),
				derived("ok", "decimal", tempF, 9),
				derived("after", "decimal", `{"+":[{"var":"inf"},{"var":"ok"}]}`, 10),
			},
			want: map[string]any{"ok": 53.6},
			unresolved: map[string]Unresolved{
				"inf":     {Reason: ReasonEvaluationError},
				"nan":     {Reason: ReasonEvaluationError},
				"half":    {Reason: ReasonEvaluationError},
				"notbool": {Reason: ReasonEvaluationError},
				"null":    {Reason: ReasonEvaluationError},
				"panics":  {Reason: ReasonEvaluationError},
				"badop":   {Reason: ReasonEvaluationError},
				"badop2":  {Reason: ReasonEvaluationError},
				"after":   {Reason: ReasonMissingInput, MissingInputs: []string{"inf"}},
			},
			detail: map[string]string{
				"inf":     "result is +Inf",
				"nan":     "result is NaN",
				"half":    "result 1.5 is not an integer",
				"notbool": "result 13 is not a boolean",
				"null":    "result is null, not a decimal",
				"panics":  `"?:" cannot be applied to 12, 1 and 2`,
				"badop":   `unknown operator "sqrt"`,
				"badop2":  `unknown operator "pow"`,
			}},
		{name: "derived key that is also a parameter key",
			derived:    []catalog.Derived{derived("humidity", "decimal", `{"var":"temp_c"}`, 1)},
			want:       map[string]any{},
			unresolved: map[string]Unresolved{"humidity": {Reason: ReasonEvaluationError}},
			detail:     map[string]string{"humidity": "also a parameter key"}},
		{name: "derived key defined twice",
			derived:    []catalog.Derived{derived("x", "decimal", `1`, 1), derived("x", "decimal", `2`, 2)},
			want:       map[string]any{},
			unresolved: map[string]Unresolved{"x": {Reason: ReasonEvaluationError}},
			detail:     map[string]string{"x": "defined more than once"}},
		{name: "literal expression",
			derived: []catalog.Derived{derived("k", "decimal", `273.15`, 1)},
			want:    map[string]any{"k": 273.15}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			p := mustCompile(t, behaviourParams, tt.derived)
			in := tt.extracted
			if in == nil {
				in = full
			}
			res := p.Apply(in)
			if len(res.Derived) != len(tt.want) {
				t.Errorf("Derived = %v, want %v", res.Derived, tt.want)
			}
			for k, w := range tt.want {
				if g, ok := res.Derived[k]; !ok || !sameValue(g, w) {
					t.Errorf("Derived[%s] = %#v, want %#v", k, g, w)
				}
			}
			if len(res.Unresolved) != len(tt.unresolved) {
				t.Errorf("Unresolved = %+v, want %+v", res.Unresolved, tt.unresolved)
			}
			for k, w := range tt.unresolved {
				g, ok := res.Unresolved[k]
				if !ok {
					t.Errorf("%s is not unresolved, want %+v", k, w)
					continue
				}
				if g.Reason != w.Reason || !slices.Equal(g.MissingInputs, w.MissingInputs) || !slices.Equal(g.Cycle, w.Cycle) {
					t.Errorf("Unresolved[%s] = %+v, want %+v", k, g, w)
				}
				if g.Reason == ReasonEvaluationError && g.Detail == "" {
					t.Errorf("Unresolved[%s] has no detail", k)
				}
				if d := tt.detail[k]; !strings.Contains(g.Detail, d) {
					t.Errorf("Unresolved[%s].Detail = %q, want it to contain %q", k, g.Detail, d)
				}
				checkReason(t, "Unresolved["+k+"].Detail", g.Detail)
			}
			for k := range res.Derived {
				if _, ok := res.Unresolved[k]; ok {
					t.Errorf("%s is both derived and unresolved", k)
				}
			}
		})
	}
}

func TestApplyBehaviourExampleIsExact(t *testing.T) {
	// The tolerance elsewhere is for figures float64 cannot hold exactly;
	// this one it can, and the old system stored it as 53.6.
	p := mustCompile(t, behaviourParams, []catalog.Derived{derived("temp_f", "decimal", tempF, 1)})
	res := p.Apply(map[string]any{"temp_c": 10.0})
	if res.Mutated["temp_c"] != 12.0 || res.Derived["temp_f"] != 53.6 {
		t.Errorf("temp_c = %v, temp_f = %v; want 12 and 53.6", res.Mutated["temp_c"], res.Derived["temp_f"])
	}
}

func TestDependencyOrder(t *testing.T) {
	tests := []struct {
		name    string
		derived []catalog.Derived
		want    []string
	}{
		{name: "independent keys by sequence then key",
			derived: []catalog.Derived{derived("b", "decimal", `1`, 1), derived("a", "decimal", `1`, 1), derived("c", "decimal", `1`, 0)},
			want:    []string{"c", "a", "b"}},
		{name: "dependency before sequence",
			derived: []catalog.Derived{derived("first", "decimal", `{"var":"second"}`, 1), derived("second", "decimal", `1`, 9)},
			want:    []string{"second", "first"}},
		{name: "ready keys keep definition order",
			derived: []catalog.Derived{
				derived("d", "decimal", `{"var":"a"}`, 1),
				derived("c", "decimal", `{"var":"a"}`, 1),
				derived("b", "decimal", `2`, 5),
				derived("a", "decimal", `1`, 3),
			},
			want: []string{"a", "c", "d", "b"}},
		{name: "cycle keys left out, their dependants kept",
			derived: []catalog.Derived{
				derived("x", "decimal", `{"var":"y"}`, 1),
				derived("y", "decimal", `{"var":"x"}`, 1),
				derived("z", "decimal", `{"var":"x"}`, 1),
			},
			want: []string{"z"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			p := mustCompile(t, nil, tt.derived)
			var got []string
			for _, n := range p.order {
				got = append(got, n.def.Key)
			}
			if !slices.Equal(got, tt.want) {
				t.Errorf("order = %v, want %v", got, tt.want)
			}
		})
	}
}

func TestDependencies(t *testing.T) {
	tests := []struct {
		name string
		def  catalog.Derived
		want []string
	}{
		{"plain name", derived("d", "decimal", `{"var":"a"}`, 0), []string{"a"}},
		{"array form", derived("d", "decimal", `{"var":["a"]}`, 0), []string{"a"}},
		{"array with default", derived("d", "decimal", `{"var":["a",0]}`, 0), []string{"a"}},
		{"dotted path", derived("d", "decimal", `{"var":"a.b.c"}`, 0), []string{"a"}},
		{"leading dot", derived("d", "decimal", `{"var":".a.b"}`, 0), []string{"a"}},
		{"numeric name", derived("d", "decimal", `{"var":1}`, 0), []string{"1"}},
		{"first appearance order, deduplicated", derived("d", "decimal", `{"+":[{"var":"b"},{"var":"a"},{"var":"b.x"}]}`, 0), []string{"b", "a"}},
		{"nested in operators", derived("d", "decimal", `{"if":[{">":[{"var":"a"},1]},{"var":"b"},{"min":[{"var":"c"},3]}]}`, 0), []string{"a", "b", "c"}},
		{"var in a default", derived("d", "decimal", `{"var":["a",{"var":"b"}]}`, 0), []string{"a", "b"}},
		{"computed name reads its inner vars only", derived("d", "decimal", `{"var":{"cat":["x",{"var":"n"}]}}`, 0), []string{"n"}},
		{"element scope is not a dependency", derived("d", "json", `{"map":[{"var":"list"},{"*":[{"var":""},{"var":"k"}]}]}`, 0), []string{"list"}},
		{"reduce reads current and accumulator", derived("d", "decimal", `{"reduce":[{"var":"list"},{"+":[{"var":"current"},{"var":"accumulator"}]},0]}`, 0), []string{"list"}},
		{"whole data is no key", derived("d", "json", `{"var":""}`, 0), nil},
		{"multi-key object is a literal", derived("d", "json", `{"var":"a","x":1}`, 0), nil},
		{"missing names are not vars", derived("d", "json", `{"missing":["a","b"]}`, 0), nil},
		{"explicit dependencies win", derived("d", "decimal", `{"var":"a"}`, 0, "x", "y"), []string{"x", "y"}},
		{"invalid JSON has none", derived("d", "decimal", `{`, 0), nil},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if got := Dependencies(tt.def); !slices.Equal(got, tt.want) {
				t.Errorf("Dependencies = %q, want %q", got, tt.want)
			}
		})
	}
}

func TestCheckDefinitions(t *testing.T) {
	params := []catalog.Parameter{param("temp_c", "decimal", `{"+":[{"var":"val"},2]}`), param("rh", "decimal", "")}
	tests := []struct {
		name    string
		params  []catalog.Parameter
		derived []catalog.Derived
		want    []error // each must match with errors.Is
		text    string  // exact Error() when not empty
		cycle   []string
		unknown *UnknownDependencyError
	}{
		{name: "valid", params: params, derived: []catalog.Derived{
			derived("temp_f", "decimal", tempF, 1),
			derived("temp_k", "decimal", `{"+":[{"var":"temp_f"},1]}`, 0),
		}},
		{name: "two-key cycle is named", params: params, derived: []catalog.Derived{
			derived("a", "decimal", `{"var":"b"}`, 1),
			derived("b", "decimal", `{"var":"a"}`, 2),
		}, want: []error{ErrCycle}, text: "derived parameters form a cycle: a -> b -> a", cycle: []string{"a", "b", "a"}},
		{name: "cycle through explicit dependencies", params: params, derived: []catalog.Derived{
			derived("a", "decimal", `1`, 1, "c"),
			derived("b", "decimal", `1`, 2, "a"),
			derived("c", "decimal", `1`, 3, "b"),
		}, want: []error{ErrCycle}, text: "derived parameters form a cycle: a -> c -> b -> a", cycle: []string{"a", "c", "b", "a"}},
		{name: "self cycle", params: params, derived: []catalog.Derived{derived("a", "decimal", `{"var":"a"}`, 1)},
			want: []error{ErrCycle}, text: "derived parameters form a cycle: a -> a", cycle: []string{"a", "a"}},
		{name: "unknown dependency names the key, the expression and the name", params: params, derived: []catalog.Derived{derived("temp_f", "decimal", `{"var": "temp_x"}`, 1)},
			want: []error{ErrUnknownDependency},
			text: `derived parameter "temp_f": expression {"var":"temp_x"} reads "temp_x", which is not defined (an expression reads the topic's parameters and derived parameters)`},
		{name: "unknown listed dependency", params: params, derived: []catalog.Derived{derived("t", "decimal", `{"var":"temp_c"}`, 1, "temp_c", "pressure")},
			want: []error{ErrUnknownDependency},
			text: `derived parameter "t": expression {"var":"temp_c"} lists dependency "pressure", which is not defined (an expression reads the topic's parameters and derived parameters)`},
		{name: "a var beyond the listed dependencies is checked", params: params, derived: []catalog.Derived{derived("t", "decimal", `{"+":[{"var":"temp_c"},{"var":"nope"}]}`, 1, "temp_c")},
			want: []error{ErrUnknownDependency}, text: `derived parameter "t": expression {"+":[{"var":"temp_c"},{"var":"nope"}]} reads "nope", which is not defined (an expression reads the topic's parameters and derived parameters)`},
		{name: "a mutation that reads an unknown variable names parameter, expression and name", params: []catalog.Parameter{param("temp_c", "decimal", `{"*": [{"var": "value"}, 1.02]}`)},
			want: []error{ErrUnknownVariable},
			text: `parameter "temp_c": mutation {"*":[{"var":"value"},1.02]} reads "value", which is not defined (a mutation reads only "val", the extracted value)`},
		{name: "a mutation may not read another parameter", params: []catalog.Parameter{param("temp_c", "decimal", `{"+":[{"var":"val"},{"var":"rh"}]}`), param("rh", "decimal", "")},
			want: []error{ErrUnknownVariable}, text: `parameter "temp_c": mutation {"+":[{"var":"val"},{"var":"rh"}]} reads "rh", which is not defined (a mutation reads only "val", the extracted value)`},
		{name: "a mutation may read into val, the whole data and list elements", params: []catalog.Parameter{
			param("doc", "json", `{"var":"val.a.b"}`),
			param("whole", "json", `{"var":""}`),
			param("list", "json", `{"map":[{"var":["val",[]]},{"*":[{"var":""},2]}]}`),
			param("sum", "json", `{"reduce":[{"var":"val"},{"+":[{"var":"current"},{"var":"accumulator"}]},0]}`),
		}},
		{name: "a derived expression may read parameters with a default and derived keys", params: params, derived: []catalog.Derived{
			derived("a", "decimal", `{"+":[{"var":["rh",0]},{"var":"b.x"}]}`, 1),
			derived("b", "json", `{"var":""}`, 2),
		}},
		{name: "expression that is not JSON", params: params, derived: []catalog.Derived{derived("temp_f", "decimal", `{`, 1)},
			want: []error{ErrInvalidExpression}},
		{name: "mutation that is not JSON", params: []catalog.Parameter{param("temp_c", "decimal", `{"+"`)},
			want: []error{ErrInvalidExpression}},
		{name: "unknown operator", params: params, derived: []catalog.Derived{derived("temp_f", "decimal", `{"round":{"var":"temp_c"}}`, 1)},
			want: []error{ErrInvalidExpression}, text: `derived parameter "temp_f": invalid expression: unknown operator "round"`},
		{name: "derived key defined twice", params: params, derived: []catalog.Derived{derived("x", "decimal", `1`, 1), derived("x", "decimal", `2`, 1)},
			want: []error{ErrDuplicateKey}},
		{name: "derived key equal to a parameter key", params: params, derived: []catalog.Derived{derived("rh", "decimal", `1`, 1)},
			want: []error{ErrDuplicateKey}},
		{name: "every problem is reported", params: append(slices.Clone(params), param("x", "decimal", `{"var":"y"}`)), derived: []catalog.Derived{
			derived("a", "decimal", `{"var":"b"}`, 1),
			derived("b", "decimal", `{"+":[{"var":"a"},{"var":"nope"}]}`, 2),
		}, want: []error{ErrCycle, ErrUnknownDependency, ErrUnknownVariable}, cycle: []string{"a", "b", "a"},
			unknown: &UnknownDependencyError{Key: "b", Dependency: "nope", Expression: `{"+":[{"var":"a"},{"var":"nope"}]}`}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			err := CheckDefinitions(tt.params, tt.derived)
			if len(tt.want) == 0 {
				if err != nil {
					t.Fatalf("CheckDefinitions = %v, want nil", err)
				}
				return
			}
			if err == nil {
				t.Fatalf("CheckDefinitions = nil, want %v", tt.want)
			}
			for _, w := range tt.want {
				if !errors.Is(err, w) {
					t.Errorf("CheckDefinitions = %v, want errors.Is %v", err, w)
				}
			}
			if tt.text != "" && err.Error() != tt.text {
				t.Errorf("Error() = %q, want %q", err, tt.text)
			}
			if tt.cycle != nil {
				var ce *CycleError
				if !errors.As(err, &ce) || !slices.Equal(ce.Cycle, tt.cycle) {
					t.Errorf("CycleError = %v, want cycle %v", ce, tt.cycle)
				}
			}
			if tt.unknown != nil {
				var ue *UnknownDependencyError
				if !errors.As(err, &ue) || *ue != *tt.unknown {
					t.Errorf("UnknownDependencyError = %+v, want %+v", ue, tt.unknown)
				}
			}
		})
	}
}

// allOperators exercises every operator, those that build new trees from
// their arguments included, to show that evaluation leaves rules intact.
var allOperators = []catalog.Derived{
	derived("ops_cmp", "json", `[{"==":[{"var":"temp_c"},12]},{"===":[1,1]},{"!=":[1,2]},{"!==":[1,"1"]},{"<":[1,{"var":"temp_c"},20]},{"<=":[1,2]},{">":[2,1]},{">=":[2,2]}]`, 1),
	derived("ops_logic", "json", `[{"!":false},{"!!":[1]},{"or":[false,{"var":"temp_c"}]},{"and":[true,1]},{"?:":[true,1,2]},{"if":[false,1,{"var":"temp_c"}]}]`, 2),
	derived("ops_str", "json", `[{"in":["a","abc"]},{"in_sorted":["b",["a","b","c"]]},{"cat":["a",1]},{"substr":["hello",1,3]}]`, 3),
	derived("ops_num", "json", `[{"%":[7,3]},{"abs":-2},{"max":[1,3,2]},{"min":[1,3,2]},{"+":[1,2]},{"-":[3,1]},{"*":[2,3]},{"/":[6,3]}]`, 4),
	derived("ops_arr", "json", `[{"merge":[[1],[2,[3]]]},{"missing":["a","temp_c"]},{"missing_some":[1,["a","temp_c"]]},{"set":[{"a":1,"b":2},"a",{"var":"temp_c"}]}]`, 5),
	derived("ops_iter", "json", `[{"some":[[1,2],{">":[{"var":""},1]}]},{"all":[[1,2],{">":[{"var":""},0]}]},{"none":[[1,2],{">":[{"var":""},5]}]},{"filter":[[1,2,3],{">":[{"var":""},1]}]},{"map":[[1,2],{"*":[{"var":""},2]}]},{"reduce":[[1,2,3],{"+":[{"var":"current"},{"var":"accumulator"}]},0]}]`, 6),
}

func TestApplyLeavesRulesIntact(t *testing.T) {
	// The mutation yields val itself, so the derivations read 12, after
	// set has built a new object around a var.
	params := []catalog.Parameter{param("temp_c", "decimal", `{"var":["val",{"set":[{"a":{"var":"val"},"b":2},"a",3]}]}`)}
	p := mustCompile(t, params, allOperators)
	for range 3 {
		res := p.Apply(map[string]any{"temp_c": 12.0})
		if len(res.Unresolved) != 0 {
			t.Fatalf("Unresolved = %+v", res.Unresolved)
		}
	}
	for _, n := range p.order {
		var fresh any
		if err := json.Unmarshal(n.def.Expression, &fresh); err != nil {
			t.Fatal(err)
		}
		if !reflect.DeepEqual(n.rule, fresh) {
			t.Errorf("rule of %s changed: %v", n.def.Key, n.rule)
		}
	}
	var fresh any
	if err := json.Unmarshal(params[0].Mutation, &fresh); err != nil {
		t.Fatal(err)
	}
	if !reflect.DeepEqual(p.mutations["temp_c"].rule, fresh) {
		t.Errorf("mutation rule changed: %v", p.mutations["temp_c"].rule)
	}
}

// TestApplyConcurrent shares one Program between goroutines, as the server
// does; run with -race it shows that evaluation only reads the rules.
func TestApplyConcurrent(t *testing.T) {
	p := mustCompile(t, benchParams, append(slices.Clone(benchDerived), allOperators...))
	want := p.Apply(benchExtracted())
	var wg sync.WaitGroup
	for range 8 {
		wg.Go(func() {
			for range 50 {
				got := p.Apply(benchExtracted())
				if !reflect.DeepEqual(got, want) {
					t.Errorf("concurrent Apply = %+v, want %+v", got, want)
					return
				}
			}
		})
	}
	wg.Wait()
}

// benchParams is a five-parameter topic with a three-step derived chain.
var benchParams = []catalog.Parameter{
	param("temp_c", "decimal", `{"+":[{"var":"val"},2]}`),
	param("humidity", "decimal", `{"*":[{"var":"val"},1.01]}`),
	param("pressure", "integer", `{"-":[{"var":"val"},3]}`),
	param("battery", "decimal", ""),
	param("status", "string", ""),
}

var benchDerived = []catalog.Derived{
	derived("temp_f", "decimal", tempF, 1),
	derived("heat_index", "decimal", `{"+":[{"var":"temp_f"},{"*":[0.1,{"var":"humidity"}]}]}`, 2),
	derived("alert", "boolean", `{"and":[{">":[{"var":"heat_index"},90]},{"<":[{"var":"battery"},20]}]}`, 3),
}

func benchExtracted() map[string]any {
	return map[string]any{"temp_c": 30.5, "humidity": 55.0, "pressure": int64(1013), "battery": 80.0, "status": "ok"}
}

func BenchmarkApply(b *testing.B) {
	p := mustCompile(b, benchParams, benchDerived)
	in := benchExtracted()
	if res := p.Apply(in); len(res.Derived) != 3 || res.Unresolved != nil || res.MutationErrors != nil {
		b.Fatalf("Apply = %+v", res)
	}
	b.ReportAllocs()
	for b.Loop() {
		p.Apply(in)
	}
}

func FuzzApply(f *testing.F) {
	f.Add(`{"+":[{"var":"val"},2]}`, tempF, 10.0, "ok", `{"a":[1,2]}`, uint8(0))
	f.Add(`{"/":[{"var":"val"},0]}`, `{"var":"d2"}`, 0.0, "", `null`, uint8(1))
	f.Add(`{"-":[]}`, `{"?:":[{"var":"temp_c"},1,2]}`, -1.5, "x", `[1,{"b":null}]`, uint8(2))
	f.Add(`{"reduce":[{"var":"val"},{"+":[{"var":"current"},1]},null]}`, `{"set":[1,"a",2]}`, 1e308, "s", `"str"`, uint8(3))
	f.Add(`{"var":""}`, `{"substr":["abc",5,-9]}`, math.Inf(1), "1e400", `{}`, uint8(4))
	f.Add(`{"map":[{"var":"doc"},{"var":"x.y"}]}`, `{"in":[1,2]}`, 3.0, "abc", `[[1]]`, uint8(5))
	f.Add(`{"var":[1]}`, `{"all":[5,{"var":""}]}`, 2.0, "a", `{"x":{"y":1}}`, uint8(6))
	f.Add(`{"missing_some":["a",5]}`, `{"filter":[{"var":"doc"},{"var":"current"}]}`, 2.0, "a", `[]`, uint8(7))
	f.Add(`[{"var":"val"},{"var":"d1"}]`, `{"if":[{"var":"d1"}]}`, 2.0, "a", `1`, uint8(8))
	f.Add(`{"merge":{"var":"val"}}`, `{"var":{"var":"status"}}`, 2.0, "temp_c", `2`, uint8(9))
	types := []string{"decimal", "integer", "boolean", "string", "json", ""}
	f.Fuzz(func(t *testing.T, mutationExpr, derivedExpr string, num float64, text, doc string, choice uint8) {
		dataType := types[int(choice)%len(types)]
		params := []catalog.Parameter{
			param("temp_c", dataType, mutationExpr),
			param("count", "integer", mutationExpr),
			param("status", "string", mutationExpr),
			param("doc", "json", mutationExpr),
		}
		defs := []catalog.Derived{
			derived("d1", dataType, derivedExpr, int(choice)),
			derived("d2", "json", mutationExpr, 2),
			derived("d3", types[int(choice/8)%len(types)], derivedExpr, 3, "d1", "temp_c"),
		}
		extracted := map[string]any{"temp_c": num, "count": int64(num), "status": text}
		if json.Valid([]byte(doc)) {
			extracted["doc"] = json.RawMessage(doc)
		}
		_ = CheckDefinitions(params, defs)
		for _, d := range defs {
			_ = Dependencies(d)
		}
		p, err := Compile(params, defs)
		if err != nil {
			if !errors.Is(err, ErrInvalidExpression) {
				t.Fatalf("Compile error %v is not ErrInvalidExpression", err)
			}
			return
		}
		res := p.Apply(extracted)
		for k := range extracted {
			_, ok1 := res.Mutated[k]
			_, ok2 := res.MutationErrors[k]
			if ok1 == ok2 {
				t.Errorf("%s: mutated %v, mutation error %v; want exactly one", k, ok1, ok2)
			}
		}
		for k, why := range res.MutationErrors {
			checkReason(t, "MutationErrors["+k+"]", why)
		}
		for k, u := range res.Unresolved {
			checkReason(t, "Unresolved["+k+"].Detail", u.Detail)
		}
		for _, d := range defs {
			_, ok1 := res.Derived[d.Key]
			_, ok2 := res.Unresolved[d.Key]
			if ok1 == ok2 {
				t.Errorf("%s: derived %v, unresolved %v; want exactly one", d.Key, ok1, ok2)
			}
		}
		for k, v := range res.Derived {
			if f, ok := v.(float64); ok && (math.IsNaN(f) || math.IsInf(f, 0)) {
				t.Errorf("Derived[%s] = %v", k, f)
			}
		}
	})
}

// TestCompileTopicReportsBrokenDefinitions compiles definitions that never
// passed a check, as rows written with SQL may be: each broken one costs its
// own value, never the topic's messages.
func TestCompileTopicReportsBrokenDefinitions(t *testing.T) {
	params := []catalog.Parameter{
		{Key: "temp_c", DataType: "decimal", Mutation: json.RawMessage(`{"+": [{"var": "val"}, 2]}`)},
		{Key: "humidity", DataType: "decimal", Mutation: json.RawMessage(`{"+": [`)},
	}
	derived := []catalog.Derived{
		{Key: "temp_f", DataType: "decimal", Expression: json.RawMessage(`{"+": [{"*": [{"var": "temp_c"}, 1.8]}, 32]}`)},
		{Key: "broken", DataType: "decimal", Expression: json.RawMessage(`{"*": [`)},
		{Key: "uses_broken", DataType: "decimal", Expression: json.RawMessage(`{"var": "broken"}`)},
		{Key: "uses_humidity", DataType: "decimal", Expression: json.RawMessage(`{"var": "humidity"}`)},
	}
	res := compileTopic(params, derived).Apply(map[string]any{"temp_c": 10.0, "humidity": 40.0})
	if res.Derived["temp_f"] != 53.6 {
		t.Errorf("temp_f = %v, want 53.6", res.Derived["temp_f"])
	}
	if u, ok := res.Unresolved["broken"]; !ok || u.Reason != ReasonEvaluationError {
		t.Errorf("broken = %+v, want evaluation_error", res.Unresolved["broken"])
	}
	if v, ok := res.Mutated["humidity"]; ok || res.MutationErrors["humidity"] != `mutation {"+": [ is not valid JSON` {
		t.Errorf("humidity: mutated %v, errors %q; want left out with a mutation error", v, res.MutationErrors)
	}
	if u := res.Unresolved["uses_broken"]; u.Reason != ReasonMissingInput || !slices.Equal(u.MissingInputs, []string{"broken"}) {
		t.Errorf("uses_broken = %+v, want missing input broken", u)
	}
	if u := res.Unresolved["uses_humidity"]; u.Reason != ReasonMissingInput || !slices.Equal(u.MissingInputs, []string{"humidity"}) {
		t.Errorf("uses_humidity = %+v, want missing input humidity", u)
	}
}
