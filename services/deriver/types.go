package deriver

import (
	"errors"
	"fmt"
	"strings"
)

// ErrInvalidExpression is returned for a mutation or derived expression that
// cannot be used at all: it is not JSON, or (when definitions are saved) it
// names an operator JSON-Logic does not have.
var ErrInvalidExpression = errors.New("invalid expression")

// ErrCycle is matched by a [CycleError].
var ErrCycle = errors.New("derived parameters form a cycle")

// ErrUnknownDependency is matched by an [UnknownDependencyError].
var ErrUnknownDependency = errors.New("unknown dependency")

// ErrUnknownVariable is matched by an [UnknownVariableError].
var ErrUnknownVariable = errors.New("mutation reads an unknown variable")

// MutationInput is the one variable a mutation reads: the extracted value,
// under the name the system telemesh replaces gave it. A mutation reads
// nothing else, the message's other parameters included: it corrects one
// value (a calibration, a unit), and values are combined by derived
// parameters, which have a dependency order and report a missing input. A
// mutation reading another parameter would need an order among mutations
// and would read that parameter either before or after its own mutation,
// both of them surprising to someone.
const MutationInput = "val"

// ErrDuplicateKey is returned when a derived key is defined twice, or is also
// a parameter key, since a reader of the key could not tell which is meant.
var ErrDuplicateKey = errors.New("duplicate key")

// Reason says why a derived value could not be computed.
type Reason string

// The reasons a derived value is left unresolved, as stored in the row and
// the stage log.
const (
	// ReasonMissingInput is a dependency absent from the message or itself
	// unresolved.
	ReasonMissingInput Reason = "missing_input"
	// ReasonCycle is a key on a dependency cycle.
	ReasonCycle Reason = "cycle"
	// ReasonEvaluationError is an expression that failed, or whose result is
	// not a finite value of the key's data type.
	ReasonEvaluationError Reason = "evaluation_error"
)

// Unresolved is a derived value that could not be computed, with the reason.
type Unresolved struct {
	Reason Reason
	// MissingInputs are the dependencies that were absent or unresolved, in
	// the order the dependencies are listed.
	MissingInputs []string
	// Cycle is a dependency cycle through the key, first key repeated last,
	// such as [a b a]: a depends on b, which depends on a.
	Cycle []string
	// Detail says what went wrong in an evaluation.
	Detail string
}

// Result is what Apply produced for one message.
type Result struct {
	// Mutated holds the extracted values after their mutations; values
	// without a mutation are copied unchanged, and a value whose mutation
	// failed is left out (see MutationErrors).
	Mutated map[string]any
	// Derived holds the derived values that could be computed.
	Derived map[string]any
	// Unresolved holds the derived keys that could not be computed, with the
	// reason; nil when every one was.
	Unresolved map[string]Unresolved
	// MutationErrors says, by parameter key, why a mutation failed, such as
	// `mutation {"*":[{"var":"value"},1.02]} reads "value", which is not
	// defined`. Such a value is not in Mutated: the extracted value is not
	// what the definition asks to store, and a derived value reading it is
	// unresolved with a missing input instead of computed from it. Nil when
	// none failed.
	MutationErrors map[string]string
}

// CycleError is a dependency cycle among derived definitions.
type CycleError struct {
	// Cycle lists the keys, the first repeated last.
	Cycle []string
}

// Error names the cycle, e.g. "derived parameters form a cycle: a -> b -> a".
func (e *CycleError) Error() string {
	return ErrCycle.Error() + ": " + strings.Join(e.Cycle, " -> ")
}

// Unwrap makes errors.Is(err, ErrCycle) hold.
func (e *CycleError) Unwrap() error { return ErrCycle }

// UnknownDependencyError is a derived definition that reads, or lists as a
// dependency, a key that is neither a parameter nor a derived key of its
// topic.
type UnknownDependencyError struct {
	Key        string
	Dependency string
	// Expression is the definition's expression as compact JSON, shortened
	// when long.
	Expression string
	// Listed is set when the key is named only in the explicit
	// dependencies, not read by the expression.
	Listed bool
}

// Error names the key, the expression and the unknown name, e.g.
// `derived parameter "temp_f": expression {"var":"temp_x"} reads "temp_x",
// which is not defined (...)`.
func (e *UnknownDependencyError) Error() string {
	return fmt.Sprintf("derived parameter %q: %s (an expression reads the topic's parameters and derived parameters)",
		e.Key, undefinedText("expression", e.Expression, e.Dependency, e.Listed))
}

// Unwrap makes errors.Is(err, ErrUnknownDependency) hold.
func (e *UnknownDependencyError) Unwrap() error { return ErrUnknownDependency }

// UnknownVariableError is a mutation that reads a variable other than
// [MutationInput].
type UnknownVariableError struct {
	Parameter string
	// Expression is the mutation as compact JSON, shortened when long.
	Expression string
	Name       string
}

// Error names the parameter, the expression and the variable, e.g.
// `parameter "temp_c": mutation {"*":[{"var":"value"},1.02]} reads "value",
// which is not defined (a mutation reads only "val", the extracted value)`.
func (e *UnknownVariableError) Error() string {
	return fmt.Sprintf("parameter %q: %s (a mutation reads only %q, the extracted value)",
		e.Parameter, undefinedText("mutation", e.Expression, e.Name, false), MutationInput)
}

// Unwrap makes errors.Is(err, ErrUnknownVariable) hold.
func (e *UnknownVariableError) Unwrap() error { return ErrUnknownVariable }

// undefinedText says that an expression reads, or lists, a name that is not
// defined; it is the reason recorded at run time and the core of the error
// when definitions are saved, so both read alike.
func undefinedText(what, expr, name string, listed bool) string {
	if listed {
		return fmt.Sprintf("%s %s lists dependency %q, which is not defined", what, expr, name)
	}
	return fmt.Sprintf("%s %s reads %q, which is not defined", what, expr, name)
}

// The data types of catalog definitions.
const (
	typeInteger = "integer"
	typeDecimal = "decimal"
	typeBoolean = "boolean"
	typeString  = "string"
	typeJSON    = "json"
)
