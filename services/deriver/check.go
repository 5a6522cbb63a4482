package deriver

import (
	"errors"

	"github.com/telemesh/telemesh/internal/catalog"
)

// CheckDefinitions reports what would make definitions fail or resolve
// nothing, so that they are rejected when saved rather than on every
// message: an expression that is not JSON or names an unknown operator
// (ErrInvalidExpression), a mutation that reads a variable other than
// [MutationInput] (an [UnknownVariableError]), a derived key defined twice or
// equal to a parameter key (ErrDuplicateKey), a derived expression that
// reads or lists a key that is neither a parameter nor a derived key (an
// [UnknownDependencyError]), and a dependency cycle among derived
// definitions (a [CycleError] naming it, e.g. "derived parameters form a
// cycle: a -> b -> a"). It returns nil, the one problem found, or all of
// them joined, in definition order.
//
// Vars inside the logic of filter, map, reduce, all, none and some read the
// current element and are not checked, nor is a var whose name is computed.
//
// It compiles the definitions as the deriver does and reports what the
// compilation found.
func CheckDefinitions(params []catalog.Parameter, derived []catalog.Derived) error {
	_, found, _ := compile(params, derived, true)
	switch len(found) {
	case 0:
		return nil
	case 1:
		return found[0]
	}
	return errors.Join(found...)
}

// unknownMutationVariable returns the first variable a mutation reads other
// than [MutationInput].
func unknownMutationVariable(rule any) (string, bool) {
	var unknown string
	walkVars(rule, func(name string, _ bool) {
		if unknown == "" && name != MutationInput {
			unknown = name
		}
	})
	return unknown, unknown != ""
}
