package deriver

import (
	"strconv"
	"strings"
)

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
