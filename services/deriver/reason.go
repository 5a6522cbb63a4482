package deriver

import (
	"slices"

	"github.com/telemesh/telemesh/internal/reason"
)

// unresolvedCode is the reason code a derive row with unresolved values is
// counted under (the deriver's reasons are codes of package reason): a
// broken definition (a cycle, then an expression that failed) before
// missing data, so the cause an operator can fix shows first. Each value
// keeps its own reason in the row's errors.
func unresolvedCode(unresolved map[string]Unresolved) string {
	seen := make([]string, 0, len(unresolved))
	for _, u := range unresolved {
		seen = append(seen, string(u.Reason))
	}
	for _, code := range []string{reason.Cycle, reason.EvaluationError, reason.MissingInput} {
		if slices.Contains(seen, code) {
			return code
		}
	}
	if len(seen) == 0 {
		return ""
	}
	return slices.Min(seen)
}
