package deriver

import (
	"encoding/json"
	"errors"
	"fmt"
	"slices"
	"strings"

	"github.com/telemesh/telemesh/internal/catalog"
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
	p, _, err := compile(params, derived, false)
	return p, err
}

// compileTopic compiles the definitions the catalog holds for a topic. They
// may never have been checked (a row written with SQL), so an expression
// that is not JSON is one more problem of its key, reported on every message,
// rather than an error that would stop the topic's messages.
func compileTopic(params []catalog.Parameter, derived []catalog.Derived) *Program {
	p, _, _ := compile(params, derived, true)
	return p
}

// compile walks the definitions once. It returns the program, with each
// problem recorded for the keys concerned, and the problems as the errors
// [CheckDefinitions] reports, in definition order. Unless lenient, an
// expression that is not JSON fails it.
func compile(params []catalog.Parameter, derived []catalog.Derived, lenient bool) (*Program, []error, error) {
	p := &Program{mutations: map[string]mutation{}}
	var errs, found []error
	paramKeys := make(map[string]bool, len(params))
	for _, prm := range params {
		paramKeys[prm.Key] = true
		if isAbsent(prm.Mutation) {
			continue
		}
		m := mutation{dataType: prm.DataType, text: expressionText(prm.Mutation)}
		rule, err := decode(prm.Mutation)
		if err != nil {
			err = fmt.Errorf("parameter %q: mutation: %w", prm.Key, err)
			if !lenient {
				errs = append(errs, err)
				continue
			}
			found = append(found, err)
		}
		m.rule = rule
		if err != nil {
			m.problem = fmt.Sprintf("mutation %s is not valid JSON", m.text)
		} else if op, ok := unknownOperator(rule); ok {
			m.problem = fmt.Sprintf("mutation %s uses unknown operator %q", m.text, op)
			found = append(found, fmt.Errorf("parameter %q: mutation: %w: unknown operator %q", prm.Key, ErrInvalidExpression, op))
		} else if name, ok := unknownMutationVariable(rule); ok {
			m.problem = undefinedText("mutation", m.text, name, false)
			found = append(found, &UnknownVariableError{Parameter: prm.Key, Expression: m.text, Name: name})
		}
		p.mutations[prm.Key] = m
	}

	defs := sortedDefinitions(derived)
	nodes := make([]*node, 0, len(defs))
	byKey := make(map[string]*node, len(defs))
	for _, d := range defs {
		rule, err := decode(d.Expression)
		if err != nil {
			err = fmt.Errorf("derived parameter %q: %w", d.Key, err)
			if !lenient {
				errs = append(errs, err)
				continue
			}
		}
		if first := byKey[d.Key]; first != nil {
			// Keeping either definition would be a guess, so the key
			// resolves to neither.
			first.problem = "key is defined more than once"
			found = append(found, fmt.Errorf("derived parameter %q: %w: defined more than once", d.Key, ErrDuplicateKey))
			continue
		}
		n := &node{def: d, rule: rule}
		n.deps, n.required, n.vars = dependencies(d, rule)
		if paramKeys[d.Key] {
			found = append(found, fmt.Errorf("derived parameter %q: %w: also a parameter key", d.Key, ErrDuplicateKey))
		}
		op, unknown := unknownOperator(rule)
		switch {
		case err != nil:
			found = append(found, err)
		case unknown:
			found = append(found, fmt.Errorf("derived parameter %q: %w: unknown operator %q", d.Key, ErrInvalidExpression, op))
		}
		switch {
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
		return nil, nil, errors.Join(errs...)
	}
	// A name that is neither a parameter nor a derived key can never be in
	// a message, so reading it is a defect of the definition, not a missing
	// input of the message.
	for _, n := range nodes {
		for _, dep := range n.deps {
			if paramKeys[dep] || byKey[dep] != nil {
				continue
			}
			expr, listed := expressionText(n.def.Expression), !slices.Contains(n.vars, dep)
			found = append(found, &UnknownDependencyError{Key: n.def.Key, Dependency: dep, Expression: expr, Listed: listed})
			if n.problem == "" {
				n.problem = undefinedText("expression", expr, dep, listed)
			}
		}
	}

	onCycle := map[string]bool{}
	named := map[string]bool{}
	for _, c := range findCycles(nodes, byKey) {
		p.cycles = append(p.cycles, c)
		onCycle[c.key] = true
		// Each key on a cycle has it; it is reported once.
		if name := strings.Join(c.cycle, "\x00"); !named[name] {
			named[name] = true
			found = append(found, &CycleError{Cycle: c.cycle})
		}
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
	return p, found, nil
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
