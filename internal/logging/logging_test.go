package logging

import (
	"bytes"
	"context"
	"encoding/json"
	"strings"
	"testing"

	"go.opentelemetry.io/otel/trace"
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

func TestLinesNameTheirTrace(t *testing.T) {
	var buf bytes.Buffer
	l, err := New(&buf, "json", "info")
	if err != nil {
		t.Fatal(err)
	}
	tid, _ := trace.TraceIDFromHex("4bf92f3577b34da6a3ce929d0e0e4736")
	sid, _ := trace.SpanIDFromHex("00f067aa0ba902b7")
	ctx := trace.ContextWithSpanContext(context.Background(), trace.NewSpanContext(trace.SpanContextConfig{TraceID: tid, SpanID: sid}))
	l.With("stage", "validator").InfoContext(ctx, "traced", "trace_id", "stale")
	l.InfoContext(context.Background(), "untraced")
	lines := strings.Split(strings.TrimSpace(buf.String()), "\n")
	if len(lines) != 2 {
		t.Fatalf("got %d lines: %s", len(lines), buf.String())
	}
	var traced, untraced map[string]any
	_ = json.Unmarshal([]byte(lines[0]), &traced)
	_ = json.Unmarshal([]byte(lines[1]), &untraced)
	if traced["trace_id"] != tid.String() || traced["stage"] != "validator" {
		t.Errorf("traced line = %s, want trace_id %s and stage validator", lines[0], tid)
	}
	if strings.Count(lines[0], `"trace_id"`) != 1 {
		t.Errorf("traced line repeats trace_id: %s", lines[0])
	}
	if _, ok := untraced["trace_id"]; ok {
		t.Errorf("untraced line has a trace_id: %s", lines[1])
	}
}
