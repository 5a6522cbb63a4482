package publisher

import (
	"testing"
	"time"
)

func TestBackoff(t *testing.T) {
	base, limit := time.Second, time.Minute
	for _, c := range []struct {
		attempts int
		want     time.Duration
	}{
		{0, time.Second}, {1, time.Second}, {2, 2 * time.Second}, {3, 4 * time.Second},
		{6, 32 * time.Second}, {7, time.Minute}, {100, time.Minute}, {1 << 20, time.Minute},
	} {
		lo := c.want * (100 - backoffJitterPercent) / 100
		hi := c.want * (100 + backoffJitterPercent) / 100
		seen := map[time.Duration]bool{}
		for range 50 {
			d := Backoff(c.attempts, base, limit)
			if d < lo || d > hi {
				t.Fatalf("Backoff(%d) = %v, want within %v..%v", c.attempts, d, lo, hi)
			}
			seen[d] = true
		}
		// Rows that failed together must not all come back at once.
		if len(seen) < 2 {
			t.Errorf("Backoff(%d) gave %v fifty times: no jitter", c.attempts, seen)
		}
	}
}
