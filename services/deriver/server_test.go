package deriver

import (
	"encoding/json"
	"reflect"
	"testing"
	"time"

	"github.com/google/uuid"

	telemetryv1 "github.com/telemesh/telemesh/gen/telemesh/telemetry/v1"
	"github.com/telemesh/telemesh/internal/catalog"
	"github.com/telemesh/telemesh/internal/envelope"
	"github.com/telemesh/telemesh/internal/stagelog"
	"github.com/telemesh/telemesh/internal/value"
)

// TestRecord shows what a message's envelope and its mutate and derive
// stage-log entries carry for clean values, failed mutations and
// unresolved derived values.
func TestRecord(t *testing.T) {
	const (
		unknownVar = `mutation {"*":[{"var":"value"},1.02]} reads "value", which is not defined`
		divByZero  = `mutation {"/":[{"var":"val"},{"-":[{"var":"val"},50]}]}: result is +Inf (such as a division by zero)`
	)
	params := []catalog.Parameter{
		param("temp_c", "decimal", `{"+":[{"var":"val"},2]}`),
		param("raw_c", "decimal", `{"*":[{"var":"value"},1.02]}`),
		param("humidity", "decimal", `{"/":[{"var":"val"},{"-":[{"var":"val"},50]}]}`),
	}
	defs := []catalog.Derived{
		derived("temp_f", "decimal", tempF, 1),
		derived("raw_f", "decimal", `{"+":[{"*":[{"var":"raw_c"},1.8]},32]}`, 2),
	}
	p := mustCompile(t, params, defs)
	tests := []struct {
		name        string
		extracted   map[string]any
		reason      string // the envelope's reason before
		wantMutated map[string]any
		wantDerived map[string]any
		// wantUnresolved are the envelope's unresolved values, derived and
		// failed mutations alike.
		wantUnresolved map[string]envelope.Unresolved
		wantReason     string
		wantMutate     string
		wantErrors     map[string]any
		wantDerive     string
	}{
		{name: "clean values complete both stages",
			extracted:   map[string]any{"temp_c": 10.0, "humidity": 60.0},
			wantMutated: map[string]any{"temp_c": 12.0, "humidity": 6.0},
			wantDerived: map[string]any{"temp_f": 53.6},
			wantUnresolved: map[string]envelope.Unresolved{
				"raw_f": {Reason: "missing_input", MissingInputs: []string{"raw_c"}},
			},
			wantMutate: stagelog.StatusCompleted, wantDerive: stagelog.StatusUnresolved},
		{name: "a failed mutation is an evaluation error, its value left out",
			extracted:   map[string]any{"temp_c": 10.0, "raw_c": 10.0},
			wantMutated: map[string]any{"temp_c": 12.0},
			wantDerived: map[string]any{"temp_f": 53.6},
			wantUnresolved: map[string]envelope.Unresolved{
				"raw_c": {Reason: "evaluation_error", Detail: unknownVar},
				"raw_f": {Reason: "missing_input", MissingInputs: []string{"raw_c"}},
			},
			wantReason: "raw_c: " + unknownVar,
			wantMutate: stagelog.StatusFailed,
			wantErrors: map[string]any{"reason": "raw_c: " + unknownVar, "parameters": map[string]envelope.Unresolved{
				"raw_c": {Reason: "evaluation_error", Detail: unknownVar},
			}},
			wantDerive: stagelog.StatusUnresolved},
		{name: "every failed mutation is named, in key order, after an earlier reason",
			extracted:   map[string]any{"raw_c": 10.0, "humidity": 50.0},
			reason:      "earlier",
			wantMutated: map[string]any{},
			wantDerived: map[string]any{},
			wantUnresolved: map[string]envelope.Unresolved{
				"raw_c":    {Reason: "evaluation_error", Detail: unknownVar},
				"humidity": {Reason: "evaluation_error", Detail: divByZero},
				"temp_f":   {Reason: "missing_input", MissingInputs: []string{"temp_c"}},
				"raw_f":    {Reason: "missing_input", MissingInputs: []string{"raw_c"}},
			},
			wantReason: "earlier; humidity: " + divByZero + "; raw_c: " + unknownVar,
			wantMutate: stagelog.StatusFailed,
			wantErrors: map[string]any{"reason": "earlier; humidity: " + divByZero + "; raw_c: " + unknownVar, "parameters": map[string]envelope.Unresolved{
				"raw_c":    {Reason: "evaluation_error", Detail: unknownVar},
				"humidity": {Reason: "evaluation_error", Detail: divByZero},
			}},
			wantDerive: stagelog.StatusUnresolved},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			e := &telemetryv1.Envelope{MessageId: uuid.NewString(), DedupeKey: "k", DeliveryAttempt: 1,
				Values: value.Object(tt.extracted), Reason: tt.reason}
			mutate, derive := record(e, tt.extracted, p.Apply(tt.extracted), time.Millisecond)

			// JSON does not tell 12 from 12.0: the parameters' types do.
			types := map[string]string{"temp_c": "decimal", "raw_c": "decimal", "humidity": "decimal", "temp_f": "decimal", "raw_f": "decimal"}
			mutated, err := value.ParseObject(e.GetValues())
			typed(mutated, types)
			if err != nil || !sameValues(mutated, tt.wantMutated) {
				t.Errorf("envelope values = %v (%v), want %v", mutated, err, tt.wantMutated)
			}
			transformed, err := value.ParseObject(e.GetTransformed())
			if err != nil {
				t.Fatalf("envelope transformed %q: %v", e.GetTransformed(), err)
			}
			typed(transformed, types)
			values := map[string]any{}
			for k, v := range transformed {
				if _, ok := mutated[k]; !ok {
					values[k] = v
				}
			}
			if !sameValues(values, tt.wantDerived) {
				t.Errorf("envelope derived values = %v, want %v", values, tt.wantDerived)
			}
			unresolved := map[string]envelope.Unresolved{}
			if err := json.Unmarshal([]byte(e.GetUnresolved()), &unresolved); err != nil {
				t.Fatalf("envelope unresolved %q: %v", e.GetUnresolved(), err)
			}
			wantUnresolved := map[string]envelope.Unresolved{}
			for k, u := range tt.wantUnresolved {
				wantUnresolved[k] = u
			}
			if !reflect.DeepEqual(unresolved, wantUnresolved) {
				t.Errorf("envelope unresolved = %+v, want %+v", unresolved, wantUnresolved)
			}
			if e.GetReason() != tt.wantReason && !(tt.wantReason == "" && e.GetReason() == tt.reason) {
				t.Errorf("envelope reason = %q, want %q", e.GetReason(), tt.wantReason)
			}
			if mutate.Stage != envelope.StageMutate || mutate.Status != tt.wantMutate {
				t.Errorf("mutate entry %s %s, want mutate %s", mutate.Stage, mutate.Status, tt.wantMutate)
			}
			if tt.wantErrors == nil && mutate.Errors != nil || tt.wantErrors != nil && !reflect.DeepEqual(mutate.Errors, tt.wantErrors) {
				t.Errorf("mutate errors = %#v, want %#v", mutate.Errors, tt.wantErrors)
			}
			if tt.wantMutate != stagelog.StatusCompleted && mutate.Input == nil {
				t.Errorf("failed mutate entry has no input snapshot")
			}
			if derive.Stage != envelope.StageDerive || derive.Status != tt.wantDerive {
				t.Errorf("derive entry %s %s, want derive %s", derive.Stage, derive.Status, tt.wantDerive)
			}
			if errs, _ := derive.Errors.(map[string]envelope.Unresolved); len(errs) > 0 {
				for k := range errs {
					if _, isParam := tt.extracted[k]; isParam {
						t.Errorf("derive errors list parameter %s; a failed mutation belongs to the mutate stage", k)
					}
				}
			}
		})
	}
}

// sameValues compares value maps with sameValue.
func sameValues(got, want map[string]any) bool {
	if len(got) != len(want) {
		return false
	}
	for k, w := range want {
		if g, ok := got[k]; !ok || !sameValue(g, w) {
			return false
		}
	}
	return true
}

// TestTyped shows the values read back from the envelope's JSON getting
// the types the validator extracted them with.
func TestTyped(t *testing.T) {
	types := map[string]string{"d": "decimal", "i": "integer", "j": "json", "js": "json", "s": "string", "b": "boolean"}
	got := map[string]any{"d": int64(12), "i": 7.0, "j": int64(3), "js": "x", "s": "12", "b": true, "extra": int64(1)}
	typed(got, types)
	want := map[string]any{"d": 12.0, "i": int64(7), "j": json.RawMessage(`3`), "js": json.RawMessage(`"x"`), "s": "12", "b": true, "extra": int64(1)}
	if !reflect.DeepEqual(got, want) {
		t.Errorf("typed = %#v, want %#v", got, want)
	}
}
