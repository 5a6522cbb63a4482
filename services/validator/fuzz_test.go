package validator

import (
	"bytes"
	"encoding/json"
	"errors"
	"io"
	"reflect"
	"slices"
	"strconv"
	"testing"
	"unicode/utf8"

	"github.com/telemesh/telemesh/internal/catalog"
)

// fuzzLimits are small, so the fuzzer reaches every limit quickly.
var fuzzLimits = Limits{MaxBytes: 4096, MaxKeys: 64, MaxDepth: 16}

// measure returns the nesting depth and the number of object keys (each
// occurrence, duplicates included) of a valid JSON document, read token by
// token: a reference for scanLimits that shares none of its code.
func measure(t *testing.T, b []byte) (depth, keys int) {
	t.Helper()
	dec := json.NewDecoder(bytes.NewReader(b))
	dec.UseNumber()
	type frame struct{ object, wantKey bool }
	var stack []frame
	for {
		tok, err := dec.Token()
		if errors.Is(err, io.EOF) {
			return depth, keys
		}
		if err != nil {
			t.Fatalf("measure %q: %v", b, err)
		}
		if n := len(stack); n > 0 && stack[n-1].object {
			top := &stack[n-1]
			if _, isKey := tok.(string); isKey && top.wantKey {
				keys++
				top.wantKey = false
				continue
			}
			// A value, or the closing brace: a key may follow either.
			top.wantKey = true
		}
		switch tok {
		case json.Delim('{'), json.Delim('['):
			stack = append(stack, frame{object: tok == json.Delim('{'), wantKey: true})
			depth = max(depth, len(stack))
		case json.Delim('}'), json.Delim(']'):
			stack = stack[:len(stack)-1]
		}
	}
}

// isObjectText reports whether valid JSON text b is an object.
func isObjectText(b []byte) bool {
	trimmed := bytes.TrimLeft(b, " \t\r\n")
	return len(trimmed) > 0 && trimmed[0] == '{'
}

// FuzzDecode checks the payload decoder against encoding/json: it accepts
// exactly the UTF-8 JSON objects within the limits, names the right reason
// for everything else, decodes what it accepts to what encoding/json
// decodes, and a decoded document encodes and decodes back to itself.
func FuzzDecode(f *testing.F) {
	for _, s := range []string{
		`{"temp_c": 21.5, "meta": {"fw": "v1"}, "flags": [true, null]}`,
		`{}`, ` {"a":1} `, `{"a":1} x`, `{"a":1}{"b":2}`, `[1]`, `"s"`, `12`, `null`, ``, `{`,
		`{"temp_c": NaN}`, `{"temp_c": Infinity}`, `{"n": 1e400}`, `{"n": -0.0e-999}`,
		`{"big": 123456789012345678901234567890}`, `{"a":"\u0000"}`, `{"a":"\ud800"}`,
		"{\"a\":\"\xff\"}", "{\"\xc3\x28\":1}", `{"a":"\"[[{{:::"}`, `{"a":1,"a":2}`,
		`{"<>&":"</script>"}`, `{"a":"\/\u00e9"}`,
		`{"x":` + nested("[", "]", 16) + `}`, `{"x":` + nested("[", "]", 10000) + `}`,
		manyKeys(65), manyKeys(64), `{"a":{"b":{"c":{"d":{"e":{"f":{"g":{"h":{"i":{"j":{"k":{"l":{"m":{"n":{"o":{}}}}}}}}}}}}}}}}`,
	} {
		f.Add([]byte(s))
	}
	c := NewChecker(fuzzLimits)
	// roomy decodes re-encoded documents, which may be longer than the
	// payload (escapes) but are no deeper and have no more keys.
	roomy := NewChecker(Limits{MaxBytes: 1 << 20, MaxKeys: fuzzLimits.MaxKeys, MaxDepth: fuzzLimits.MaxDepth})
	f.Fuzz(func(t *testing.T, payload []byte) {
		doc, issue := c.decode(payload)
		valid := utf8.Valid(payload) && json.Valid(payload)
		fits := len(payload) <= fuzzLimits.MaxBytes
		var depth, keys int
		if valid && fits {
			depth, keys = measure(t, payload)
		}
		if issue != nil {
			if doc != nil {
				t.Fatalf("decode(%q) returned a document with issue %+v", payload, issue)
			}
			if issue.Parameter != "" || !issue.Critical || issue.Message == "" {
				t.Fatalf("decode(%q): payload issue %+v must be critical, unnamed and explained", payload, issue)
			}
			var wrong bool
			switch issue.Code {
			case CodePayloadTooLarge:
				wrong = fits
			case CodeInvalidUTF8:
				wrong = !fits || utf8.Valid(payload)
			case CodeTooDeep:
				wrong = valid && depth <= fuzzLimits.MaxDepth
			case CodeTooManyKeys:
				wrong = valid && keys <= fuzzLimits.MaxKeys
			case CodeInvalidJSON:
				wrong = valid
			case CodeNotAnObject:
				wrong = !valid || isObjectText(payload)
			default:
				t.Fatalf("decode(%q): unknown code %q", payload, issue.Code)
			}
			if wrong {
				t.Fatalf("decode(%q) = %s (%s); depth %d, keys %d, valid %v", payload, issue.Code, issue.Message, depth, keys, valid)
			}
			return
		}
		if !fits || !valid || !isObjectText(payload) || depth > fuzzLimits.MaxDepth || keys > fuzzLimits.MaxKeys {
			t.Fatalf("decode accepted %q: %d bytes, valid %v, depth %d, keys %d", payload, len(payload), valid, depth, keys)
		}
		dec := json.NewDecoder(bytes.NewReader(payload))
		dec.UseNumber()
		var want any
		if err := dec.Decode(&want); err != nil || !reflect.DeepEqual(doc, want) {
			t.Fatalf("decode(%q) = %#v; encoding/json gives %#v, %v", payload, doc, want, err)
		}
		var buf bytes.Buffer
		enc := json.NewEncoder(&buf)
		enc.SetEscapeHTML(false)
		if err := enc.Encode(doc); err != nil {
			t.Fatalf("encode %#v: %v", doc, err)
		}
		again, issue := roomy.decode(buf.Bytes())
		if issue != nil || !reflect.DeepEqual(again, doc) {
			t.Fatalf("round trip of %q through %q: %#v, %+v", payload, buf.Bytes(), again, issue)
		}
	})
}

