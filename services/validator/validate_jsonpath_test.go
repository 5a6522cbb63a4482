package validator

import (
	"errors"
	"reflect"
	"strconv"
	"strings"
	"testing"

	"github.com/telemesh/telemesh/internal/catalog"
)

func key(k string) segment { return segment{key: k, index: -1} }
func idx(i int) segment    { return segment{index: i} }

// formatPath writes segments in the all-bracket form, which parsePath must
// read back to the same segments.
func formatPath(segs []segment) string {
	var b strings.Builder
	b.WriteString("$")
	for _, s := range segs {
		if s.index >= 0 {
			b.WriteString("[" + strconv.Itoa(s.index) + "]")
			continue
		}
		b.WriteString("['")
		b.WriteString(strings.NewReplacer(`\`, `\\`, `'`, `\'`).Replace(s.key))
		b.WriteString("']")
	}
	return b.String()
}

func TestParsePath(t *testing.T) {
	tests := []struct {
		path string
		want []segment
	}{
		{path: "$", want: nil},
		{path: "$.a", want: []segment{key("a")}},
		{path: "$.a.b", want: []segment{key("a"), key("b")}},
		{path: "a.b", want: []segment{key("a"), key("b")}},
		{path: "temp_c", want: []segment{key("temp_c")}},
		{path: "$.a[0].b", want: []segment{key("a"), idx(0), key("b")}},
		{path: "a[10][2]", want: []segment{key("a"), idx(10), idx(2)}},
		{path: "$[3]", want: []segment{idx(3)}},
		{path: "[3]", want: []segment{idx(3)}},
		{path: "$['key with.dot']", want: []segment{key("key with.dot")}},
		{path: `$["key with.dot"]`, want: []segment{key("key with.dot")}},
		{path: `['a'].b`, want: []segment{key("a"), key("b")}},
		{path: `$['it\'s']`, want: []segment{key("it's")}},
		{path: `$["\"q\""]`, want: []segment{key(`"q"`)}},
		{path: `$['a\\b']`, want: []segment{key(`a\b`)}},
		{path: `$['']`, want: []segment{key("")}},
		{path: `$['[0]']`, want: []segment{key("[0]")}},
		{path: "$x", want: []segment{key("$x")}},
		{path: "$.$", want: []segment{key("$")}},
		{path: "$$", want: []segment{key("$$")}},
		{path: "$.a-b:c", want: []segment{key("a-b:c")}},
		{path: "$.日本.ü", want: []segment{key("日本"), key("ü")}},
		{path: "$.a[007]", want: []segment{key("a"), idx(7)}},
	}
	for _, tt := range tests {
		t.Run(tt.path, func(t *testing.T) {
			got, err := parsePath(tt.path)
			if err != nil {
				t.Fatalf("parsePath(%q): %v", tt.path, err)
			}
			if !reflect.DeepEqual(got, tt.want) {
				t.Errorf("parsePath(%q) = %#v, want %#v", tt.path, got, tt.want)
			}
		})
	}
	for _, bad := range []string{
		"", "$.", "$..a", ".a", "a.", "a..b", "$.a[", "$.a[1", "$.a[x]", "$.a[-1]", "$.a[+1]", "$[]",
		"$[1.5]", "$[99999999999999999999]", "$[2147483648]", "$.a[*]", "$.*", "$.a[?(@.v>1)]", "$['a", "$['a'",
		"$['a']x", `$['a\x']`, `$['a\`, "$.temp c", "$.temp_c ", " $.temp_c", "$.a]", "$.it's",
		"$.a\tb", "$.a\x00", "$.\xff", "a b", "$[ 1]", `$['a"]`,
	} {
		t.Run("malformed "+strconv.Quote(bad), func(t *testing.T) {
			segs, err := parsePath(bad)
			if !errors.Is(err, ErrInvalidPath) {
				t.Errorf("parsePath(%q) = %#v, %v; want ErrInvalidPath", bad, segs, err)
			}
		})
	}
}

func TestParsePathErrorNamesThePath(t *testing.T) {
	_, err := parsePath("meta..firmware")
	if err == nil || !strings.Contains(err.Error(), `"meta..firmware"`) || !strings.Contains(err.Error(), "offset 5") {
		t.Errorf("error %v, want it to quote the path and point at offset 5", err)
	}
}

func FuzzJSONPath(f *testing.F) {
	for _, s := range []string{
		"$", "$.a", "a.b", "temp_c", "$.a[0].b", "$['key with.dot']", `$["k"]`, `$['it\'s']`, `$['a\\b']`,
		"$..a", "$.a[", "$[99999999999999999999]", "$.*", "$['a", "日本", "$.\xff", "[0][1]['x']",
	} {
		f.Add(s)
	}
	doc := map[string]any{"a": []any{map[string]any{"b": "x"}}, "key with.dot": 1.0, "": nil}
	c := NewChecker(DefaultLimits())
	payload := []byte(`{"a":[{"b":"x"}],"key with.dot":1,"":null}`)
	f.Fuzz(func(t *testing.T, path string) {
		segs, err := parsePath(path)
		_, issues := c.Check(payload, []catalog.Parameter{{Key: "p", JSONPath: path, DataType: TypeJSON}})
		if err != nil {
			if !errors.Is(err, ErrInvalidPath) {
				t.Fatalf("parsePath(%q) error %v does not wrap ErrInvalidPath", path, err)
			}
			if len(issues) != 1 || issues[0].Code != CodeRuleInvalid {
				t.Fatalf("Check with path %q: issues %+v, want rule_invalid", path, issues)
			}
			return
		}
		if len(issues) != 0 {
			t.Fatalf("Check with valid path %q: issues %+v", path, issues)
		}
		for _, s := range segs {
			if s.index > maxIndex {
				t.Fatalf("parsePath(%q) index %d above %d", path, s.index, maxIndex)
			}
		}
		canonical := formatPath(segs)
		again, err := parsePath(canonical)
		if err != nil || !reflect.DeepEqual(again, segs) {
			t.Fatalf("parsePath(%q) = %#v; its form %q parses to %#v, %v", path, segs, canonical, again, err)
		}
		resolve(doc, segs)
	})
}
