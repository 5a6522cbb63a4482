package publisher

import (
	"errors"
	"fmt"
	"testing"

	"github.com/telemesh/telemesh/internal/reason"
)

func TestFailureCode(t *testing.T) {
	kvDown := errors.New("nats: no responders available for request")
	tests := []struct {
		name string
		it   Item
		r    ItemResult
		want string
	}{
		{"state not written", Item{}, ItemResult{Err: fmt.Errorf("kv d1: %w", kvDown)}, reason.KVUnavailable},
		{"state kept changing", Item{}, ItemResult{Err: fmt.Errorf("kv d1: %w", ErrCASExhausted)}, reason.KVConflict},
		{"event not acknowledged", Item{}, ItemResult{Err: errors.New("publish iot.v1.analytics.x: timeout"),
			Subjects: []string{"$KV.device-states.d1", "iot.v1.analytics.x"}}, reason.PublishFailed},
		{"invalid event not acknowledged", Item{Invalid: true}, ItemResult{Err: errors.New("publish iot.v1.invalid.x: timeout")}, reason.PublishFailed},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if got := failureCode(&tt.it, tt.r); got != tt.want {
				t.Errorf("failureCode = %q, want %q", got, tt.want)
			}
		})
	}
}
