package bench_test

import (
	"os"
	"testing"
	"time"
)

func TestParseStat(t *testing.T) {
	for _, tc := range []struct {
		name, line string
		comm       string
		cpu        time.Duration
		bad        bool
	}{
		{name: "plain", line: "4242 (postgres) S 1 4242 4242 0 -1 4194560 1000 0 0 0 250 75 0 0 20 0 1 0 100 200000000 2000",
			comm: "postgres", cpu: 3250 * time.Millisecond},
		{name: "spaces and parentheses in the name", line: "7 (a (b) c) R 1 7 7 0 -1 0 0 0 0 0 1 2 0 0 20 0 1 0 100 1 1",
			comm: "a (b) c", cpu: 30 * time.Millisecond},
		{name: "too short", line: "7 (x) R 1 2 3", bad: true},
		{name: "no name", line: "7 x R 1 2 3 4 5 6 7 8 9 10 11 12 13 14", bad: true},
		{name: "not a number", line: "7 (x) R 1 7 7 0 -1 0 0 0 0 0 a 2 0 0 20 0 1 0 100 1 1", bad: true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			comm, cpu, err := parseStat([]byte(tc.line))
			if tc.bad {
				if err == nil {
					t.Fatalf("parseStat(%q) = %q, %v; want an error", tc.line, comm, cpu)
				}
				return
			}
			if err != nil || comm != tc.comm || cpu != tc.cpu {
				t.Fatalf("parseStat(%q) = %q, %v, %v; want %q, %v", tc.line, comm, cpu, err, tc.comm, tc.cpu)
			}
		})
	}
}

// This process's own figures read as the harness reads its children's.
func TestProcOfSelf(t *testing.T) {
	// Burn some CPU so the figure cannot be zero.
	deadline := time.Now().Add(100 * time.Millisecond)
	for x := 0; time.Now().Before(deadline); x++ {
		_ = x * x
	}
	cpu, err := cpuOf(os.Getpid())
	if err != nil || cpu <= 0 {
		t.Fatalf("cpuOf(self) = %v, %v; want a positive time", cpu, err)
	}
	rss, err := peakRSS(os.Getpid())
	if err != nil || rss < 1<<20 {
		t.Fatalf("peakRSS(self) = %d, %v; want at least a MiB", rss, err)
	}
	if _, err := cpuOf(1 << 30); err == nil {
		t.Fatal("cpuOf of a process that does not exist: no error")
	}
}

func TestParseHWM(t *testing.T) {
	got, err := parseHWM([]byte("Name:\ttelemesh\nVmPeak:\t 1000 kB\nVmHWM:\t   51200 kB\nVmRSS:\t 40000 kB\n"))
	if err != nil || got != 50<<20 {
		t.Fatalf("parseHWM = %d, %v; want %d", got, err, 50<<20)
	}
	if _, err := parseHWM([]byte("Name:\tx\n")); err == nil {
		t.Fatal("parseHWM without VmHWM: no error")
	}
}

func TestThousands(t *testing.T) {
	for in, want := range map[float64]string{0: "0", 999.4: "999", 999.5: "1,000", 1234567: "1,234,567", -20300: "-20,300"} {
		if got := thousands(in); got != want {
			t.Errorf("thousands(%v) = %q, want %q", in, got, want)
		}
	}
}
