package validator

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"math"
	"regexp"
	"strconv"
	"strings"
	"sync"
	"unicode/utf8"

	"github.com/telemesh/telemesh/internal/catalog"
	"github.com/telemesh/telemesh/internal/reason"
)

// Issue codes. They are stable: they are stored with invalid telemetry,
// name the reason token of invalid-event subjects, and operators filter on
// them. They are the codes of package reason, which defines each once.
const (
	// CodePayloadTooLarge is a payload longer than Limits.MaxBytes.
	CodePayloadTooLarge = reason.PayloadTooLarge
	// CodeTooManyKeys is a payload with more than Limits.MaxKeys object keys,
	// counted over the whole document.
	CodeTooManyKeys = reason.TooManyKeys
	// CodeTooDeep is a payload nested deeper than Limits.MaxDepth.
	CodeTooDeep = reason.TooDeep
	// CodeInvalidJSON is a payload that is not one JSON document, including
	// the NaN and Infinity literals JSON does not have.
	CodeInvalidJSON = reason.InvalidJSON
	// CodeNotAnObject is a JSON document whose top level is not an object.
	CodeNotAnObject = reason.NotAnObject
	// CodeInvalidNumber is a number a parameter reads that is beyond the
	// range of a 64-bit float.
	CodeInvalidNumber = reason.InvalidNumber
	// CodeInvalidUTF8 is a payload that is not valid UTF-8.
	CodeInvalidUTF8 = reason.InvalidUTF8
	// CodeRequired is a required parameter that is absent or null.
	CodeRequired = reason.Required
	// CodeType is a value of the wrong JSON type for its parameter, or a
	// number that is not an integer for an integer parameter.
	CodeType = reason.Type
	// CodeMin is a number below its parameter's minimum.
	CodeMin = reason.Min
	// CodeMax is a number above its parameter's maximum.
	CodeMax = reason.Max
	// CodeRegex is a string that does not match its parameter's pattern.
	CodeRegex = reason.Regex
	// CodeEnum is a value that is none of its parameter's enum entries.
	CodeEnum = reason.Enum
	// CodeRuleInvalid is a parameter definition the checker cannot apply: a
	// malformed json_path, an unknown data type, a pattern that does not
	// compile, or a rule that does not fit the data type.
	CodeRuleInvalid = reason.RuleInvalid
)

// Data types of parameter definitions.
const (
	TypeInteger = "integer"
	TypeDecimal = "decimal"
	TypeBoolean = "boolean"
	TypeString  = "string"
	TypeJSON    = "json"
)

// ErrInvalidPath is a json_path the checker cannot parse.
var ErrInvalidPath = errors.New("invalid json path")

// ErrUnknownType is a data type other than integer, decimal, boolean,
// string and json.
var ErrUnknownType = errors.New("unknown data type")

// ErrInvalidRule is a validation rule that cannot be applied: a pattern that
// does not compile, a minimum above the maximum, or a rule of the wrong kind
// for the data type.
var ErrInvalidRule = errors.New("invalid validation rule")

// Limits bound a payload before it is decoded.
type Limits struct {
	// MaxBytes is the longest payload accepted.
	MaxBytes int
	// MaxKeys is the most object keys in one payload, counted over the
	// whole document.
	MaxKeys int
	// MaxDepth is the deepest nesting of objects and arrays; {} is depth 1.
	MaxDepth int
}

// DefaultLimits returns 256 KiB, 1000 keys and depth 32: far above any
// telemetry reading, far below what could hurt the stage.
func DefaultLimits() Limits {
	return Limits{MaxBytes: 256 << 10, MaxKeys: 1000, MaxDepth: 32}
}

// Issue is one reason a payload or a parameter failed.
type Issue struct {
	// Parameter is the key of the parameter, empty for the payload as a
	// whole.
	Parameter string
	// Code is one of the Code constants.
	Code    string
	Message string
	// Critical is the parameter's critical flag; payload issues are always
	// critical.
	Critical bool
}

// maxCached bounds each cache of compiled patterns and paths. Definitions
// are few, but they change over the life of the process and stale entries
// would otherwise pile up.
const maxCached = 10000

// maxQuoted bounds how much of a payload value an issue message repeats, so
// a 200 KiB string does not end up in every stage log.
const maxQuoted = 64

// Checker validates payloads of topics. It is safe for concurrent use.
type Checker struct {
	limits  Limits
	regexes cache[compiledRegex]
	paths   cache[compiledPath]
}

type compiledRegex struct {
	re  *regexp.Regexp
	err error
}

type compiledPath struct {
	segs []segment
	err  error
}

