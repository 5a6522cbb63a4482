package main

import (
	"encoding/json"
	"fmt"
	"io"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/spf13/cobra"
	"github.com/spf13/pflag"

	"github.com/telemesh/telemesh/internal/config"
	"github.com/telemesh/telemesh/internal/ops"
	"github.com/telemesh/telemesh/internal/pg"
)

// addDatabaseURLFlag adds the secret --database-url flag the operator
// commands share, and --mesh, which can stand in for it.
func addDatabaseURLFlag(fs *pflag.FlagSet, databaseURL *string) {
	fs.StringVar(databaseURL, "database-url", "", "Postgres URL (required unless a running telemesh up gives it)")
	config.MarkSecret(fs, "database-url")
	addMeshFileFlag(fs)
}

// openOpsPool applies the environment, then the mesh file, to cmd's flags
// and opens a pool on databaseURL for an operator command.
func openOpsPool(cmd *cobra.Command, e env, databaseURL *string, app string) (*pgxpool.Pool, error) {
	if err := config.ApplyEnv(cmd.Flags(), e.lookupEnv); err != nil {
		return nil, err
	}
	if _, err := fromMesh(cmd.Flags(), e, "database-url", "nats-url"); err != nil {
		return nil, err
	}
	if *databaseURL == "" {
		return nil, requiredDatabaseURL()
	}
	pool, err := pg.Open(cmd.Context(), *databaseURL, pg.Options{ApplicationName: app, MaxConns: 4})
	if err != nil {
		return nil, config.Invalid("database-url", "%v", err)
	}
	return pool, nil
}

// writeJSON writes v as indented JSON.
func writeJSON(w io.Writer, v any) error {
	enc := json.NewEncoder(w)
	enc.SetIndent("", "  ")
	return enc.Encode(v)
}

// newTraceCmd returns the trace command, which explains one message.
func newTraceCmd(e env) *cobra.Command {
	var databaseURL string
	var asJSON bool
	cmd := &cobra.Command{
		Use:   "trace MESSAGE_ID|DEDUPE_KEY|DEVICE_MESSAGE_ID",
		Short: "Show what happened to one message: its status, every stage's entry and its telemetry row",
		Long: `trace finds a message by its id, its dedupe key (id:<subject>:<device message id>
or seq:<stream>@<n>:<seq>) or the device's own message id, and prints its
status, the stage that halted it and why, what every stage did to it, and the
telemetry row it produced. It exits 1 when no message matches.`,
		Args: cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			pool, err := openOpsPool(cmd, e, &databaseURL, "telemesh-trace")
			if err != nil {
				return err
			}
			defer pool.Close()
			tr, err := ops.TraceMessage(cmd.Context(), pool, args[0])
			if err != nil {
				return err
			}
			if asJSON {
				return writeJSON(e.stdout, tr)
			}
			return printTrace(e.stdout, tr)
		},
	}
	addDatabaseURLFlag(cmd.Flags(), &databaseURL)
	cmd.Flags().BoolVar(&asJSON, "json", false, "print the trace as JSON")
	return cmd
}

// printTrace writes a trace for a person.
func printTrace(w io.Writer, tr *ops.Trace) error {
	m := tr.Message
	tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
	fmt.Fprintf(tw, "message\t%s\n", m.ID)
	fmt.Fprintf(tw, "status\t%s\n", m.Status)
	fmt.Fprintf(tw, "halted stage\t%s\n", orDash(m.HaltedStage))
	fmt.Fprintf(tw, "reason\t%s\n", orDash(m.Reason))
	fmt.Fprintf(tw, "subject\t%s\n", m.Subject)
	fmt.Fprintf(tw, "device message id\t%s\n", orDash(m.SourceMessageID))
	fmt.Fprintf(tw, "dedupe key\t%s\n", m.DedupeKey)
	fmt.Fprintf(tw, "deliveries\t%d\n", m.DeliveryAttempts)
	fmt.Fprintf(tw, "received\t%s\n", m.ReceivedAt.UTC().Format(time.RFC3339Nano))
	fmt.Fprintf(tw, "processed\t%s\n", timeOrDash(m.ProcessedAt))
	fmt.Fprintf(tw, "trace id\t%s\n", orDash(m.TraceID))
	for _, o := range tr.OtherMatches {
		fmt.Fprintf(tw, "also matches\t%s\n", o)
	}
	if err := tw.Flush(); err != nil {
		return err
	}

	fmt.Fprintf(w, "\nstages (%d)\n", len(tr.StageLogs))
	if len(tr.StageLogs) > 0 {
		tw = tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
		fmt.Fprintln(tw, "AT\tSTAGE\tSTATUS\tDURATION\tATTEMPT\tINSTANCE\tERRORS")
		for _, l := range tr.StageLogs {
			errs := "-"
			if len(l.Errors) > 0 && string(l.Errors) != "null" {
				errs = string(l.Errors)
			}
			fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%d\t%s\t%s\n", l.CreatedAt.UTC().Format(time.RFC3339Nano), l.Stage, l.Status,
				time.Duration(l.DurationUS)*time.Microsecond, l.Attempt, l.Instance, errs)
		}
		if err := tw.Flush(); err != nil {
			return err
		}
	}

	t := tr.Telemetry
	if t == nil {
		_, err := fmt.Fprintln(w, "\ntelemetry: none")
		return err
	}
	fmt.Fprintln(w, "\ntelemetry")
	tw = tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
	fmt.Fprintf(tw, "state\t%s\n", t.ProcessingState)
	fmt.Fprintf(tw, "validation\t%s\n", t.ValidationStatus)
	fmt.Fprintf(tw, "failure reason\t%s\n", orDash(t.FailureReason))
	fmt.Fprintf(tw, "recorded\t%s\n", t.RecordedAt.UTC().Format(time.RFC3339Nano))
	fmt.Fprintf(tw, "topic\t%s\n", t.Topic)
	fmt.Fprintf(tw, "mutated values\t%s\n", t.MutatedValues)
	fmt.Fprintf(tw, "transformed values\t%s\n", t.TransformedValues)
	fmt.Fprintf(tw, "unresolved values\t%s\n", t.UnresolvedValues)
	fmt.Fprintf(tw, "validation errors\t%s\n", t.ValidationErrors)
	fmt.Fprintf(tw, "publish attempts\t%d\n", t.PublishAttempts)
	fmt.Fprintf(tw, "next publish\t%s\n", timeOrDash(t.NextPublishAt))
	fmt.Fprintf(tw, "processed\t%s\n", timeOrDash(t.ProcessedAt))
	return tw.Flush()
}

// orDash returns *s, or "-" when it is nil or blank.
func orDash(s *string) string {
	if s == nil || strings.TrimSpace(*s) == "" {
		return "-"
	}
	return *s
}

// timeOrDash formats *t in UTC, or returns "-" when it is nil.
func timeOrDash(t *time.Time) string {
	if t == nil {
		return "-"
	}
	return t.UTC().Format(time.RFC3339Nano)
}
