package deriver

import (
	"errors"
	"fmt"
	"slices"

	"github.com/diegoholiveira/jsonlogic/v3"
)

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
