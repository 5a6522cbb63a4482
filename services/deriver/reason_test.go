package deriver

import (
	"testing"

	"github.com/telemesh/telemesh/internal/reason"
)

func TestReasonsAreReasonCodes(t *testing.T) {
	for r, code := range map[Reason]string{
		ReasonMissingInput: reason.MissingInput, ReasonCycle: reason.Cycle, ReasonEvaluationError: reason.EvaluationError,
	} {
		if string(r) != code {
			t.Errorf("deriver reason %q is not the reason code %q", r, code)
		}
	}
}

func TestUnresolvedCodeNamesABrokenDefinitionFirst(t *testing.T) {
	tests := []struct {
		reasons []Reason
		want    string
	}{
		{[]Reason{ReasonMissingInput}, reason.MissingInput},
		{[]Reason{ReasonMissingInput, ReasonEvaluationError}, reason.EvaluationError},
		{[]Reason{ReasonMissingInput, ReasonEvaluationError, ReasonCycle}, reason.Cycle},
		{[]Reason{"some_new_reason", ReasonMissingInput}, reason.MissingInput},
		{[]Reason{"some_new_reason"}, "some_new_reason"},
	}
	for _, tt := range tests {
		m := map[string]Unresolved{}
		for i, r := range tt.reasons {
			m[string(rune('a'+i))] = Unresolved{Reason: r}
		}
		if got := unresolvedCode(m); got != tt.want {
			t.Errorf("unresolvedCode(%v) = %q, want %q", tt.reasons, got, tt.want)
		}
	}
}
