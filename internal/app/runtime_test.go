package app

import (
	"runtime/debug"
	"testing"
)

func TestTuneRuntime(t *testing.T) {
	defer debug.SetGCPercent(debug.SetGCPercent(100))
	t.Run("default", func(t *testing.T) {
		t.Setenv("GOGC", "")
		if got := TuneRuntime(); got != DefaultGCPercent {
			t.Errorf("TuneRuntime() = %d, want %d", got, DefaultGCPercent)
		}
		if got := debug.SetGCPercent(100); got != DefaultGCPercent {
			t.Errorf("GC percent %d, want %d", got, DefaultGCPercent)
		}
	})
	t.Run("GOGC wins", func(t *testing.T) {
		t.Setenv("GOGC", "150")
		debug.SetGCPercent(150) // what the runtime read from GOGC at start
		if got := TuneRuntime(); got != 150 {
			t.Errorf("TuneRuntime() = %d, want 150", got)
		}
		if got := debug.SetGCPercent(150); got != 150 {
			t.Errorf("GC percent %d, want 150 (GOGC kept)", got)
		}
	})
}
