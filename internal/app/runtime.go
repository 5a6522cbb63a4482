package app

import (
	"os"
	"runtime/debug"
)

// DefaultGCPercent is the garbage collector's target when GOGC is not set:
// a stage's live heap is small (a few batches in flight and the catalog),
// so letting the heap grow to five times that before a collection costs a
// few tens of MiB and saves most of the collector's CPU at full rate.
const DefaultGCPercent = 400

// TuneRuntime sets the collector's target to DefaultGCPercent unless the
// operator set GOGC, which always wins. It returns the percent in effect.
func TuneRuntime() int {
	if v, ok := os.LookupEnv("GOGC"); ok && v != "" {
		old := debug.SetGCPercent(100)
		debug.SetGCPercent(old)
		return old
	}
	debug.SetGCPercent(DefaultGCPercent)
	return DefaultGCPercent
}