// NewChecker returns a checker enforcing limits; a field that is not
// positive takes its default.
func NewChecker(limits Limits) *Checker {
	def := DefaultLimits()
	if limits.MaxBytes <= 0 {
		limits.MaxBytes = def.MaxBytes
	}
	if limits.MaxKeys <= 0 {
		limits.MaxKeys = def.MaxKeys
	}
	if limits.MaxDepth <= 0 {
		limits.MaxDepth = def.MaxDepth
	}
	return &Checker{
		limits: limits,
		regexes: cache[compiledRegex]{build: func(pattern string) compiledRegex {
			re, err := regexp.Compile(pattern)
			return compiledRegex{re: re, err: err}
		}},
		paths: cache[compiledPath]{build: func(path string) compiledPath {
			segs, err := parsePath(path)
			return compiledPath{segs: segs, err: err}
		}},
	}
}

// Check decodes payload and validates it against the topic's parameters. It
// returns the extracted values, typed per data type (int64, float64, bool,
// string or json.RawMessage), and the issues. Extraction continues after an
// issue so every reason is reported at once.
//
// A payload that breaks a limit, is not UTF-8, not JSON or not an object
// yields that one issue. When there is any issue, values is nil: the caller
// halts the message, and a halted message must not carry values downstream
// as if they were data.
//
// Types are strict: a string is never read as a number or a boolean, and an
// integer must be an integral JSON number (12 or 12.0 or 1.2e1) that fits
// in int64. A JSON null is treated as absent.
func (c *Checker) Check(payload []byte, params []catalog.Parameter) (values map[string]any, issues []Issue) {
	doc, issue := c.decode(payload)
	if issue != nil {
		return nil, []Issue{*issue}
	}
	values = make(map[string]any, len(params))
	for i := range params {
		p := &params[i]
		v, pIssues := c.checkParameter(doc, p)
		if len(pIssues) > 0 {
			issues = append(issues, pIssues...)
			continue
		}
		if v != nil {
			values[p.Key] = v
		}
	}
	if len(issues) > 0 {
		return nil, issues
	}
	return values, nil
}

// ValidateDefinition reports whether the checker can apply p, so a
// definition that would fail every message with rule_invalid can be
// refused when it is saved. The error wraps ErrInvalidPath, ErrUnknownType
// or ErrInvalidRule.
func ValidateDefinition(p catalog.Parameter) error {
	if _, err := parsePath(p.JSONPath); err != nil {
		return err
	}
	if p.Rules.Regex != "" {
		if _, err := regexp.Compile(p.Rules.Regex); err != nil {
			return fmt.Errorf("%w: regex %q: %v", ErrInvalidRule, p.Rules.Regex, err)
		}
	}
	return definition(&p)
}

// compiled is a parameter definition ready to apply.
type compiled struct {
	path []segment
	re   *regexp.Regexp
}

func (c *Checker) compile(p *catalog.Parameter) (compiled, error) {
	path := c.paths.get(p.JSONPath)
	if path.err != nil {
		return compiled{}, path.err
	}
	var re *regexp.Regexp
	if p.Rules.Regex != "" {
		r := c.regexes.get(p.Rules.Regex)
		if r.err != nil {
			return compiled{}, fmt.Errorf("%w: regex %q: %v", ErrInvalidRule, p.Rules.Regex, r.err)
		}
		re = r.re
	}
	return compiled{path: path.segs, re: re}, definition(p)
}

// definition checks that p's data type is known and its rules fit it.
// Rules that cannot apply are refused rather than skipped: an operator who
// set a maximum on a string believes something is enforced that is not.
func definition(p *catalog.Parameter) error {
	r := &p.Rules
	var want enumKind
	switch p.DataType {
	case TypeInteger, TypeDecimal:
		want = enumNumber
	case TypeString:
		want = enumString
	case TypeBoolean:
		want = enumBool
	case TypeJSON:
	default:
		return fmt.Errorf("%w %q", ErrUnknownType, p.DataType)
	}
	if (r.Min != nil || r.Max != nil) && want != enumNumber {
		return fmt.Errorf("%w: min and max apply to integer and decimal, not %s", ErrInvalidRule, p.DataType)
	}
	if r.Min != nil && r.Max != nil && *r.Min > *r.Max {
		return fmt.Errorf("%w: min %s is above max %s", ErrInvalidRule, formatFloat(*r.Min), formatFloat(*r.Max))
	}
	if r.Regex != "" && p.DataType != TypeString {
		return fmt.Errorf("%w: regex applies to string, not %s", ErrInvalidRule, p.DataType)
	}
	if len(r.Enum) > 0 && p.DataType == TypeJSON {
		return fmt.Errorf("%w: enum does not apply to json", ErrInvalidRule)
	}
	for i, e := range r.Enum {
		// An entry that can never equal a value is a typo, not a choice.
		if ev := enumValue(e); ev.kind != want {
			return fmt.Errorf("%w: enum entry %d (%s) is not a %s", ErrInvalidRule, i, describe(e), p.DataType)
		}
	}
	return nil
}

