package deriver

import (
	"bytes"
	"cmp"
	"encoding/json"
	"errors"
	"fmt"
	"math"
	"slices"
	"strconv"
	"strings"
	"unicode/utf8"

	"github.com/diegoholiveira/jsonlogic/v3"

	"github.com/telemesh/telemesh/internal/catalog"
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

// Program is a compiled definition set of one topic: mutations by key, and
// derived definitions in dependency order. Build it once per definition set,
// not per message: Compile decodes every expression and orders the
// derivations so that Apply does neither. A Program is never modified after
// Compile, so one may be shared by concurrent callers of Apply.
type Program struct {
	mutations map[string]mutation
	// order holds the derived definitions that are not on a cycle, each
	// after the definitions it depends on.
	order []*node
	// cycles holds the keys on a cycle with their cycle, in definition order.
	cycles []cycleKey
	// inputs are the keys, other than derived keys, that some derived
	// expression reads; only these are converted for JSON-Logic.
	inputs []string
}

type mutation struct {
	dataType string
	rule     any
	// text is the expression as compact JSON, for the reasons recorded.
	text string
	// problem is set when the rule can never run, such as an unknown
	// operator or variable, so each message reports it instead of a guessed
	// result.
	problem string
}

type node struct {
	def  catalog.Derived
	rule any
	// deps are all keys the definition depends on: its explicit
	// dependencies and the keys its expression reads. required are those
	// whose absence makes the value unresolved: the explicit ones, else
	// those read without a default.
	deps     []string
	required []string
	// vars are the keys the expression reads.
	vars []string
	// read is set when another derived expression reads this value, so it
	// must be added to the evaluation data.
	read    bool
	problem string
}

type cycleKey struct {
	key   string
	cycle []string
}

// Compile decodes the definitions of one topic and orders the derived ones
// by dependency. Its error is only for definitions that cannot be parsed at
// all (invalid JSON); other problems, cycles and names that are not defined
// included, do not fail Compile: they are recorded and every message reports
// them for the keys concerned, as [CheckDefinitions] words them.
func Compile(params []catalog.Parameter, derived []catalog.Derived) (*Program, error) {
	return compile(params, derived, false)
}

// compileTopic compiles the definitions the catalog holds for a topic. They
// may never have been checked (a row written with SQL), so an expression
// that is not JSON is one more problem of its key, reported on every message,
// rather than an error that would stop the topic's messages.
func compileTopic(params []catalog.Parameter, derived []catalog.Derived) *Program {
	p, _ := compile(params, derived, true)
	return p
}

func compile(params []catalog.Parameter, derived []catalog.Derived, lenient bool) (*Program, error) {
	p := &Program{mutations: map[string]mutation{}}
	var errs []error
	paramKeys := make(map[string]bool, len(params))
	for _, prm := range params {
		paramKeys[prm.Key] = true
		if isAbsent(prm.Mutation) {
			continue
		}
		m := mutation{dataType: prm.DataType, text: expressionText(prm.Mutation)}
		rule, err := decode(prm.Mutation)
		if err != nil && !lenient {
			errs = append(errs, fmt.Errorf("parameter %q: mutation: %w", prm.Key, err))
			continue
		}
		m.rule = rule
		if err != nil {
			m.problem = fmt.Sprintf("mutation %s is not valid JSON", m.text)
		} else if op, ok := unknownOperator(rule); ok {
			m.problem = fmt.Sprintf("mutation %s uses unknown operator %q", m.text, op)
		} else if name, ok := unknownMutationVariable(rule); ok {
			m.problem = undefinedText("mutation", m.text, name, false)
		}
		p.mutations[prm.Key] = m
	}

	defs := sortedDefinitions(derived)
	nodes := make([]*node, 0, len(defs))
	byKey := make(map[string]*node, len(defs))
	for _, d := range defs {
		rule, err := decode(d.Expression)
		if err != nil && !lenient {
			errs = append(errs, fmt.Errorf("derived parameter %q: %w", d.Key, err))
			continue
		}
		if first := byKey[d.Key]; first != nil {
			// Keeping either definition would be a guess, so the key
			// resolves to neither.
			first.problem = "key is defined more than once"
			continue
		}
		n := &node{def: d, rule: rule}
		n.deps, n.required, n.vars = dependencies(d, rule)
		switch op, unknown := unknownOperator(rule); {
		case paramKeys[d.Key]:
			n.problem = "key is also a parameter key"
		case err != nil:
			n.problem = fmt.Sprintf("expression %s is not valid JSON", expressionText(d.Expression))
		case unknown:
			n.problem = fmt.Sprintf("expression %s uses unknown operator %q", expressionText(d.Expression), op)
		}
		nodes = append(nodes, n)
		byKey[d.Key] = n
	}
	if len(errs) > 0 {
		return nil, errors.Join(errs...)
	}
	// A name that is neither a parameter nor a derived key can never be in
	// a message, so reading it is a defect of the definition, not a missing
	// input of the message.
	for _, n := range nodes {
		if n.problem != "" {
			continue
		}
		if name, listed, ok := n.unknownDependency(func(k string) bool { return paramKeys[k] || byKey[k] != nil }); ok {
			n.problem = undefinedText("expression", expressionText(n.def.Expression), name, listed)
		}
	}

	onCycle := map[string]bool{}
	for _, c := range findCycles(nodes, byKey) {
		p.cycles = append(p.cycles, c)
		onCycle[c.key] = true
	}
	p.order = dependencyOrder(nodes, byKey, onCycle)

	inputs := map[string]bool{}
	for _, n := range nodes {
		for _, dep := range n.deps {
			if d := byKey[dep]; d != nil {
				d.read = true
			} else {
				inputs[dep] = true
			}
		}
	}
	p.inputs = make([]string, 0, len(inputs))
	for k := range inputs {
		p.inputs = append(p.inputs, k)
	}
	slices.Sort(p.inputs)
	return p, nil
}

// Apply mutates the extracted values of one message and computes the derived
// values. It never fails as a whole: each value that cannot be produced is
// reported in the result with the reason.
//
// Decimal results are kept exactly as JSON-Logic computes them in float64,
// not rounded: rounding to some number of digits would alter values that
// later derivations read, by an amount that depends on their magnitude.
// 12*1.8+32 is exactly the float64 nearest 53.6, the old system's figure;
// other results can carry float noise (0.1+0.2 gives 0.30000000000000004),
// so tests compare decimals with a tolerance. Integer values reach
// JSON-Logic as float64, which holds integers exactly only up to 2^53.
func (p *Program) Apply(extracted map[string]any) Result {
	res := Result{
		Mutated: make(map[string]any, len(extracted)),
		Derived: make(map[string]any, len(p.order)),
	}
	var scratch map[string]any
	for k, v := range extracted {
		m, ok := p.mutations[k]
		if !ok || v == nil {
			res.Mutated[k] = v
			continue
		}
		if scratch == nil {
			scratch = make(map[string]any, 1)
		}
		out, err := m.apply(v, scratch)
		if err != nil {
			// Left out of Mutated: see Result.MutationErrors.
			if res.MutationErrors == nil {
				res.MutationErrors = map[string]string{}
			}
			res.MutationErrors[k] = err.Error()
			continue
		}
		res.Mutated[k] = out
	}

	if len(p.order) == 0 && len(p.cycles) == 0 {
		return res
	}
	unresolve := func(key string, u Unresolved) {
		if res.Unresolved == nil {
			res.Unresolved = map[string]Unresolved{}
		}
		res.Unresolved[key] = u
	}
	for _, c := range p.cycles {
		unresolve(c.key, Unresolved{Reason: ReasonCycle, Cycle: slices.Clone(c.cycle)})
	}

	data := make(map[string]any, len(p.inputs)+len(p.order))
	for _, k := range p.inputs {
		if v, ok := res.Mutated[k]; ok && v != nil {
			data[k] = toLogic(v)
		}
	}
	for _, n := range p.order {
		if n.problem != "" {
			unresolve(n.def.Key, Unresolved{Reason: ReasonEvaluationError, Detail: n.problem})
			continue
		}
		// JSON-Logic reads an absent variable as null and carries on, so
		// absence is caught here, before it can become a wrong number.
		var missing []string
		for _, dep := range n.required {
			if _, ok := data[dep]; !ok {
				missing = append(missing, dep)
			}
		}
		if missing != nil {
			unresolve(n.def.Key, Unresolved{Reason: ReasonMissingInput, MissingInputs: missing})
			continue
		}
		out, err := evaluate(n.rule, data)
		if err != nil {
			unresolve(n.def.Key, Unresolved{Reason: ReasonEvaluationError, Detail: err.Error()})
			continue
		}
		v, err := convert(out, n.def.DataType)
		if err != nil {
			unresolve(n.def.Key, Unresolved{Reason: ReasonEvaluationError, Detail: err.Error()})
			continue
		}
		res.Derived[n.def.Key] = v
		if n.read {
			// Not out itself: a result may alias the data ({"var":""} is the
			// data map), and storing it would make the data contain itself.
			data[n.def.Key] = toLogic(v)
		}
	}
	return res
}

func (m mutation) apply(v any, scratch map[string]any) (any, error) {
	if m.problem != "" {
		return nil, errors.New(m.problem)
	}
	scratch[MutationInput] = toLogic(v)
	out, err := evaluate(m.rule, scratch)
	if err == nil {
		out, err = convert(out, m.dataType)
	}
	if err != nil {
		return nil, fmt.Errorf("mutation %s: %w", m.text, err)
	}
	return out, nil
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

// unknownDependency returns the first key the definition depends on that is
// not known, and whether it is only listed, not read by the expression.
func (n *node) unknownDependency(known func(string) bool) (name string, listed, ok bool) {
	for _, dep := range n.deps {
		if !known(dep) {
			return dep, !slices.Contains(n.vars, dep), true
		}
	}
	return "", false, false
}

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
func CheckDefinitions(params []catalog.Parameter, derived []catalog.Derived) error {
	var errs []error
	known := make(map[string]bool, len(params)+len(derived))
	for _, prm := range params {
		known[prm.Key] = true
		if isAbsent(prm.Mutation) {
			continue
		}
		rule, err := decode(prm.Mutation)
		if err != nil {
			errs = append(errs, fmt.Errorf("parameter %q: mutation: %w", prm.Key, err))
			continue
		}
		if op, ok := unknownOperator(rule); ok {
			errs = append(errs, fmt.Errorf("parameter %q: mutation: %w: unknown operator %q", prm.Key, ErrInvalidExpression, op))
		} else if name, ok := unknownMutationVariable(rule); ok {
			errs = append(errs, &UnknownVariableError{Parameter: prm.Key, Expression: expressionText(prm.Mutation), Name: name})
		}
	}

	defs := sortedDefinitions(derived)
	nodes := make([]*node, 0, len(defs))
	byKey := make(map[string]*node, len(defs))
	for _, d := range defs {
		switch {
		case byKey[d.Key] != nil:
			errs = append(errs, fmt.Errorf("derived parameter %q: %w: defined more than once", d.Key, ErrDuplicateKey))
			continue
		case known[d.Key]:
			errs = append(errs, fmt.Errorf("derived parameter %q: %w: also a parameter key", d.Key, ErrDuplicateKey))
		}
		rule, err := decode(d.Expression)
		if err != nil {
			errs = append(errs, fmt.Errorf("derived parameter %q: %w", d.Key, err))
		} else if op, ok := unknownOperator(rule); ok {
			errs = append(errs, fmt.Errorf("derived parameter %q: %w: unknown operator %q", d.Key, ErrInvalidExpression, op))
		}
		n := &node{def: d}
		n.deps, n.required, n.vars = dependencies(d, rule)
		nodes = append(nodes, n)
		byKey[d.Key] = n
	}
	for _, n := range nodes {
		for _, dep := range n.deps {
			if !known[dep] && byKey[dep] == nil {
				errs = append(errs, &UnknownDependencyError{Key: n.def.Key, Dependency: dep,
					Expression: expressionText(n.def.Expression), Listed: !slices.Contains(n.vars, dep)})
			}
		}
	}
	seen := map[string]bool{}
	for _, c := range findCycles(nodes, byKey) {
		name := strings.Join(c.cycle, "\x00")
		if !seen[name] {
			seen[name] = true
			errs = append(errs, &CycleError{Cycle: c.cycle})
		}
	}
	switch len(errs) {
	case 0:
		return nil
	case 1:
		return errs[0]
	}
	return errors.Join(errs...)
}

// Dependencies returns a derived definition's explicit dependencies, else
// the var names found in its expression, in order of first appearance. Of a
// dotted path such as "a.b" only the first segment is a dependency. Vars
// inside the logic of filter, map, reduce, all, none and some read the
// current element, not the message, so they are not dependencies; nor is a
// var whose name is computed. An expression that is not JSON has none.
func Dependencies(d catalog.Derived) []string {
	var rule any
	if len(d.Dependencies) == 0 {
		var err error
		if rule, err = decode(d.Expression); err != nil {
			return nil
		}
	}
	deps, _, _ := dependencies(d, rule)
	return deps
}

// dependencies returns all dependencies of a definition, the required ones
// and the keys its expression reads. Explicit dependencies are all
// required; an inferred one is optional only when every var reading it
// gives a default, since then the expression's author has said what absence
// means. A key the expression reads beyond its explicit dependencies is a
// dependency too, though not a required one: leaving it out would order the
// definition without it and evaluate the var as null.
func dependencies(d catalog.Derived, rule any) (all, required, vars []string) {
	needed := map[string]bool{}
	walkVars(rule, func(name string, hasDefault bool) {
		if _, seen := needed[name]; !seen {
			vars = append(vars, name)
		}
		needed[name] = needed[name] || !hasDefault
	})
	if len(d.Dependencies) > 0 {
		all = make([]string, 0, len(d.Dependencies)+len(vars))
		for _, dep := range d.Dependencies {
			if dep != "" && !slices.Contains(all, dep) {
				all = append(all, dep)
			}
		}
		required = slices.Clone(all)
		for _, name := range vars {
			if !slices.Contains(all, name) {
				all = append(all, name)
			}
		}
		return all, required, vars
	}
	for _, name := range vars {
		if needed[name] {
			required = append(required, name)
		}
	}
	return slices.Clone(vars), required, vars
}

// walkVars calls visit for each var of a rule that reads the message. It
// follows the library's reading of a rule: only a one-key object is an
// operation; other objects are literals.
func walkVars(rule any, visit func(name string, hasDefault bool)) {
	switch t := rule.(type) {
	case []any:
		for _, e := range t {
			walkVars(e, visit)
		}
	case map[string]any:
		if len(t) != 1 {
			return
		}
		for op, args := range t {
			switch op {
			case "var":
				if name, hasDefault, ok := varName(args); ok {
					visit(name, hasDefault)
				}
				walkVars(args, visit)
			case "filter", "map", "reduce", "all", "none", "some":
				if a, ok := args.([]any); ok && len(a) > 0 {
					walkVars(a[0], visit)
				} else {
					walkVars(args, visit)
				}
			default:
				walkVars(args, visit)
			}
		}
	}
}

// varName returns the top-level key a var reads, mirroring how the library
// resolves it: "name", ["name"], ["name", default] or a dotted path, whose
// first non-empty segment is the key. An empty name reads the whole data
// and names no key.
func varName(args any) (name string, hasDefault bool, ok bool) {
	switch t := args.(type) {
	case []any:
		if len(t) == 0 {
			return "", false, false
		}
		s, isString := t[0].(string)
		if !isString {
			return "", false, false
		}
		name = s
		hasDefault = len(t) == 2 && t[1] != nil
	case string:
		name = t
	case float64:
		name = strconv.FormatFloat(t, 'f', -1, 64)
	default:
		return "", false, false
	}
	for seg := range strings.SplitSeq(name, ".") {
		if seg != "" {
			return seg, hasDefault, true
		}
	}
	return "", false, false
}

// operators are those jsonlogic v3.5.1 evaluates. The library answers an
// unknown operator applied to a single value with that value's truthiness
// instead of an error, so unknown operators are caught before evaluation.
var operators = map[string]bool{
	"==": true, "===": true, "!=": true, "!==": true, ">": true, ">=": true,
	"<": true, "<=": true, "!": true, "!!": true, "or": true, "and": true,
	"?:": true, "in": true, "in_sorted": true, "cat": true, "%": true,
	"abs": true, "max": true, "min": true, "+": true, "-": true, "*": true,
	"/": true, "substr": true, "merge": true, "if": true, "missing": true,
	"missing_some": true, "some": true, "filter": true, "map": true,
	"reduce": true, "all": true, "none": true, "set": true, "var": true,
}

// unknownOperator returns the first operator of a rule that JSON-Logic does
// not have.
func unknownOperator(rule any) (string, bool) {
	switch t := rule.(type) {
	case []any:
		for _, e := range t {
			if op, ok := unknownOperator(e); ok {
				return op, true
			}
		}
	case map[string]any:
		if len(t) != 1 {
			return "", false
		}
		for op, args := range t {
			if !operators[op] {
				return op, true
			}
			return unknownOperator(args)
		}
	}
	return "", false
}

// findCycles returns each key on a dependency cycle with the shortest cycle
// through it, in definition order. The cycle starts at its member that comes
// first in definition order, so that the keys of a two-key cycle report the
// same cycle.
func findCycles(nodes []*node, byKey map[string]*node) []cycleKey {
	rank := make(map[string]int, len(nodes))
	for i, n := range nodes {
		rank[n.def.Key] = i
	}
	comp := components(nodes, byKey)
	var out []cycleKey
	for _, n := range nodes {
		c := comp[n.def.Key]
		if c.size == 1 && !slices.Contains(n.deps, n.def.Key) {
			continue
		}
		cycle := shortestCycle(n, byKey, func(k string) bool { return comp[k].id == c.id })
		start := 0
		for i, k := range cycle {
			if rank[k] < rank[cycle[start]] {
				start = i
			}
		}
		rotated := append(slices.Clone(cycle[start:]), cycle[:start]...)
		out = append(out, cycleKey{key: n.def.Key, cycle: append(rotated, rotated[0])})
	}
	return out
}

// shortestCycle returns the keys of a shortest cycle from n back to itself,
// without repeating n at the end, following only keys in the same component.
func shortestCycle(n *node, byKey map[string]*node, same func(string) bool) []string {
	from := map[string]string{}
	queue := []string{n.def.Key}
	for len(queue) > 0 {
		k := queue[0]
		queue = queue[1:]
		for _, dep := range byKey[k].deps {
			if byKey[dep] == nil || !same(dep) {
				continue
			}
			if dep == n.def.Key {
				path := []string{k}
				for k != n.def.Key {
					k = from[k]
					path = append(path, k)
				}
				slices.Reverse(path)
				return path
			}
			if _, seen := from[dep]; !seen {
				from[dep] = k
				queue = append(queue, dep)
			}
		}
	}
	return []string{n.def.Key}
}

type component struct{ id, size int }

// components finds the strongly connected components of the dependency
// graph (Tarjan); a key is on a cycle when its component has more than one
// key or it depends on itself.
func components(nodes []*node, byKey map[string]*node) map[string]component {
	var (
		index   = map[string]int{}
		low     = map[string]int{}
		onStack = map[string]bool{}
		stack   []string
		out     = map[string]component{}
		next    int
		ids     int
	)
	var visit func(n *node)
	visit = func(n *node) {
		k := n.def.Key
		index[k], low[k] = next, next
		next++
		stack = append(stack, k)
		onStack[k] = true
		for _, dep := range n.deps {
			d := byKey[dep]
			if d == nil {
				continue
			}
			if _, seen := index[dep]; !seen {
				visit(d)
				low[k] = min(low[k], low[dep])
			} else if onStack[dep] {
				low[k] = min(low[k], index[dep])
			}
		}
		if low[k] != index[k] {
			return
		}
		var members []string
		for {
			top := stack[len(stack)-1]
			stack = stack[:len(stack)-1]
			onStack[top] = false
			members = append(members, top)
			if top == k {
				break
			}
		}
		for _, m := range members {
			out[m] = component{id: ids, size: len(members)}
		}
		ids++
	}
	for _, n := range nodes {
		if _, seen := index[n.def.Key]; !seen {
			visit(n)
		}
	}
	return out
}

// dependencyOrder sorts the keys not on a cycle so that each follows the
// derived keys it depends on; among keys that are ready together, the
// definition order (sequence, then key) decides. Dependencies on cycle keys
// are ignored here: those are unresolved before any evaluation.
func dependencyOrder(nodes []*node, byKey map[string]*node, onCycle map[string]bool) []*node {
	waiting := map[string]int{}
	users := map[string][]*node{}
	var ready []*node
	for _, n := range nodes {
		if onCycle[n.def.Key] {
			continue
		}
		count := 0
		for _, dep := range n.deps {
			if byKey[dep] != nil && !onCycle[dep] {
				count++
				users[dep] = append(users[dep], n)
			}
		}
		waiting[n.def.Key] = count
		if count == 0 {
			ready = append(ready, n)
		}
	}
	order := make([]*node, 0, len(waiting))
	for len(ready) > 0 {
		// A topic has few derived keys, so a scan is cheaper than a heap.
		best := 0
		for i := range ready {
			if compareDefinitions(ready[i].def, ready[best].def) < 0 {
				best = i
			}
		}
		n := ready[best]
		ready = slices.Delete(ready, best, best+1)
		order = append(order, n)
		for _, u := range users[n.def.Key] {
			waiting[u.def.Key]--
			if waiting[u.def.Key] == 0 {
				ready = append(ready, u)
			}
		}
	}
	return order
}

func compareDefinitions(a, b catalog.Derived) int {
	return cmp.Or(cmp.Compare(a.Sequence, b.Sequence), cmp.Compare(a.Key, b.Key))
}

func sortedDefinitions(derived []catalog.Derived) []catalog.Derived {
	defs := slices.Clone(derived)
	slices.SortStableFunc(defs, compareDefinitions)
	return defs
}

func isAbsent(expr json.RawMessage) bool {
	s := strings.TrimSpace(string(expr))
	return s == "" || s == "null"
}

func decode(expr json.RawMessage) (any, error) {
	var rule any
	if err := json.Unmarshal(expr, &rule); err != nil {
		return nil, fmt.Errorf("%w: %w", ErrInvalidExpression, err)
	}
	return rule, nil
}

// evaluate runs a rule. The library reports most failures by panicking
// with a Go runtime error (a failed type assertion on a null or a boolean,
// an index out of range), which ApplyInterface turns into an error whose
// text speaks of Go, not of the expression; it re-panics on a panic value
// that is not an error. Both are caught, and the failure is explained by
// the operation that failed and the values it was given (see [explain]), so
// a recorded reason reads like `"*" cannot be applied to null and 1.02`.
// ApplyInterface only reads the rule and the data, which is what lets one
// decoded rule serve every message and every goroutine.
func evaluate(rule any, data map[string]any) (any, error) {
	if out, ok := try(rule, data); ok {
		return out, nil
	}
	return nil, explain(rule, data)
}

// try evaluates a rule and reports whether it succeeded.
func try(rule any, data map[string]any) (out any, ok bool) {
	defer func() {
		if r := recover(); r != nil {
			out, ok = nil, false
		}
	}()
	out, err := jsonlogic.ApplyInterface(rule, data)
	return out, err == nil
}

// iterating are the operators whose logic argument runs once per element of
// their first argument, with the element as its data.
var iterating = map[string]bool{"filter": true, "map": true, "reduce": true, "all": true, "none": true, "some": true}

// explain says why a rule that failed failed, naming the operation that
// failed and its arguments' values.
func explain(rule any, data map[string]any) error {
	if op, args, ok := failing(rule, data); ok {
		return fmt.Errorf("%q cannot be applied to %s", op, describeValues(args))
	}
	// Not expected: every failure is some operation's.
	return errors.New("the expression cannot be evaluated with these values")
}

// failing returns the innermost operation of a rule that fails although
// each of its arguments evaluates, with the arguments' values. The library
// evaluates every argument before its operation, even the branches of if
// and the operands of and and or, so the first failure in that order is the
// one that stopped the evaluation. Of an iterating operator only the first
// argument reads the data; a failure in its per-element logic names the
// operator itself.
func failing(rule any, data map[string]any) (op string, args []any, ok bool) {
	switch t := rule.(type) {
	case []any:
		for _, e := range t {
			if op, args, ok := failing(e, data); ok {
				return op, args, true
			}
		}
	case map[string]any:
		if len(t) != 1 {
			return "", nil, false
		}
		for name, a := range t {
			list, isList := a.([]any)
			if !isList {
				list = []any{a}
			}
			if iterating[name] && len(list) > 1 {
				list = list[:1]
			}
			values := make([]any, 0, len(list))
			for _, arg := range list {
				if op, args, ok := failing(arg, data); ok {
					return op, args, true
				}
				v, _ := try(arg, data)
				values = append(values, v)
			}
			if _, ok := try(t, data); !ok {
				return name, values, true
			}
		}
	}
	return "", nil, false
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
