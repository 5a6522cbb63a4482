package simulate

import (
	"bytes"
	"strings"
	"testing"
	"time"
)

func sampleStats() Stats {
	var s Stats
	s.Sent[Valid], s.Sent[Invalid], s.Sent[Duplicate], s.Sent[MalformedJSON] = 40, 5, 4, 1
	s.HeaderDuplicates, s.PayloadOnlyDuplicates, s.DroppedDuplicates = 2, 2, 2
	s.Skipped[Inactive] = 3
	s.Acked, s.Failed = 48, 1
	s.LastError = "ack for devices.x.telemetry: nats: timeout"
	s.Target = 100
	s.Rate = 12.5
	s.Elapsed = 4 * time.Second
	return s
}

func TestProgressLine(t *testing.T) {
	tests := []struct {
		name   string
		change func(*Stats)
		want   string
	}{
		{"with a count", func(*Stats) {}, "[############............]  50% 50/100  acked 48  failed 1  12.5 msg/s  4s"},
		{"done", func(s *Stats) { s.Target = 50 }, "[########################] 100% 50/50  acked 48  failed 1  12.5 msg/s  4s"},
		{"without a count", func(s *Stats) { s.Target = 0 }, "sent 50  acked 48  failed 1  12.5 msg/s  4s"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			s := sampleStats()
			tc.change(&s)
			if got := ProgressLine(s); got != tc.want {
				t.Errorf("ProgressLine =\n%q, want\n%q", got, tc.want)
			}
		})
	}
}

func TestProgressOnATerminalRedraws(t *testing.T) {
	var buf bytes.Buffer
	p := NewProgress(&buf, true)
	s := sampleStats()
	p.Update(s)
	s.Target = 0
	p.Update(s)
	p.Finish(s)
	out := buf.String()
	if strings.Count(out, "\r") != 3 || strings.Count(out, "\n") != 1 || !strings.HasSuffix(out, "\n") {
		t.Errorf("terminal output %q: want three redraws and one final newline", out)
	}
	// The shorter second line must blank out the rest of the first.
	first := ProgressLine(sampleStats())
	second := ProgressLine(s)
	if !strings.Contains(out, "\r"+second+strings.Repeat(" ", len(first)-len(second))) {
		t.Errorf("the shorter line does not cover the longer one: %q", out)
	}
}

func TestProgressOffATerminalPrintsEveryFiveSeconds(t *testing.T) {
	var buf bytes.Buffer
	p := NewProgress(&buf, false)
	s := sampleStats()
	for ms := 250; ms <= 12000; ms += 250 {
		s.Elapsed = time.Duration(ms) * time.Millisecond
		p.Update(s)
	}
	p.Finish(s)
	lines := strings.Split(strings.TrimSuffix(buf.String(), "\n"), "\n")
	// At 5s and 10s, then the final line.
	if len(lines) != 3 || strings.Contains(buf.String(), "\r") {
		t.Errorf("log output %q: want lines at 5s, 10s and the end, no carriage returns", buf.String())
	}
}

func TestWriteSummary(t *testing.T) {
	var buf bytes.Buffer
	s := sampleStats()
	s.Interrupted = true
	if err := WriteSummary(&buf, s); err != nil {
		t.Fatal(err)
	}
	out := buf.String()
	for _, want := range []string{
		"KIND            SENT  SKIPPED\n",
		"valid           40\n",
		"inactive        0     3\n",
		"malformed_json  1\n",
		"total           50    3\n",
		"JetStream acked 48, failed 1; 46 stored.",
		"2 re-sent with Nats-Msg-Id and payload message_id (JetStream dropped 2 inside the stream's duplicate window), 2 with the payload message_id only",
		"Skipped 3 inactive (no inactive device among those used)",
		"Last error: ack for devices.x.telemetry: nats: timeout",
		"50 messages in 4s (12.5 msg/s).",
		"Interrupted",
	} {
		if !strings.Contains(out, want) {
			t.Errorf("summary lacks %q:\n%s", want, out)
		}
	}

	buf.Reset()
	s = Stats{}
	s.Sent[Valid], s.Sent[Duplicate] = 9, 1
	if err := WriteSummary(&buf, s); err != nil {
		t.Fatal(err)
	}
	if out := buf.String(); strings.Contains(out, "SKIPPED") || !strings.Contains(out, "1 identical re-sends without any message id") {
		t.Errorf("summary without ids or skips:\n%s", out)
	}
}
