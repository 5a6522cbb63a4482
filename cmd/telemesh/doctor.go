package main

import (
	"encoding/json"
	"fmt"
	"time"

	"github.com/spf13/cobra"

	"github.com/telemesh/telemesh/internal/config"
	"github.com/telemesh/telemesh/internal/pipelinestate"
)

func newDoctorCmd(e env) *cobra.Command {
	var (
		asJSON        bool
		window        time.Duration
		expectSubject string
	)
	cmd := &cobra.Command{
		Use:   "doctor",
		Short: "Walk the operational decision tree and say what is wrong and how to fix it",
		Long: `doctor walks the operational decision tree:

  1. Is telemetry arriving? The stream's message count over --window, and
     whether its subjects capture --expect-subject. If not: exit 3.
  2. Are rows increasing? The gateway's consumer exists on the stream, every
     stage answers gRPC health SERVING, pending messages are moving. If not:
     exit 4, naming the stage or cause.
  3. Are rows processed? No publish_failed rows in the last --minutes, the KV
     bucket and the analytics stream exist. If not: exit 5.

A global pipeline switch that is off is a pause, not a fault: when nothing
else is wrong the verdict is "paused", with since when, by whom and the
backlog waiting in the stream, and exit 6. Organizations switched off are
listed with their parked messages.

It prints the branch, the evidence and the fix. Like status, it finds a
telemesh up through its mesh file.

Exit codes:
  0  healthy
  1  doctor could not run (e.g. the database URL is unusable)
  2  a bad flag or setting
  3  no telemetry on the captured subjects
  4  telemetry is not being stored (a stage, the consumer or the database)
  5  publishing failing
  6  paused: the global pipeline switch is off and nothing is wrong
  69 no mesh to look at (no running telemesh up and nothing on the defaults)`,
		Args: cobra.NoArgs,
	}
	fs := cmd.Flags()
	mf := addMeshFlags(fs)
	fs.BoolVar(&asJSON, "json", false, "print the verdict (with the report) as JSON")
	fs.DurationVar(&window, "window", 3*time.Second, "how long to watch the stream and consumer for progress")
	fs.StringVar(&expectSubject, "expect-subject", "", "a subject devices publish on; the stream must capture it")
	cmd.RunE = func(cmd *cobra.Command, _ []string) error {
		cfg, err := mf.prepare(fs, e)
		if err != nil {
			return err
		}
		if window <= 0 {
			return config.Invalid("window", "%s: must be positive", window)
		}
		v, err := pipelinestate.Doctor(cmd.Context(), cfg, pipelinestate.DoctorOptions{Window: window, ExpectSubject: expectSubject})
		if err != nil {
			return err
		}
		if asJSON {
			enc := json.NewEncoder(e.stdout)
			enc.SetIndent("", "  ")
			if err := enc.Encode(v); err != nil {
				return fmt.Errorf("doctor: %w", err)
			}
		} else {
			fmt.Fprintf(e.stdout, "verdict: %s\n\nevidence:\n", v.Branch)
			for _, line := range v.Evidence {
				fmt.Fprintf(e.stdout, "  %s\n", line)
			}
			if v.Fix != "" {
				fmt.Fprintf(e.stdout, "\nfix: %s\n", v.Fix)
			}
		}
		if v.ExitCode == pipelinestate.ExitPaused {
			return &exitCodeError{code: v.ExitCode, err: fmt.Errorf("doctor: %w", errPaused)}
		}
		if v.ExitCode != 0 {
			return &exitCodeError{code: v.ExitCode, err: fmt.Errorf("doctor: %s", v.Branch)}
		}
		return nil
	}
	return cmd
}
