package logging

import (
	"bytes"
	"encoding/json"
	"log/slog"
	"strings"
	"testing"
	"time"

	"github.com/telemesh/telemesh/internal/testutil"
)

// stageName is a LogValuer, so the handler must resolve it before it can
// tell one key from another.
type stageName string

func (s stageName) LogValue() slog.Value { return slog.StringValue(string(s)) }

func TestEachKeyOnce(t *testing.T) {
	tests := []struct {
		name string
		log  func(l *slog.Logger)
		// want is the line without time and level.
		want string
	}{
		{
			name: "a key set by With and at the call",
			log:  func(l *slog.Logger) { l.With("stage", "gateway").Info("serving", "stage", "gateway", "grpc", ":1") },
			want: `{"msg":"serving","stage":"gateway","grpc":":1"}`,
		},
		{
			name: "the last value wins, in the first one's place",
			log:  func(l *slog.Logger) { l.With("a", 1, "b", 2).Info("m", "a", 3) },
			want: `{"msg":"m","a":3,"b":2}`,
		},
		{
			name: "a key twice in one call",
			log:  func(l *slog.Logger) { l.Info("m", "k", "x", "k", "y") },
			want: `{"msg":"m","k":"y"}`,
		},
		{
			name: "With twice",
			log:  func(l *slog.Logger) { l.With("stage", "a").With("stage", "b").Info("m") },
			want: `{"msg":"m","stage":"b"}`,
		},
		{
			name: "a LogValuer",
			log:  func(l *slog.Logger) { l.With("stage", stageName("deriver")).Info("m", "stage", "deriver") },
			want: `{"msg":"m","stage":"deriver"}`,
		},
		{
			name: "the same key in and out of a group is two keys",
			log:  func(l *slog.Logger) { l.With("k", 1).WithGroup("g").Info("m", "k", 2) },
			want: `{"msg":"m","k":1,"g":{"k":2}}`,
		},
		{
			name: "repeats inside a group",
			log:  func(l *slog.Logger) { l.WithGroup("g").With("k", 1).Info("m", "k", 2, slog.Group("h", "x", 1, "x", 2)) },
			want: `{"msg":"m","g":{"k":2,"h":{"x":2}}}`,
		},
		{
			name: "groups of one name merge",
			log: func(l *slog.Logger) {
				l.With(slog.Group("req", "id", 1)).Info("m", slog.Group("req", "path", "/x", "id", 2))
			},
			want: `{"msg":"m","req":{"id":2,"path":"/x"}}`,
		},
		{
			name: "a group without a key is inlined before the check",
			log:  func(l *slog.Logger) { l.With("k", 1).Info("m", slog.Group("", "k", 2)) },
			want: `{"msg":"m","k":2}`,
		},
		{
			name: "an empty group is left out",
			log:  func(l *slog.Logger) { l.WithGroup("g").Info("m", "k", 1, slog.Group("empty")) },
			want: `{"msg":"m","g":{"k":1}}`,
		},
		{
			name: "an attribute named like a field every line has",
			log:  func(l *slog.Logger) { l.Info("m", "msg", "other", "level", 3, "attr.msg", "first") },
			want: `{"msg":"m","attr.msg":"first","attr.level":3}`,
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var buf bytes.Buffer
			l, err := New(&buf, "json", "info")
			if err != nil {
				t.Fatal(err)
			}
			tt.log(l)
			line := bytes.TrimSpace(buf.Bytes())
			dups, err := testutil.DuplicateKeys(line)
			if err != nil || len(dups) > 0 {
				t.Fatalf("line %s: repeated %v, err %v", line, dups, err)
			}
			got := withoutTimeAndLevel(t, line)
			if got != tt.want {
				t.Errorf("got  %s\nwant %s", got, tt.want)
			}
		})
	}
}

// withoutTimeAndLevel returns line, a JSON object, without its first two
// fields, keeping the order of the rest.
func withoutTimeAndLevel(t *testing.T, line []byte) string {
	t.Helper()
	var head struct {
		Time  time.Time `json:"time"`
		Level string    `json:"level"`
	}
	if err := json.Unmarshal(line, &head); err != nil || head.Time.IsZero() || head.Level != "INFO" {
		t.Fatalf("line %s: time %v level %q, err %v", line, head.Time, head.Level, err)
	}
	s := string(line)
	prefix := `{"time":"` + head.Time.Format(time.RFC3339Nano) + `","level":"INFO",`
	if !strings.HasPrefix(s, prefix) {
		t.Fatalf("line %s does not start with %s", s, prefix)
	}
	return "{" + strings.TrimPrefix(s, prefix)
}

func TestEachKeyOnceInText(t *testing.T) {
	var buf bytes.Buffer
	l, err := New(&buf, "text", "info")
	if err != nil {
		t.Fatal(err)
	}
	l.With("stage", "persister").Info("stopped", "stage", "persister")
	line := buf.String()
	if n := strings.Count(line, "stage="); n != 1 {
		t.Errorf("stage written %d times: %s", n, line)
	}
}

func TestEachKeyOnceKeepsLevels(t *testing.T) {
	var buf bytes.Buffer
	l, err := New(&buf, "json", "warn")
	if err != nil {
		t.Fatal(err)
	}
	l.With("stage", "gateway").Info("hidden", "stage", "gateway")
	if buf.Len() != 0 {
		t.Errorf("an info line at level warn: %s", buf.String())
	}
}

func TestEachKeyOnceLeavesParentLoggersAlone(t *testing.T) {
	var buf bytes.Buffer
	l, err := New(&buf, "json", "info")
	if err != nil {
		t.Fatal(err)
	}
	parent := l.With("stage", "gateway").WithGroup("g")
	_ = parent.With("child", 1)
	_ = l.With("other", 2)
	parent.Info("m", "k", 1)
	if got := withoutTimeAndLevel(t, bytes.TrimSpace(buf.Bytes())); got != `{"msg":"m","stage":"gateway","g":{"k":1}}` {
		t.Errorf("the parent logger's line %s carries what was added to its children", got)
	}
}
