package validator

import "testing"

// A message that broke several rules counts under its first critical
// issue, else its first issue.
func TestPrimaryCode(t *testing.T) {
	tests := []struct {
		issues []Issue
		want   string
	}{
		{[]Issue{{Parameter: "humidity", Code: CodeMax}}, CodeMax},
		{[]Issue{{Parameter: "humidity", Code: CodeMax}, {Parameter: "mode", Code: CodeEnum}}, CodeMax},
		{[]Issue{{Parameter: "humidity", Code: CodeMax}, {Parameter: "temp_c", Code: CodeRequired, Critical: true}}, CodeRequired},
	}
	for _, tt := range tests {
		if got := primaryCode(tt.issues); got != tt.want {
			t.Errorf("primaryCode(%+v) = %q, want %q", tt.issues, got, tt.want)
		}
	}
}
