package value

import (
	"encoding/json"
	"errors"
	"fmt"
	"math"
	"slices"
	"strconv"
	"unicode/utf8"
)

// ErrNotObject is returned by [ParseObject] for text that is not one JSON
// object.
var ErrNotObject = errors.New("not a JSON object")

// Object encodes m as a compact JSON object with its keys in order, the form
// values travel in between the stages and are stored in jsonb. A NaN or an
// infinity, which JSON has no literal for, is encoded as null.
func Object(m map[string]any) string {
	if len(m) == 0 {
		return "{}"
	}
	return string(AppendObject(make([]byte, 0, 16*len(m)+2), m))
}

// AppendObject appends m to dst as [Object] encodes it.
func AppendObject(dst []byte, m map[string]any) []byte {
	keys := make([]string, 0, len(m))
	for k := range m {
		keys = append(keys, k)
	}
	slices.Sort(keys)
	dst = append(dst, '{')
	for i, k := range keys {
		if i > 0 {
			dst = append(dst, ',')
		}
		dst = AppendString(dst, k)
		dst = append(dst, ':')
		dst = AppendValue(dst, m[k])
	}
	return append(dst, '}')
}

// AppendValue appends one value as JSON: float64, int64, int, bool, string
// and json.RawMessage (inline, as it is) directly, nil as null, anything
// else through encoding/json.
func AppendValue(dst []byte, v any) []byte {
	switch t := v.(type) {
	case nil:
		return append(dst, "null"...)
	case float64:
		if math.IsNaN(t) || math.IsInf(t, 0) {
			return append(dst, "null"...)
		}
		return appendFloat(dst, t)
	case int64:
		return strconv.AppendInt(dst, t, 10)
	case int:
		return strconv.AppendInt(dst, int64(t), 10)
	case bool:
		return strconv.AppendBool(dst, t)
	case string:
		return AppendString(dst, t)
	case json.RawMessage:
		if len(t) == 0 {
			return append(dst, "null"...)
		}
		return append(dst, t...)
	}
	b, err := json.Marshal(v)
	if err != nil {
		return append(dst, "null"...)
	}
	return append(dst, b...)
}

// appendFloat formats f as encoding/json does, so values read the same
// whichever encoder wrote them.
func appendFloat(dst []byte, f float64) []byte {
	abs := math.Abs(f)
	format := byte('f')
	if abs != 0 && (abs < 1e-6 || abs >= 1e21) {
		format = 'e'
	}
	dst = strconv.AppendFloat(dst, f, format, -1, 64)
	if format == 'e' {
		// Clean up e-09 to e-9, as encoding/json does.
		n := len(dst)
		if n >= 4 && dst[n-4] == 'e' && dst[n-3] == '-' && dst[n-2] == '0' {
			dst[n-2] = dst[n-1]
			dst = dst[:n-1]
		}
	}
	return dst
}

// AppendString appends s as a JSON string. Invalid UTF-8 becomes U+FFFD
// and control characters are escaped, so the result is always valid JSON
// that jsonb accepts; NUL, which jsonb refuses, becomes U+FFFD too.
func AppendString(dst []byte, s string) []byte {
	dst = append(dst, '"')
	start := 0
	for i := 0; i < len(s); {
		b := s[i]
		if b < utf8.RuneSelf {
			if b >= 0x20 && b != '"' && b != '\\' {
				i++
				continue
			}
			dst = append(dst, s[start:i]...)
			switch b {
			case '"', '\\':
				dst = append(dst, '\\', b)
			case '\n':
				dst = append(dst, '\\', 'n')
			case '\r':
				dst = append(dst, '\\', 'r')
			case '\t':
				dst = append(dst, '\\', 't')
			case 0:
				dst = append(dst, "\ufffd"...)
			default:
				dst = append(dst, '\\', 'u', '0', '0', hex[b>>4], hex[b&0xf])
			}
			i++
			start = i
			continue
		}
		r, size := utf8.DecodeRuneInString(s[i:])
		if r == utf8.RuneError && size == 1 {
			dst = append(dst, s[start:i]...)
			dst = append(dst, "\ufffd"...)
			i += size
			start = i
			continue
		}
		if r == '\u2028' || r == '\u2029' {
			dst = append(dst, s[start:i]...)
			dst = append(dst, '\\', 'u', '2', '0', '2', hex[r&0xf])
			i += size
			start = i
			continue
		}
		i += size
	}
	dst = append(dst, s[start:]...)
	return append(dst, '"')
}

const hex = "0123456789abcdef"