type enumKind uint8

const (
	enumOther enumKind = iota
	enumNumber
	enumString
	enumBool
)

// enumEntry is an enum entry normalised for comparison.
type enumEntry struct {
	kind enumKind
	num  float64
	str  string
	b    bool
}

// enumValue normalises an enum entry without allocating: definitions
// decoded from JSON hold float64, but ones built in Go may hold any numeric
// type.
func enumValue(e any) enumEntry {
	switch t := e.(type) {
	case string:
		return enumEntry{kind: enumString, str: t}
	case bool:
		return enumEntry{kind: enumBool, b: t}
	case float64:
		return enumEntry{kind: enumNumber, num: t}
	case float32:
		return enumEntry{kind: enumNumber, num: float64(t)}
	case int:
		return enumEntry{kind: enumNumber, num: float64(t)}
	case int32:
		return enumEntry{kind: enumNumber, num: float64(t)}
	case int64:
		return enumEntry{kind: enumNumber, num: float64(t)}
	case uint:
		return enumEntry{kind: enumNumber, num: float64(t)}
	case uint32:
		return enumEntry{kind: enumNumber, num: float64(t)}
	case uint64:
		return enumEntry{kind: enumNumber, num: float64(t)}
	case json.Number:
		if f, err := strconv.ParseFloat(string(t), 64); err == nil {
			return enumEntry{kind: enumNumber, num: f}
		}
	}
	return enumEntry{}
}

// checkParameter extracts, types and checks one parameter. It returns the
// typed value, or nil when the parameter is absent.
func (c *Checker) checkParameter(doc map[string]any, p *catalog.Parameter) (any, []Issue) {
	issue := func(code, format string, args ...any) []Issue {
		return []Issue{{Parameter: p.Key, Code: code, Message: fmt.Sprintf(format, args...), Critical: p.Critical}}
	}
	d, err := c.compile(p)
	if err != nil {
		return nil, issue(CodeRuleInvalid, "%v", err)
	}
	raw, found := resolve(doc, d.path)
	if !found || raw == nil {
		if p.Required {
			return nil, issue(CodeRequired, "required value missing at %s", p.JSONPath)
		}
		return nil, nil
	}
	v, code, msg := typed(raw, p.DataType)
	if code != "" {
		return nil, issue(code, "%s", msg)
	}
	var issues []Issue
	add := func(code, format string, args ...any) {
		issues = append(issues, issue(code, format, args...)...)
	}
	r := &p.Rules
	if r.Min != nil && compareNumber(v, *r.Min) < 0 {
		add(CodeMin, "%s is below the minimum %s", describe(v), formatFloat(*r.Min))
	}
	if r.Max != nil && compareNumber(v, *r.Max) > 0 {
		add(CodeMax, "%s is above the maximum %s", describe(v), formatFloat(*r.Max))
	}
	if d.re != nil {
		if s := v.(string); !d.re.MatchString(s) {
			add(CodeRegex, "%s does not match %s", describe(s), r.Regex)
		}
	}
	if len(r.Enum) > 0 && !inEnum(v, r.Enum) {
		add(CodeEnum, "%s is not one of %s", describe(v), describe(r.Enum))
	}
	return v, issues
}

// typed converts a decoded JSON value (map[string]any, []any, json.Number,
// string, bool) to the Go value of dataType. On failure it returns an issue
// code and message.
func typed(raw any, dataType string) (v any, code, msg string) {
	switch dataType {
	case TypeInteger:
		n, ok := raw.(json.Number)
		if !ok {
			return nil, CodeType, "want an integer, got " + kind(raw)
		}
		return integer(string(n))
	case TypeDecimal:
		n, ok := raw.(json.Number)
		if !ok {
			return nil, CodeType, "want a decimal, got " + kind(raw)
		}
		f, err := strconv.ParseFloat(string(n), 64)
		if err != nil || math.IsInf(f, 0) || math.IsNaN(f) {
			return nil, CodeInvalidNumber, quote(string(n)) + " is beyond the range of a 64-bit float"
		}
		return f, "", ""
	case TypeBoolean:
		b, ok := raw.(bool)
		if !ok {
			return nil, CodeType, "want a boolean, got " + kind(raw)
		}
		return b, "", ""
	case TypeString:
		s, ok := raw.(string)
		if !ok {
			return nil, CodeType, "want a string, got " + kind(raw)
		}
		return s, "", ""
	case TypeJSON:
		var buf bytes.Buffer
		enc := json.NewEncoder(&buf)
		// Values are stored, not embedded in HTML: keep <, > and & as sent.
		enc.SetEscapeHTML(false)
		if err := enc.Encode(raw); err != nil {
			// Everything a decoder produced encodes again; this is
			// defensive, never expected.
			return nil, CodeType, "cannot re-encode value: " + err.Error()
		}
		return json.RawMessage(bytes.TrimSuffix(buf.Bytes(), []byte("\n"))), "", ""
	}
	// definition refuses unknown types before a value is typed.
	return nil, CodeRuleInvalid, fmt.Sprintf("%v %q", ErrUnknownType, dataType)
}

