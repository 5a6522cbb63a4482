package validator

import (
	"fmt"
	"strconv"
	"strings"
	"unicode"
	"unicode/utf8"
)

// segment is one step of a json_path: an object key, or an array index
// when index is not negative.
type segment struct {
	key   string
	index int
}

// maxIndex bounds an array index in a path; no payload within the size
// limit has an array that long, and it keeps the index inside an int.
const maxIndex = 1 << 30

// parsePath parses the json_path subset the definitions use: `$.a.b`,
// `a.b` (no `$`), `$.a[0].b`, `$['key with.dot']` (single or double
// quotes, with \ escaping the quote and itself) and a bare key. `$` alone
// is the whole payload.
//
// Names after a dot are refused when they hold spaces, quotes, brackets or
// JSONPath operators (`*`, `?`, `@`, `(`, `)`, `,`), so a wildcard or filter
// is never mistaken for a key and a stray space is not silently part of
// one; such keys take the bracket form.
func parsePath(path string) ([]segment, error) {
	fail := func(at int, format string, args ...any) ([]segment, error) {
		return nil, fmt.Errorf("%w %q: %s at offset %d", ErrInvalidPath, path, fmt.Sprintf(format, args...), at)
	}
	if path == "" {
		return nil, fmt.Errorf("%w: empty", ErrInvalidPath)
	}
	var segs []segment
	i := 0
	switch {
	case path == "$" || strings.HasPrefix(path, "$.") || strings.HasPrefix(path, "$["):
		i = 1
	case path[0] == '[':
	default:
		// A bare first name, as if it followed `$.`.
		path = "." + path
		fail = func(at int, format string, args ...any) ([]segment, error) {
			return nil, fmt.Errorf("%w %q: %s at offset %d", ErrInvalidPath, path[1:], fmt.Sprintf(format, args...), at-1)
		}
	}
	for i < len(path) {
		switch path[i] {
		case '.':
			start := i + 1
			end := start
			for end < len(path) && path[end] != '.' && path[end] != '[' {
				r, size := utf8.DecodeRuneInString(path[end:])
				if !nameRune(r) || (r == utf8.RuneError && size == 1) {
					return fail(end, "%q is not allowed in a dotted name; use ['...']", r)
				}
				end += size
			}
			if end == start {
				return fail(start, "empty name")
			}
			segs = append(segs, segment{key: path[start:end], index: -1})
			i = end
		case '[':
			seg, next, msg := bracket(path, i)
			if msg != "" {
				return fail(i, "%s", msg)
			}
			segs = append(segs, seg)
			i = next
		default:
			return fail(i, "unexpected %q", path[i])
		}
	}
	return segs, nil
}

// nameRune reports whether r may appear in a name after a dot.
func nameRune(r rune) bool {
	if unicode.IsSpace(r) || unicode.IsControl(r) {
		return false
	}
	return !strings.ContainsRune(`'"[]*?@(),`, r)
}

// bracket parses `[0]`, `['key']` or `["key"]` at path[i] and returns the
// segment and the offset after it, or a message.
func bracket(path string, i int) (seg segment, next int, msg string) {
	i++
	if i >= len(path) {
		return seg, 0, "unterminated ["
	}
	if q := path[i]; q == '\'' || q == '"' {
		var b strings.Builder
		for i++; i < len(path); i++ {
			switch c := path[i]; {
			case c == '\\':
				if i+1 >= len(path) || (path[i+1] != q && path[i+1] != '\\') {
					return seg, 0, `\ escapes only the quote and \`
				}
				i++
				b.WriteByte(path[i])
			case c == q:
				if i+1 >= len(path) || path[i+1] != ']' {
					return seg, 0, "quoted name not followed by ]"
				}
				return segment{key: b.String(), index: -1}, i + 2, ""
			default:
				b.WriteByte(c)
			}
		}
		return seg, 0, "unterminated quoted name"
	}
	end := strings.IndexByte(path[i:], ']')
	if end < 0 {
		return seg, 0, "unterminated ["
	}
	digits := path[i : i+end]
	if digits == "" || strings.Trim(digits, "0123456789") != "" {
		return seg, 0, fmt.Sprintf("index %q is not a non-negative integer", digits)
	}
	n, err := strconv.Atoi(digits)
	if err != nil || n > maxIndex {
		return seg, 0, fmt.Sprintf("index %s is too large", digits)
	}
	return segment{index: n}, i + end + 1, ""
}

// resolve walks doc along path. It reports false when a step is missing or
// meets a value of the other kind (a key into an array, an index into an
// object or a scalar): either way there is no value at the path.
func resolve(doc map[string]any, path []segment) (any, bool) {
	var cur any = doc
	for _, s := range path {
		if s.index >= 0 {
			arr, ok := cur.([]any)
			if !ok || s.index >= len(arr) {
				return nil, false
			}
			cur = arr[s.index]
			continue
		}
		obj, ok := cur.(map[string]any)
		if !ok {
			return nil, false
		}
		if cur, ok = obj[s.key]; !ok {
			return nil, false
		}
	}
	return cur, true
}
