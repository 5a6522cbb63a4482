package simulate

import (
	"bytes"
	"fmt"
	"io"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/mattn/go-isatty"
)

// IsTerminal reports whether w is a terminal, where a progress line can be
// redrawn in place.
func IsTerminal(w io.Writer) bool {
	f, ok := w.(interface{ Fd() uintptr })
	return ok && (isatty.IsTerminal(f.Fd()) || isatty.IsCygwinTerminal(f.Fd()))
}

// progressLogEvery is how often a progress line is printed where it cannot
// be redrawn: often enough to see it live, rarely enough for a log file.
const progressLogEvery = 5 * time.Second

// Progress shows Stats as one line: redrawn in place on a terminal, else
// printed every five seconds. Its Update is meant as Run's progress
// callback and is not safe for concurrent use, which Run never needs.
type Progress struct {
	w     io.Writer
	tty   bool
	every time.Duration
	last  time.Duration
	// width is the length of the line on screen, printed the last line
	// logged.
	width   int
	printed string
}

// NewProgress returns a Progress writing to w; tty says whether w can
// redraw a line with a carriage return.
func NewProgress(w io.Writer, tty bool) *Progress {
	return &Progress{w: w, tty: tty, every: progressLogEvery}
}

// Update shows s unless, off a terminal, the last line is recent.
func (p *Progress) Update(s Stats) {
	if p.tty {
		p.redraw(ProgressLine(s))
		return
	}
	if s.Elapsed-p.last < p.every {
		return
	}
	p.last = s.Elapsed
	p.print(ProgressLine(s))
}

// Finish shows the final s and ends the line, so what follows starts on a
// line of its own.
func (p *Progress) Finish(s Stats) {
	if p.tty {
		p.redraw(ProgressLine(s))
		fmt.Fprintln(p.w)
		return
	}
	// Run's last progress call may have printed this very line.
	if line := ProgressLine(s); line != p.printed {
		p.print(line)
	}
}

func (p *Progress) print(line string) {
	p.printed = line
	fmt.Fprintln(p.w, line)
}

// redraw overwrites the previous line; padding with spaces, not an escape
// sequence, works on every terminal.
func (p *Progress) redraw(line string) {
	pad := ""
	if n := len(line); n < p.width {
		pad = strings.Repeat(" ", p.width-n)
	}
	p.width = len(line)
	fmt.Fprintf(p.w, "\r%s%s", line, pad)
}

// barWidth is the number of cells in the progress bar.
const barWidth = 24

// ProgressLine renders s in one line: a bar when the run has a Count, then
// sent, acked and failed and the live rate.
func ProgressLine(s Stats) string {
	var b strings.Builder
	if s.Target > 0 {
		frac := min(1, float64(s.Total())/float64(s.Target))
		full := int(frac * barWidth)
		fmt.Fprintf(&b, "[%s%s] %3.0f%% %d/%d  ", strings.Repeat("#", full), strings.Repeat(".", barWidth-full), frac*100, s.Total(), s.Target)
	} else {
		fmt.Fprintf(&b, "sent %d  ", s.Total())
	}
	fmt.Fprintf(&b, "acked %d  failed %d  %.1f msg/s  %s", s.Acked, s.Failed, s.Rate, s.Elapsed.Round(time.Second))
	return b.String()
}

// WriteSummary prints what a run sent, by kind, as a table, followed by
// what became of it.
func WriteSummary(w io.Writer, s Stats) error {
	var table bytes.Buffer
	tw := tabwriter.NewWriter(&table, 0, 4, 2, ' ', 0)
	skipped := s.Skipped.Total() > 0
	if skipped {
		fmt.Fprintln(tw, "KIND\tSENT\tSKIPPED")
	} else {
		fmt.Fprintln(tw, "KIND\tSENT")
	}
	row := func(name string, sent, skip int) {
		if skipped {
			sk := ""
			if skip > 0 {
				sk = fmt.Sprint(skip)
			}
			fmt.Fprintf(tw, "%s\t%d\t%s\n", name, sent, sk)
			return
		}
		fmt.Fprintf(tw, "%s\t%d\n", name, sent)
	}
	for _, k := range Kinds() {
		row(k.String(), s.Sent[k], s.Skipped[k])
	}
	row("total", s.Total(), s.Skipped.Total())
	if err := tw.Flush(); err != nil {
		return fmt.Errorf("write summary: %w", err)
	}
	// An empty last cell leaves padding behind; trailing blanks only get in
	// the way of whoever greps or diffs the output.
	lines := strings.Split(strings.TrimSuffix(table.String(), "\n"), "\n")
	for i, l := range lines {
		lines[i] = strings.TrimRight(l, " ")
	}

	var notes []string
	say := func(format string, args ...any) { notes = append(notes, fmt.Sprintf(format, args...)) }
	say("JetStream acked %d, failed %d; %d stored.", s.Acked, s.Failed, s.Stored())
	if n := s.Sent[Duplicate]; n > 0 {
		if s.HeaderDuplicates+s.PayloadOnlyDuplicates == 0 {
			say("Duplicates: %d identical re-sends without any message id; telemesh counts each as a new message.", n)
		} else {
			say("Duplicates: %d re-sent with Nats-Msg-Id and payload message_id (JetStream dropped %d inside the stream's duplicate window), %d with the payload message_id only (for telemesh's dedupe).",
				s.HeaderDuplicates, s.DroppedDuplicates, s.PayloadOnlyDuplicates)
		}
	} else if s.DroppedDuplicates > 0 {
		say("JetStream dropped %d messages as duplicates of earlier ones.", s.DroppedDuplicates)
	}
	for _, k := range Kinds() {
		if n := s.Skipped[k]; n > 0 {
			say("Skipped %d %s (%s); a valid message was sent in each one's place.", n, k, skipReason(k))
		}
	}
	if s.LastError != "" {
		say("Last error: %s", s.LastError)
	}
	say("%d messages in %s (%.1f msg/s).", s.Total(), s.Elapsed.Round(time.Millisecond), s.Rate)
	if s.Interrupted {
		say("Interrupted before the run's end.")
	}
	_, err := fmt.Fprintf(w, "%s\n\n%s\n", strings.Join(lines, "\n"), strings.Join(notes, "\n"))
	if err != nil {
		return fmt.Errorf("write summary: %w", err)
	}
	return nil
}

func skipReason(k MessageKind) string {
	switch k {
	case Inactive:
		return "no inactive device among those used"
	case MissingInputs:
		return "no active thermostat or energy meter among those used"
	case Duplicate:
		return "no valid message sent yet to repeat"
	}
	return "cannot be produced"
}
