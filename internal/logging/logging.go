// Package logging builds the process logger: text for a terminal, JSON for
// everything else (log collectors, CI).
package logging

import (
	"fmt"
	"io"
	"log/slog"
	"os"
	"strings"

	"github.com/mattn/go-isatty"
)

// Formats lists the accepted values of the log format setting.
var Formats = []string{"auto", "text", "json"}

// Levels lists the accepted values of the log level setting.
var Levels = []string{"debug", "info", "warn", "error"}

// New returns a logger writing to w. format is auto, text or json; auto picks
// text when w is a terminal. level is debug, info, warn or error. Each line
// carries each key once: a key set again, by [slog.Logger.With] and at the
// call, keeps its last value (see [uniqueKeys]). A line logged with a
// context holding a span names its trace_id.
func New(w io.Writer, format, level string) (*slog.Logger, error) {
	var lvl slog.Level
	if err := lvl.UnmarshalText([]byte(strings.ToUpper(level))); err != nil {
		return nil, fmt.Errorf("log level %q: %w", level, err)
	}
	opts := &slog.HandlerOptions{Level: lvl}
	var h slog.Handler
	switch format {
	case "text":
		h = slog.NewTextHandler(w, opts)
	case "json":
		h = slog.NewJSONHandler(w, opts)
	case "auto", "":
		if f, ok := w.(*os.File); ok && isatty.IsTerminal(f.Fd()) {
			h = slog.NewTextHandler(w, opts)
		} else {
			h = slog.NewJSONHandler(w, opts)
		}
	default:
		return nil, fmt.Errorf("log format %q: want auto, text or json", format)
	}
	return slog.New(traceIDs{newUniqueKeys(h)}), nil
}

// Discard returns a logger that writes nothing, for embedders and tests that
// do not want output.
func Discard() *slog.Logger { return slog.New(slog.DiscardHandler) }