// FuzzExtract checks json_path extraction on every value of a payload: the
// path of each value, written in bracket form (and in dotted form when the
// keys allow), leads back to exactly that value, through resolve and
// through Check, whose json-typed value re-encodes it.
func FuzzExtract(f *testing.F) {
	for _, s := range []struct{ payload, key string }{
		{`{"temp_c": 21.5, "meta": {"firmware": "v1.2", "tags": ["a", {"b": null}]}}`, "temp_c"},
		{`{"key with.dot": 1, "it's": [[1, 2], [3]], "": {"": ""}}`, "key with.dot"},
		{`{"a\\b": "\"", "[0]": 0, "$": "$", "日本": {"x": [true, false]}}`, `a\b`},
		{`{"a": 1, "a": {"b": 2}}`, "a"},
		{`{"'; drop table devices;--": 1}`, "'; drop table devices;--"},
		{`{"n": 1e400, "m": -0, "big": 123456789012345678901234567890}`, "missing"},
	} {
		f.Add([]byte(s.payload), s.key)
	}
	c := NewChecker(fuzzLimits)
	f.Fuzz(func(t *testing.T, payload []byte, key string) {
		doc, issue := c.decode(payload)
		if issue != nil {
			return
		}
		// The fuzzed key is looked up too, present or not.
		segs := []segment{{key: key, index: -1}}
		got, found := resolve(doc, segs)
		if want, ok := doc[key]; found != ok || !reflect.DeepEqual(got, want) {
			t.Fatalf("resolve(%q) = %#v, %v; want %#v, %v", key, got, found, want, ok)
		}
		checked := 0
		var walk func(v any, path []segment)
		walk = func(v any, path []segment) {
			if checked >= 50 {
				return
			}
			checked++
			forms := []string{formatPath(path)}
			if dotted, ok := dottedPath(path); ok {
				forms = append(forms, dotted)
			}
			for _, p := range forms {
				segs, err := parsePath(p)
				if err != nil {
					t.Fatalf("parsePath(%q), the path of a value in %q: %v", p, payload, err)
				}
				if !reflect.DeepEqual(segs, path) && len(path) > 0 {
					t.Fatalf("parsePath(%q) = %#v, want %#v", p, segs, path)
				}
				got, found := resolve(doc, segs)
				if !found || !reflect.DeepEqual(got, v) {
					t.Fatalf("resolve(%q) in %q = %#v, %v; want %#v", p, payload, got, found, v)
				}
				values, issues := c.Check(payload, []catalog.Parameter{{Key: "p", JSONPath: p, DataType: TypeJSON}})
				if v == nil {
					// A JSON null is absent.
					if len(issues) != 0 || values["p"] != nil {
						t.Fatalf("Check(%q) of null = %v, %+v", p, values, issues)
					}
					continue
				}
				raw, ok := values["p"].(json.RawMessage)
				if len(issues) != 0 || !ok {
					t.Fatalf("Check(%q) = %v, %+v; want the value", p, values, issues)
				}
				dec := json.NewDecoder(bytes.NewReader(raw))
				dec.UseNumber()
				var back any
				if err := dec.Decode(&back); err != nil || !reflect.DeepEqual(back, v) {
					t.Fatalf("Check(%q) = %s, which decodes to %#v (%v); want %#v", p, raw, back, err, v)
				}
			}
			switch x := v.(type) {
			case map[string]any:
				keys := make([]string, 0, len(x))
				for k := range x {
					keys = append(keys, k)
				}
				slices.Sort(keys)
				for _, k := range keys {
					walk(x[k], append(slices.Clip(path), segment{key: k, index: -1}))
				}
			case []any:
				for i, e := range x {
					walk(e, append(slices.Clip(path), segment{index: i}))
				}
			}
		}
		walk(doc, nil)
	})
}

// dottedPath writes a path as `$.a.b[0]` when every key is a name the
// dotted form allows.
func dottedPath(path []segment) (string, bool) {
	var b bytes.Buffer
	b.WriteString("$")
	for _, s := range path {
		if s.index >= 0 {
			b.WriteString("[" + strconv.Itoa(s.index) + "]")
			continue
		}
		if s.key == "" || !utf8.ValidString(s.key) {
			return "", false
		}
		for _, r := range s.key {
			if !nameRune(r) || r == '.' {
				return "", false
			}
		}
		b.WriteString("." + s.key)
	}
	return b.String(), true
}
