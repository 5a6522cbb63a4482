package stagelog

import (
	"errors"
	"fmt"
	"testing"
)

func TestKeep(t *testing.T) {
	tests := []struct {
		mode   Mode
		rate   float64
		status string
		want   bool
	}{
		{ModeAll, 0, StatusCompleted, true},
		{ModeAll, 0, StatusHalted, true},
		{ModeFailures, 0, StatusCompleted, false},
		{ModeFailures, 0, StatusHalted, true},
		{ModeFailures, 0, StatusDuplicate, true},
		{ModeSampled, 1, StatusCompleted, true},
		{ModeSampled, 0, StatusCompleted, false},
		{ModeSampled, 0, StatusFailed, true},
	}
	for _, tt := range tests {
		t.Run(fmt.Sprintf("%s/%v/%s", tt.mode, tt.rate, tt.status), func(t *testing.T) {
			w, err := New(tt.mode, tt.rate, "x")
			if err != nil {
				t.Fatal(err)
			}
			if got := w.Keep(&Entry{DedupeKey: "k", Status: tt.status}); got != tt.want {
				t.Errorf("Keep = %v, want %v", got, tt.want)
			}
		})
	}
}

func TestSampledIsDeterministicAndNearTheRate(t *testing.T) {
	kept := 0
	for i := range 10000 {
		k := fmt.Sprintf("seq:s@1:%d", i)
		a, b := Sampled(k, 0.1), Sampled(k, 0.1)
		if a != b {
			t.Fatalf("Sampled(%q) not deterministic", k)
		}
		if a {
			kept++
		}
	}
	if kept < 800 || kept > 1200 {
		t.Errorf("kept %d of 10000 at rate 0.1", kept)
	}
}

func TestNewRejectsBadSettings(t *testing.T) {
	for _, tt := range []struct {
		mode Mode
		rate float64
	}{{"some", 0.5}, {ModeSampled, 1.5}, {ModeSampled, -0.1}} {
		if _, err := New(tt.mode, tt.rate, "x"); !errors.Is(err, ErrMode) {
			t.Errorf("New(%q, %v) = %v, want ErrMode", tt.mode, tt.rate, err)
		}
	}
}