// ParseObject decodes a JSON object of values, as [Object] or Postgres
// writes it, into plain Go values: an integer literal that fits in int64 as
// int64, any other number as float64, strings, booleans, null as nil, and
// objects and arrays as json.RawMessage.
func ParseObject(s string) (map[string]any, error) {
	p := parser{s: s}
	p.space()
	if !p.eat('{') {
		return nil, ErrNotObject
	}
	out := make(map[string]any, 8)
	p.space()
	if p.eat('}') {
		return out, p.end()
	}
	for {
		p.space()
		key, err := p.str()
		if err != nil {
			return nil, err
		}
		p.space()
		if !p.eat(':') {
			return nil, p.fail("expected ':'")
		}
		p.space()
		v, err := p.value()
		if err != nil {
			return nil, err
		}
		out[key] = v
		p.space()
		if p.eat(',') {
			continue
		}
		if p.eat('}') {
			return out, p.end()
		}
		return nil, p.fail("expected ',' or '}'")
	}
}

// parser reads one JSON document from s.
type parser struct {
	s string
	i int
}

func (p *parser) space() {
	for p.i < len(p.s) {
		switch p.s[p.i] {
		case ' ', '\t', '\n', '\r':
			p.i++
		default:
			return
		}
	}
}

func (p *parser) eat(c byte) bool {
	if p.i < len(p.s) && p.s[p.i] == c {
		p.i++
		return true
	}
	return false
}

func (p *parser) end() error {
	p.space()
	if p.i != len(p.s) {
		return p.fail("text after the object")
	}
	return nil
}

func (p *parser) fail(what string) error {
	return fmt.Errorf("%w: %s at offset %d", ErrNotObject, what, p.i)
}

// str reads a string; escapes are decoded by encoding/json, which is only
// needed when there are any.
func (p *parser) str() (string, error) {
	if !p.eat('"') {
		return "", p.fail("expected a string")
	}
	start, escaped := p.i, false
	for p.i < len(p.s) {
		switch p.s[p.i] {
		case '\\':
			escaped = true
			p.i += 2
			continue
		case '"':
			raw := p.s[start:p.i]
			p.i++
			if !escaped {
				return raw, nil
			}
			var out string
			if err := json.Unmarshal([]byte(p.s[start-1:p.i]), &out); err != nil {
				return "", fmt.Errorf("%w: %v", ErrNotObject, err)
			}
			return out, nil
		}
		p.i++
	}
	return "", p.fail("unterminated string")
}

// value reads one value.
func (p *parser) value() (any, error) {
	if p.i >= len(p.s) {
		return nil, p.fail("expected a value")
	}
	switch c := p.s[p.i]; {
	case c == '"':
		return p.str()
	case c == '{' || c == '[':
		start := p.i
		if err := p.skipNested(); err != nil {
			return nil, err
		}
		return json.RawMessage(p.s[start:p.i]), nil
	case c == 't':
		return true, p.literal("true")
	case c == 'f':
		return false, p.literal("false")
	case c == 'n':
		return nil, p.literal("null")
	case c == '-' || (c >= '0' && c <= '9'):
		return p.number()
	}
	return nil, p.fail("unexpected character")
}

func (p *parser) literal(word string) error {
	if len(p.s)-p.i < len(word) || p.s[p.i:p.i+len(word)] != word {
		return p.fail("invalid literal")
	}
	p.i += len(word)
	return nil
}

func (p *parser) number() (any, error) {
	start, integral := p.i, true
	for p.i < len(p.s) {
		c := p.s[p.i]
		switch {
		case c >= '0' && c <= '9', c == '-', c == '+':
		case c == '.', c == 'e', c == 'E':
			integral = false
		default:
			goto done
		}
		p.i++
	}
done:
	text := p.s[start:p.i]
	if integral {
		if n, err := strconv.ParseInt(text, 10, 64); err == nil {
			return n, nil
		}
	}
	f, err := strconv.ParseFloat(text, 64)
	if err != nil {
		return nil, fmt.Errorf("%w: number %q at offset %d", ErrNotObject, text, start)
	}
	return f, nil
}

// skipNested moves past one object or array, minding strings.
func (p *parser) skipNested() error {
	depth := 0
	for p.i < len(p.s) {
		switch p.s[p.i] {
		case '{', '[':
			depth++
		case '}', ']':
			depth--
			if depth == 0 {
				p.i++
				return nil
			}
		case '"':
			if _, err := p.str(); err != nil {
				return err
			}
			continue
		}
		p.i++
	}
	return p.fail("unterminated object or array")
}