// integer converts a JSON number literal to int64 exactly. Going through
// float64 would accept 9007199254740993 as ...992 and 1.0000000000000000001
// as 1.
func integer(n string) (any, string, string) {
	if i, err := strconv.ParseInt(n, 10, 64); err == nil {
		return i, "", ""
	}
	if f, err := strconv.ParseFloat(n, 64); err != nil && math.IsInf(f, 0) {
		return nil, CodeInvalidNumber, quote(n) + " is beyond the range of a 64-bit float"
	}
	neg, digits, exp, expOK := splitNumber(n)
	switch {
	case digits == "":
		return int64(0), "", ""
	case exp < 0:
		return nil, CodeType, "want an integer, got " + quote(n)
	case !expOK, len(digits)+exp > 19:
		return nil, CodeType, quote(n) + " does not fit a 64-bit integer"
	}
	s := digits + strings.Repeat("0", exp)
	if neg {
		s = "-" + s
	}
	i, err := strconv.ParseInt(s, 10, 64)
	if err != nil {
		return nil, CodeType, quote(n) + " does not fit a 64-bit integer"
	}
	return i, "", ""
}

// maxExponent is far beyond any exponent that decides whether a number
// within the payload limits is an integer that fits int64.
const maxExponent = 1 << 40

// splitNumber decomposes a valid JSON number literal into its sign, its
// significant digits without leading or trailing zeros, and the power of
// ten they are multiplied by. digits is empty for zero. expOK is false when
// the exponent does not fit an int; exp then only carries its sign.
func splitNumber(n string) (neg bool, digits string, exp int, expOK bool) {
	if strings.HasPrefix(n, "-") {
		neg, n = true, n[1:]
	}
	mant, expPart, hasExp := strings.Cut(strings.ToLower(n), "e")
	intPart, frac, _ := strings.Cut(mant, ".")
	expOK = true
	if hasExp {
		e, err := strconv.Atoi(expPart)
		// Past maxExponent only the sign matters, and keeping exp small
		// keeps the arithmetic below from wrapping.
		if err != nil || e > maxExponent || e < -maxExponent {
			expOK = false
			e = 1
			if strings.HasPrefix(expPart, "-") {
				e = -1
			}
		}
		exp = e
	}
	all := strings.TrimLeft(intPart+frac, "0")
	trimmed := strings.TrimRight(all, "0")
	if trimmed == "" {
		return neg, "", 0, true
	}
	if expOK {
		exp = exp - len(frac) + (len(all) - len(trimmed))
	}
	return neg, trimmed, exp, expOK
}

// compareNumber compares an int64 or float64 value with a bound, exactly
// for integers where float64 would round.
func compareNumber(v any, bound float64) int {
	switch t := v.(type) {
	case int64:
		if bound == math.Trunc(bound) && bound >= math.MinInt64 && bound < math.MaxInt64 {
			return cmpOrdered(t, int64(bound))
		}
		return cmpOrdered(float64(t), bound)
	case float64:
		return cmpOrdered(t, bound)
	}
	return 0
}

func cmpOrdered[T int64 | float64](a, b T) int {
	switch {
	case a < b:
		return -1
	case a > b:
		return 1
	}
	return 0
}

// inEnum reports whether v equals an entry: numbers numerically, strings
// and booleans exactly.
func inEnum(v any, enum []any) bool {
	for _, e := range enum {
		ev := enumValue(e)
		switch t := v.(type) {
		case int64:
			if ev.kind == enumNumber && compareNumber(t, ev.num) == 0 {
				return true
			}
		case float64:
			if ev.kind == enumNumber && t == ev.num {
				return true
			}
		case string:
			if ev.kind == enumString && t == ev.str {
				return true
			}
		case bool:
			if ev.kind == enumBool && t == ev.b {
				return true
			}
		}
	}
	return false
}

