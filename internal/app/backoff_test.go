package app

import (
	"testing"
	"time"
)

func TestStartBackoff(t *testing.T) {
	b := startBackoff()
	want := startBackoffBase
	seen := map[time.Duration]bool{}
	for i := range 40 {
		d, stop := b.Next()
		if stop {
			t.Fatalf("attempt %d: the start-up retries stopped; they go on until the context ends", i)
		}
		lo := want * (100 - startJitterPercent) / 100
		hi := want * (100 + startJitterPercent) / 100
		if d < lo || d > hi {
			t.Fatalf("attempt %d: waits %v, want within %v..%v", i, d, lo, hi)
		}
		seen[d] = true
		want = min(2*want, startBackoffMax)
	}
	if len(seen) < 10 {
		t.Errorf("only %d distinct waits in 40: replicas would retry in step", len(seen))
	}
}
