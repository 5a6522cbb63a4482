package logging

import (
	"bytes"
	"encoding/json"
	"strings"
	"testing"
)

func TestNew(t *testing.T) {
	tests := []struct {
		format, level string
		wantJSON      bool
		wantErr       bool
	}{
		{format: "auto", level: "info", wantJSON: true}, // a buffer is not a terminal
		{format: "json", level: "debug", wantJSON: true},
		{format: "text", level: "warn"},
		{format: "xml", level: "info", wantErr: true},
		{format: "json", level: "loud", wantErr: true},
	}
	for _, tt := range tests {
		t.Run(tt.format+"/"+tt.level, func(t *testing.T) {
			var buf bytes.Buffer
			l, err := New(&buf, tt.format, tt.level)
			if (err != nil) != tt.wantErr {
				t.Fatalf("err = %v, wantErr %v", err, tt.wantErr)
			}
			if err != nil {
				return
			}
			l.Error("hello", "k", "v")
			line := strings.TrimSpace(buf.String())
			isJSON := json.Valid([]byte(line))
			if isJSON != tt.wantJSON {
				t.Fatalf("output %q: json=%v, want %v", line, isJSON, tt.wantJSON)
			}
		})
	}
}
