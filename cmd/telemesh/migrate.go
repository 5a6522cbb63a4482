package main

import (
	"fmt"
	"log/slog"
	"strconv"
	"text/tabwriter"

	"github.com/spf13/cobra"

	"github.com/telemesh/telemesh/internal/config"
	"github.com/telemesh/telemesh/internal/logging"
	"github.com/telemesh/telemesh/internal/migrate"
	"github.com/telemesh/telemesh/internal/pg"
)

func newMigrateCmd(e env) *cobra.Command {
	var databaseURL string
	cmd := &cobra.Command{
		Use:   "migrate up|down|status",
		Short: "Apply, roll back or list the database migrations embedded in this binary",
	}
	pf := cmd.PersistentFlags()
	pf.StringVar(&databaseURL, "database-url", "", "Postgres URL of the database to migrate (required unless a running telemesh up gives it)")
	config.MarkSecret(pf, "database-url")
	addMeshFileFlag(pf)

	prepare := func() error {
		if err := config.ApplyEnv(pf, e.lookupEnv); err != nil {
			return err
		}
		if _, err := fromMesh(pf, e, "database-url"); err != nil {
			return err
		}
		if databaseURL == "" {
			return requiredDatabaseURL()
		}
		if _, err := pg.ParseURL(databaseURL); err != nil {
			return config.Invalid("database-url", "%v", err)
		}
		return nil
	}
	logger := func() *slog.Logger {
		l, _ := logging.New(e.stderr, "auto", "info")
		return l
	}

	up := &cobra.Command{
		Use:   "up",
		Short: "Apply every pending migration",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if err := prepare(); err != nil {
				return err
			}
			res, err := migrate.Up(cmd.Context(), databaseURL, logger())
			if err != nil {
				return err
			}
			_, err = fmt.Fprintf(e.stdout, "applied %d migration(s)\n", len(res))
			return err
		},
	}
	var to int64
	down := &cobra.Command{
		Use:   "down",
		Short: "Roll back the newest migration, or down to --to (0 removes everything)",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if err := prepare(); err != nil {
				return err
			}
			target := to
			if !cmd.Flags().Changed("to") {
				st, err := migrate.Status(cmd.Context(), databaseURL)
				if err != nil {
					return err
				}
				target = previousVersion(st)
			}
			res, err := migrate.Down(cmd.Context(), databaseURL, target, logger())
			if err != nil {
				return err
			}
			_, err = fmt.Fprintf(e.stdout, "rolled back %d migration(s); now at version %d\n", len(res), target)
			return err
		},
	}
	down.Flags().Int64Var(&to, "to", 0, "version to roll back to (0 = everything); without it only the newest migration is rolled back")
	status := &cobra.Command{
		Use:   "status",
		Short: "List every migration and whether it is applied",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if err := prepare(); err != nil {
				return err
			}
			st, err := migrate.Status(cmd.Context(), databaseURL)
			if err != nil {
				return err
			}
			tw := tabwriter.NewWriter(e.stdout, 0, 4, 2, ' ', 0)
			fmt.Fprintln(tw, "VERSION\tNAME\tAPPLIED")
			for _, s := range st {
				applied := "pending"
				if s.Applied {
					applied = s.AppliedAt.Format("2006-01-02 15:04:05Z07:00")
				}
				fmt.Fprintf(tw, "%s\t%s\t%s\n", strconv.FormatInt(s.Version, 10), s.Name, applied)
			}
			return tw.Flush()
		},
	}
	cmd.AddCommand(up, down, status)
	return cmd
}

// previousVersion returns the version below the newest applied one.
func previousVersion(st []migrate.VersionStatus) int64 {
	var applied []int64
	for _, s := range st {
		if s.Applied {
			applied = append(applied, s.Version)
		}
	}
	if len(applied) < 2 {
		return 0
	}
	return applied[len(applied)-2]
}
