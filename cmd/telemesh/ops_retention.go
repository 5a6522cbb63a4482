package main

import (
	"fmt"
	"strings"
	"time"

	"github.com/spf13/cobra"

	"github.com/telemesh/telemesh/internal/config"
	"github.com/telemesh/telemesh/internal/ops"
)

// newRetentionCmd returns the retention command, which enforces how long
// each table keeps its rows.
func newRetentionCmd(e env) *cobra.Command {
	var databaseURL, telemetry, messages, stageLogs string
	var dryRun, asJSON bool
	cmd := &cobra.Command{
		Use:   "retention",
		Short: "Drop and delete telemetry, messages and stage logs past their retention; make the coming days' partitions",
		Long: `retention drops the daily partitions of device_telemetry_logs and
ingestion_stage_logs that lie wholly before their cutoff, deletes older rows
from their DEFAULT partitions, deletes old ingestion_messages in batches of
10,000, and makes sure the partitions of the next 7 days exist. It is safe to
run again at any time, e.g. daily from cron.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if err := config.ApplyEnv(cmd.Flags(), e.lookupEnv); err != nil {
				return err
			}
			policy := ops.Retention{DryRun: dryRun}
			for _, a := range []struct {
				flag, value string
				into        *time.Duration
			}{{"telemetry", telemetry, &policy.Telemetry}, {"messages", messages, &policy.Messages}, {"stage-logs", stageLogs, &policy.StageLogs}} {
				d, err := ops.ParseAge(a.value)
				if err != nil {
					return config.Invalid(a.flag, "%v", err)
				}
				*a.into = d
			}
			pool, err := openOpsPool(cmd, e, &databaseURL, "telemesh-retention")
			if err != nil {
				return err
			}
			defer pool.Close()
			res, err := ops.Retain(cmd.Context(), pool, policy)
			if err != nil {
				return err
			}
			if asJSON {
				return writeJSON(e.stdout, res)
			}
			verb := map[bool]string{true: "would drop", false: "dropped"}[dryRun]
			del := map[bool]string{true: "would delete", false: "deleted"}[dryRun]
			for _, t := range res.Tables {
				parts := "none"
				if len(t.DroppedPartitions) > 0 {
					parts = strings.Join(t.DroppedPartitions, ", ")
				}
				fmt.Fprintf(e.stdout, "%s: cutoff %s; %s %d partition(s) (%s); %s %d row(s) from %s_default",
					t.Table, t.Cutoff.Format(time.RFC3339), verb, len(t.DroppedPartitions), parts, del, t.DefaultRowsDeleted, t.Table)
				if !dryRun {
					fmt.Fprintf(e.stdout, "; created %d partition(s) ahead", t.PartitionsCreated)
				}
				fmt.Fprintln(e.stdout)
			}
			_, err = fmt.Fprintf(e.stdout, "ingestion_messages: cutoff %s; %s %d row(s)\n",
				res.MessagesCutoff.Format(time.RFC3339), del, res.MessagesDeleted)
			return err
		},
	}
	f := cmd.Flags()
	addDatabaseURLFlag(f, &databaseURL)
	f.StringVar(&telemetry, "telemetry", "90d", "keep device_telemetry_logs this long (days like 90d, or a duration like 36h)")
	f.StringVar(&messages, "messages", "14d", "keep ingestion_messages this long")
	f.StringVar(&stageLogs, "stage-logs", "7d", "keep ingestion_stage_logs this long")
	f.BoolVar(&dryRun, "dry-run", false, "print what would be dropped and deleted and change nothing")
	f.BoolVar(&asJSON, "json", false, "print the result as JSON")
	return cmd
}