// decode enforces the limits and decodes payload into its top-level object.
// Limits are checked on the raw bytes before the JSON grammar, so a payload
// that breaks both is reported by its limit.
func (c *Checker) decode(payload []byte) (map[string]any, *Issue) {
	fail := func(code, format string, args ...any) (map[string]any, *Issue) {
		return nil, &Issue{Code: code, Message: fmt.Sprintf(format, args...), Critical: true}
	}
	if len(payload) > c.limits.MaxBytes {
		return fail(CodePayloadTooLarge, "payload is %d bytes, more than %d", len(payload), c.limits.MaxBytes)
	}
	// encoding/json would silently turn bad bytes into U+FFFD, storing a
	// value the device never sent.
	if !utf8.Valid(payload) {
		return fail(CodeInvalidUTF8, "payload is not valid UTF-8")
	}
	if code, msg := scanLimits(payload, c.limits); code != "" {
		return fail(code, "%s", msg)
	}
	dec := json.NewDecoder(bytes.NewReader(payload))
	dec.UseNumber()
	var doc any
	if err := dec.Decode(&doc); err != nil {
		return fail(CodeInvalidJSON, "payload is not JSON: %v", err)
	}
	if rest := payload[dec.InputOffset():]; len(bytes.TrimLeft(rest, " \t\r\n")) > 0 {
		return fail(CodeInvalidJSON, "payload has data after its JSON document at offset %d", dec.InputOffset())
	}
	obj, ok := doc.(map[string]any)
	if !ok {
		return fail(CodeNotAnObject, "payload is a JSON %s, not an object", kind(doc))
	}
	return obj, nil
}

// scanLimits measures depth and key count in one pass over the bytes,
// without recursion, so 100,000 nested '[' cost a loop and not a stack. In
// valid JSON every ':' outside a string follows exactly one key.
func scanLimits(b []byte, l Limits) (code, msg string) {
	depth, keys := 0, 0
	for i := 0; i < len(b); i++ {
		switch b[i] {
		case '"':
			for i++; i < len(b) && b[i] != '"'; i++ {
				if b[i] == '\\' {
					i++
				}
			}
		case '{', '[':
			if depth++; depth > l.MaxDepth {
				return CodeTooDeep, fmt.Sprintf("payload is nested deeper than %d at offset %d", l.MaxDepth, i)
			}
		case '}', ']':
			depth--
		case ':':
			if keys++; keys > l.MaxKeys {
				return CodeTooManyKeys, fmt.Sprintf("payload has more than %d keys", l.MaxKeys)
			}
		}
	}
	return "", ""
}

// kind names the JSON type of a decoded value.
func kind(v any) string {
	switch t := v.(type) {
	case nil:
		return "null"
	case map[string]any:
		return "object"
	case []any:
		return "array"
	case string:
		return "string " + strconv.Quote(quote(t))
	case bool:
		return "boolean " + strconv.FormatBool(t)
	case json.Number:
		return "number " + quote(string(t))
	}
	return fmt.Sprintf("%T", v)
}

// describe renders a value for an issue message, shortened.
func describe(v any) string {
	switch t := v.(type) {
	case string:
		return strconv.Quote(quote(t))
	case float64:
		return formatFloat(t)
	case json.Number:
		return quote(string(t))
	}
	b, err := json.Marshal(v)
	if err != nil {
		return quote(fmt.Sprint(v))
	}
	return quote(string(b))
}

// quote shortens s to maxQuoted bytes on a rune boundary.
func quote(s string) string {
	if len(s) <= maxQuoted {
		return s
	}
	cut := maxQuoted
	for cut > 0 && !utf8.RuneStart(s[cut]) {
		cut--
	}
	return s[:cut] + "…"
}

func formatFloat(f float64) string { return strconv.FormatFloat(f, 'g', -1, 64) }

// cache memoises a build function per key for concurrent readers.
type cache[T any] struct {
	mu    sync.RWMutex
	m     map[string]T
	build func(string) T
}

func (c *cache[T]) get(key string) T {
	c.mu.RLock()
	v, ok := c.m[key]
	c.mu.RUnlock()
	if ok {
		return v
	}
	// Built outside the lock: two goroutines may both build the same key
	// once, which is cheaper than serialising every first use.
	v = c.build(key)
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.m == nil || len(c.m) >= maxCached {
		c.m = make(map[string]T)
	}
	c.m[key] = v
	return v
}

func (c *cache[T]) len() int {
	c.mu.RLock()
	defer c.mu.RUnlock()
	return len(c.m)
}
