package pg

import (
	"encoding/json"
	"maps"
	"strings"
	"testing"
)

func TestJSONB(t *testing.T) {
	tests := []struct {
		name, in, want string
	}{
		{"no escape", `{"a":"b"}`, `{"a":"b"}`},
		{"NUL escape", `{"a":"x\u0000y"}`, `{"a":"x\ufffdy"}`},
		{"NUL escape in a key", `{"\u0000":1}`, `{"\ufffd":1}`},
		{"escaped backslash then u0000 is literal text", `{"a":"\\u0000"}`, `{"a":"\\u0000"}`},
		{"three backslashes", `{"a":"\\\u0000"}`, `{"a":"\\\ufffd"}`},
		{"other escapes", `{"a":"\u0001\n\"\u0000"}`, `{"a":"\u0001\n\"\ufffd"}`},
		{"upper-case hex is not NUL", `{"a":"\u00A0"}`, `{"a":"\u00A0"}`},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if got := JSONB(tt.in); got != tt.want {
				t.Errorf("JSONB(%s) = %s, want %s", tt.in, got, tt.want)
			}
		})
	}
}

func FuzzJSONB(f *testing.F) {
	for _, s := range []string{"a\x00b", `\u0000`, "\\\x00", `x\`, "", "日本\x00"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		in, err := json.Marshal(map[string]string{"k" + s: s})
		if err != nil {
			t.Fatal(err)
		}
		var sent map[string]string
		if err := json.Unmarshal(in, &sent); err != nil {
			t.Fatal(err)
		}
		out := JSONB(string(in))
		var got map[string]string
		if err := json.Unmarshal([]byte(out), &got); err != nil {
			t.Fatalf("JSONB(%s) = %s is not JSON: %v", in, out, err)
		}
		// Exactly the NUL characters change, into U+FFFD, and none is left.
		want := map[string]string{}
		for k, v := range sent {
			want[strings.ReplaceAll(k, "\x00", "\uFFFD")] = strings.ReplaceAll(v, "\x00", "\uFFFD")
		}
		if !maps.Equal(got, want) {
			t.Fatalf("JSONB(%s) = %s decodes to %q, want %q", in, out, got, want)
		}
		if in := string(in); !strings.Contains(in, `\u0000`) && out != in {
			t.Fatalf("JSONB changed %s without a NUL escape into %s", in, out)
		}
	})
}
